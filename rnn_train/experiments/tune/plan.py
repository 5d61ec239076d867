"""What a tuning study trains: the recipe and overrides, the search space, the budget; each trial's
config built from them, and all of it checked before any trial runs."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rnn_train.config import Config, blamed_on, load_config, override_keys
from rnn_train.errors import UserError
from rnn_train.experiments.study.budget import Budget, spread_evals
from rnn_train.experiments.tune.space import (Space, as_overrides, corners, default_specs, describe, parse_space,
                                              read_space_file, suggest)
from rnn_train.training.rules import LIMIT_KEYS
from rnn_train.training.rundir import comparable, portable

OWNED_KEYS = LIMIT_KEYS + ("log.dir", "log.name")
"""Keys the tuner sets itself: the budget's limits, and each trial's run directory."""


def trial_dir(number: int) -> str:
    """The run directory of trial `number` under --out."""
    return f"trial-{number:04d}"


@dataclass
class TunePlan:
    config_path: str | None
    overrides: list[str]
    space: Space
    space_source: str  # "--space FILE" or "the default space"
    budget: Budget
    evals: int
    out: Path
    base: Config  # the recipe with the overrides and the budget: what the space varies
    user_sets_eval: bool  # train.eval_every given as an override or searched: not spread over the budget
    redraws = True  # a trial whose parameters cannot train fails for good; the sampler draws others

    def config_for(self, values: dict[str, Any], name: str) -> Config:
        """The config of a trial whose searched keys take `values`, writing into out/name."""
        cfg = load_config(self.config_path, [*self.overrides, *as_overrides(values), *self.budget.overrides(),
                                             f"log.dir={self.out}", f"log.name={name}"])
        return cfg if self.user_sets_eval else spread_evals(cfg, self.budget, self.evals)

    def configure(self, trial) -> tuple[str, Config]:
        name = trial_dir(trial.number)
        return name, self.config_for(suggest(trial, self.space), name)

    def identity(self) -> dict[str, Any]:
        """What decides the trials, and so names the study (never the output directory, nor keys that
        do not change what a run computes: threads, device, logging)."""
        return {"base": comparable(self.base.to_dict()), "space": describe(self.space),
                "budget": self.budget.spec(), "evals": self.evals}

    def parts(self) -> dict[str, Any]:
        """The identity part by part, as a study keeps it to say what another command changed: the
        base here is the recipe and overrides alone (the identity's base holds the budget's limits
        and validation steps too, so it differs wherever the budget does), and without data.paths
        (machines joining one study by --study may keep the corpus under other paths)."""
        return {**self.identity(), "base": portable(load_config(self.config_path, self.overrides).to_dict())}

    def recipe_values(self) -> dict[str, Any] | None:
        """The recipe's own values of the searched keys, if every one lies in the space (then the study
        starts with the recipe as it is: its best can only be better than the recipe's, at this budget)."""
        from optuna.distributions import CategoricalDistribution

        values = {}
        for key, d in self.space.items():
            section, name = key.split(".", 1)
            v = getattr(getattr(self.base, section), name)
            if isinstance(d, CategoricalDistribution):
                if v not in d.choices:
                    return None
            elif not d.low <= v <= d.high or (d.step and not math.isclose((v - d.low) / d.step,
                                                                          round((v - d.low) / d.step))):
                return None
            values[key] = v
        return values

    def corner_configs(self) -> list[tuple[str, Config]]:
        """The configs at the ends of the space (space.corners), labelled by their values."""
        return [(", ".join(as_overrides(p)), self.config_for(p, "check")) for p in corners(self.space)]


def plan_tune(config_path: str | None, overrides: list[str], space_path: str | None, budget: Budget, evals: int,
              out: Path) -> TunePlan:
    """Build and check the plan; every problem is a UserError raised before anything is written."""
    owned = sorted(override_keys(overrides) & set(OWNED_KEYS))
    if owned:
        raise UserError(f"override {', '.join(owned)}: the tuner sets {'it' if len(owned) == 1 else 'them'} itself "
                        f"(--trial-budget owns {', '.join(LIMIT_KEYS)}; run directories live under --out)")
    if evals < 1:
        raise UserError(f"--evals must be >= 1 (validations per trial, where the pruner looks), got {evals}")
    base = load_config(config_path, [*overrides, *budget.overrides(), f"log.dir={out}", "log.name=base"])
    if not base.data.val_fraction:
        raise UserError("data.val_fraction is 0: a study compares validation losses; set data.val_fraction > 0")
    if space_path:
        specs, source = read_space_file(space_path), f"--space {space_path}"
    else:
        specs, source = default_specs(base, budget), "the default space"
    space = parse_space(specs, source, overrides)
    user_sets_eval = "train.eval_every" in override_keys(overrides) or "train.eval_every" in space
    plan = TunePlan(config_path, list(overrides), space, source, budget, evals, Path(out),
                    spread_evals(base, budget, evals) if not user_sets_eval else base, user_sets_eval)
    _check_corners(plan)
    return plan


def _check_corners(plan: TunePlan) -> None:
    """A config at each end of the space (space.corners) must be valid; all problems in one error."""
    from rnn_train.recipes import resolve_recipe

    recipe = f"{resolve_recipe(plan.config_path)}: " if plan.config_path else "overrides: "
    problems: list[str] = []
    for point in corners(plan.space):
        try:
            plan.config_for(point, "check")
        except UserError as e:
            msg = str(e).removeprefix(recipe)
            for o in as_overrides(point):  # the point's own values are named once, in front
                msg = msg.replace(blamed_on(o), "")
            text = f"with {', '.join(as_overrides(point))}: {msg}"
            if not any(msg in p for p in problems):
                problems.append(text)
    if problems:
        raise UserError(f"{plan.space_source}: " + "; ".join(problems))

