#!/usr/bin/env python3
"""Predict from a prefix with a trained checkpoint: the next character and a K-character continuation
(the same as `rnn-train predict`).

    python predict.py --checkpoint runs/pinyin_gru/best.pt --prefix "zhong guo" -k 50
    python predict.py --checkpoint runs/pinyin_gru --prefix "ni hao" --temperature 0.8 --top-k 5 --seed 1
    python predict.py --checkpoint runs/pinyin_gru --line-starts 春,风,十,里 --temperature 0.8 --num-samples 3
"""
import sys

from rnn_train.commands import run_command

if __name__ == "__main__":
    sys.exit(run_command("predict", sys.argv[1:], prog="predict.py"))
