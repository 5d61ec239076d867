"""What a tuning study leaves in --out: results.csv, best.yaml and the study's plots.

Everything is read from the study (the trials' states, parameters and user attributes; see
study/trials.py), not from the run directories, so any process with the storage writes the same
tables, whichever machine ran which trial.

    results.csv      one row per trial: number, state, parameters, best and final validation loss,
                     tokens, training and wall seconds, why it stopped, its run directory, a note
                     (why a trial failed and which trial continues it; which trial a copy continues)
    best.yaml        the best finished trial's config as a recipe: `rnn-train train --config best.yaml`
    history.png      the objective of every trial in order, and the best so far
    importances.png  how much each parameter mattered (Optuna's PED-ANOVA estimate; from 2 trials on)
    curves.png       each trial's validation losses over its budget (pruned trials stop early)
"""
from __future__ import annotations

import csv
import io
import math
import warnings
from pathlib import Path
from typing import Any, Callable

from optuna.trial import FrozenTrial, TrialState

from rnn_train.cli import program
from rnn_train.config import build_config, config_to_yaml
from rnn_train.experiments.study.trials import describe_params
from rnn_train.files import atomic_write_text, save_figure, shell_word

COLUMNS = ("best_val_loss", "final_val_loss", "tokens", "train_s", "wall_s", "stopped_by", "run_dir", "host")


def _notes(trials: list[FrozenTrial]) -> dict[int, str]:
    """Per trial: why it failed and which trial continues it, or which trial it continues."""
    successor = {t.system_attrs["retry_history"][-1]: t.number for t in trials if t.system_attrs.get("retry_history")}
    notes = {}
    for t in trials:
        parts = [t.user_attrs["note"]] if t.user_attrs.get("note") else []
        if t.state == TrialState.FAIL:
            parts.append(t.user_attrs.get("failure", "failed"))
            if t.number in successor:
                parts.append(f"continued by trial {successor[t.number]}")
        history = t.system_attrs.get("retry_history")
        if history:
            step = t.user_attrs.get("resumed_at_step")
            parts.append(f"continues trial {history[-1]}" + (f" from step {step}" if step else ""))
        notes[t.number] = "; ".join(parts)
    return notes


def result_rows(trials: list[FrozenTrial], keys: list[str]) -> list[dict[str, Any]]:
    notes = _notes(trials)
    rows = []
    for t in sorted(trials, key=lambda t: t.number):
        r = t.user_attrs.get("result") or {}
        row: dict[str, Any] = {"trial": t.number, "state": t.state.name}
        row.update({k: t.params.get(k, "") for k in keys})
        row.update({"value": t.value if t.value is not None else "",
                    "best_val_loss": r.get("best_val_loss", ""), "final_val_loss": r.get("val_loss", ""),
                    "tokens": r.get("tokens", ""), "train_s": r.get("train_seconds", ""),
                    "wall_s": t.user_attrs.get("wall_seconds", ""), "stopped_by": r.get("stopped_by", ""),
                    "run_dir": t.user_attrs.get("run_dir", ""), "host": t.user_attrs.get("host", ""),
                    "note": notes[t.number]})
        rows.append(row)
    return rows


def write_results(out: Path, trials: list[FrozenTrial], keys: list[str]) -> Path:
    rows = result_rows(trials, keys)
    columns = ["trial", "state", *keys, "value", *COLUMNS, "note"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for row in rows:
        w.writerow([repr(row[c]) if isinstance(row[c], float) else row[c] for c in columns])
    atomic_write_text(out / "results.csv", buf.getvalue())
    return out / "results.csv"


def best_trial(trials: list[FrozenTrial]) -> FrozenTrial | None:
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)]
    return min(done, key=lambda t: (t.value, t.number)) if done else None


def _one_line(text: str) -> str:
    """Text for a YAML comment line: a newline (in a directory's name) would end the comment there and
    make the rest of the line YAML."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def write_best(out: Path, best: FrozenTrial, study_name: str, n_finished: int) -> Path:
    """best.yaml: the best trial's config, its logging pointed at runs/best (a recipe like any other)."""
    raw = best.user_attrs["config"]
    raw = {**raw, "log": {**raw.get("log", {}), "dir": "runs", "name": ""}}
    cfg = build_config(raw, source=f"trial {best.number}'s config")
    r = best.user_attrs.get("result") or {}
    params = describe_params(best.params)
    lines = [f"The best of {n_finished} finished trials of the study {study_name} (rnn-train tune): trial "
             f"{best.number},", f"best validation loss {best.value:.4f} after {r.get('tokens', 0):,} training tokens "
             f"({r.get('train_seconds', 0):.1f} s of training).", f"Searched: {params}",
             f"Train it: {program()} train --config {shell_word(out / 'best.yaml')}"]
    header = "".join(f"# {_one_line(line)}\n" for line in lines)
    atomic_write_text(out / "best.yaml", header + config_to_yaml(cfg))
    return out / "best.yaml"



def write_plots(out: Path, study, evals: int, log: Callable[[str], None] = print) -> list[Path]:
    """history.png, importances.png, curves.png with Optuna's matplotlib plots; a plot that needs
    more trials than there are is skipped with a line in the log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.value is not None and math.isfinite(t.value)]
    plots = [("history.png", ovm.plot_optimization_history, 1),
             ("importances.png", ovm.plot_param_importances, 2),
             ("curves.png", ovm.plot_intermediate_values, 1)]
    written = []
    for name, plot, needed in plots:
        if len(complete) < needed:
            log(f"{name}: skipped (needs {needed} finished trial{'s' if needed != 1 else ''}, the study has "
                f"{len(complete)})")
            continue
        try:
            with warnings.catch_warnings(record=True) as said:  # into the log, once, not as stderr's warnings
                warnings.simplefilter("always", UserWarning)
                ax = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as e:
            log(f"{name}: skipped ({e})")
            continue
        for message in dict.fromkeys(str(w.message) for w in said if issubclass(w.category, UserWarning)):
            log(f"{name}: {message}")
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        if name == "history.png":
            ax.set_ylabel("best validation loss of the trial")
        if name == "curves.png":
            ax.set_title("Validation loss of each trial")
            ax.set_xlabel(f"trial budget used (in {evals}ths)" if evals > 3 else f"trial budget used (1/{evals} steps)")
            ax.set_ylabel("validation loss")
            if ax.get_legend() is not None:
                ax.get_legend().remove()
        fig.set_size_inches(7.5, 4.8)
        fig.tight_layout()
        save_figure(fig, out / name, dpi=110)
        plt.close(fig)
        written.append(out / name)
    return written

