"""Checkpoints: one dict of plain data and tensors, written atomically, read with weights_only=True.

What the dict holds is defined in one place, `training.state.RunState.to_checkpoint` (and read back
by `RunState.from_checkpoint`); this module only stamps, writes, finds and checks the file. The
layout is still version 1: files written by every earlier rnn-train load and resume exactly
(tests/test_checkpoint_compat.py). A future layout change bumps VERSION and adds a converter from
the older versions in `load_checkpoint`, so that old files keep loading.

Why plain data: `torch.load(weights_only=True)` refuses pickled objects, so a checkpoint from an
untrusted source cannot run code; and a checkpoint keeps working when classes are renamed. The vocab
is a list of characters, the config a dict of sections, RNG states are tensors.

Why atomic: a crash or Ctrl-C in the middle of `torch.save` must never leave a half-written
`best.pt` in place of a good one (see `files.atomic_write_bytes`).
"""
from __future__ import annotations

import math
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from rnn_train.errors import UserError
from rnn_train.files import atomic_write_bytes, refuse_special
from rnn_train.runfiles import BEST, LAST

FORMAT = "rnn-train-checkpoint"
VERSION = 1
REQUIRED = ("model", "config", "vocab", "step")
COUNTS = ("step", "epoch", "batch_in_epoch", "tokens", "evals_since_best")
"""Keys that hold a whole number >= 0 where present (what the commands that print or resume read)."""
NUMBERS = ("val_loss", "best_val_loss", "train_seconds")
"""Keys that hold a number (or None) where present."""


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Save `payload` (must hold REQUIRED keys) atomically, stamped with format and version."""
    missing = [k for k in REQUIRED if k not in payload]
    if missing:
        raise ValueError(f"checkpoint payload lacks {missing}")  # a bug, not a user error
    payload = {"format": FORMAT, "version": VERSION, **payload}
    atomic_write_bytes(Path(path), lambda f: torch.save(payload, f))


def resolve_checkpoint(path: str | Path, prefer: str | None = None) -> Path:
    """A file is itself; a run directory means its `prefer` checkpoint (default best.pt), else
    whichever exists. An empty name is refused (Path("") is the current directory)."""
    if not str(path).strip():
        raise UserError("--checkpoint is empty: give a .pt file or a run directory")
    path = Path(path)
    if path.is_dir():
        names = list(dict.fromkeys((prefer or BEST, BEST, LAST)))
        for name in names:
            if (path / name).is_file():
                return path / name
        raise UserError(f"{path} is a directory without a checkpoint (no {' or '.join(names)})")
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    return path


def refuse_not_finite(values) -> None:
    """The one-line error of a diverged checkpoint, where any of `values` (NumPy arrays or tensors:
    weights, or a model's logits) holds a NaN or an inf. max |x| is NaN or inf exactly then (NaN
    propagates through max), and reads each array once: 5x torch.isfinite(x).all() on a GRU-256's
    weights. The NumPy and the C++ steppers check the weights with it, generation the warm-up's logits."""
    if not all_finite(values):
        raise UserError("the model's outputs are not finite (a diverged checkpoint?); use an earlier checkpoint")


def all_finite(values) -> bool:
    """Whether every one of `values` (NumPy arrays or tensors, none empty) holds only finite numbers."""
    return all(math.isfinite(abs(v).max()) for v in values)


