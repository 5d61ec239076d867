"""Grid sweeps: one recipe, the cross product of a few settings, the same budget for every run.

    python -m rnn_train.sweep --config configs/pinyin_gru.yaml \\
        --grid data.num_steps=5,10,20,35,70,140 model.cell=rnn,gru data.partition=random,sequential \\
        --budget tokens:2M --out runs/sweep_pinyin  model.hidden_size=128 train.threads=1

Layout of the sweep directory (`--out`):

    runs/sweep_pinyin/
        sweep.json                                   what was asked (recipe, grid, budget, overrides)
        num_steps=5,cell=rnn,partition=random/       one ordinary run directory per grid point:
            config.yaml best.pt last.pt metrics.json events.out.tfevents.*  sweep_run.json
        ...
        results.csv results.json results.md         one row per finished run
        val_ppl.png tokens_per_s.png val_curves.png  plots (matplotlib, Agg)

`tensorboard --logdir runs/sweep_pinyin` shows every run's curves, and its HPARAMS tab puts the
runs side by side: each run writes an hparams record (its whole config and final metrics).

The budget. Every run gets the same budget, and the budget is the only limit:

* `tokens:N` sets `train.max_tokens=N`: each run reads N training characters (targets). This is
  the fair comparison across `data.num_steps`: one update reads batch_size × num_steps tokens, so
  a budget in *updates* (max_steps) would give the num_steps=140 runs 28 times the data of the
  num_steps=5 runs, and a budget in *epochs* hides the opposite effect: short windows make many
  small updates per epoch, long windows few large ones. With a fixed number of tokens every run
  sees the same text; what differs is how it is cut up: many updates with short gradient horizons,
  or few updates with long ones. That trade-off is what a num_steps sweep measures. (A run stops
  at the first update that reaches N, so it may read up to one batch more: 2,002,560 tokens for
  N = 2M with batches of 32 × 140.)
* `time:S` sets `train.max_time=S` seconds of training (validation excluded): the fair comparison
  when the question is "what is best for my compute?" (a cheap cell makes up for its weakness by
  reading more tokens). Time budgets depend on the machine and its load; tokens do not.

Either way the recipe's other limits (`train.epochs`, `train.max_steps`, the other budget) and
early stopping (`train.patience`) are set to 0, so that no run stops early. Giving one of those
keys yourself, as an override or in the grid, is an error rather than a silent loss.

Validation frequency. With a token budget the number of updates per run varies with num_steps
(and batch_size), so a fixed `train.eval_every` would validate one run fifty times and another
once. The sweep therefore sets `train.eval_every` per run so that each run validates `--evals`
times (default 4), evenly over its budget, plus once at the end. Passing `train.eval_every`
yourself (override or grid) keeps your value; with a time budget the recipe's value is kept.

Validation of the whole sweep comes first: every run's config is built (grid values are converted
and checked exactly like `train.py` overrides) and every distinct corpus is prepared before the
first run starts, so a typo in the grid fails at once with one `error: ...` line and exit status 2,
and nothing is written.

Resuming. Rerun the same command after an interruption (Ctrl-C finishes the step in flight and
saves `last.pt`, as in train.py). For each run, in grid order:

* `metrics.json` present and `config.yaml` equal to the planned config -> finished: skipped, its
  metrics go into the results;
* otherwise `last.pt` present with the planned config -> resumed from it (the trainer's exact
  resume: same result as an uninterrupted run);
* otherwise -> started afresh (partial files of that run are deleted first).

"Equal" ignores `train.threads`, `train.device` and the `log` section, which do not change what a
run computes. A run directory holding a *different* config (the recipe or budget changed since)
is an error unless `--force` is given, which retrains it. Adding a value to the grid and rerunning
only trains the new runs.

The corpus is read, encoded and split once per distinct corpus (data settings other than
batch_size, num_steps and partition, which only cut it into batches) and handed to every run.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import itertools
import json
import math
import re
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from .cli import ArgumentParser, run
from .config import SECTIONS, Config, DataConfig, build_config, load_config
from .errors import UserError

BUDGET_KEYS = ("train.epochs", "train.max_steps", "train.max_tokens", "train.max_time", "train.patience")
"""Limits the budget owns: set by --budget, never by the grid or an override."""
OWNED_KEYS = BUDGET_KEYS + ("log.dir", "log.name")
"""Keys the sweep sets itself (log.dir / log.name: each run's directory is named after its grid point)."""
IGNORED_IN_MATCH = {("train", "threads"), ("train", "device")}
"""Config keys that do not change what a run computes; a finished run made with other values still counts."""
SWEEP_RUN_FILE = "sweep_run.json"  # what the sweep adds to a run directory (the run's wall time)
DEFAULT_EVALS = 4
NUM_STEPS_KEY = "data.num_steps"

# ----------------------------------------------------------------------------------------------
# parsing the command line's grid and budget


@dataclass(frozen=True)
class Budget:
    kind: str  # "tokens" | "time"
    amount: float  # tokens, or seconds

    def overrides(self) -> list[str]:
        """The dotted overrides that make this budget the only limit of a run."""
        tokens = int(self.amount) if self.kind == "tokens" else 0
        seconds = f"{self.amount:g}" if self.kind == "time" else "0"
        return ["train.epochs=0", "train.max_steps=0", f"train.max_tokens={tokens}",
                f"train.max_time={seconds}", "train.patience=0"]

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


# ----------------------------------------------------------------------------------------------
# the plan: every run's config, built and checked before anything runs


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
    from .batching import min_corpus_length
    from .data import prepare_data

    datasets: dict[str, Any] = {}
    problems: list[str] = []
    for r in plan.runs:
        key = corpus_key(r.cfg.data)
        if _hashable(key) not in datasets:
            datasets[_hashable(key)] = prepare_data(key, cache_dir)
        d, n = r.cfg.data, len(datasets[_hashable(key)].train)
        need = min_corpus_length(d.batch_size, d.num_steps)
        if n < need:
            problems.append(f"run {r.name}: the training split has {n} characters, but data.batch_size × "
                            f"data.num_steps + data.num_steps = {need} are needed for one batch")
    if problems:
        raise UserError("corpus too short: " + "; ".join(problems))
    return datasets


# ----------------------------------------------------------------------------------------------
# run status on disk


def _comparable(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """A config dict without the keys that do not change what a run computes."""
    out = {}
    for section, body in cfg_dict.items():
        if section == "log" or not isinstance(body, dict):
            continue
        out[section] = {k: v for k, v in body.items() if (section, k) not in IGNORED_IN_MATCH}
    return out


def _stored_config(path: Path) -> dict[str, Any] | None:
    """The config dict of a run directory's config.yaml, normalised through build_config; None if unreadable."""
    try:
        return build_config(yaml.safe_load(path.read_text(encoding="utf-8")), source=str(path)).to_dict()
    except (OSError, yaml.YAMLError, UserError):
        return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def run_status(r: PlannedRun) -> str:
    """'done' | 'resume' | 'new' | 'mismatch' (the directory holds a run of another config)."""
    want = _comparable(r.cfg.to_dict())
    stored = _stored_config(r.run_dir / "config.yaml")
    metrics = _read_json(r.run_dir / "metrics.json")
    if stored is not None and _comparable(stored) != want and (metrics is not None or (r.run_dir / "last.pt").exists()):
        return "mismatch"
    if metrics is not None and stored is not None and not metrics.get("interrupted", False):
        return "done"
    if (r.run_dir / "last.pt").exists():
        return "resume"
    return "new"


def _config_diff(r: PlannedRun) -> str:
    stored = _stored_config(r.run_dir / "config.yaml") or {}
    a, b = _comparable(stored), _comparable(r.cfg.to_dict())
    diffs = [f"{s}.{k}: {a.get(s, {}).get(k)!r} -> {v!r}" for s in b for k, v in b[s].items()
             if a.get(s, {}).get(k) != v]
    return ", ".join(diffs[:4]) + (" ..." if len(diffs) > 4 else "")


# ----------------------------------------------------------------------------------------------
# results

METRIC_COLUMNS = ("val_loss", "val_ppl", "val_bpc", "best_val_loss", "tokens_per_s", "train_s", "wall_s",
                  "steps", "tokens", "epochs", "grad_norm", "clipped_fraction", "stopped_by")


def result_row(plan: SweepPlan, r: PlannedRun, metrics: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """One results row: the run's name, its grid values (typed) and its metrics."""
    labels = plan.labels
    row: dict[str, Any] = {"run": r.name}
    row.update({labels[k]: v for k, v in r.grid_values().items()})
    row.update({"val_loss": metrics["val_loss"], "val_ppl": metrics["val_ppl"], "val_bpc": metrics["val_bpc"],
                "best_val_loss": metrics["best_val_loss"], "tokens_per_s": metrics["tokens_per_s"],
                "train_s": metrics["train_seconds"], "wall_s": round(wall_s, 3), "steps": metrics["step"],
                "tokens": metrics["tokens"], "epochs": metrics["epoch"], "grad_norm": metrics["grad_norm"],
                "clipped_fraction": metrics["clipped_fraction"], "stopped_by": metrics["stopped_by"]})
    return row


def _json_safe(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _fmt(value: Any, column: str) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if column in ("tokens_per_s",):
            return f"{value:,.0f}"
        if column in ("train_s", "wall_s"):
            return f"{value:.1f}"
        if column in ("val_ppl", "val_bpc", "grad_norm", "clipped_fraction"):
            return f"{value:.3f}"
        return f"{value:.4f}"
    if isinstance(value, int) and not isinstance(value, bool) and column in ("steps", "tokens"):
        return f"{value:,}"
    return str(value)


MD_COLUMNS = ("val_loss", "val_ppl", "val_bpc", "tokens_per_s", "train_s", "wall_s", "steps", "grad_norm")


def markdown_table(rows: list[dict[str, Any]], grid_columns: list[str]) -> str:
    """The results as a Markdown table (the best val ppl in bold)."""
    header = [*grid_columns, "val loss", "val ppl", "bits/char", "tokens/s", "train s", "wall s", "updates",
              "grad norm"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i < len(grid_columns) else "---:"
                                                             for i in range(len(header))) + "|"]
    finite = [r["val_ppl"] for r in rows if isinstance(r["val_ppl"], float) and math.isfinite(r["val_ppl"])]
    best = min(finite) if finite else None
    for r in rows:
        cells = [str(r[c]) for c in grid_columns]
        for c in MD_COLUMNS:
            text = _fmt(r[c], c)
            cells.append(f"**{text}**" if c == "val_ppl" and r[c] == best else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(plan: SweepPlan, rows: list[dict[str, Any]]) -> list[Path]:
    """results.csv, results.json and results.md in the sweep directory (rows in grid order)."""
    from .files import atomic_write_text

    out = plan.out
    grid_columns = [plan.labels[k] for k in plan.grid]
    columns = ["run", *grid_columns, *METRIC_COLUMNS]
    lines: list[list[str]] = [columns]
    for r in rows:
        lines.append([repr(r[c]) if isinstance(r[c], float) else str(r[c]) for c in columns])
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(lines)
    atomic_write_text(out / "results.csv", buf.getvalue())
    payload = {"sweep": plan.describe(), "runs": [{k: _json_safe(v) for k, v in r.items()} for r in rows]}
    atomic_write_text(out / "results.json", json.dumps(payload, indent=2) + "\n")
    title = f"Sweep {out}: {plan.budget.describe()} per run"
    atomic_write_text(out / "results.md", f"{title}\n\n" + markdown_table(rows, grid_columns))
    return [out / "results.csv", out / "results.json", out / "results.md"]


# ----------------------------------------------------------------------------------------------
# plots


def _x_key(plan: SweepPlan) -> str:
    return NUM_STEPS_KEY if NUM_STEPS_KEY in plan.grid else next(iter(plan.grid))


def _series(plan: SweepPlan, rows: list[dict[str, Any]], x_key: str) -> tuple[list, dict[str, list[dict]]]:
    """Rows grouped into lines: one per combination of the grid keys other than x; x values in order."""
    labels = plan.labels
    x_col = labels[x_key]
    others = [labels[k] for k in plan.grid if k != x_key]
    xs = [r[x_col] for r in rows]
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
    order = sorted(set(xs)) if numeric else list(dict.fromkeys(xs))
    lines: dict[str, list[dict]] = {}
    for r in rows:
        label = ", ".join(f"{c}={r[c]}" for c in others) or labels[x_key]
        lines.setdefault(label, []).append(r)
    for label in lines:
        lines[label].sort(key=lambda r: order.index(r[x_col]))
    return order, lines


def _setup_x(ax, order: list, x_label: str) -> Callable[[Any], Any]:
    """Numeric x with a wide range: log2 axis with the grid values as ticks; otherwise categorical."""
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in order)
    ax.set_xlabel(x_label)
    if numeric and min(order) > 0 and max(order) / min(order) >= 8:
        ax.set_xscale("log", base=2)
        ax.set_xticks(order)
        ax.set_xticklabels([str(x) for x in order])
        ax.minorticks_off()
        return lambda x: x
    if numeric:
        ax.set_xticks(order)
        return lambda x: x
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels([str(x) for x in order])
    return lambda x: order.index(x)


def plot_results(plan: SweepPlan, rows: list[dict[str, Any]]) -> list[Path]:
    """val_ppl.png and tokens_per_s.png against num_steps (or the first grid key); val_curves.png when
    the runs logged to TensorBoard. Returns the files written."""
    if not rows:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    x_key = _x_key(plan)
    x_col = plan.labels[x_key]
    order, lines = _series(plan, rows, x_key)
    written = []
    for column, ylabel, fname, title in (
            ("val_ppl", "validation perplexity (final)", "val_ppl.png", "Validation perplexity"),
            ("tokens_per_s", "training tokens / s", "tokens_per_s.png", "Training speed")):
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
        to_x = _setup_x(ax, order, x_key)
        for label, line in lines.items():
            pts = [(to_x(r[x_col]), r[column]) for r in line
                   if isinstance(r[column], (int, float)) and math.isfinite(r[column])]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=label)
        ax.set_ylabel(ylabel)
        if column == "tokens_per_s":
            ax.set_ylim(bottom=0)
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.set_title(f"{title} — {plan.budget.describe()} per run", fontsize=10)
        ax.grid(True, alpha=0.3)
        if len(plan.grid) > 1:  # lines are labelled by the other grid keys' values
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(plan.out / fname)
        plt.close(fig)
        written.append(plan.out / fname)
    curves = _plot_val_curves(plan, rows, x_key, plt)
    if curves:
        written.append(curves)
    return written


def read_val_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, val/ppl) pairs from a run's TensorBoard events; [] when there are none."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return []
    if not any(run_dir.glob("events.out.tfevents.*")):
        return []
    ea = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    ea.Reload()
    if "val/ppl" not in ea.Tags().get("scalars", []):
        return []
    return [(e.step, e.value) for e in ea.Scalars("val/ppl")]


def _plot_val_curves(plan: SweepPlan, rows: list[dict[str, Any]], x_key: str, plt) -> Path | None:
    """Validation perplexity against training tokens: one panel per line of val_ppl.png, one curve per x value."""
    x_col = plan.labels[x_key]
    order, lines = _series(plan, rows, x_key)
    runs = {r.name: r for r in plan.runs}
    curves = {}
    for row in rows:
        r = runs[row["run"]]
        curve = read_val_curve(r.run_dir)
        if curve:
            per_step = r.cfg.data.batch_size * r.cfg.data.num_steps
            curves[row["run"]] = [(s * per_step, v) for s, v in curve]
    if not curves:
        return None
    n = len(lines)
    cols = min(n, 2)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 3.6 * nrows), dpi=110, squeeze=False, sharey=True)
    cmap = plt.get_cmap("viridis")
    for ax, (label, line) in zip(axes.flat, lines.items()):
        for row in line:
            if row["run"] not in curves:
                continue
            colour = cmap(order.index(row[x_col]) / max(len(order) - 1, 1))
            ax.plot(*zip(*curves[row["run"]]), marker=".", color=colour, label=f"{x_col}={row[x_col]}")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("training tokens")
        ax.set_ylabel("validation perplexity")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    path = plan.out / "val_curves.png"
    fig.savefig(path)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------
