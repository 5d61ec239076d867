"""`python -m rnn_train sweep`: the command line of the sweep runner."""
from __future__ import annotations

import argparse
from pathlib import Path

from rnn_train.cli import ArgumentParser
from rnn_train.experiments.sweep.plan import DEFAULT_EVALS, parse_budget, parse_grid, plan_sweep, prepare_corpora
from rnn_train.experiments.sweep.run import run_sweep
from rnn_train.training.rundir import RunDir


EPILOG = """\
grid: --grid KEY=V1,V2,... [KEY=V1,V2,... ...]; the runs are the cross product, in the order given.
  Any config key works (section.key, as in train.py overrides) except list-valued ones.
budget: tokens:N (N training tokens per run, e.g. tokens:2M) or time:S (S seconds of training per run,
  e.g. time:90 or time:5m). It is the only limit: train.epochs, max_steps, max_tokens, max_time and
  patience are set by it. With a token budget each run validates --evals times.
resume: rerun the same command; finished runs are skipped, an interrupted run resumes from last.pt.
results: OUT/results.{csv,json,md}, OUT/val_ppl.png, OUT/tokens_per_s.png, OUT/val_curves.png;
  tensorboard --logdir OUT compares the runs (HPARAMS tab).

example:
  python -m rnn_train sweep --config configs/pinyin_gru.yaml \\
      --grid data.num_steps=5,35,140 model.cell=rnn,gru --budget tokens:1M --out runs/sweep_demo \\
      model.hidden_size=128 train.threads=1
"""


def main(argv: list[str] | None = None, prog: str = "python -m rnn_train sweep") -> int:
    ap = ArgumentParser(prog=prog, epilog=EPILOG,
                        description="Train one run per grid point with the same budget; tabulate and plot the results.",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="YAML recipe every run starts from (see configs/)")
    ap.add_argument("--grid", nargs="+", action="extend", required=True, metavar="KEY=V1,V2",
                    help="a config key and its values (repeatable)")
    ap.add_argument("--budget", required=True, help="tokens:N or time:SECONDS per run (e.g. tokens:2M, time:5m)")
    ap.add_argument("--out", required=True, help="sweep directory (one run directory per grid point inside)")
    ap.add_argument("--evals", type=int, default=DEFAULT_EVALS,
                    help=f"validations per run with a token budget (default {DEFAULT_EVALS}; sets train.eval_every "
                         "per run unless you give train.eval_every; 0 keeps the recipe's)")
    ap.add_argument("--cache-dir", default="data/cache", help="where converted corpora are cached (default data/cache)")
    ap.add_argument("--force", action="store_true", help="retrain runs whose directory holds another config")
    ap.add_argument("--dry-run", action="store_true", help="validate and list the runs and their state; train nothing")
    ap.add_argument("--verbose", action="store_true", help="show each run's training log")
    ap.add_argument("overrides", nargs="*", metavar="section.key=value", help="fixed overrides for every run")
    args = ap.parse_intermixed_args(argv)

    budget = parse_budget(args.budget)
    grid = parse_grid(args.grid)
    plan = plan_sweep(args.config, grid, budget, list(args.overrides), Path(args.out), args.evals)
    cache_dir = Path(args.cache_dir)
    if args.dry_run:
        prepare_corpora(plan, cache_dir)
        for r in plan.runs:
            t = r.cfg.train
            print(f"{RunDir(r.run_dir).status(r.cfg):>8}  {r.name}  (eval_every {t.eval_every})")
        print(f"{len(plan.runs)} runs, {budget.describe()} each, into {plan.out}")
        return 0
    outcome = run_sweep(plan, cache_dir=cache_dir, force=args.force, verbose=args.verbose)
    print(f"{len(outcome.ran)} trained ({len(outcome.resumed)} resumed), {len(outcome.skipped)} skipped as finished, "
          f"{len(plan.runs) - len(outcome.rows)} to go")
    if outcome.files:
        print("wrote " + ", ".join(str(f) for f in outcome.files))
    print(f"compare in TensorBoard: tensorboard --logdir {plan.out}  (HPARAMS tab)")
    return 130 if outcome.interrupted else 0

