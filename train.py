#!/usr/bin/env python3
"""Train a character-level RNN/GRU/LSTM from a YAML recipe (the same as `rnn-train train`).

    python train.py --config configs/pinyin_gru.yaml [section.key=value ...]
    python train.py --resume runs/pinyin_gru [train.max_steps=4000]
    python train.py --config configs/shakespeare_gru.yaml --init-from runs/pinyin_gru/best.pt  (fine-tune)
"""
import sys

from rnn_train.commands import run_command

if __name__ == "__main__":
    sys.exit(run_command("train", sys.argv[1:], prog="train.py"))