# running


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
    from .checkpoint import load_checkpoint
    from .files import atomic_write_text
    from .trainer import clear_run_files, train

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


# ----------------------------------------------------------------------------------------------
# command line

EPILOG = """\
grid: --grid KEY=V1,V2,... [KEY=V1,V2,... ...]; the runs are the cross product, in the order given.
  Any config key works (section.key, as in train.py overrides) except list-valued ones.
budget: tokens:N (N training tokens per run, e.g. tokens:2M) or time:S (S seconds of training per run,
  e.g. time:90 or time:5m). It is the only limit: train.epochs, max_steps, max_tokens, max_time and
  patience are set by it. With a token budget each run validates --evals times.
resume: rerun the same command; finished runs are skipped, an interrupted run resumes from last.pt.
results: OUT/results.{csv,json,md}, OUT/val_ppl.png, OUT/tokens_per_s.png, OUT/val_curves.png;
  tensorboard --logdir OUT compares the runs (HPARAMS tab).

example:
  python -m rnn_train.sweep --config configs/pinyin_gru.yaml \\
      --grid data.num_steps=5,35,140 model.cell=rnn,gru --budget tokens:1M --out runs/sweep_demo \\
      model.hidden_size=128 train.threads=1
"""


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m rnn_train.sweep", epilog=EPILOG,
                        description="Train one run per grid point with the same budget; tabulate and plot the results.",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="YAML recipe every run starts from (see configs/)")
    ap.add_argument("--grid", nargs="+", action="extend", required=True, metavar="KEY=V1,V2",
                    help="a config key and its values (repeatable)")
    ap.add_argument("--budget", required=True, help="tokens:N or time:SECONDS per run (e.g. tokens:2M, time:5m)")
    ap.add_argument("--out", required=True, help="sweep directory (one run directory per grid point inside)")
    ap.add_argument("--evals", type=int, default=DEFAULT_EVALS,
                    help=f"validations per run with a token budget (default {DEFAULT_EVALS}; sets train.eval_every "
                         "per run unless you give train.eval_every; 0 keeps the recipe's)")
    ap.add_argument("--cache-dir", default="data/cache", help="where converted corpora are cached (default data/cache)")
    ap.add_argument("--force", action="store_true", help="retrain runs whose directory holds another config")
    ap.add_argument("--dry-run", action="store_true", help="validate and list the runs and their state; train nothing")
    ap.add_argument("--verbose", action="store_true", help="show each run's training log")
    ap.add_argument("overrides", nargs="*", metavar="section.key=value", help="fixed overrides for every run")
    args = ap.parse_intermixed_args(argv)

    budget = parse_budget(args.budget)
    grid = parse_grid(args.grid)
    plan = plan_sweep(args.config, grid, budget, list(args.overrides), Path(args.out), args.evals)
    cache_dir = Path(args.cache_dir)
    if args.dry_run:
        prepare_corpora(plan, cache_dir)
        for r in plan.runs:
            t = r.cfg.train
            print(f"{run_status(r):>8}  {r.name}  (eval_every {t.eval_every})")
        print(f"{len(plan.runs)} runs, {budget.describe()} each, into {plan.out}")
        return 0
    outcome = run_sweep(plan, cache_dir=cache_dir, force=args.force, verbose=args.verbose)
    print(f"{len(outcome.ran)} trained ({len(outcome.resumed)} resumed), {len(outcome.skipped)} skipped as finished, "
          f"{len(plan.runs) - len(outcome.rows)} to go")
    if outcome.files:
        print("wrote " + ", ".join(str(f) for f in outcome.files))
    print(f"compare in TensorBoard: tensorboard --logdir {plan.out}  (HPARAMS tab)")
    return 130 if outcome.interrupted else 0


if __name__ == "__main__":
    sys.exit(run(main))
