"""Typed configuration: YAML + dotted CLI overrides -> one validated, read-only `Config`.

Why this shape: a typo in a config file must never pass silently (an unknown key is an error that
suggests the closest valid key), and a user fixing a config wants to see *every* problem at once,
not one per run. So loading is two passes: convert each key with its field's declared type, then
let each section check its own ranges in `__post_init__`; all problems are gathered and raised as
one `UserError` whose message lists them with their dotted key paths.

Overrides (`train.lr=3e-3`) are converted with the field's type, exactly like YAML values, and are
applied after the file: nothing afterwards changes what the user asked for.
"""
from __future__ import annotations

import dataclasses
import datetime
import difflib
import math
import numbers
import operator
import os
import re
import reprlib
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from rnn_train.errors import UserError, lone_surrogate
from rnn_train.files import refuse_special
from rnn_train.model import cells


FLOAT32_MAX = 3.4028234663852886e38  # the largest finite float32
MAX_THREADS = 1024  # torch threads: more fail to start (libgomp) or crash
MAX_LR = 3e37  # Adam's first update is lr / 0.1 in float32 (3.4e38 at most): above this, a traceback from torch


class _Problems(UserError):
    """Raised by a section's `__post_init__` with every range problem it found, as (key, message):
    the key says whom to blame (build_config: the file, or the override that set it). A UserError:
    a section built directly (`TrainConfig(...)`, `dataclasses.replace`) says its problems in one line."""

    def __init__(self, problems: list[tuple[str, str]]):
        super().__init__("; ".join(f"{key} {message}" for key, message in problems))
        self.problems = problems


def _check(problems: list[tuple[str, str]], ok: bool, key: str, message: str) -> None:
    """Record (key, message) unless ok; `key` is one dotted key, or what a rule over several reads."""
    if not ok:
        problems.append((key, message))


@dataclass(frozen=True)
class DataConfig:
    paths: list[str] = field(default_factory=list)
    """Corpus files, directories (their files, recursively) and globs, joined with a newline. Empty with kind=pinyin: the built-in pypinyin phrase corpus."""
    kind: Literal["text", "pinyin"] = "pinyin"
    """`text`: characters as they are. `pinyin`: Chinese-character files are converted to pinyin; pinyin files kept."""
    encoding: str = "utf-8"
    """Encoding of every file in `paths` (e.g. gbk)."""
    tones: Literal["none", "numbers"] = "none"
    """Pinyin conversion style: `none` (zhong guo) or `numbers` (zhong1 guo2, neutral tone 5)."""
    letters_only: bool = False
    """Lowercase and turn every run of characters other than the ASCII letters A-Z into one space (the d2l Time Machine preprocessing: accented and non-Latin letters go too)."""
    val_fraction: float = 0.1
    """Tail of the corpus held out for validation (contiguous)."""
    test_fraction: float = 0.0
    """Slice before the validation tail held out as a test split, scored once at the end with best.pt; 0 = none."""
    min_freq: int = 1
    """Characters seen fewer times than this in the corpus map to <unk>."""
    max_size: int = 0
    """Keep at most this many characters in the vocab (most frequent first, plus <unk>); 0 = all."""
    batch_size: int = 32
    """Rows per batch (parallel streams in sequential partitioning)."""
    num_steps: int = 35
    """Time steps per window: the truncated-BPTT horizon."""
    partition: Literal["random", "sequential"] = "random"
    """`random`: shuffled windows, zero state per batch. `sequential`: B streams, state carried and detached."""

    def __post_init__(self) -> None:
        if isinstance(self.paths, (str, os.PathLike)):  # one path given from Python, as a YAML scalar is read
            object.__setattr__(self, "paths", [os.fspath(self.paths)])  # (a string walked char by char: "/" first)
        p: list[tuple[str, str]] = []
        _check(p, 0.0 <= self.val_fraction < 1.0, "data.val_fraction", f"must be in [0, 1), got {self.val_fraction}")
        _check(p, 0.0 <= self.test_fraction < 1.0, "data.test_fraction", f"must be in [0, 1), got {self.test_fraction}")
        _check(p, bool(p) or self.val_fraction + self.test_fraction < 1.0, "data.val_fraction + data.test_fraction",
               "must be below 1 (nothing left to train on)")  # not said again of a fraction already refused
        _check(p, self.min_freq >= 1, "data.min_freq", f"must be >= 1, got {self.min_freq}")
        _check(p, self.max_size >= 0, "data.max_size", f"must be >= 0 (0 = unlimited), got {self.max_size}")
        _check(p, self.batch_size >= 1, "data.batch_size", f"must be >= 1, got {self.batch_size}")
        _check(p, self.num_steps >= 1, "data.num_steps", f"must be >= 1, got {self.num_steps}")
        _check(p, bool(self.encoding.strip()), "data.encoding", "must not be empty")
        empty = [i for i, entry in enumerate(self.paths, 1) if not entry.strip()]  # "" would read the current directory
        _check(p, not empty, "data.paths", f"entry {empty[0] if empty else 0} of {len(self.paths)} is "
               f"{'empty' if not empty or not self.paths[empty[0] - 1] else 'only white space'}")
        _check(p, self.kind == "pinyin" or bool(self.paths), "data.paths",
               "is empty: kind=text needs at least one corpus file (only kind=pinyin has a built-in corpus)")
        if p:
            raise _Problems(p)


