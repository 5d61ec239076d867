"""Results of a sweep as tables: one row per run in results.csv, results.json and results.md."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from rnn_train.experiments.sweep.plan import PlannedRun, SweepPlan
from rnn_train.files import atomic_write_json, atomic_write_text


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


def _fmt(value: Any, column: str) -> str:
    if isinstance(value, float):
        if column == "wall_s" and math.isnan(value):  # not known: a run taken from disk by a rebuilt study
            return "?"
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


def write_results(plan: SweepPlan, rows: list[dict[str, Any]], study: str = "") -> list[Path]:
    """results.csv, results.json and results.md in the sweep directory (rows in grid order); `study`
    names the Optuna study in results.json."""

    out = plan.out
    grid_columns = [plan.labels[k] for k in plan.grid]
    columns = ["run", *grid_columns, *METRIC_COLUMNS]
    lines: list[list[str]] = [columns]
    for r in rows:
        lines.append([repr(r[c]) if isinstance(r[c], float) else str(r[c]) for c in columns])
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(lines)
    atomic_write_text(out / "results.csv", buf.getvalue())
    atomic_write_json(out / "results.json", {"sweep": {**plan.describe(), "study": study}, "runs": rows})  # NaN -> null
    title = f"Sweep {out}: {plan.budget.describe()} per run"
    atomic_write_text(out / "results.md", f"{title}\n\n" + markdown_table(rows, grid_columns))
    return [out / "results.csv", out / "results.json", out / "results.md"]
