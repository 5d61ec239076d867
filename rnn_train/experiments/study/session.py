"""What `tune` and `sweep` do alike once their trials are planned: open the study, run its trials in
this process or in K workers, and say where it stands."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from rnn_train.errors import UserError
from rnn_train.experiments.study.engine import (BAD_CONFIG, FAILURE, FINISHED, StudyHandle, WorkResult, census,
                                               queue_again, requeue_orphans, work)
from rnn_train.experiments.study.storage import check_url, dashboard_command, made_from, open_storage, shown
from rnn_train.experiments.study.workers import spawn
from rnn_train.files import atomic_write_json
from rnn_train.runfiles import BEST, CONFIG, LAST

MARKER = "study.json"
"""The file in --out that names the study whose trials its run directories hold."""
SWEEP_MARKER = "sweep.json"
"""A sweep's marker (what was asked, and the study), written by sweep/run.py."""


def check_marker(out: Path, kind: str, name: str = "") -> None:
    """One --out holds the run directories of one tune study, or of a sweep's grids: refuse the
    other command (both write results.csv and study.db there) and, for tune, another study. A sweep
    takes another grid in its --out (a wider grid is another study that finds the old runs).
    Nothing is written."""
    _not_inside_a_run_or_study(out, kind)
    other, other_kind = (SWEEP_MARKER, "sweep") if kind == "tune" else (MARKER, "tune")
    if (out / other).exists():
        raise UserError(f"{out} holds the runs and results of a {other_kind} ({out / other}); "
                        f"use another --out for this {kind}")
    if kind != "tune":
        return
    try:
        held = json.loads((out / MARKER).read_text(encoding="utf-8")).get("study")
    except (OSError, ValueError, AttributeError):
        return
    if held and held != name:
        raise UserError(f"{out} holds the trials of the study {held}; this command's study is {name} (another "
                        f"--study, or its recipe, overrides, search space or budget differ): use another --out, or go "
                        f"on with that study by the command that made it ({out / MARKER} records it; where only "
                        f"data.paths differs, add --study {held})")


def _not_inside_a_run_or_study(out: Path, kind: str) -> None:
    """A new --out is no training run's directory, and lies in none, nor in another tune's or
    sweep's --out: its runs and results would mix into theirs (their TensorBoard view, a trial's
    directory holding a whole sweep). One that already holds this command's work goes on (whatever
    was put around it since)."""
    here = Path(os.path.realpath(out))
    if (here / (MARKER if kind == "tune" else SWEEP_MARKER)).exists():
        return
    if _holds_run(here):
        raise UserError(f"{out} holds a training run; use another --out for this {kind}")
    for above in here.parents:
        what = ("a tune's study" if _ours(above / MARKER) else "a sweep" if _ours(above / SWEEP_MARKER)
                else "a training run" if _holds_run(above) else "")
        if what:
            raise UserError(f"{out} lies inside {above}, which holds {what}: its runs and results would mix with "
                            f"this {kind}'s; use an --out outside it")


def _holds_run(directory: Path) -> bool:
    """A training run's directory: its config.yaml and a checkpoint (not any file named last.pt)."""
    return (directory / CONFIG).is_file() and ((directory / BEST).is_file() or (directory / LAST).is_file())


def _ours(marker: Path) -> bool:
    """`marker` is a study.json / sweep.json that tune or sweep wrote (a JSON object naming its study)."""
    try:
        written = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(written, dict) and "study" in written


def write_marker(out: Path, name: str, url: str, what: dict[str, Any]) -> None:
    atomic_write_json(out / MARKER, {"study": name, "storage": shown(url), "dashboard": dashboard_command(url), **what})


def make_out(out: Path) -> None:
    check_out(out)  # a file in the way is named as such (mkdir would say "File exists")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot use {out} as the output directory ({e.strerror or e})") from None


def check_out(out: Path) -> None:
    """What make_out would refuse, found without creating anything (--dry-run): a file where the
    directory goes, or a directory that cannot be made or written."""
    if out.exists() and not out.is_dir():
        raise UserError(f"cannot use {out} as the output directory (Not a directory)")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"cannot use {out} as the output directory ({parent} is not a directory)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot use {out} as the output directory ({parent} is not writable)")


def check_dry_run(out: Path, storage: str | None) -> None:
    """--dry-run's share of what open_study would refuse, found without writing or connecting:
    the output directory, and a --storage URL that does not parse."""
    check_out(out)
    if storage:
        check_url(storage)


MADE_FROM = "made_from"
"""The study's user attribute holding `storage.made_from` of the command that created it."""

PARTS = {"base": "recipe and overrides", "space": "search space", "budget": "trial budget", "evals": "--evals",
         "runs": "set of runs (their grid, budget or overrides)"}
"""The parts of a plan's identity (tune.plan, sweep.plan), in words."""


