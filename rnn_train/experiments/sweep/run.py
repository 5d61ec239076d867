"""Running a planned sweep as an Optuna study with a grid sampler, then its tables and plots.

The study's engine (rnn_train.experiments.study) does the bookkeeping: which grid points are done,
running or left, resuming an interrupted run from its last.pt, several workers. What stays here is
what a sweep adds: refusing run directories that hold runs of another config (unless --force), and
the results in grid order.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from optuna.samplers import GridSampler
from optuna.trial import TrialState

from rnn_train.errors import UserError
from rnn_train.experiments.study import session
from rnn_train.experiments.study.engine import StudyHandle
from rnn_train.experiments.study.storage import absolute, dashboard_command, default_url, shown, study_name
from rnn_train.experiments.study.trials import Datasets, TrialRunner
from rnn_train.experiments.sweep.plan import SweepPlan
from rnn_train.experiments.sweep.plots import plot_results
from rnn_train.experiments.sweep.report import result_row, write_results
from rnn_train.files import atomic_write_json
from rnn_train.training.rundir import RunDir


class Grid(GridSampler):
    """Optuna's grid sampler, without its habit of stopping the study once the grid is drawn: that
    needs Study.optimize, and the worker loop stops by counting trials itself (study/engine.py)."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


@dataclass
class SweepOutcome:
    rows: list[dict[str, Any]]
    status: int  # 0 done (this process), 130 interrupted, a worker's exit status otherwise
    files: list[Path]
    study: str
    summary: str

    @property
    def interrupted(self) -> bool:
        return self.status == 130


def _refuse_mismatches(plan: SweepPlan) -> None:
    """Run directories holding runs of another config are an error (unless --force retrains them)."""
    clashes = [r for r in plan.runs if RunDir(r.run_dir).status(r.cfg) == "mismatch"]
    if clashes:
        shown_ = "; ".join(f"{r.name} ({RunDir(r.run_dir).config_diff(r.cfg)})" for r in clashes[:3])
        raise UserError(f"{len(clashes)} run director{'ies hold runs' if len(clashes) > 1 else 'y holds a run'} "
                        f"made with another config: {shown_}; use another --out, or --force to retrain "
                        f"{'them' if len(clashes) > 1 else 'it'}")


def sweep_rows(h: StudyHandle, plan: SweepPlan) -> list[dict[str, Any]]:
    """One results row per grid point with a finished trial, in grid order (from the study)."""
    done = {t.user_attrs.get("run_dir"): t for t in h.trials(TrialState.COMPLETE)}
    runs = [(r, done[r.name]) for r in plan.runs if r.name in done]
    return [result_row(plan, r, t.user_attrs["result"], float(t.user_attrs.get("wall_seconds", "nan")))
            for r, t in runs]


def run_sweep(plan: SweepPlan, *, cache_dir: Path | None = Path("data/cache"), force: bool = False,
              verbose: bool = False, log: Callable[[str], None] = print, storage: str | None = None,
              study: str | None = None, workers: int = 1, worker: int | None = None,
              child_argv: Callable[[int], list[str]] | None = None,
              on_step: Callable[[str, int], None] | None = None) -> SweepOutcome:
    """Run every grid point the study has not finished (in this process, or in `workers` children);
    write results and plots. `on_step(run_name, step)` is a hook (tests interrupt a sweep with it)."""
    import optuna

    if not force:
        _refuse_mismatches(plan)
    datasets = Datasets(cache_dir)
    datasets.check([(f"run {r.name}", r.cfg.data) for r in plan.runs])  # may raise: still nothing written
    url = absolute(storage) if storage else default_url(plan.out)
    name = study or study_name("sweep", plan.config_path, plan.identity())
    h = session.open_study(url, name, sampler=Grid(plan.search_space(), seed=0), pruner=optuna.pruners.NopPruner(),
                           create=plan.out, storage_in_out=storage is None, identity=plan.parts())
    n = len(plan.runs)
    if worker is None:
        atomic_write_json(plan.out / session.SWEEP_MARKER, {**plan.describe(), "study": name, "storage": shown(url),
                                                    "dashboard": dashboard_command(url)})
        log(f"sweep {plan.out}: {n} runs, {plan.budget.describe()} per run; study {name} in {shown(url)}")
    runner = TrialRunner(h, plan, datasets, cache_dir, verbose=verbose, log=log, on_step=on_step)
    status = session.run_trials(h, n, runner, workers=workers, is_worker=worker is not None,
                                child_argv=child_argv or (lambda i: []), log=log,
                                after_trial=lambda: write_results(plan, sweep_rows(h, plan), name))
    rows, files = [], []
    if worker is None:
        rows = sweep_rows(h, plan)
        files = (write_results(plan, rows, name) if rows else []) + plot_results(plan, rows)
    return SweepOutcome(rows, status, files, name, session.summary(h, n, reasons_in_results=False))
