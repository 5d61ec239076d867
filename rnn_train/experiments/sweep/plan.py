"""Planning a sweep: the grid from the command line, every run's config built and checked before
anything runs (see the package docstring), and what the study needs of it: the grid as Optuna's
search space, and the config of the grid point a trial draws."""
from __future__ import annotations

import itertools
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnn_train.config import SECTIONS, Config, load_config, override_keys
from rnn_train.errors import UserError
from rnn_train.experiments.study.budget import DEFAULT_EVALS, Budget, spread_evals
from rnn_train.training.rules import LIMIT_KEYS
from rnn_train.training.rundir import comparable, portable

OWNED_KEYS = LIMIT_KEYS + ("log.dir", "log.name")
"""Keys the sweep sets itself: the limits (--budget owns them) and log.dir / log.name (each run's
directory is named after its grid point)."""
NUM_STEPS_KEY = "data.num_steps"
__all__ = ["parse_grid", "short_labels", "run_name", "PlannedRun",
           "SweepPlan", "plan_sweep"]

# ---- the command line's grid


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """["data.num_steps=5,35", "model.cell=rnn,gru"] -> {"data.num_steps": ["5", "35"], ...}, in order.

    Values are split on commas, so a list-valued key (data.paths) cannot be a grid key; give it
    as a fixed override instead."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or "." not in key or not key.split(".", 1)[1]:
            raise UserError(f"--grid {item!r} is not of the form section.key=v1,v2,... (e.g. model.cell=rnn,gru)")
        if key in grid:
            raise UserError(f"--grid names {key} twice; give all its values in one KEY=v1,v2,...")
        vals = [v.strip() for v in values.split(",")]
        if not all(vals):
            raise UserError(f"--grid {item!r} has an empty value")
        dupes = sorted({v for v in vals if vals.count(v) > 1})
        if dupes:
            raise UserError(f"--grid {key} lists {', '.join(dupes)} more than once")
        grid[key] = vals
    return grid


def short_labels(keys: list[str]) -> dict[str, str]:
    """Column / directory labels: the part after the dot, or the whole key where two would clash."""
    tails = [k.split(".", 1)[1] for k in keys]
    return {k: (t if tails.count(t) == 1 else k) for k, t in zip(keys, tails)}


_UNSAFE = re.compile(r"[^A-Za-z0-9._,=+-]")


def run_name(assignment: dict[str, str], labels: dict[str, str]) -> str:
    """{'data.num_steps': '35', 'model.cell': 'gru'} -> 'num_steps=35,cell=gru' (filesystem-safe)."""
    name = ",".join(f"{labels[k]}={v}" for k, v in assignment.items())
    return _UNSAFE.sub("_", name)[:200]


# ---- the plan: every run's config, built and checked before anything runs


@dataclass
class PlannedRun:
    name: str
    assignment: dict[str, str]  # grid key -> value as typed on the command line
    cfg: Config
    run_dir: Path

    def grid_values(self) -> dict[str, Any]:
        """Grid key -> the value as the config holds it (typed: 35, not '35')."""
        out = {}
        for key in self.assignment:
            section, name = key.split(".", 1)
            out[key] = getattr(getattr(self.cfg, section), name)
        return out


@dataclass
class SweepPlan:
    config_path: str | None
    grid: dict[str, list[str]]
    budget: Budget
    fixed: list[str]
    out: Path
    evals: int
    runs: list[PlannedRun] = field(default_factory=list)

    @property
    def labels(self) -> dict[str, str]:
        return short_labels(list(self.grid))

    def describe(self) -> dict[str, Any]:
        return {"config": self.config_path, "grid": self.grid, "budget": self.budget.spec(),
                "fixed_overrides": self.fixed, "evals": self.evals, "runs": [r.name for r in self.runs]}

    # -- what the study needs (study/trials.py's Experiment)
    redraws = False  # every grid point is asked for: one that cannot train is an error, not skipped

    def search_space(self) -> dict[str, list[Any]]:
        """The grid as Optuna's GridSampler takes it: key -> the typed values, in the order given."""
        space: dict[str, list[Any]] = {key: [] for key in self.grid}
        for r in self.runs:
            for key, value in r.grid_values().items():
                if value not in space[key]:
                    space[key].append(value)
        return space

    def configure(self, trial) -> tuple[str, Config]:
        """The grid point the trial draws (the sampler picks it): its run directory name and config."""
        values = {key: trial.suggest_categorical(key, choices) for key, choices in self.search_space().items()}
        for r in self.runs:
            if r.grid_values() == values:
                return r.name, r.cfg
        raise AssertionError(f"no planned run has the grid values {values}")  # the grid sampler draws only these

    def identity(self) -> dict[str, Any]:
        """What decides the runs (every run's config, budget and validations included), and so names
        the study; never the output directory, nor threads, device or logging."""
        return {"runs": {r.name: comparable(r.cfg.to_dict()) for r in self.runs}}

    def parts(self) -> dict[str, Any]:
        """The identity as the study keeps it (session.open_study): without data.paths, which another
        machine joining the study by --study may name differently."""
        return {"runs": {r.name: portable(r.cfg.to_dict()) for r in self.runs}}


