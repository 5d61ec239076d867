"""`python -m rnn_train sweep`: the command line of the sweep runner."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rnn_train.cli import ArgumentParser
from rnn_train.files import output_arg, shell_word
from rnn_train.experiments.study.budget import DEFAULT_EVALS, parse_budget
from rnn_train.experiments.study.options import add_study_arguments, start_command
from rnn_train.experiments.sweep.plan import parse_grid, plan_sweep
from rnn_train.training.rundir import RunDir


EPILOG = """\
grid: --grid KEY=V1,V2,... [KEY=V1,V2,... ...]; the runs are the cross product (tables in the order given).
  Any config key works (section.key, as in train.py overrides) except list-valued ones.
budget: tokens:N (N training tokens per run, e.g. tokens:2M) or time:S (S seconds of training per run,
  e.g. time:90 or time:5m). It is the only limit: train.epochs, max_steps, max_tokens, max_time and
  patience are set by it. With a token budget each run validates --evals times.
engine: the sweep is an Optuna study with a grid sampler, stored in OUT/study.db (or --storage URL);
  --workers K runs K grid points at once; the same command on several machines shares the study.
resume: rerun the same command; finished runs are kept, an interrupted run resumes from last.pt.
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
    ap.add_argument("--grid", nargs="+", action="extend", required=True, metavar="KEY=V1,V2",
                    help="a config key and its values (repeatable)")
    ap.add_argument("--budget", required=True, help="tokens:N or time:SECONDS per run (e.g. tokens:2M, time:5m)")
    ap.add_argument("--out", required=True, type=output_arg, help="sweep directory (one run directory per grid point inside)")
    ap.add_argument("--evals", type=int, default=DEFAULT_EVALS,
                    help=f"validations per run with a token budget (default {DEFAULT_EVALS}; sets train.eval_every "
                         "per run unless you give train.eval_every; 0 keeps the recipe's)")
    ap.add_argument("--force", action="store_true", help="retrain runs whose directory holds another config")
    ap.add_argument("--dry-run", action="store_true", help="validate and list the runs and their state; train nothing")
    add_study_arguments(ap, "run", "grid")
    args = ap.parse_intermixed_args(argv)

    from rnn_train.experiments.study import session

    log = start_command(args)
    budget = parse_budget(args.budget)
    grid = parse_grid(args.grid)
    single = [f"{key}={values[0]}" for key, values in grid.items() if len(values) == 1]
    # beside a key of several values, usually overrides typed right after --grid's values, which it took
    # too (a grid of one point, every key of one value, is a sweep of one run on purpose)
    if single and len(single) < len(grid) and args.worker is None:
        print(f"note: --grid {' '.join(single)}: one value, so a grid key all the same, in every run's name and "
              f"the tables; a fixed override goes before --grid or after another option", file=sys.stderr)
    plan = plan_sweep(args.config, grid, budget, list(args.overrides), Path(args.out), args.evals)
    cache_dir = Path(args.cache_dir)
    session.check_marker(plan.out, "sweep")
    if args.dry_run:
        from rnn_train.experiments.study.trials import Datasets

        session.check_dry_run(plan.out, args.storage)
        Datasets(cache_dir).check([(f"run {r.name}", r.cfg.data) for r in plan.runs])
        for r in plan.runs:
            t = r.cfg.train
            print(f"{RunDir(r.run_dir).status(r.cfg):>8}  {r.name}  (eval_every {t.eval_every})")
        print(f"{len(plan.runs)} runs, {budget.describe()} each, into {plan.out}")
        return 0
    from rnn_train.experiments.sweep.run import run_sweep

    outcome = run_sweep(plan, cache_dir=cache_dir, force=args.force, verbose=args.verbose, log=log,
                        storage=args.storage, study=args.study, workers=args.workers, worker=args.worker,
                        child_argv=session.child_argv("sweep", argv))
    if args.worker is not None:
        return outcome.status
    log(f"{outcome.summary}; {len(outcome.rows)} of {len(plan.runs)} runs in the tables")
    if outcome.files:
        log("wrote " + ", ".join(str(f) for f in outcome.files))
    log(f"compare in TensorBoard: tensorboard --logdir {shell_word(plan.out)}  (HPARAMS tab)")
    return outcome.status