def _not_zip(path: Path) -> str:
    """Why a file that is no zip archive is no checkpoint: empty, cut off (a zip's first bytes without
    the directory a zip ends with: a copy or download that stopped early), or something else."""
    try:
        with open(path, "rb") as f:
            start = f.read(4)
            size = f.seek(0, 2)
    except OSError as e:
        return e.strerror or e.__class__.__name__
    if size == 0:
        return "the file is empty"
    if start == b"PK\x03\x04":
        return f"it ends after {size:,} bytes, before a checkpoint's end: a copy or a write that stopped early?"
    return "not a PyTorch checkpoint file at all"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and sanity-check a checkpoint of this project; anything else is a one-line UserError."""
    path = Path(path)
    refuse_special(path, "checkpoint")
    if path.is_file() and not zipfile.is_zipfile(path):
        raise UserError(f"{path} is not an rnn-train checkpoint ({_not_zip(path)})")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{path} is not an rnn-train checkpoint: it holds pickled objects besides tensors and "
                        f"plain data, and is not loaded (weights_only)") from None
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"checkpoint {path} is a directory") from None
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError, KeyError, OSError,
            AttributeError, TypeError, UnicodeDecodeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise UserError(f"{path} is not a readable rnn-train checkpoint ({reason[:120]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not an rnn-train checkpoint (no '{FORMAT}' marker)")
    if ckpt.get("version") != VERSION:
        raise UserError(f"{path} is checkpoint version {ckpt.get('version')}; this rnn-train reads version {VERSION}")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise UserError(f"{path} is an incomplete rnn-train checkpoint (missing {', '.join(missing)})")
    if not isinstance(ckpt["model"], dict) or not all(isinstance(v, torch.Tensor) for v in ckpt["model"].values()):
        raise UserError(f"{path} is a damaged rnn-train checkpoint: its 'model' is not a mapping of names to tensors")
    for key in COUNTS:
        if key in ckpt and (type(ckpt[key]) is not int or not 0 <= ckpt[key] < 2**63):
            raise UserError(f"{path} is a damaged rnn-train checkpoint: its {key!r} is {ckpt[key]!r:.40}, not a count")
    for key in NUMBERS:
        if ckpt.get(key) is not None and type(ckpt[key]) not in (int, float):
            raise UserError(f"{path} is a damaged rnn-train checkpoint: its {key!r} is {ckpt[key]!r:.40}, not a number")
    from rnn_train.data.vocab import Vocab

    try:
        Vocab.from_list(ckpt["vocab"])
    except UserError as e:  # a tampered or damaged vocab: say which file holds it
        raise UserError(f"{path}: {e}") from None
    # training never saves such weights (it stops at a non-finite loss): the file was damaged after it
    if not all_finite(v for v in ckpt["model"].values() if v.is_floating_point() and v.numel()):
        raise UserError(f"{path}: the model's weights are not all finite (a damaged checkpoint); use an earlier checkpoint")
    return ckpt


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """Checkpoint file or run directory -> (model in eval mode, vocab, config, checkpoint dict).
    Draws nothing from torch's global generator (the weights are the checkpoint's)."""
    from rnn_train.config import build_config
    from rnn_train.model.charrnn import CharRNN
    from rnn_train.data.vocab import Vocab

    device = _device(device)
    ckpt_path = resolve_checkpoint(path)
    ckpt = load_checkpoint(ckpt_path, map_location=device)
    cfg = build_config(ckpt["config"], source=str(ckpt_path))
    vocab = Vocab.from_list(ckpt["vocab"])  # load_checkpoint has checked it
    with torch.random.fork_rng(devices=[]):  # the initial weights' draws, overwritten at once
        model = CharRNN.from_config(len(vocab), cfg.model)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise UserError(f"{ckpt_path}: weights do not fit the model its config describes "
                        f"({_load_problems(e)})") from None
    model.to(device).eval()
    return model, vocab, cfg, ckpt


def _load_problems(error: RuntimeError, limit: int = 300) -> str:
    """torch's load_state_dict error on one line: its first line is only "Error(s) in loading
    state_dict for CharRNN:", the keys and shapes at fault follow it, one per line."""
    lines = [" ".join(line.split()).rstrip(".") for line in str(error).splitlines()]
    text = "; ".join(line for line in lines[1:] if line) or lines[0]
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _device(device: str | torch.device) -> torch.device:
    """`device` checked before the file is read: a device this machine lacks is not the file's fault."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UserError(f"{device!r} is not a device (cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device} asked for, but no CUDA device is available (use cpu)")
    return device


def describe(model, vocab, cfg, ckpt: dict) -> dict:
    """A loaded model (`load_model`'s four values) as plain data: what `rnn-train serve` answers at
    GET /v1/model and `rnn-train export` writes beside the graph."""
    m = cfg.model
    return {"cell": m.cell, "num_layers": m.num_layers, "hidden_size": m.hidden_size, "embedding": m.embedding,
            "embed_dim": m.embed_dim if m.embedding == "learned" else None,
            "dtype": str(model.decoder.weight.dtype).removeprefix("torch."),  # the model's: it may have been cast
            "state": list(model.spec.state), "parameters": sum(p.numel() for p in model.parameters()),
            "vocab_size": len(vocab), "vocab": list(vocab.itos),
            "corpus": {"kind": cfg.data.kind, "tones": cfg.data.tones, "letters_only": cfg.data.letters_only},
            "steps": int(ckpt.get("step", 0)), "val_loss": _number(ckpt.get("val_loss")),
            "best_val_loss": _number(ckpt.get("best_val_loss"))}


def _number(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
