"""Running a planned sweep: each unfinished run in grid order, resuming interrupted ones, then results."""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rnn_train.errors import UserError
from rnn_train.experiments.sweep.plan import SweepPlan, corpus_key, _hashable, prepare_corpora
from rnn_train.experiments.sweep.plots import plot_results
from rnn_train.experiments.sweep.report import result_row, write_results
from rnn_train.experiments.sweep.status import _comparable, _config_diff, _read_json, run_status
from rnn_train.files import atomic_write_text

SWEEP_RUN_FILE = "sweep_run.json"  # what the sweep adds to a run directory (the run's wall time)



@dataclass
class SweepOutcome:
    rows: list[dict[str, Any]]
    ran: list[str]
    skipped: list[str]
    resumed: list[str]
    interrupted: bool
    files: list[Path]


def run_sweep(plan: SweepPlan, *, cache_dir: Path | None = Path("data/cache"), force: bool = False,
              verbose: bool = False, log: Callable[[str], None] = print,
              on_step: Callable[[str, int], None] | None = None,
              after_run: Callable[[str], None] | None = None) -> SweepOutcome:
    """Run every planned run not finished yet, one after another; write results and plots.

    `on_step(run_name, step)` and `after_run(run_name)` are hooks (tests interrupt a sweep with them)."""
    from rnn_train.model.checkpoint import load_checkpoint
    from rnn_train.training.trainer import clear_run_files, train

    statuses = {r.name: run_status(r) for r in plan.runs}
    clashes = [r for r in plan.runs if statuses[r.name] == "mismatch"]
    if clashes and not force:
        shown = "; ".join(f"{r.name} ({_config_diff(r)})" for r in clashes[:3])
        raise UserError(f"{len(clashes)} run director{'ies hold runs' if len(clashes) > 1 else 'y holds a run'} "
                        f"made with another config: {shown}; use another --out, or --force to retrain "
                        f"{'them' if len(clashes) > 1 else 'it'}")
    datasets = prepare_corpora(plan, cache_dir)  # may raise UserError: still nothing written

    try:
        plan.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot use {plan.out} as the sweep directory ({e.strerror or e})") from None
    atomic_write_text(plan.out / "sweep.json", json.dumps(plan.describe(), indent=2) + "\n")
    done = sum(s == "done" for s in statuses.values())
    log(f"sweep {plan.out}: {len(plan.runs)} runs ({done} finished already), {plan.budget.describe()} per run")

    rows, ran, skipped, resumed = [], [], [], []
    interrupted = False
    started = time.perf_counter()
    total = len(plan.runs)
    try:
        for i, r in enumerate(plan.runs, 1):
            tag = f"[{i}/{total}] {r.name}"
            status = statuses[r.name]
            side = _read_json(r.run_dir / SWEEP_RUN_FILE) or {}
            if status == "done":
                metrics = _read_json(r.run_dir / "metrics.json")
                rows.append(result_row(plan, r, metrics, float(side.get("wall_seconds", math.nan))))
                skipped.append(r.name)
                log(f"{tag}: finished already (val ppl {metrics['val_ppl']:.3f}), skipped")
                continue
            data = datasets[_hashable(corpus_key(r.cfg.data))]
            resume = None
            if status == "resume":
                try:
                    resume = load_checkpoint(r.run_dir / "last.pt")
                except UserError as e:
                    log(f"{tag}: last.pt unreadable ({e}); starting afresh")
                if resume is not None and (resume["vocab"] != data.vocab.to_list()
                                           or _comparable(resume["config"]) != _comparable(r.cfg.to_dict())):
                    log(f"{tag}: last.pt belongs to another config or vocab; starting afresh")
                    resume = None
            if resume is None:
                clear_run_files(r.run_dir, extra=(SWEEP_RUN_FILE,))
                side = {}
                log(f"{tag}: training")
            else:
                resumed.append(r.name)
                log(f"{tag}: resuming from last.pt at step {resume['step']}")
            step_hook = (lambda step, name=r.name: on_step(name, step)) if on_step else None
            t0 = time.perf_counter()
            result = train(r.cfg, r.run_dir, resume=resume, quiet=not verbose, cache_dir=cache_dir, data=data,
                           on_step=step_hook)
            wall = float(side.get("wall_seconds", 0.0)) + time.perf_counter() - t0
            atomic_write_text(r.run_dir / SWEEP_RUN_FILE,
                              json.dumps({"run": r.name, "grid": r.assignment, "wall_seconds": round(wall, 3)}) + "\n")
            if result.interrupted:
                interrupted = True
                log(f"{tag}: interrupted at step {result.step}; rerun the same command to continue "
                    f"(finished runs are skipped, this one resumes from its last.pt)")
                break
            rows.append(result_row(plan, r, dataclasses.asdict(result), wall))
            ran.append(r.name)
            log(f"{tag}: val ppl {result.val_ppl:.3f} ({result.val_bpc:.3f} bits/char), {result.step:,} updates, "
                f"{result.tokens_per_s:,.0f} tok/s, {wall:.1f} s" + (" — DIVERGED" if result.stopped_by == "diverged" else ""))
            write_results(plan, rows)
            if after_run is not None:
                after_run(r.name)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted between runs; rerun the same command to continue")
    files = write_results(plan, rows) if rows else []
    files += plot_results(plan, rows)
    log(f"sweep wall time {time.perf_counter() - started:.1f} s "
        f"({len(ran)} run{'' if len(ran) == 1 else 's'} trained in this invocation)")
    return SweepOutcome(rows, ran, skipped, resumed, interrupted, files)