def plan_sweep(config_path: str | None, grid: dict[str, list[str]], budget: Budget, fixed: list[str],
               out: Path, evals: int = DEFAULT_EVALS) -> SweepPlan:
    """Build and validate every run's config; all problems are reported together as one UserError."""
    if not grid:
        raise UserError("give at least one --grid section.key=v1,v2,...")
    if evals < 0:
        raise UserError(f"--evals must be >= 0, got {evals}")
    problems: list[str] = []
    fixed_keys = override_keys(fixed)
    for key in grid:
        if key in OWNED_KEYS:
            problems.append(f"--grid {key}: the sweep sets {key} itself (budget / run directory), it cannot be a grid key")
        if key in fixed_keys:
            problems.append(f"{key} is both a grid key and a fixed override; keep one")
    for key in sorted(fixed_keys & set(OWNED_KEYS)):
        problems.append(f"override {key}: the sweep sets it itself (--budget owns "
                        f"{', '.join(LIMIT_KEYS)}; run directories live under --out)")
    for key in grid:
        section, _, name = key.partition(".")
        hints = typing.get_type_hints(SECTIONS[section]) if section in SECTIONS else {}
        if typing.get_origin(hints.get(name)) is list:
            problems.append(f"--grid {key}: list-valued keys cannot be gridded (values are split on commas); "
                            f"give it as a fixed override")
    if problems:
        raise UserError("; ".join(problems))

    plan = SweepPlan(config_path, grid, budget, list(fixed), Path(out), evals)
    labels = plan.labels
    user_sets_eval = "train.eval_every" in fixed_keys or "train.eval_every" in grid
    seen_names: dict[str, str] = {}
    for values in itertools.product(*grid.values()):
        assignment = dict(zip(grid, values))
        name = run_name(assignment, labels)
        overrides = [*fixed, *(f"{k}={v}" for k, v in assignment.items()), *budget.overrides(),
                     f"log.dir={plan.out}", f"log.name={name}"]
        try:
            cfg = load_config(config_path, overrides)
        except UserError as e:
            msg = str(e)
            if msg not in problems:
                problems.append(msg)
            continue
        if name in seen_names:
            problems.append(f"grid points {seen_names[name]!r} and {assignment!r} get the same directory name {name!r}")
            continue
        seen_names[name] = str(assignment)
        if not user_sets_eval:
            cfg = spread_evals(cfg, budget, evals)
        plan.runs.append(PlannedRun(name, assignment, cfg, plan.out / name))
    for key in grid:  # 0.1 and 1e-1 are two strings but one value: the same run twice
        typed: dict[Any, list[str]] = {}
        for r in plan.runs:
            spelt = typed.setdefault(r.grid_values()[key], [])
            if r.assignment[key] not in spelt:
                spelt.append(r.assignment[key])
        problems += [f"--grid {key}: {', '.join(spelt)} are one value" for spelt in typed.values() if len(spelt) > 1]
    if problems:
        raise UserError("; ".join(problems))
    return plan
