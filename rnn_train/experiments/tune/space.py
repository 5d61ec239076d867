"""The search space: config keys mapped to the values a trial may take.

A space file (YAML) maps dotted config keys, as in overrides, to one of:

    model.num_layers: [1, 2, 3]                       a list: one of these values (categorical)
    model.hidden_size: {int: [128, 512], step: 32}    a whole number in [low, high] (step optional)
    train.lr: {float: [3.0e-4, 1.0e-2], log: true}    a real number in [low, high]; log: sampled on a log scale
    model.dropout: {float: [0.0, 0.5], step: 0.1}     step: a grid of low, low + step, ...

Sections may also be nested, as in a recipe (`model: {hidden_size: {int: [128, 512]}}`). Values
are converted with the key's type exactly like overrides (`1e-3` is a number here too, though
YAML reads it as a string), and the whole space is checked before any trial runs: an unknown key
(with the closest one suggested), a value the key cannot take, a range the wrong way round or a
range on a key that is not a number, a key the budget owns (`train.max_tokens` ...) or one also
given as an override are reported together as one error. Then a config is built at each end of
every range and for every listed value (the others at the recipe's values), and at all lows and
all highs together, so `model.dropout: {float: [0, 1.5]}` fails now, not in trial 17.

Without --space, `default_specs` builds one around the recipe (its cell and sizes); `rnn-train tune
--config RECIPE --dry-run` prints it in this format, to copy into a file and edit.
"""
from __future__ import annotations

import math
import typing
from pathlib import Path
from typing import Any

import yaml

from rnn_train.config import SECTIONS, Config, convert_value, field_type, load_yaml, override_keys
from rnn_train.errors import UserError
from rnn_train.experiments.study.budget import Budget
from rnn_train.files import refuse_special
from rnn_train.recipes import resolve_space
from rnn_train.training.rules import LIMIT_KEYS

NOT_SEARCHABLE = {"train.threads": "it does not change what a run computes",
                  "train.device": "it does not change what a run computes"}
"""Keys that are not hyperparameters (besides the budget's and the log section's)."""

Space = dict[str, Any]
"""key -> optuna distribution (IntDistribution, FloatDistribution, CategoricalDistribution), in file order."""


# ---- reading a space file

def read_space_file(path: str | Path) -> dict[str, Any]:
    """The file's specs, flattened to {dotted key: spec} in file order (`path` may name a packaged
    space: recipes.resolve_space)."""
    path = resolve_space(path)
    refuse_special(path, "search space file")
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"search space file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"search space file {path} cannot be read: {e.__class__.__name__}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{path}: invalid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"{path}: a search space maps config keys to values or ranges (e.g. "
                        "'train.lr: {float: [1.0e-4, 1.0e-2], log: true}'); this file holds none")
    flat: dict[str, Any] = {}
    for key, spec in raw.items():
        key = str(key)
        nested = "." not in key and key in SECTIONS and isinstance(spec, dict)
        for name, value in ({f"{key}.{k}": v for k, v in spec.items()} if nested else {key: spec}).items():
            if name in flat:  # train.lr: ... and train: {lr: ...}: the later one would win silently
                raise UserError(f"{path}: {name} is given twice (once dotted, once inside its section)")
            flat[name] = value
    return flat


# ---- checking specs and turning them into distributions

