"""How big the explorer's page is and how long it takes to open, in headless Chromium.

    python benchmarks/explore_bench.py                       # a GRU-256 on the built-in pinyin corpus
    python benchmarks/explore_bench.py --checkpoint runs/x   # any run
    python benchmarks/explore_bench.py --cell lstm --layers 2 --rounds 5

The target (issue 18): a GRU-256 page with 20,000 analysed characters stays under 5 MB and opens,
all views ready, in under 3 s. Without --checkpoint a GRU of the recipe's shape is trained for a
few steps (the page's size and speed do not depend on how well it is trained), then
`rnn-train explore` writes the page for 20,000 characters of its validation text, and Chromium
opens it `--rounds` times in fresh pages. "open" is from navigation start to the moment every
view is drawn (the page's performance.now() when it sets body[data-ready]); "analysis" is the part
of it spent tracing the text (the page's rnnExplore.timings has every part). Prints one JSON line
per round and the medians, with the CPU's name.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def make_checkpoint(tmp: Path, cell: str, layers: int, hidden: int) -> Path:
    from rnn_train.config import build_config
    from rnn_train.training.trainer import train

    raw = {"data": {"kind": "pinyin", "val_fraction": 0.1, "batch_size": 8, "num_steps": 35},
           "model": {"cell": cell, "hidden_size": hidden, "num_layers": layers},
           "train": {"optimizer": "adam", "lr": 0.003, "max_steps": 20, "eval_every": 20, "threads": 2},
           "log": {"dir": str(tmp), "name": "bench", "log_every": 10, "sample_length": 0, "tensorboard": False}}
    train(build_config(raw, []), tmp / "bench", quiet=True, cache_dir=tmp / "cache")
    return tmp / "bench"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", help="a run or .pt file (default: train a small-step GRU of the recipe's shape)")
    ap.add_argument("--cell", default="gru")
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--chars", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--keep", help="copy the page here")
    args = ap.parse_args()

    from tests.browser import chromium, open_page

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ckpt = Path(args.checkpoint) if args.checkpoint else make_checkpoint(tmp, args.cell, args.layers, args.hidden)
        page = tmp / "page.html"
        t = time.perf_counter()
        job = subprocess.run([sys.executable, "-m", "rnn_train", "explore", "--checkpoint", str(ckpt), "--out", str(page),
                              "--max-chars", str(args.chars), "--cache-dir", str(tmp / "cache")],
                             cwd=ROOT, capture_output=True, text=True)
        write_s = time.perf_counter() - t
        if job.returncode:
            print(job.stderr, file=sys.stderr)
            return 1
        size = page.stat().st_size
        rounds = []
        with chromium() as browser:
            for _ in range(args.rounds):
                o = open_page(browser, page.as_uri())
                o.page.wait_for_selector("body[data-ready='1']", state="attached", timeout=300_000)
                r = o.page.evaluate("({open: rnnExplore.openSeconds, chars: rnnExplore.analysed().chars, "
                                    "parts: rnnExplore.timings})")
                r["errors"] = o.errors
                rounds.append(r)
                print(json.dumps(r))
                o.page.close()
        if args.keep:
            Path(args.keep).write_bytes(page.read_bytes())
    print(json.dumps({"cpu": cpu_name(), "page_mb": round(size / 1e6, 3), "chars": rounds[0]["chars"],
                      "open_s_median": round(statistics.median(r["open"] for r in rounds), 3),
                      "analysis_s_median": round(statistics.median(r["parts"]["analyse"] for r in rounds), 3),
                      "explore_command_s": round(write_s, 1), "stdout": job.stdout.strip()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
