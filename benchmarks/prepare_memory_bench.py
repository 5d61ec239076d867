"""Peak memory and start-up of 1-step training runs: a large prepared corpus against a tiny one.

    python benchmarks/prepare_memory_bench.py                      # 96 MB (made in /tmp) vs Tiny Shakespeare
    python benchmarks/prepare_memory_bench.py --big /tmp/big2g.txt --megabytes 2200 --repeats 1
    python benchmarks/prepare_memory_bench.py data.partition=random     # (the recipe's is sequential)

For each corpus, in fresh processes:
    first run    `train.py` 1 step on an empty cache: prepares the corpus, then trains (peak RSS, wall)
    second run   the same again: the corpus is already prepared (peak RSS, wall)
    start-up     a process that imports the data pipeline, opens the prepared corpus (prepare_data) and
                 cuts the first batch: its wall time, measured alternately for both corpora
Peak RSS is the child's ru_maxrss. Mapped pages of the token file count in it (the batches read
through the memory map); they are the kernel's page cache, shared and reclaimable, not copies.
The runs use data.val_fraction=0, so both do the same work except for the corpus.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.prepare_bench import SHAKESPEARE, make_corpus  # noqa: E402

RECIPE = "configs/shakespeare_gru.yaml"


def measured(cmd: list[str]) -> tuple[float, float, str]:
    """Run `cmd` in a wrapper process, so that its RUSAGE_CHILDREN is this run's alone: (peak MB, s, stdout)."""
    wrapper = ("import json, resource, subprocess, sys, time; t = time.perf_counter(); "
               "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "print(json.dumps([resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, "
               "time.perf_counter() - t, r.returncode, r.stdout, r.stderr]))")
    out = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, cwd=ROOT, check=True)
    peak, seconds, rc, stdout, stderr = json.loads(out.stdout)
    if rc != 0:
        raise SystemExit(f"failed ({rc}): {' '.join(cmd)}\n{stderr}")
    return peak, seconds, stdout


def train_cmd(corpus: Path, cache: Path, runs: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "train.py", "--config", RECIPE, f"data.paths={corpus}", "data.kind=text",
            "train.max_steps=1", "train.eval_every=0", "data.val_fraction=0", "train.threads=1",
            f"log.dir={runs}", "log.name=bench", "log.tensorboard=false", "--force", "--quiet", "--cache-dir", str(cache),
            *extra]


STARTUP = """
import json, resource, sys, time
start = time.perf_counter()
from rnn_train.config import load_config
from rnn_train.data.batching import batches, epoch_rng
from rnn_train.data.dataset import prepare_data
cfg = load_config(sys.argv[1], [f"data.paths={sys.argv[2]}", "data.kind=text", "data.val_fraction=0", *sys.argv[4:]])
data = prepare_data(cfg.data, sys.argv[3])
x, y = next(batches(cfg.data.partition, data.train, cfg.data.batch_size, cfg.data.num_steps, epoch_rng(0, 0)))
print(json.dumps([time.perf_counter() - start, data.text_chars]))
"""


def startup_seconds(corpus: Path, cache: Path, extra: list[str]) -> float:
    out = subprocess.run([sys.executable, "-c", STARTUP, RECIPE, str(corpus), str(cache), *extra], capture_output=True,
                         text=True, cwd=ROOT, check=True)
    return json.loads(out.stdout)[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--big", type=Path, default=Path(tempfile.gettempdir()) / "big96.txt",
                    help="the large corpus (made from Tiny Shakespeare copies if missing)")
    ap.add_argument("--megabytes", type=float, default=95.9, help="size of the large corpus made when missing")
    ap.add_argument("--tiny", type=Path, default=SHAKESPEARE)
    ap.add_argument("--repeats", type=int, default=5, help="start-up measurements per corpus")
    ap.add_argument("overrides", nargs="*", metavar="section.key=value",
                    help=f"more overrides of {RECIPE} for every run, e.g. data.partition=random")
    args = ap.parse_args()
    big = make_corpus(args.big, args.megabytes)
    work = Path(tempfile.mkdtemp(prefix="prepare-memory-bench-"))
    caches = {"tiny": work / "cache-tiny", "big": work / "cache-big"}
    corpora = {"tiny": args.tiny, "big": big}
    try:
        rows = {}
        for name, corpus in corpora.items():
            first = measured(train_cmd(corpus, caches[name], work / "runs", args.overrides))
            second = measured(train_cmd(corpus, caches[name], work / "runs", args.overrides))
            rows[name] = (corpus, first, second)
        startups: dict[str, list[float]] = {"tiny": [], "big": []}
        for _ in range(args.repeats):
            for name, corpus in corpora.items():
                startups[name].append(startup_seconds(corpus, caches[name], args.overrides))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'corpus':<48} {'MB':>8} {'1st run peak':>13} {'1st wall':>9} {'2nd run peak':>13} {'2nd wall':>9} "
          f"{'start-up':>9}")
    for name, (corpus, first, second) in rows.items():
        print(f"{str(corpus):<48} {corpus.stat().st_size / 1e6:>8,.1f} {first[0]:>10,.0f} MB {first[1]:>8.1f}s "
              f"{second[0]:>10,.0f} MB {second[1]:>8.1f}s {statistics.median(startups[name]):>8.3f}s")
    peak = rows["big"][1][0] - rows["tiny"][1][0], rows["big"][2][0] - rows["tiny"][2][0]
    delay = statistics.median(startups["big"]) - statistics.median(startups["tiny"])
    print(f"big - tiny: peak {peak[0]:+,.0f} MB (first run, preparing), {peak[1]:+,.0f} MB (prepared); "
          f"start-up {delay:+.3f} s (median of {args.repeats})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
