"""The command-line options `tune` and `sweep` share, and what each does first with them.

Light on purpose: the commands add these before parsing, so that --help and a typo answer without
importing Optuna."""
from __future__ import annotations

import argparse
from typing import Callable

from rnn_train.cli import Once
from rnn_train.errors import UserError
from rnn_train.files import output_arg


def add_study_arguments(ap: argparse.ArgumentParser, unit: str, made_from: str) -> None:
    """The shared options, worded for the command's `unit` ("trial", "run") and what its study's
    default name is `made_from` besides the recipe, the overrides and the budget ("space", "grid")."""
    ap.add_argument("--config", action=Once,
                    help=f"the recipe every {unit} starts from: a name (`recipes` lists them) or a YAML file")
    ap.add_argument("--workers", type=int, default=1, help=f"processes training {unit}s at once on this machine")
    ap.add_argument("--storage", type=_url_arg, help="Optuna storage URL (default: sqlite:///OUT/study.db)")
    ap.add_argument("--study", type=_name_arg, help=f"the study's name (default: made from the recipe, overrides, {made_from} and budget)")
    ap.add_argument("--cache-dir", default="data/cache", type=output_arg,
                    help="the corpus cache: pinyin conversions and prepared token files (default data/cache)")
    ap.add_argument("--verbose", action="store_true", help=f"show each {unit}'s training log")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # a child of --workers K: its index
    ap.add_argument("--worker-of", type=int, help=argparse.SUPPRESS)  # ... and its parent's pid
    ap.add_argument("overrides", nargs="*", metavar="section.key=value", help=f"fixed overrides for every {unit}")


def _name_arg(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty name; leave --study out for the name made from the command")
    return text


def _url_arg(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty URL; leave --storage out for sqlite:///OUT/study.db")
    return text


def start_command(args: argparse.Namespace) -> Callable[[str], None]:
    """Become a worker where this process is one (--worker I), check --workers; returns the print
    to log with (`[worker I]` in front of each line in a worker)."""
    from rnn_train.experiments.study import session

    if args.worker is not None:
        from rnn_train.experiments.study.workers import become_worker

        become_worker(args.worker_of)
    if args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    from rnn_train.runtime import available_cores  # here, after parsing: it imports torch

    cores = available_cores()
    if args.workers > cores:  # each worker trains with at least one thread: more only wait for a core
        raise UserError(f"--workers {args.workers} is more than the {cores} CPU cores this process may use")
    return session.worker_log(args.worker)
