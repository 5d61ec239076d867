"""Plots of a sweep: final validation perplexity and speed against the first grid key, and the
validation curves of every run (matplotlib, Agg backend)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

from rnn_train.experiments.sweep.plan import NUM_STEPS_KEY, SweepPlan
from rnn_train.files import save_figure



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
        save_figure(fig, plan.out / fname)
        plt.close(fig)
        written.append(plan.out / fname)
    curves = _plot_val_curves(plan, rows, x_key, plt)
    if curves:
        written.append(curves)
    return written


def read_val_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, val/ppl) pairs from a run's TensorBoard events; [] when there are none."""
    from rnn_train.training.events import read_series

    return read_series(run_dir, "val/ppl")


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
    save_figure(fig, path)
    plt.close(fig)
    return path
