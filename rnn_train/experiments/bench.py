"""Speed benchmark: this pipeline against the textbook loop (../shared/bench/reference_loop.py),
same corpus, model size, optimiser and wall-time budget, run alternately in one session.

Why alternate and report ratios: shared machines are noisy and absolute tokens/s drift between
runs; A B A B ... with the median of per-round ratios cancels most of that drift.

    python -m rnn_train bench --config configs/shakespeare_gru.yaml \\
        --corpus ../shared/corpora/tinyshakespeare/input.txt --seconds 30 --rounds 3

The pipeline side runs `train.py` with the reference's settings (SGD, lr, clip, sequential
partitioning, one-hot input, val split) forced by overrides, so only the implementation differs;
its only limit is the time budget (`training.rules.budget_overrides`), as for the reference.
Prints one JSON line per run and a summary line with the median ratios (strict JSON: a diverged
run's perplexity is null).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from rnn_train.cli import ArgumentParser, Once
from rnn_train.config import FLOAT32_MAX, MAX_THREADS, load_config, parse_override
from rnn_train.data.corpus import file_chunks
from rnn_train.errors import UserError
from rnn_train.recipes import resolve_recipe
from rnn_train.files import strict_json
from rnn_train.training.rules import LIMIT_KEYS, budget_overrides
from rnn_train.training.rundir import RunDir

PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # the directory holding rnn_train/
DEFAULT_REFERENCE = PACKAGE_PARENT.parent / "shared" / "bench" / "reference_loop.py"  # beside a checkout


BENCH_SETS = frozenset({"log.dir", "log.name", "data.paths", "train.threads", "train.eval_every", *LIMIT_KEYS})
"""Keys run_pipeline sets for the comparison (and a run directory of its own, so that an override of
log.* cannot point its --force at a user's run); overriding them is refused."""


def _run(cmd: list[str], what: str, **kwargs) -> str:
    """Run a child; its failure becomes a one-line UserError with the child's last error line."""
    out = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if out.returncode != 0:
        lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
        last = lines[-1].removeprefix("error: ") if lines else "no message"  # a child's own one-line error
        raise UserError(f"the {what} failed (exit {out.returncode}): {last}")
    return out.stdout


def _last_json(stdout: str) -> dict:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no JSON line in output:\n{stdout[-2000:]}")


def run_reference(reference: Path, corpus: Path, cfg, seconds: float, threads: int) -> dict:
    d, m, t = cfg.data, cfg.model, cfg.train
    cmd = [sys.executable, str(reference), "--corpus", str(corpus), "--raw", "--cell", m.cell,
           "--hidden", str(m.hidden_size), "--layers", str(m.num_layers), "--batch-size", str(d.batch_size),
           "--num-steps", str(d.num_steps), "--lr", str(t.lr), "--theta", str(t.clip_norm), "--epochs", "1000",
           "--seconds", str(seconds), "--val-fraction", str(d.val_fraction), "--seed", str(t.seed)]
    if threads:
        cmd += ["--threads", str(threads)]
    if d.partition == "random":
        cmd.append("--random-iter")
    return _last_json(_run(cmd, "reference loop"))


def run_pipeline(config: Path, corpus: Path, overrides: list[str], seconds: float, threads: int, workdir: Path) -> dict:
    cmd = [sys.executable, "-m", "rnn_train", "train", "--config", str(config), "--quiet", "--force",
           "--cache-dir", str(workdir / "cache"), f"data.paths={corpus}", "data.kind=text", "data.letters_only=false",
           *budget_overrides(max_time=seconds), "train.eval_every=0", f"train.threads={threads}",
           f"log.dir={workdir}", "log.name=bench", "log.sample_length=0", *overrides]
    # the package this bench runs from, whether installed or a checkout, and from any directory
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_PARENT), os.environ.get("PYTHONPATH")]))}
    _run(cmd, "rnn-train run", env=env)
    metrics = RunDir(workdir / "bench").read_metrics()
    if metrics is None:
        raise UserError(f"the rnn-train run wrote no {workdir / 'bench' / 'metrics.json'}")
    return {"impl": "rnn-train", "tokens": metrics["tokens"], "train_seconds": metrics["train_seconds"],
            "tokens_per_s": round(metrics["tokens_per_s"], 1), "val_ppl": round(metrics["val_ppl"], 4),
            "steps": metrics["step"], "kernel": metrics.get("kernel", ""), "precision": metrics.get("precision", "")}


