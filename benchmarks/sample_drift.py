"""How far sample i of `--num-samples N` follows the `--num-samples 1` sample of the same seed.

Every row draws from its own random stream (seed, i), so the random numbers of sample 0 are the
same whatever N; its text is the same as long as its logits are. On the C++ generation steps
they are equal bit for bit (a row's arithmetic does not depend on the other rows), and this
script should print "identical" for every seed. On the NumPy stepper (RNN_TRAIN_NO_CPP=1, or a
machine without a compiler) they are equal only to float rounding: it multiplies the rows in
blocks (of a size measured per machine and batch, rnn_train/prediction/stepper.py), a batch of 1
as one row, and OpenBLAS rounds a row's products differently with the rows in the call. A
difference in the last bit changes a draw only at a near tie, and from then on the two samples go
separate ways. This script reports, per seed, the first character where sample 0 of a batch of N
differs from the batch-1 sample (none: identical over the length).

    python train.py --config configs/pinyin_gru.yaml          # the README's model, if not there yet
    python benchmarks/sample_drift.py --checkpoint runs/pinyin_gru/best.pt --prefix "zhong guo"
    RNN_TRAIN_NO_CPP=1 python benchmarks/sample_drift.py --checkpoint runs/pinyin_gru/best.pt
    python benchmarks/sample_drift.py --checkpoint RUN --seeds 12 --length 4000 --batch 8
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rnn_train.model.checkpoint import load_model  # noqa: E402
from rnn_train.prediction.choose import SamplingOptions  # noqa: E402
from rnn_train.prediction.generate import samples  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--prefix", default="zhong guo")
    ap.add_argument("--seeds", type=int, default=6, help="seeds 0..S-1 (default 6)")
    ap.add_argument("--length", type=int, default=30000, help="characters per sample (default 30000)")
    ap.add_argument("--batch", type=int, default=7, help="N of the batch compared with batch 1 (default 7)")
    ap.add_argument("--temperature", type=float, default=1.0)
    args = ap.parse_args()
    model, vocab, _, _ = load_model(args.checkpoint)
    firsts = []
    for seed in range(args.seeds):
        opts = SamplingOptions(temperature=args.temperature, seed=seed)
        alone = samples(model, vocab, args.prefix, args.length, opts, num_samples=1)[0]
        batched = samples(model, vocab, args.prefix, args.length, opts, num_samples=args.batch)[0]
        first = next((i for i, (a, b) in enumerate(zip(alone, batched)) if a != b), None)
        firsts.append(first)
        print(f"seed {seed}: " + ("identical" if first is None else f"first difference at character {first:,}"),
              flush=True)
    drifted = sum(f is not None for f in firsts)
    print(f"{drifted} of {args.seeds} samples of {args.length:,} characters drifted from the batch-1 sample "
          f"(batch {args.batch}, temperature {args.temperature})")


if __name__ == "__main__":
    main()
