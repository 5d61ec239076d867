"""The budget of every trial: `tokens:N` or `time:S`, the only limit of each run, and the validations
spread over it (the sweep's `--budget`, the tuner's `--trial-budget`).

Why a budget rather than the recipe's own limits: trials are compared with each other, so each must
get the same amount of training. `tokens:N` is the fair measure across batch shapes (an update reads
batch_size × num_steps tokens, so a budget in updates would give long windows many times the data of
short ones) and does not depend on the machine's load; `time:S` asks "what is best for my compute?"
and does. Either way every other limit and early stopping are turned off (`rules.budget_overrides`).

Validations. With a token budget the number of updates varies with the batch shape, so a fixed
`train.eval_every` would validate one trial fifty times and another once; `spread_evals` sets it per
run so that each validates `evals` times, evenly over its budget, plus at the end. A pruner compares
trials at the same *step*, so a validation is reported at `budget_step`: the number of whole
1/evals slices of the budget used (1 .. evals), the same for every trial whatever its batch shape.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

from rnn_train.config import Config
from rnn_train.errors import UserError
from rnn_train.training.rules import budget_overrides

DEFAULT_EVALS = 4


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

    def spec(self) -> str:
        """The command-line form, e.g. tokens:2000000 or time:90."""
        return f"{self.kind}:{int(self.amount) if self.kind == 'tokens' else f'{self.amount:g}'}"

    def used(self, tokens: int, train_seconds: float) -> float:
        """The fraction of the budget a run has used (1.0 at its end)."""
        return (tokens if self.kind == "tokens" else train_seconds) / self.amount


_SUFFIX = {"tokens": {"": 1, "k": 10**3, "m": 10**6, "g": 10**9},
           "time": {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600}}


def parse_budget(text: str, flag: str = "--budget") -> Budget:
    """`tokens:2000000`, `tokens:2M`, `tokens:500k`, `time:600`, `time:10m`, `time:1.5h` -> Budget."""
    kind, sep, amount = text.partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in _SUFFIX:
        raise UserError(f"{flag} {text!r} must be tokens:N or time:SECONDS (e.g. tokens:2M, time:10m)")
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", amount.lower())
    if not m or m.group(2) not in _SUFFIX[kind]:
        units = ", ".join(s for s in _SUFFIX[kind] if s)
        raise UserError(f"{flag} {text!r}: the amount must be a number with an optional unit ({units})")
    value = float(m.group(1)) * _SUFFIX[kind][m.group(2)]
    if not math.isfinite(value):  # 1e400 parses to inf
        raise UserError(f"{flag} {text!r}: the amount is too large")
    if kind == "tokens":
        if value < 1 or value != int(value):
            raise UserError(f"{flag} {text!r}: the number of tokens must be a whole number >= 1")
    elif value <= 0:
        raise UserError(f"{flag} {text!r}: the time must be > 0")
    return Budget(kind, value)


def spread_evals(cfg: Config, budget: Budget, evals: int) -> Config:
    """`cfg` with train.eval_every set so that a token-budget run validates `evals` times, evenly
    (evals = 0, or a time budget: the config's own eval_every). The caller skips this when the
    user set train.eval_every."""
    if budget.kind != "tokens" or not evals:
        return cfg
    updates = math.ceil(budget.amount / (cfg.data.batch_size * cfg.data.num_steps))
    return cfg.replace(train=dataclasses.replace(cfg.train, eval_every=max(1, math.ceil(updates / evals))))


def budget_step(budget: Budget, evals: int, tokens: int, train_seconds: float) -> int:
    """The step a validation is reported at: whole 1/evals slices of the budget used, 0 .. evals.

    With `spread_evals` the k-th validation lands on step k (eval_every rounds up, so it lands at or
    just past k/evals of the budget), and the final one on `evals`."""
    return min(evals, int(math.floor(evals * budget.used(tokens, train_seconds) + 1e-9)))