@dataclass(frozen=True)
class ModelConfig:
    cell: str = field(default="gru", metadata={"choices": cells.names})
    """Recurrent cell, one of the registered cells (rnn_train/model/cells.py): rnn (tanh Elman RNN), gru, lstm."""
    hidden_size: int = 256
    """Units per layer."""
    num_layers: int = 1
    """Stacked recurrent layers."""
    dropout: float = 0.0
    """Dropout between layers and on the outputs before the decoder (0 = off)."""
    embedding: Literal["one_hot", "learned"] = "one_hot"
    """Input encoding: one-hot vectors of size V (the textbook), or a learned table of size embed_dim."""
    embed_dim: int = 64
    """Size of the learned embedding (ignored for one_hot)."""
    backend: Literal["torch", "numpy"] = "torch"
    """`numpy`: the hand-written BPTT of rnn_train.teaching.bptt with SGD (a cell that has one: rnn, gru, lstm; one layer, one-hot input; for learning, not speed)."""
    dtype: Literal["float32", "float64"] = "float32"
    """Parameter dtype; float64 for gradient comparisons."""
    kernel: Literal["auto", "native", "fused"] = "auto"
    """Training kernel of the recurrent layers. `native`: torch's nn.RNN/GRU/LSTM. `fused`: the hand-written CPU BPTT of rnn_train.kernels (same gradients, faster; its time loop in C++, built once per machine, or in Python where no compiler is found; LSTM needs the C++ loop). `auto`: the fastest of these for the model, measured on first use and remembered per machine (~/.cache/rnn-train). The path taken is logged in the run."""

    def __post_init__(self) -> None:
        p: list[tuple[str, str]] = []
        _check(p, self.hidden_size >= 1, "model.hidden_size", f"must be >= 1, got {self.hidden_size}")
        _check(p, self.num_layers >= 1, "model.num_layers", f"must be >= 1, got {self.num_layers}")
        _check(p, 0.0 <= self.dropout < 1.0, "model.dropout", f"must be in [0, 1), got {self.dropout}")
        _check(p, self.embed_dim >= 1, "model.embed_dim", f"must be >= 1, got {self.embed_dim}")
        _check(p, self.cell in cells.names(), "model.cell", cells.unknown_cell_message(self.cell))
        if self.backend == "numpy" and self.cell in cells.names():
            with_bptt = [name for name in cells.names() if "bptt" in cells.get(name).hooks]
            _check(p, self.cell in with_bptt, "model.cell",
                   f"must be a cell with a hand-written BPTT ({' | '.join(with_bptt)}) with backend=numpy, got {self.cell}")
            _check(p, self.num_layers == 1, "model.num_layers", "must be 1 with backend=numpy")
            _check(p, self.embedding == "one_hot", "model.embedding", "must be one_hot with backend=numpy")
            _check(p, self.dropout == 0.0, "model.dropout", "must be 0 with backend=numpy")
            _check(p, self.kernel == "auto", "model.kernel",
                   f"must be auto with backend=numpy (the NumPy BPTT is the kernel), got {self.kernel}")
        if p:
            raise _Problems(p)