def main(argv: list[str] | None = None, prog: str = "python -m rnn_train bench") -> int:
    ap = ArgumentParser(prog=prog, description="rnn-train vs the textbook loop, as ratios")
    ap.add_argument("--config", action=Once, required=True, help="recipe giving the model size, batch and steps")
    ap.add_argument("--corpus", required=True, help="plain-text corpus both sides train on")
    ap.add_argument("--seconds", type=float, default=30.0, help="training time per run (default 30)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating reference/pipeline pairs (default 3)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for both sides (0 = default)")
    ap.add_argument("--reference", default=str(DEFAULT_REFERENCE),
                    help="path of the textbook loop's reference_loop.py (default: ../shared/bench/ beside the checkout)")
    ap.add_argument("--matched", action=argparse.BooleanOptionalAction, default=True,
                    help="force the reference's optimiser (SGD, its lr) on the pipeline (default on)")
    ap.add_argument("overrides", nargs="*", metavar="section.key=value", help="extra overrides for the pipeline side")
    args = ap.parse_intermixed_args(argv)
    if args.rounds < 1:
        ap.error(f"--rounds must be >= 1, got {args.rounds}")
    if not 0 < args.seconds <= FLOAT32_MAX:  # it becomes train.max_time, a float32-range key: checked before
        ap.error(f"--seconds must be a number in (0, 3.4e38], got {args.seconds}")  # the reference loop's run
    if not 0 <= args.threads <= MAX_THREADS:
        ap.error(f"--threads must be in [0, {MAX_THREADS}] (0 = torch's default), got {args.threads}")
    reference, corpus, config = Path(args.reference), Path(args.corpus), resolve_recipe(args.config)
    if args.reference == str(DEFAULT_REFERENCE) and not reference.exists():
        raise UserError(f"the textbook loop (shared/bench/reference_loop.py) is not beside this installation "
                        f"({reference} does not exist): give its path with --reference")
    for key in (parse_override(o)[0] for o in args.overrides):
        if key in BENCH_SETS:
            raise UserError(f"override {key}: bench sets it itself (both sides train for --seconds, on --corpus, "
                            f"with --threads, into a directory of its own)")
    for p, what in ((reference, "reference loop (--reference)"), (corpus, "corpus")):
        if not p.is_file():
            raise UserError(f"{what} {p} " + ("is not a file" if p.exists() else "does not exist"))
    cfg = load_config(config, args.overrides)
    for _ in file_chunks(corpus, cfg.data.encoding):  # its undecodable byte named here, not by a child's traceback
        pass
    if cfg.data.val_fraction == 0:
        raise UserError("data.val_fraction is 0: bench compares the two sides' validation perplexities")
    if cfg.model.embedding != "one_hot":
        raise UserError("the reference loop feeds one-hot vectors: use a recipe with model.embedding=one_hot")
    overrides = list(args.overrides)
    if args.matched:
        overrides = ["train.optimizer=sgd", "train.momentum=0", "train.weight_decay=0", "train.schedule=constant",
                     "train.warmup_steps=0", *overrides]
        if cfg.train.optimizer != "sgd":  # the recipe's lr was tuned for another optimiser: use the book's
            overrides = ["train.lr=1.0", *overrides]
        cfg = load_config(config, overrides)
    ratios, val_ratios = [], []
    with tempfile.TemporaryDirectory(prefix="rnn-bench-") as tmp:
        for r in range(args.rounds):
            ref = run_reference(reference, corpus, cfg, args.seconds, args.threads)
            ours = run_pipeline(config, corpus, overrides, args.seconds, args.threads, Path(tmp))
            ref["round"] = ours["round"] = r
            print(strict_json(ref), flush=True)
            print(strict_json(ours), flush=True)
            ratios.append(ours["tokens_per_s"] / ref["tokens_per_s"])
            val_ratios.append(ours["val_ppl"] / ref["val_ppl"])
    summary = {"config": args.config, "cell": cfg.model.cell, "hidden": cfg.model.hidden_size,
               "batch_size": cfg.data.batch_size, "num_steps": cfg.data.num_steps, "optimizer": cfg.train.optimizer,
               "lr": cfg.train.lr, "seconds": args.seconds, "rounds": args.rounds,
               "tokens_per_s_ratio_median": round(statistics.median(ratios), 3),
               "tokens_per_s_ratios": [round(x, 3) for x in ratios],
               "val_ppl_ratio_median": round(statistics.median(val_ratios), 3)}
    print(strict_json(summary))
    return 0