def _range(key: str, spec: dict[str, Any], tp: Any) -> Any:
    """{int|float: [low, high], log?, step?} -> an optuna distribution (or UserError)."""
    from optuna.distributions import FloatDistribution, IntDistribution

    kinds = [k for k in ("int", "float") if k in spec]
    extra = sorted(set(spec) - {"int", "float", "log", "step"})
    if len(kinds) != 1 or extra:
        raise UserError(f"{key}: a range is {{int: [low, high]}} or {{float: [low, high]}}, with optional "
                        f"log: true and step: N" + (f" (unknown {', '.join(map(str, extra))})" if extra else ""))
    kind = kinds[0]
    want = int if kind == "int" else float
    if tp is not want:
        if tp is int:
            raise UserError(f"{key} takes whole numbers: give {{int: [low, high]}}")
        if tp is float:
            raise UserError(f"{key} takes real numbers: give {{float: [low, high]}}")
        raise UserError(f"{key} is not a number: give its values as a list")
    bounds = spec[kind]
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise UserError(f"{key}: {kind}: needs [low, high], got {bounds!r}")
    low, high = (convert_value(key, b) for b in bounds)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise UserError(f"{key}: log must be true or false, got {log!r}")
    step = spec.get("step")
    if step is not None:
        step = convert_value(key, step)
        if step <= 0:
            raise UserError(f"{key}: step must be > 0, got {step}")
        if log and not (kind == "int" and step == 1):
            raise UserError(f"{key}: a log range cannot have a step")
    if low > high:
        raise UserError(f"{key}: the range [{low}, {high}] is reversed: write [{high}, {low}]")
    if not low < high:
        raise UserError(f"{key}: the range [{low}, {high}] needs low < high (one value is an override, not a search)")
    if log and low <= 0:
        raise UserError(f"{key}: a log range needs low > 0, got {low}")
    if step is not None and not math.isclose((high - low) / step, round((high - low) / step), abs_tol=1e-9):
        raise UserError(f"{key}: high - low ({high - low:g}) is not a whole number of steps of {step:g}")
    if kind == "int":
        return IntDistribution(low, high, log=log, step=step or 1)
    return FloatDistribution(low, high, log=log, step=step)


def _categorical(key: str, values: list[Any]) -> Any:
    from optuna.distributions import CategoricalDistribution

    if not values:
        raise UserError(f"{key}: the list of values is empty")
    typed = [convert_value(key, v) for v in values]
    dupes = sorted({str(v) for v in typed if typed.count(v) > 1})
    if dupes:
        raise UserError(f"{key}: lists {', '.join(dupes)} more than once")
    return CategoricalDistribution(typed)


def parse_space(specs: dict[str, Any], source: str, overrides: list[str]) -> Space:
    """{dotted key: spec} -> Space, every problem of every key in one UserError naming `source`."""
    given = override_keys(overrides)
    problems: list[str] = []
    space: Space = {}
    for key, spec in specs.items():
        try:
            tp = field_type(key)
            if key in LIMIT_KEYS:
                raise UserError(f"{key} is set by --trial-budget, it cannot be searched")
            if key.startswith("log."):
                raise UserError(f"{key} is the run's logging, not a hyperparameter")
            if key in NOT_SEARCHABLE:
                raise UserError(f"{key} cannot be searched: {NOT_SEARCHABLE[key]}")
            if typing.get_origin(tp) is list:
                raise UserError(f"{key} is a list-valued key; give it as an override")
            if key in given:
                raise UserError(f"{key} is both in the search space and an override; keep one")
            if isinstance(spec, list):
                space[key] = _categorical(key, spec)
            elif isinstance(spec, dict):
                space[key] = _range(key, spec, tp)
            else:
                raise UserError(f"{key}: {spec!r} is one value, an override: give a list of values or a range "
                                f"{{int|float: [low, high]}}")
        except UserError as e:
            problems.append(str(e))
    if problems:
        raise UserError(f"{source}: " + "; ".join(problems))
    if not space:
        raise UserError(f"{source}: the search space is empty")
    return space


# ---- the values a trial takes

