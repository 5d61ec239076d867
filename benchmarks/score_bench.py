"""`rnn-train score`: the batched default against `--exact` (one stream), in speed and in result.

Speed (no checkpoint needed): a GRU-256 with torch's random initialisation, V = 65 + <unk> (a
step costs the same whatever the weights), scores the first --chars characters of a file both
ways, interleaved, --rounds times; medians of characters per second, with the CPU time beside
them (the machine is shared: read the ratio of the two, measured in the same run).

    python benchmarks/score_bench.py --speed ../shared/corpora/hongloumeng/hongloumeng.pinyin.txt

Difference (checkpoints): each model scores its file both ways; the table gives bits per
character of each and their difference, for the default segments and warm-up (score.SEGMENT,
score.WARM_UP) and for the other lengths asked for.

    python benchmarks/score_bench.py --pair runs/shakespeare ../shared/corpora/tinyshakespeare/input.txt \\
        --pair runs/timemachine ../shared/corpora/timemachine/timemachine.txt \\
        --segments 1024,4096 --warm-ups 64,256
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rnn_train.data.vocab import Vocab  # noqa: E402
from rnn_train.model.charrnn import CharRNN  # noqa: E402
from rnn_train.model.checkpoint import load_model  # noqa: E402
from rnn_train.prediction import kernel_stepper, score  # noqa: E402
from rnn_train.prediction.textstream import model_text  # noqa: E402


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--speed", metavar="FILE", help="time both ways on this file with a random GRU-256")
    ap.add_argument("--chars", type=int, default=2_000_000, help="characters scored per timing (default 2M)")
    ap.add_argument("--exact-chars", type=int, default=200_000,
                    help="characters per timing of --exact (one stream is slow; the rate is what is compared)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pair", nargs=2, action="append", default=[], metavar=("CHECKPOINT", "FILE"),
                    help="a model and a text to score both ways (repeatable)")
    ap.add_argument("--segments", default="", help="segment lengths besides the default, e.g. 1024,16384")
    ap.add_argument("--warm-ups", default="", help="warm-up lengths besides the default, e.g. 64,1024")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's, one per core)")
    return ap.parse_args()


def timed(f) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = f()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def speed(path: str, args) -> None:
    text = Path(path).read_text(encoding="utf-8")
    vocab = Vocab.build(text, max_size=66)
    torch.manual_seed(0)
    model = CharRNN(len(vocab), "gru", 256).eval()
    batched, exact = text[:args.chars], text[:args.exact_chars]
    ways = {"--exact (one stream)": lambda: score.score_pieces(model, vocab, [exact], exact=True),
            "batched (default)": lambda: score.score_pieces(model, vocab, [batched])}
    sizes = {"--exact (one stream)": len(exact), "batched (default)": len(batched)}
    rates: dict[str, list[float]] = {k: [] for k in ways}
    cpu: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(args.rounds):
        for name, f in ways.items():
            w, c, _ = timed(f)
            rates[name].append(sizes[name] / w)
            cpu[name].append(c / sizes[name] * 1e6)
    print(f"GRU-256, V={len(vocab)}, {path}; torch threads {torch.get_num_threads()}, C++ steps "
          f"{'built' if kernel_stepper.supports(model) else 'NOT available (batched on the torch module)'}; "
          f"segments of {score.SEGMENT}, warm-up {score.WARM_UP}, {score.ROWS} rows; "
          f"load average {os.getloadavg()[0]:.1f}; medians of {args.rounds} rounds")
    print(f"{'':24}{'chars':>12}{'chars/s':>12}{'CPU us/char':>13}")
    for name in ways:
        print(f"{name:24}{sizes[name]:>12,}{statistics.median(rates[name]):>12,.0f}{statistics.median(cpu[name]):>13.2f}")
    ratio = statistics.median(rates["batched (default)"]) / statistics.median(rates["--exact (one stream)"])
    print(f"batched / exact: {ratio:.2f}x")


def difference(args) -> None:
    settings = [(score.SEGMENT, score.WARM_UP)]
    settings += [(int(s), score.WARM_UP) for s in args.segments.split(",") if s]
    settings += [(score.SEGMENT, int(w)) for w in args.warm_ups.split(",") if w]
    print(f"{'model':34}{'chars':>11}{'exact bpc':>11}" + "".join(f"{f'L={s} W={w}':>22}" for s, w in settings))
    for checkpoint, path in args.pair:
        model, vocab, cfg, _ = load_model(checkpoint)
        pieces = list(model_text(path, cfg.data))
        exact = score.score_pieces(model, vocab, pieces, exact=True)
        name = Path(checkpoint).parent.name if Path(checkpoint).suffix == ".pt" else Path(checkpoint).name
        line = f"{name[:33]:34}{exact.chars:>11,}{exact.loss / math.log(2):>11.5f}"
        for s, w in settings:
            got = score.score_pieces(model, vocab, pieces, segment=s, warm_up=w)
            line += f"{(got.loss - exact.loss) / math.log(2):>+22.2e}"
        print(line + "   (difference in bits/char)", flush=True)


def main() -> None:
    args = parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.speed:
        speed(args.speed, args)
    if args.pair:
        difference(args)


if __name__ == "__main__":
    main()
