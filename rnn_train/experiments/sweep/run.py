"""Running a planned sweep: each unfinished run in grid order, resuming interrupted ones, then results.

What each run directory holds and how it compares with the planned config is `training.rundir`'s
business (`RunDir.status`: done | resume | new | mismatch); the sweep adds one file of its own,
`sweep_run.json`, with the run's grid values and wall time.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rnn_train.errors import UserError
from rnn_train.experiments.sweep.plan import PlannedRun, SweepPlan, _hashable, corpus_key, prepare_corpora
from rnn_train.experiments.sweep.plots import plot_results
from rnn_train.experiments.sweep.report import result_row, write_results
from rnn_train.files import atomic_write_json
from rnn_train.training.rundir import RunDir, comparable

SWEEP_RUN_FILE = "sweep_run.json"  # what the sweep adds to a run directory (the run's wall time)


@dataclass
class SweepOutcome:
    rows: list[dict[str, Any]]
    ran: list[str]
    skipped: list[str]
    resumed: list[str]
    interrupted: bool
    files: list[Path]


def _refuse_mismatches(plan: SweepPlan, statuses: dict[str, str]) -> None:
    """Run directories holding runs of another config are an error (unless --force retrains them)."""
    clashes = [r for r in plan.runs if statuses[r.name] == "mismatch"]
    if clashes:
        shown = "; ".join(f"{r.name} ({RunDir(r.run_dir).config_diff(r.cfg)})" for r in clashes[:3])
        raise UserError(f"{len(clashes)} run director{'ies hold runs' if len(clashes) > 1 else 'y holds a run'} "
                        f"made with another config: {shown}; use another --out, or --force to retrain "
                        f"{'them' if len(clashes) > 1 else 'it'}")


def _resumable(r: PlannedRun, vocab: list[str], log: Callable[[str], None], tag: str) -> dict[str, Any] | None:
    """The run's last.pt if it continues exactly this planned run (same config and vocab), else None."""
    from rnn_train.model.checkpoint import load_checkpoint

    try:
        ckpt = load_checkpoint(RunDir(r.run_dir).last)
    except UserError as e:
        log(f"{tag}: last.pt unreadable ({e}); starting afresh")
        return None
    if ckpt["vocab"] != vocab or comparable(ckpt["config"]) != comparable(r.cfg.to_dict()):
        log(f"{tag}: last.pt belongs to another config or vocab; starting afresh")
        return None
    return ckpt


def _train_one(r: PlannedRun, status: str, data, tag: str, *, cache_dir: Path | None,
               verbose: bool, log: Callable[[str], None], on_step) -> tuple[Any, float, bool]:
    """Train (or resume) one planned run; (TrainResult, wall seconds over all its sessions, resumed?)."""
    from rnn_train.training.trainer import train

    rd = RunDir(r.run_dir)
    resume = _resumable(r, data.vocab.to_list(), log, tag) if status == "resume" else None
    side = rd.read_json(SWEEP_RUN_FILE) or {}
    if resume is None:
        rd.clear(extra=(SWEEP_RUN_FILE,))
        side = {}
        log(f"{tag}: training")
    else:
        log(f"{tag}: resuming from last.pt at step {resume['step']}")
    step_hook = (lambda step, name=r.name: on_step(name, step)) if on_step else None
    t0 = time.perf_counter()
    result = train(r.cfg, r.run_dir, resume=resume, quiet=not verbose, cache_dir=cache_dir, data=data,
                   on_step=step_hook)
    wall = float(side.get("wall_seconds", 0.0)) + time.perf_counter() - t0
    rd.write_json(SWEEP_RUN_FILE, {"run": r.name, "grid": r.assignment, "wall_seconds": round(wall, 3)})
    return result, wall, resume is not None


def run_sweep(plan: SweepPlan, *, cache_dir: Path | None = Path("data/cache"), force: bool = False,
              verbose: bool = False, log: Callable[[str], None] = print,
              on_step: Callable[[str, int], None] | None = None,
              after_run: Callable[[str], None] | None = None) -> SweepOutcome:
    """Run every planned run not finished yet, one after another; write results and plots.

    `on_step(run_name, step)` and `after_run(run_name)` are hooks (tests interrupt a sweep with them)."""
    statuses = {r.name: RunDir(r.run_dir).status(r.cfg) for r in plan.runs}
    if not force:
        _refuse_mismatches(plan, statuses)
    datasets = prepare_corpora(plan, cache_dir)  # may raise UserError: still nothing written
    try:
        plan.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot use {plan.out} as the sweep directory ({e.strerror or e})") from None
    atomic_write_json(plan.out / "sweep.json", plan.describe())
    done = sum(s == "done" for s in statuses.values())
    log(f"sweep {plan.out}: {len(plan.runs)} runs ({done} finished already), {plan.budget.describe()} per run")

    out = SweepOutcome([], [], [], [], False, [])
    started = time.perf_counter()
    try:
        for i, r in enumerate(plan.runs, 1):
            tag = f"[{i}/{len(plan.runs)}] {r.name}"
            rd = RunDir(r.run_dir)
            if statuses[r.name] == "done":
                metrics = rd.read_metrics()
                wall = float((rd.read_json(SWEEP_RUN_FILE) or {}).get("wall_seconds", math.nan))
                out.rows.append(result_row(plan, r, metrics, wall))
                out.skipped.append(r.name)
                log(f"{tag}: finished already (val ppl {metrics['val_ppl']:.3f}), skipped")
                continue
            data = datasets[_hashable(corpus_key(r.cfg.data))]
            result, wall, resumed = _train_one(r, statuses[r.name], data, tag, cache_dir=cache_dir,
                                               verbose=verbose, log=log, on_step=on_step)
            if resumed:
                out.resumed.append(r.name)
            if result.interrupted:
                out.interrupted = True
                log(f"{tag}: interrupted at step {result.step}; rerun the same command to continue "
                    f"(finished runs are skipped, this one resumes from its last.pt)")
                break
            out.rows.append(result_row(plan, r, dataclasses.asdict(result), wall))
            out.ran.append(r.name)
            log(f"{tag}: val ppl {result.val_ppl:.3f} ({result.val_bpc:.3f} bits/char), {result.step:,} updates, "
                f"{result.tokens_per_s:,.0f} tok/s, {wall:.1f} s" + (" — DIVERGED" if result.stopped_by == "diverged" else ""))
            write_results(plan, out.rows)
            if after_run is not None:
                after_run(r.name)
    except KeyboardInterrupt:
        out.interrupted = True
        log("interrupted between runs; rerun the same command to continue")
    out.files = (write_results(plan, out.rows) if out.rows else []) + plot_results(plan, out.rows)
    log(f"sweep wall time {time.perf_counter() - started:.1f} s "
        f"({len(out.ran)} run{'' if len(out.ran) == 1 else 's'} trained in this invocation)")
    return out
