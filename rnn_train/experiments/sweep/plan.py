"""Planning a sweep: the budget and grid from the command line, every run's config built and checked,
and each distinct corpus prepared once, all before anything runs (see the package docstring)."""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnn_train.config import SECTIONS, Config, DataConfig, load_config
from rnn_train.errors import UserError
from rnn_train.training.rules import LIMIT_KEYS, budget_overrides

BUDGET_KEYS = LIMIT_KEYS
"""Limits the budget owns: set by --budget, never by the grid or an override."""
OWNED_KEYS = BUDGET_KEYS + ("log.dir", "log.name")
"""Keys the sweep sets itself (log.dir / log.name: each run's directory is named after its grid point)."""
DEFAULT_EVALS = 4
NUM_STEPS_KEY = "data.num_steps"

# ---- the command line's grid and budget


@dataclass(frozen=True)
class Budget:
    kind: str  # "tokens" | "time"
    amount: float  # tokens, or seconds

    def overrides(self) -> list[str]:
        """The dotted overrides that make this budget the only limit of a run."""
        if self.kind == "tokens":
            return budget_overrides(max_tokens=int(self.amount))
        return budget_overrides(max_time=self.amount)

    def describe(self) -> str:
        return f"{int(self.amount):,} training tokens" if self.kind == "tokens" else f"{self.amount:g} s of training"


_SUFFIX = {"tokens": {"": 1, "k": 10**3, "m": 10**6, "g": 10**9},
           "time": {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600}}


def parse_budget(text: str) -> Budget:
    """`tokens:2000000`, `tokens:2M`, `tokens:500k`, `time:600`, `time:10m`, `time:1.5h` -> Budget."""
    kind, sep, amount = text.partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in _SUFFIX:
        raise UserError(f"--budget {text!r} must be tokens:N or time:SECONDS (e.g. tokens:2M, time:10m)")
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", amount.lower())
    if not m or m.group(2) not in _SUFFIX[kind]:
        units = ", ".join(s for s in _SUFFIX[kind] if s)
        raise UserError(f"--budget {text!r}: the amount must be a number with an optional unit ({units})")
    value = float(m.group(1)) * _SUFFIX[kind][m.group(2)]
    if kind == "tokens":
        if value < 1 or value != int(value):
            raise UserError(f"--budget {text!r}: the number of tokens must be a whole number >= 1")
    elif value <= 0:
        raise UserError(f"--budget {text!r}: the time must be > 0")
    return Budget(kind, value)


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
        return {"config": self.config_path, "grid": self.grid, "budget": f"{self.budget.kind}:{self.budget.amount:g}",
                "fixed_overrides": self.fixed, "evals": self.evals, "runs": [r.name for r in self.runs]}


def _keys_of(overrides: list[str]) -> set[str]:
    return {o.partition("=")[0].strip() for o in overrides}


def plan_sweep(config_path: str | None, grid: dict[str, list[str]], budget: Budget, fixed: list[str],
               out: Path, evals: int = DEFAULT_EVALS) -> SweepPlan:
    """Build and validate every run's config; all problems are reported together as one UserError."""
    if not grid:
        raise UserError("give at least one --grid section.key=v1,v2,...")
    if evals < 0:
        raise UserError(f"--evals must be >= 0, got {evals}")
    problems: list[str] = []
    fixed_keys = _keys_of(fixed)
    for key in grid:
        if key in OWNED_KEYS:
            problems.append(f"--grid {key}: the sweep sets {key} itself (budget / run directory), it cannot be a grid key")
        if key in fixed_keys:
            problems.append(f"{key} is both a grid key and a fixed override; keep one")
    for key in sorted(fixed_keys & set(OWNED_KEYS)):
        problems.append(f"override {key}: the sweep sets it itself (--budget owns "
                        f"{', '.join(BUDGET_KEYS)}; run directories live under --out)")
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
        if budget.kind == "tokens" and evals and not user_sets_eval:
            updates = math.ceil(budget.amount / (cfg.data.batch_size * cfg.data.num_steps))
            cfg = cfg.replace(train=dataclasses.replace(cfg.train, eval_every=max(1, math.ceil(updates / evals))))
        plan.runs.append(PlannedRun(name, assignment, cfg, plan.out / name))
    if problems:
        raise UserError("; ".join(problems))
    return plan


def corpus_key(d: DataConfig) -> DataConfig:
    """The data settings that decide the encoded corpus, with the ones that only cut it into batches
    (batch_size, num_steps, partition) set to 1, 1, random. Preparing the key itself checks only that
    one 1×1 batch fits; `prepare_corpora` checks each run's own batch shape."""
    return dataclasses.replace(d, batch_size=1, num_steps=1, partition="random")


def _hashable(d: DataConfig) -> str:
    return json.dumps(dataclasses.asdict(d), sort_keys=True)


def prepare_corpora(plan: SweepPlan, cache_dir: Path | None) -> dict[str, Any]:
    """Read, encode and split each distinct corpus once; check every run gets at least one batch.
    Returns {`_hashable(corpus_key(run.cfg.data))`: Dataset}."""
    from rnn_train.data.dataset import prepare_data, too_short

    datasets: dict[str, Any] = {}
    problems: list[str] = []
    for r in plan.runs:
        key = corpus_key(r.cfg.data)
        if _hashable(key) not in datasets:
            datasets[_hashable(key)] = prepare_data(key, cache_dir)
        problem = too_short(len(datasets[_hashable(key)].train), r.cfg.data)
        if problem:
            problems.append(f"run {r.name}: the training split {problem}")
    if problems:
        raise UserError("corpus too short: " + "; ".join(problems))
    return datasets
