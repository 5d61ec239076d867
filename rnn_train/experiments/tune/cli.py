"""`rnn-train tune`: search a recipe's hyperparameters with Optuna (see docs/tune.md)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from rnn_train.cli import ArgumentParser, seed_arg
from rnn_train.errors import UserError
from rnn_train.files import output_arg
from rnn_train.experiments.study.options import add_study_arguments, start_command
from rnn_train.recipes import space_names

EPILOG = """\
space: --space FILE maps config keys to values: a list (one of them), {int: [low, high]} or
  {float: [low, high]}, with optional log: true and step: N. Without it, a default space around the
  recipe (--dry-run prints it). Checked, like overrides, before any trial runs.
budget: --trial-budget tokens:N (each trial reads N training tokens, e.g. tokens:2M) or time:S
  (S seconds of training, e.g. time:90); each trial validates --evals times over it, and the pruner
  may stop a trial at a validation that is worse than the median of the trials before it.
storage: a SQLite file OUT/study.db by default; --storage URL takes any database Optuna accepts,
  e.g. postgresql://user:password@host/db: the same command on several machines (each with its own
  --out) shares one study. Watch it with: optuna-dashboard URL
resume: rerun the same command; finished trials are kept, an interrupted trial resumes from its last.pt.
results: OUT/results.csv, OUT/best.yaml (train it with the train command's --config), OUT/history.png,
  OUT/importances.png, OUT/curves.png; one run directory per trial (OUT/trial-0007/).

example:
  rnn-train tune --config configs/shakespeare_best.yaml --trials 24 --trial-budget tokens:2M \\
      --out runs/tune_shakespeare train.threads=2
"""


def main(argv: list[str] | None = None, prog: str = "python -m rnn_train tune") -> int:
    ap = ArgumentParser(prog=prog, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Search hyperparameters of a recipe: trials are ordinary runs, pruned early "
                                    "when poor; the study is resumable and can be shared by many workers.")
    ap.add_argument("--space", help="search space file (YAML), or a packaged one by name "
                                    f"({', '.join(space_names())}); default: a space around the recipe")
    ap.add_argument("--trials", type=int, required=True, help="finished trials (complete or pruned) the study needs")
    ap.add_argument("--trial-budget", required=True, help="tokens:N or time:SECONDS per trial (e.g. tokens:2M)")
    ap.add_argument("--out", required=True, type=output_arg, help="directory for the trials' run directories and the results")
    ap.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median",
                    help="stop poor trials early (default median)")
    ap.add_argument("--evals", type=int, default=8, help="validations per trial, evenly over its budget (default 8)")
    ap.add_argument("--seed", type=seed_arg, help="seed of the sampler (give each process its own; default: random)")
    ap.add_argument("--dry-run", action="store_true", help="check everything, print the study and its space; run nothing")
    add_study_arguments(ap, "trial", "space")
    args = ap.parse_intermixed_args(argv)

    from rnn_train.experiments.study import session
    from rnn_train.experiments.study.budget import parse_budget
    from rnn_train.experiments.study.storage import absolute, dashboard_command, default_url, shown, study_name
    from rnn_train.experiments.tune.plan import plan_tune
    from rnn_train.experiments.tune.space import to_yaml

    log = start_command(args)
    if args.trials < 1:
        raise UserError(f"--trials must be >= 1, got {args.trials}")
    budget = parse_budget(args.trial_budget, "--trial-budget")
    out = Path(args.out)
    plan = plan_tune(args.config, list(args.overrides), args.space, budget, args.evals, out)
    name = args.study or study_name("tune", args.config, plan.identity())
    url = absolute(args.storage) if args.storage else default_url(out)
    session.check_marker(out, "tune", name)
    if args.dry_run:
        session.check_dry_run(out, args.storage)
        print(f"study {name} in {shown(url)}: {args.trials} trial{'s' if args.trials != 1 else ''}, "
              f"{budget.describe()} each, "
              f"{args.evals} validations, pruner {args.pruner}\n# search space ({plan.space_source})")
        print(to_yaml(plan.space), end="")
        return 0

    from rnn_train.experiments.study.trials import Datasets, TrialRunner

    datasets = Datasets(Path(args.cache_dir))
    datasets.check([(f"with {label}", cfg.data) for label, cfg in plan.corner_configs()])
    # a given --storage is opened before anything is written; the default one lives in --out
    h = session.open_study(url, name, sampler=None, pruner=_pruner(args.pruner, args.evals), create=out,
                           storage_in_out=args.storage is None, identity=plan.parts())
    h.study.sampler = _sampler(args, len(h.trials()))
    if args.worker is None and not h.trials():
        start = plan.recipe_values()
        if start is not None:  # trial 0: the recipe as it is, the point to beat
            h.study.enqueue_trial(start, user_attrs={"note": "the recipe's own values"}, skip_if_exists=True)
    if args.worker is None:
        session.write_marker(out, name, url, {"kind": "tune", "recipe": args.config, "overrides": list(args.overrides),
                                              "space": plan.space_source, "budget": budget.spec(),
                                              "evals": args.evals, "pruner": args.pruner, "trials": args.trials})
        log(f"study {name}: {args.trials} trial{'s' if args.trials != 1 else ''} of {budget.describe()}, "
            f"pruner {args.pruner}, in {shown(url)}")
    started = time.perf_counter()
    runner = TrialRunner(h, plan, datasets, Path(args.cache_dir), verbose=args.verbose, log=log)
    keys = list(plan.space)
    status = session.run_trials(h, args.trials, runner, workers=args.workers, is_worker=args.worker is not None,
                                child_argv=session.child_argv("tune", argv), log=log,
                                after_trial=lambda: _tables(h, out, name, keys))
    if args.worker is not None:
        return status
    files = _report(h, out, name, keys, args.evals, log)
    log(f"{session.summary(h, args.trials)}; {time.perf_counter() - started:.1f} s in this invocation")
    if files:
        log("wrote " + ", ".join(str(f) for f in files))
    log(f"watch the study: {dashboard_command(url)}")
    return status


def _sampler(args, n_before: int):
    """TPE, with the 'constant liar' so parallel workers do not all try the same point. A --seed is
    offset by the worker and by the trials the study had already, so that a resumed study or a second
    worker does not draw the first one's random points again."""
    import optuna

    seed = None if args.seed is None else args.seed + 7919 * (args.worker or 0) + 104729 * n_before
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True,
                                      n_startup_trials=min(10, max(3, args.trials // 3)))


def _pruner(kind: str, evals: int):
    """Steps are 1/evals slices of the budget; no pruning before the first quarter of it."""
    import optuna

    warmup = max(1, evals // 4)
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=warmup)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=warmup, max_resource=evals, reduction_factor=3)
    return optuna.pruners.NopPruner()


def _tables(h, out: Path, name: str, keys: list[str]) -> list[Path]:
    """results.csv and best.yaml as the study stands (after each trial, and at the end)."""
    from rnn_train.experiments.study.engine import FINISHED
    from rnn_train.experiments.tune import report

    trials = h.trials()
    files = [report.write_results(out, trials, keys)]
    best = report.best_trial(trials)
    if best is not None:
        files.append(report.write_best(out, best, name, sum(t.state in FINISHED for t in trials)))
    return files


def _report(h, out: Path, name: str, keys: list[str], evals: int, log) -> list[Path]:
    from rnn_train.experiments.study.trials import describe_params
    from rnn_train.experiments.tune import report

    files = _tables(h, out, name, keys)
    best = report.best_trial(h.trials())
    if best is not None:
        log(f"best: trial {best.number}, val loss {best.value:.4f} ({describe_params(best.params)})")
    return files + report.write_plots(out, h.study, evals, log)