@dataclass(frozen=True)
class TrainConfig:
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    """Optimiser."""
    lr: float = 2e-3
    """Peak learning rate (at most 3e37)."""
    momentum: float = 0.0
    """SGD momentum."""
    weight_decay: float = 0.0
    """L2 (sgd, adam) or decoupled (adamw) weight decay."""
    schedule: Literal["constant", "cosine", "plateau"] = "constant"
    """LR schedule after warmup: constant, cosine decay to min_lr, or reduce-on-plateau of val loss."""
    warmup_steps: int = 0
    """Linear warmup to lr over this many steps (update k of them at lr * k / warmup_steps)."""
    min_lr: float = 0.0
    """Floor of the cosine schedule."""
    plateau_factor: float = 0.5
    """Multiply the LR by this when val loss stops improving (schedule=plateau)."""
    plateau_patience: int = 2
    """Validations without improvement before the LR is cut (schedule=plateau)."""
    epochs: int = 0
    """Passes over the training split (0 = no limit; some limit must be set)."""
    max_steps: int = 0
    """Optimiser updates (0 = no limit). With several limits, training stops at the first reached."""
    max_tokens: int = 0
    """Training tokens (batch_size × num_steps per update; 0 = no limit): the fair budget across num_steps."""
    max_time: float = 0.0
    """Seconds of training, validation excluded (0 = no limit)."""
    clip_norm: float = 1.0
    """Clip the global gradient norm to this (0 = no clipping; the pre-clip norm is logged either way)."""
    eval_every: int = 200
    """Validate every N updates (0 = once per epoch) and at the end."""
    patience: int = 0
    """Early stopping: stop after this many validations without a new best (0 = off)."""
    seed: int = 0
    """Seeds Python, NumPy and torch; the same config and seed give the same losses on CPU."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """`auto` takes CUDA when present."""
    threads: int = 0
    """torch CPU threads (0 = torch's default)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Arithmetic of the training step's matrix products. `fp32`: float32 throughout. `bf16`: the products in bfloat16 with float32 sums; weights, optimiser state, loss and softmax stay float32 (CPUs with AVX512-BF16 or AMX, CUDA GPUs with bf16; elsewhere a note and float32). `auto`: bf16 where the hardware has it and it measured faster for the model on first use (remembered per machine, like model.kernel), else fp32. Evaluation, sampling and checkpoints are always float32. The precision taken is logged in the run."""

    def __post_init__(self) -> None:
        p: list[tuple[str, str]] = []
        _check(p, 0 < self.lr <= MAX_LR, "train.lr", f"must be in (0, {MAX_LR:g}], got {self.lr}")
        _check(p, self.momentum >= 0, "train.momentum", f"must be >= 0, got {self.momentum}")
        _check(p, self.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(p, self.warmup_steps >= 0, "train.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        # against train.lr only when train.lr itself is valid: its own error says what is wrong
        _check(p, self.min_lr >= 0, "train.min_lr", f"must be >= 0, got {self.min_lr}")
        _check(p, not self.min_lr > self.lr > 0, "train.min_lr", f"must be <= train.lr ({self.lr}), got {self.min_lr}")
        _check(p, 0 < self.plateau_factor < 1, "train.plateau_factor", f"must be in (0, 1), got {self.plateau_factor}")
        _check(p, self.plateau_patience >= 0, "train.plateau_patience", f"must be >= 0, got {self.plateau_patience}")
        for key in ("epochs", "max_steps", "max_tokens", "eval_every", "patience", "threads"):
            value = getattr(self, key)
            _check(p, value >= 0, f"train.{key}", f"must be >= 0, got {value}")
        _check(p, self.max_time >= 0, "train.max_time", f"must be >= 0, got {self.max_time}")
        _check(p, self.clip_norm >= 0, "train.clip_norm", f"must be >= 0 (0 = off), got {self.clip_norm}")
        _check(p, 0 <= self.seed < 2**63, "train.seed", f"must be in [0, 2^63), got {self.seed}")
        _check(p, self.threads <= MAX_THREADS, "train.threads", f"must be at most {MAX_THREADS}, got {self.threads}")
        _check(p, any((self.epochs, self.max_steps, self.max_tokens, self.max_time)), "train.epochs",
               "and train.max_steps, train.max_tokens, train.max_time are all 0: set at least one limit")
        if self.schedule == "cosine":
            _check(p, any((self.epochs, self.max_steps, self.max_tokens)), "train.schedule",
                   "cosine needs a known length: set train.max_steps, train.epochs or train.max_tokens")
        if p:
            raise _Problems(p)


@dataclass(frozen=True)
class LogConfig:
    dir: str = "runs"
    """Parent directory of run directories (a leading ~ is the home directory, as in data.paths)."""
    name: str = ""
    """Run directory name under `dir` (default: the config file's stem)."""
    log_every: int = 50
    """Log training scalars every N updates."""
    sample_prefix: str = ""
    """Prefix for the text sample at each validation (default: the start of the validation split)."""
    sample_length: int = 100
    """Characters generated for that sample (0 = no sample)."""
    tensorboard: bool = True
    """Write TensorBoard event files into the run directory."""

    def __post_init__(self) -> None:
        p: list[tuple[str, str]] = []
        _check(p, self.log_every >= 1, "log.log_every", f"must be >= 1, got {self.log_every}")
        _check(p, self.sample_length >= 0, "log.sample_length", f"must be >= 0, got {self.sample_length}")
        _check(p, "/" not in self.name and "\0" not in self.name and self.name not in (".", ".."), "log.name",
               f"must be a plain directory name, got {self.name!r}")
        size = 0 if lone_surrogate(self.name, bytes_ok=True) else len(os.fsencode(self.name))  # "\ud800": no bytes
        _check(p, size <= 255, "log.name", f"must be at most 255 bytes long, got {size}")  # Linux's and macOS's limit
        _check(p, bool(self.dir.strip()) and "\0" not in self.dir, "log.dir",
               f"must be a directory path (. for the current directory; in YAML a bare ~ is null: write '~' for "
               f"the home directory), got {self.dir!r}")
        for key, value in (("log.name", self.name), ("log.dir", self.dir)):  # TensorBoard writes only UTF-8 paths
            _check(p, not lone_surrogate(value), key,
                   f"must be UTF-8 text (TensorBoard cannot write under it), got {value!r}")
        if p:
            raise _Problems(p)
        if self.dir.startswith("~"):  # as data.paths reads it; else a directory named "~" in the current one
            object.__setattr__(self, "dir", os.path.expanduser(self.dir))


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "log": LogConfig}


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain data (lists, strings, numbers) for YAML and checkpoints."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    def replace(self, **sections: Any) -> "Config":
        return dataclasses.replace(self, **sections)


# ----------------------------------------------------------------------------------------------
# conversion


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


_SHOWN = reprlib.Repr()  # (keyword arguments only from Python 3.12)
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxdict, _SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxlong = 2, 6, 6, 80, 80, 40


def _shown(value: Any) -> str:
    """A value the user gave, as an error message quotes it: repr, cut short. A nested list of
    aliases (YAML's "billion laughs") or a long string must not make a message of megabytes."""
    return _SHOWN.repr(value)


def _convert_field(value: Any, cls: type, name: str, key: str, from_string: bool) -> Any:
    """`value` converted to field `name` of section `cls` (its type, then its registered choices:
    a field whose values come from a registry, like model.cell, names them in its metadata)."""
    given = value
    value = _convert(value, _field_types(cls)[name], key, from_string)
    choices = {f.name: f for f in dataclasses.fields(cls)}[name].metadata.get("choices")
    if choices is not None and value not in choices():
        options = list(choices())
        got = "nothing (null)" if given is None else f"{_shown(value)}{_did_you_mean(str(value), options)}"
        raise ValueError(f"{key} must be one of {' | '.join(options)}, got {got}")
    return value


def _convert(value: Any, tp: Any, key: str, from_string: bool) -> Any:
    """Convert `value` to the field type `tp`, or raise ValueError with a message naming `key`."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ValueError(f"{key} must be one of {' | '.join(choices)}, got {_shown(value)}"
                             f"{_did_you_mean(str(value), list(choices))}")
        return value
    if origin is list:
        if from_string and isinstance(value, str):
            value = _split_list(value, key)
        if isinstance(value, (str, int, float, datetime.date)):  # one entry; `paths: 1.10` is told to quote it
            value = [value]
        if value is None:
            value = []
        if not isinstance(value, list) or not all(isinstance(v, (str, int, float, datetime.date, type(None)))
                                                  for v in value):
            raise ValueError(f"{key} must be a list of strings, got {_shown(value)}")
        for i, v in enumerate(value, 1):  # [1.10, 0x1F, on] were the files 1.1, 31 and True
            if not isinstance(v, str):
                raise ValueError(f"{key} entry {i} must be a string, got {_shown(v)}{_read_as(v)}")
        # file names: a byte that is not UTF-8 is held as U+DC80-U+DCFF, which open() takes; no other lone surrogate
        return [_text(str(v), key, file_name=True) for v in value]
    if tp is bool:
        if from_string and isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0", "on", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false, got {_shown(value)}")
        return value
    if tp is int:
        if isinstance(value, str):
            try:
                value = float(value) if any(c in value for c in ".eE") else int(value)
            except ValueError:
                raise ValueError(f"{key} must be an integer, got {_shown(value)}") from None
        if isinstance(value, float) and math.isfinite(value) and value == int(value):
            value = int(value)  # 1e3 or 256.0 (10**400 was an OverflowError here)
        elif not isinstance(value, bool) and hasattr(type(value), "__index__"):
            try:
                value = operator.index(value)  # NumPy's integers, as the Python API's integers take them
            except TypeError:  # an array or tensor that is no single integer: refused below
                pass
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key} must be an integer, got {_shown(value)}")
        if abs(value) > sys.float_info.max:  # TensorBoard's hparams record every key as a double
            raise ValueError(f"{key} must be an integer within a double's range (1.8e308), got {_shown(value)}")
        return value
    if tp is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"{key} must be a number, got {_shown(value)}") from None
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            try:
                value = float(value)  # NumPy's numbers; an int past a double's range raises
            except OverflowError:
                raise ValueError(f"{key} must be a number of float32's range (|x| <= 3.4e38), got "
                                 f"{_shown(value)}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{key} must be a finite number, got {_shown(value)}")
        if abs(value) > FLOAT32_MAX:  # training computes in float32, where it would be inf
            raise ValueError(f"{key} must be a number of float32's range (|x| <= 3.4e38), got {_shown(value)}")
        return float(value)
    if tp is str:
        if value is None:
            return ""
        if not isinstance(value, str):  # YAML read 1.10 as 1.1, 0x1F as 31, 2024-06-01 as a date
            raise ValueError(f"{key} must be a string, got {_shown(value)}{_read_as(value)}")
        return value if key in ("log.dir", "log.name") else _text(value, key)  # those two: their own check says why
    raise TypeError(f"unsupported config field type {tp!r} for {key}")  # a bug, not a user error


def _read_as(value: Any) -> str:
    """What to tell of a non-string value given for text: YAML read an unquoted 1.10 as a number."""
    if isinstance(value, (bool, int, float, datetime.date)):
        kind = "true or false" if isinstance(value, bool) else type(value).__name__
        return f": YAML read it as {kind}; quote it (\"...\") to keep it as typed"
    return ""


def _text(value: str, key: str, file_name: bool = False) -> str:
    """`value`, refused where it holds a lone surrogate (errors.lone_surrogate): YAML's "\\ud800"
    escape, or a command-line byte that is not UTF-8, which no vocab or encoder takes; refused here,
    before anything is written (a sample prefix of one failed after --force had cleared the run).
    A `file_name` may hold the bytes (open() takes them), not other lone surrogates."""
    held = lone_surrogate(value, bytes_ok=file_name)
    if held:
        raise ValueError(f"{key} holds {held}: give it as UTF-8 text")
    return value


def _split_list(text: str, key: str) -> list[Any]:
    """A list override: `a.txt,b.txt`, or YAML flow syntax `[a.txt, b.txt]` as Hydra/OmegaConf users type it.

    Text that starts with `[` and ends with `]` is a YAML flow list, read with BaseLoader so every
    item stays the string the user typed (`[0x10, yes]` are file names here, not 16 and True);
    quoting keeps a comma in a name (`["a,b.txt"]`). `[draft].txt` stays a file name; a file really
    named `[x]` is `./[x]`. A `[` never closed is a typo, not a file name.
    """
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            return yaml.load(text, Loader=yaml.BaseLoader)
        except RecursionError:
            raise ValueError(f"{key}: the list {_shown(text)} is nested too deeply") from None
        except yaml.YAMLError as e:
            why = " ".join(str(getattr(e, "problem", None) or e).split())  # one line (YAML's marks span several)
            raise ValueError(f"{key} is not a valid YAML list {_shown(text)}: {why}") from None
    if text.startswith("[") and "]" not in text:
        raise ValueError(f"{key}: the list {_shown(text)} has no closing ] (a file name starting with [ is written ./[...)")
    if not text:  # `data.paths=$UNSET`: not the empty list, which is written []
        raise ValueError(f"{key} is given no value; write {key}=[] for an empty list")
    items = [v.strip() for v in text.split(",")]
    empty = [i for i, v in enumerate(items, 1) if not v]
    if empty:  # `a.txt,,b.txt`: a name left out, as the YAML list ["a.txt", "", "b.txt"] is refused
        raise ValueError(f"{key}: entry {empty[0]} of {len(items)} is empty in {_shown(text)}")
    return items


def _did_you_mean(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.5)
    return f" (did you mean {close[0]}?)" if close else ""


def field_type(dotted: str) -> Any:
    """The declared type of a config key (`model.hidden_size` -> int); a UserError with the closest
    key for one that does not exist. For callers that name keys outside a config (search spaces)."""
    section, _, key = dotted.partition(".")
    if section not in SECTIONS or not key:
        raise UserError(f"unknown key {dotted}{_did_you_mean(dotted, _all_keys())}")
    types = _field_types(SECTIONS[section])
    if key not in types:
        raise UserError(f"unknown key {dotted}{_did_you_mean(dotted, _all_keys())}")
    return types[key]


def convert_value(dotted: str, value: Any) -> Any:
    """`value` (from YAML, or a string as typed) converted to the key's type, exactly as a config
    file's or an override's value is; a UserError naming the key if it cannot be."""
    field_type(dotted)  # an unknown key: its own error
    section, _, key = dotted.partition(".")
    try:
        return _convert_field(value, SECTIONS[section], key, dotted, from_string=isinstance(value, str))
    except ValueError as e:
        raise UserError(str(e)) from None


def _all_keys() -> list[str]:
    return [f"{s}.{k}" for s, c in SECTIONS.items() for k in _field_types(c)]


def parse_override(text: str) -> tuple[str, str]:
    """`train.lr=3e-3` -> ("train.lr", "3e-3")."""
    key, sep, value = text.partition("=")
    if not sep or "." not in key:
        raise UserError(f"override {_shown(text)} is not of the form section.key=value (e.g. train.lr=0.5)")
    return key.strip(), value.strip()


def override_keys(overrides: list[str]) -> set[str]:
    """The keys a list of overrides sets, as typed (a malformed one is load_config's to report)."""
    return {o.partition("=")[0].strip() for o in overrides}


def blamed_on(override: str) -> str:
    """The front of a problem that an override brought: the override as typed."""
    return f"override {_shown(override)}: "


def build_config(raw: dict[str, Any], overrides: list[str] | tuple[str, ...] = (), source: str = "config") -> Config:
    """Merge `raw` (parsed YAML or a checkpoint's dict) with `overrides`, convert, validate, all problems at once.

    A key or value that an override brought is blamed on that override, not on `source`: a typo
    typed on the command line is not in the file the message would otherwise name."""
    problems: list[str] = []  # about `source` (and the values as merged)
    from_overrides: list[str] = []  # each about one override, which it names
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{source}: the top level must be a mapping of sections ({', '.join(SECTIONS)})")
    values: dict[str, dict[str, tuple[Any, bool]]] = {name: {} for name in SECTIONS}
    for section, body in raw.items():
        if section not in SECTIONS:
            problems.append(f"unknown section {_shown(section)}{_did_you_mean(str(section), list(SECTIONS))}")
            continue
        if body is None:
            continue
        if not isinstance(body, dict):
            problems.append(f"{section} must be a mapping of keys, got {_shown(body)}")
            continue
        for key, value in body.items():
            values[section][str(key)] = (value, None)
    for text in overrides:
        dotted, value = parse_override(text)
        section, _, key = dotted.partition(".")
        if section not in SECTIONS:
            from_overrides.append(f"{blamed_on(text)}unknown section {section!r}{_did_you_mean(section, list(SECTIONS))}")
            continue
        values[section][key] = (value, text)

    def blame(keys: list[str], text: str) -> None:
        """A broken rule over the dotted `keys`: on the override that set the first of them, else on `source`."""
        brought = [o for section, _, key in (k.partition(".") for k in keys)
                   if (o := values[section].get(key, (None, None))[1]) is not None]
        if brought:
            from_overrides.append(f"{blamed_on(brought[0])}{text}")
        else:
            problems.append(text)

    sections: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        types = _field_types(cls)
        kwargs: dict[str, Any] = {}
        unread: list[str] = []  # keys whose value did not convert: the rules below would see the default
        for key, (value, override) in values[section].items():
            dotted = f"{section}.{key}"
            blamed = problems if override is None else from_overrides
            label = "" if override is None else blamed_on(override)
            if key not in types:
                blamed.append(f"{label}unknown key {dotted}{_did_you_mean(dotted, _all_keys())}")
                continue
            try:
                kwargs[key] = _convert_field(value, cls, key, dotted, override is not None)
            except ValueError as e:
                blamed.append(f"{label}{e}")
                unread.append(dotted)
        try:
            sections[section] = cls(**kwargs)
        except _Problems as e:
            for key, message in e.problems:
                if any(re.search(rf"\b{re.escape(k)}\b", f"{key} {message}") for k in unread):
                    continue  # a rule over a key that did not convert: its own error is said above
                blame(re.findall(rf"\b{section}\.\w+", key), f"{key} {message}")  # "a + b" names two keys
    if not problems and not from_overrides:
        for keys, message in _cross_section_problems(sections):
            blame(list(keys), message)
    if problems or from_overrides:
        raise UserError("; ".join(([f"{source}: " + "; ".join(problems)] if problems else []) + from_overrides))
    return Config(**sections)


def _cross_section_problems(s: dict[str, Any]) -> list[tuple[tuple[str, ...], str]]:
    """Rules that involve keys of two sections: (the keys whose values break the rule, its message)."""
    p: list[tuple[tuple[str, ...], str]] = []
    model, train = s["model"], s["train"]
    if model.backend == "numpy":
        breaking = [key for key, ok in (("train.optimizer", train.optimizer == "sgd"), ("train.momentum", not train.momentum),
                                        ("train.weight_decay", not train.weight_decay)) if not ok]
        if breaking:  # the keys whose values break the rule, not those that already keep it
            p.append((("model.backend", *breaking), "model.backend=numpy updates with plain SGD: set "
                      "train.optimizer=sgd, train.momentum=0, train.weight_decay=0"))
    if train.precision == "bf16":
        for key, value in (("backend", "torch"), ("dtype", "float32")):
            if getattr(model, key) != value:
                p.append((("train.precision", f"model.{key}"), f"train.precision=bf16 needs model.{key}={value}"))
    return p


class _UniqueKeys(yaml.SafeLoader):
    """yaml.safe_load's loader, except that a key given twice in one mapping is an error: YAML
    would keep the later value without a word, and in a config that is usually a typo'd copy.
    And YAML 1.1's base-60 numbers stay text: `max_time: 1:30` read as 90 would be a silent
    surprise; as text it gets the same "must be a number" error as the override `train.max_time=1:30`."""

    def construct_yaml_int(self, node):
        return self.construct_scalar(node) if ":" in str(node.value) else super().construct_yaml_int(node)

    def construct_yaml_float(self, node):
        return self.construct_scalar(node) if ":" in str(node.value) else super().construct_yaml_float(node)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep) if key_node.tag != "tag:yaml.org,2002:merge" else None
            if key is not None and isinstance(key, typing.Hashable):
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice",
                                                            key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


_UniqueKeys.add_constructor("tag:yaml.org,2002:int", _UniqueKeys.construct_yaml_int)
_UniqueKeys.add_constructor("tag:yaml.org,2002:float", _UniqueKeys.construct_yaml_float)


def load_yaml(text: str) -> Any:
    """A YAML document the user wrote (a config, a search space): yaml.safe_load, with duplicate keys
    refused, and nesting past Python's recursion limit a YAMLError (PyYAML recurses per level)."""
    try:
        return yaml.load(text, Loader=_UniqueKeys)  # noqa: S506 - a SafeLoader
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None
    except ValueError as e:  # int() of a number past Python's 4300 digits, inside PyYAML's constructor
        raise yaml.YAMLError(f"a number too long to read ({e})") from None


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML file (or none: defaults) and apply dotted overrides; `log.name` defaults to the file's stem.

    `path` is a file or a packaged recipe's name (`debug`): see rnn_train.recipes.resolve_recipe.
    """
    raw: dict[str, Any] = {}
    source = "overrides"
    if path is not None:
        from rnn_train.recipes import resolve_recipe

        path = resolve_recipe(path)
        source = str(path)
        refuse_special(path, "config file")
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError(f"config file {path} does not exist") from None
        except UnicodeDecodeError as e:
            raise UserError(f"config file {path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
                            f"{e.start}): a recipe is a YAML file") from None
        except OSError as e:  # a directory, a missing permission
            raise UserError(f"config file {path} cannot be read ({e.strerror or e.__class__.__name__})") from None
        try:
            raw = load_yaml(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(e, "problem", None) or str(e) or "invalid YAML"
            raise UserError(f"{path}: invalid YAML{where}: {problem}") from None
    cfg = build_config(raw, overrides, source)
    if not cfg.log.name:
        cfg = cfg.replace(log=dataclasses.replace(cfg.log, name=Path(path).stem if path else "run"))
    return cfg


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)


def describe_fields() -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, doc) for every field: the source of the config reference (docs/config.md)."""
    import ast
    import inspect

    rows = []
    for section, cls in SECTIONS.items():
        docs: dict[str, str] = {}
        body = ast.parse(inspect.getsource(cls)).body[0].body
        for node, nxt in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
        for f in dataclasses.fields(cls):
            tp = _field_types(cls)[f.name]
            choices = typing.get_args(tp) if typing.get_origin(tp) is Literal else f.metadata.get("choices", tuple)()
            tname = " \\| ".join(choices) if choices else getattr(tp, "__name__", str(tp))
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((f"{section}.{f.name}", tname, repr(default), docs.get(f.name, "")))
    return rows


REFERENCE_BEGIN, REFERENCE_END = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"
"""Where docs/config.md holds `config_reference()` (tests/test_readme.py keeps it current)."""


def config_reference() -> str:
    """Every key as a Markdown table: key, type, default, meaning (from the field docstrings)."""
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, tname, default, doc in describe_fields():
        rows.append(f"| `{key}` | {tname} | `{default}` | {doc.replace('|', '/')} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None, prog: str = "python -m rnn_train config") -> int:
    """`rnn-train config`: print the reference table (what docs/config.md holds)."""
    from rnn_train.cli import ArgumentParser

    ArgumentParser(prog=prog, description="Print every config key with its type, default and meaning "
                                          "(Markdown).").parse_args(argv)
    print(config_reference())
    return 0