def suggest(trial, space: Space) -> dict[str, Any]:
    """The trial's value of every key (drawn by the study's sampler, or the queued copy's own)."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    values = {}
    for key, d in space.items():
        if isinstance(d, CategoricalDistribution):
            values[key] = trial.suggest_categorical(key, d.choices)
        elif isinstance(d, IntDistribution):
            values[key] = trial.suggest_int(key, d.low, d.high, step=d.step, log=d.log)
        else:
            values[key] = trial.suggest_float(key, d.low, d.high, step=d.step, log=d.log)
    return values


def as_overrides(values: dict[str, Any]) -> list[str]:
    """{key: typed value} -> ["key=value", ...], read back exactly by the config's conversion."""
    def text(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        return repr(v) if isinstance(v, float) else str(v)
    return [f"{k}={text(v)}" for k, v in values.items()]


def corners(space: Space) -> list[dict[str, Any]]:
    """The values checked before any trial runs: each end of each range and each listed value with
    the other keys at the recipe's values, then all lows together and all highs together."""
    from optuna.distributions import CategoricalDistribution

    ends = {k: (list(d.choices) if isinstance(d, CategoricalDistribution) else [d.low, d.high])
            for k, d in space.items()}
    points = [{k: v} for k, vs in ends.items() for v in vs]
    if len(space) > 1:
        points += [{k: vs[0] for k, vs in ends.items()}, {k: vs[-1] for k, vs in ends.items()}]
    return points


def to_yaml(space: Space) -> str:
    """The space in the file format (what --dry-run prints)."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    lines = []
    for key, d in space.items():
        if isinstance(d, CategoricalDistribution):
            spec = yaml.safe_dump(list(d.choices), default_flow_style=True).strip()
        else:
            kind = "int" if isinstance(d, IntDistribution) else "float"
            parts = [f"{kind}: [{_num(d.low)}, {_num(d.high)}]"]
            if d.log:
                parts.append("log: true")
            if d.step is not None and not (kind == "int" and d.step == 1):
                parts.append(f"step: {_num(d.step)}")
            spec = "{" + ", ".join(parts) + "}"
        lines.append(f"{key}: {spec}")
    return "\n".join(lines) + "\n"


def _num(v: float | int) -> str:
    """A number YAML reads back as a number (1.0e-04, not 1e-04, which YAML 1.1 reads as a string)."""
    if isinstance(v, int):
        return str(v)
    text = repr(float(v))
    if "e" in text and "." not in text.split("e")[0]:
        mantissa, exp = text.split("e")
        text = f"{mantissa}.0e{exp}"
    return text


def describe(space: Space) -> dict[str, str]:
    """{key: its spec in the file format}: what the study's name is made of (stable across versions
    of Optuna, unlike its distributions' reprs)."""
    return dict(line.split(": ", 1) for line in to_yaml(space).splitlines())


# ---- the default space

def default_specs(cfg: Config, budget: Budget) -> dict[str, Any]:
    """A space around the recipe: its sizes halved and doubled, the learning rate a decade either
    side, dropout, depth, batch shape and schedule. It reads only the recipe's cell and sizes (plain
    RNNs also search the clipping norm, which they depend on most)."""
    m, d, t = cfg.model, cfg.data, cfg.train
    h = m.hidden_size
    step = max(1, h // 16)  # the recipe's size is on the grid: it can be trial 0 (tune.plan.recipe_values)
    specs: dict[str, Any] = {
        "model.hidden_size": {"int": [max(1, h - step * ((h - h // 2) // step)), h + step * (h // step)], "step": step},
        "model.num_layers": {"int": [1, max(2, m.num_layers + 1)]},
        "model.dropout": {"float": [0.0, 0.5]},
        "train.lr": {"float": [_round(max(t.lr / 10, t.min_lr)), _round(t.lr * 10)], "log": True},
        "data.batch_size": sorted({max(1, d.batch_size // 2), d.batch_size, d.batch_size * 2}),
        "data.num_steps": sorted({max(2, d.num_steps // 2), d.num_steps, d.num_steps * 2}),
        # a cosine decay needs a known length: a token budget gives one, a time budget does not
        "train.schedule": ["constant", "cosine"] if budget.kind == "tokens" else ["constant", "plateau"],
    }
    if m.embedding == "learned":
        specs["model.embed_dim"] = sorted({max(1, m.embed_dim // 2), m.embed_dim, m.embed_dim * 2})
    if m.cell == "rnn":
        specs["train.clip_norm"] = {"float": [0.1, 10.0], "log": True}
    return specs



def _round(x: float) -> float:
    """Four significant digits: 3e-4, not 0.00030000000000000003."""
    return float(f"{x:.4g}")
