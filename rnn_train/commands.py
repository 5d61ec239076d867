"""The one table of commands, and the dispatcher every entry point goes through.

    python -m rnn_train <command> [args]        (also `rnn-train <command>` once installed)
    python train.py ...   = python -m rnn_train train ...
    python predict.py ... = python -m rnn_train predict ...

Each command is a module with `main(argv, prog) -> int`, imported only when that command runs (so
`--help` of one command does not pay for importing torch or matplotlib for another). Whatever the
entry point, a `UserError` ends as one line `error: ...` with exit status 2 (see `cli.run`).
"""
from __future__ import annotations

import importlib
import signal
import sys
from dataclasses import dataclass

from rnn_train.cli import ArgumentParser, program, run, signals_handled


@dataclass(frozen=True)
class Command:
    module: str  # where its `main(argv, prog)` lives
    help: str  # one line for `rnn-train --help`


COMMANDS: dict[str, Command] = {
    "train": Command("rnn_train.training.cli", "train a model from a recipe, or --resume a run"),
    "predict": Command("rnn_train.prediction.cli", "next character and a K-character continuation of a prefix"),
    "score": Command("rnn_train.prediction.score", "cross-entropy, perplexity and bits per character of a text under a model"),
    "sweep": Command("rnn_train.experiments.sweep.cli", "a grid of runs with the same budget; tables and plots"),
    "tune": Command("rnn_train.experiments.tune.cli", "search hyperparameters (Optuna): pruning, resumable, many workers"),
    "bench": Command("rnn_train.experiments.bench", "training speed against the textbook loop, as ratios"),
    "gradflow": Command("rnn_train.teaching.gradflow", "||dL/dh_t|| over time: vanishing and exploding gradients"),
    "bptt": Command("rnn_train.teaching.bptt.compare", "the NumPy BPTT against torch.autograd, side by side"),
    "explore": Command("rnn_train.explore.cli", "one offline HTML page that runs a model in the browser: type-ahead, units, gates"),
    "config": Command("rnn_train.config", "every config key with its type, default and meaning"),
    "recipes": Command("rnn_train.recipes", "the packaged recipes --config takes by name, or one recipe's YAML"),
    "download": Command("rnn_train.data.download", "fetch a public corpus a recipe reads into data/, SHA-256 checked"),
    "prepare": Command("rnn_train.data.cli", "turn a recipe's corpus into its cached token file (memory-mapped) now"),
    "serve": Command("rnn_train.serve.cli", "a model behind an HTTP API (FastAPI): next, generate, score; requests batched"),
    "export": Command("rnn_train.export", "a model's one-character step as an ONNX graph, checked with onnxruntime"),
}


def run_command(name: str, argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run one command as its own entry point would: one-line errors, exit status as an int."""
    prog = prog or f"{program()} {name}"
    # imported inside `run`: a Ctrl-C during the command's imports (torch: a second) is one line too
    return run(lambda args: import_holding_ctrl_c(COMMANDS[name].module).main(args, prog=prog), argv)


def import_holding_ctrl_c(module: str):
    """Import `module` with Ctrl-C held until the import ends, then raised (KeyboardInterrupt). Why:
    importing torch runs C++ that calls back into Python, and a KeyboardInterrupt raised inside such
    a call aborted the process ("terminate called after throwing an instance of
    'pybind11::error_already_set'", exit -6) or was lost, the command then running to its end."""
    pressed: list[int] = []
    with signals_handled(lambda signum, frame: pressed.append(signum), signal.SIGINT):
        loaded = importlib.import_module(module)
    if pressed:
        raise KeyboardInterrupt
    return loaded


def _usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {c.help}" for name, c in COMMANDS.items())
    return (f"commands:\n{rows}\n\n'{program()} COMMAND --help' describes one command; "
            f"'{program()} --version' prints the version.")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:  # a mistake, so one error line (the list of commands is --help)
        print(f"error: no command given; one of {', '.join(COMMANDS)} (see {program()} --help)", file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        print(f"usage: {program()} COMMAND [ARGS ...]\n\n{_usage()}")
        return 0
    if argv[0] == "--version":
        from rnn_train import __version__

        print(f"rnn-train {__version__}")
        return 0
    if argv[0] not in COMMANDS:
        ap = ArgumentParser(prog=program())
        from difflib import get_close_matches

        close = get_close_matches(argv[0], list(COMMANDS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else f"; one of {', '.join(COMMANDS)}"
        ap.error(f"unknown command {argv[0]!r}{hint}")
    return run_command(argv[0], argv[1:])