def open_study(url: str, name: str, *, sampler, pruner, create: Path, storage_in_out: bool,
               identity: dict[str, Any]) -> StudyHandle:
    """Create the study in the storage, or load it if it is there (the same command run again, or by
    another worker or machine); make the output directory `create`, after opening a storage of
    its own (so a bad --storage URL leaves nothing behind), before one that lives in it.

    A study keeps what its trials were planned from (`identity`: the plan's `parts()`, digested
    part by part); one named with --study that this command would plan differently is refused
    before anything is written: its trials were trained on another budget or drawn from another
    space, so going on with them would mix two searches (and Optuna fails mid-trial on a parameter
    of another kind). data.paths is left out: machines joining one study may keep the corpus
    under other paths."""
    if storage_in_out:
        make_out(create)
    storage = open_storage(url, retry=queue_again)
    mine = made_from(identity)
    new = _check_made_from(storage, url, name, mine)
    if not storage_in_out:
        make_out(create)
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction="minimize", sampler=sampler,
                                    pruner=pruner, load_if_exists=True)
        if new and MADE_FROM not in study.user_attrs:  # a study from before this was kept is left unstamped:
            study.set_user_attr(MADE_FROM, mine)  # the first command to open it need not be the one that made it
    except Exception as e:  # noqa: BLE001 - a database that refuses us is the user's to fix
        import sqlalchemy

        if not isinstance(e, sqlalchemy.exc.SQLAlchemyError):
            raise
        raise UserError(f"the study storage {shown(url)} refused the study: {str(e).splitlines()[0]}") from None
    return StudyHandle.of(study, storage)


def _check_made_from(storage, url: str, name: str, mine: dict[str, str]) -> bool:
    """Refuse a study planned otherwise (see open_study); True where there is no such study yet."""
    try:
        held = storage.get_study_user_attrs(storage.get_study_id_from_name(name)).get(MADE_FROM)
    except KeyError:  # no such study yet
        return True
    if not isinstance(held, dict):  # made before studies kept their plan: nothing to compare
        return False
    order = [*PARTS, *sorted((set(held) | set(mine)) - set(PARTS))]
    differ = [PARTS.get(part, part) for part in order if held.get(part) != mine.get(part)]
    if differ:
        raise UserError(f"the study {name} in {shown(url)} was planned with another {', '.join(differ)} than this "
                        f"command's: its trials are not this command's to go on with; run the command that made "
                        f"it, or leave out --study (this command then has a study of its own)")
    return False


def run_trials(h: StudyHandle, n_trials: int, runner: Callable, *, workers: int, is_worker: bool,
               child_argv: Callable[[int], list[str]], log: Callable[[str], None],
               after_trial: Callable[[], None] | None = None) -> int:
    """Run the study's trials here (one worker) or in `workers` child processes; the exit status:
    0 when this process is done, 130 interrupted, a worker's status if one failed."""
    if not is_worker and census(h).finished < n_trials:  # a study that has its trials needs none again
        requeue_orphans(h, log)
    if workers > 1 and not is_worker:
        return spawn(child_argv, workers, log)
    result: WorkResult = work(h, n_trials, runner, log=log, after_trial=after_trial)
    return 130 if result.interrupted else 0


def summary(h: StudyHandle, n_trials: int, reasons_in_results: bool = True) -> str:
    """'12 of 12 trials finished (3 pruned); 1 failed (continued by another)' and the like.
    `reasons_in_results`: results.csv lists the failed trials and why (tune's does; a sweep's has a
    row per finished run only)."""
    trials = h.trials()
    by = {s: sum(t.state == s for t in trials) for s in TrialState}
    finished = sum(by[s] for s in FINISHED)
    text = (f"{finished} of {n_trials} trials finished" if finished <= n_trials else
            f"{finished} trials finished ({n_trials} asked for; the study had more from an earlier command)")
    if by[TrialState.PRUNED]:
        text += f" ({by[TrialState.PRUNED]} pruned)"
    extra = [f"{by[s]} {s.name.lower()}" for s in (TrialState.RUNNING, TrialState.WAITING) if by[s]]
    untrainable = sum(t.state == TrialState.FAIL and t.user_attrs.get(FAILURE, "").startswith(BAD_CONFIG)
                      for t in trials)
    if not reasons_in_results:  # a sweep's: only the failed runs no finished trial has continued since
        done = {n for t in trials if t.state in FINISHED for n in t.system_attrs.get("retry_history", [])}
        by[TrialState.FAIL] -= sum(t.state == TrialState.FAIL and t.number in done for t in trials)
    if by[TrialState.FAIL] > untrainable:
        extra.append(f"{by[TrialState.FAIL] - untrainable} failed (" + ("results.csv says why, and which trial "
                     "continues each)" if reasons_in_results else "runs interrupted or stopped; the same command "
                     "again continues them)"))
    if untrainable:
        extra.append(f"{untrainable} drew parameters that cannot train (results.csv says why; others were drawn)")
    return text + (f"; {', '.join(extra)}" if extra else "")


def worker_log(index: int | None) -> Callable[[str], None]:
    """print, with `[worker I]` in front of each line in a worker process."""
    if index is None:
        return lambda m: print(m, flush=True)
    return lambda m: print(f"[worker {index}] {m}", flush=True)


def child_argv(command: str, argv: list[str] | None) -> Callable[[int], list[str]]:
    """A worker's command line: the parent's own arguments (the worker adds --worker I)."""
    args = list(sys.argv[2:] if argv is None else argv)
    return lambda i: [command, *args]
