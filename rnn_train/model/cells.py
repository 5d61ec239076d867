"""The recurrent cells: one `CellSpec` per cell, the single owner of what a cell is.

Why a registry: a cell's definition used to be spread over the model, the kernels, the sampler,
the teaching code and the autotuner, each branching on the cell's name. Here each cell says once

    blocks     the [H]-blocks stacked in the rows of W_ih / W_hh, in PyTorch's order
    gates      the blocks that are gates, whose activations `step` returns (none for a tanh RNN)
    state      what it carries from step to step: ("h",), or ("h", "c") for an LSTM; h is the output
    step       the reference equations, written once for NumPy and torch alike
    hooks      the faster or more specialised implementations each backend has for it

and every backend reads it: the model builds its module from it (torch's own `nn.GRU` where one
exists, else `rnn_train.model.recurrent.CellLayers` running `step` under autograd), the fused
kernels, the NumPy stepper, the NumPy BPTT and the autotuner look up their hook, and whatever has
no hook falls back to `step`. A new cell is one `register(CellSpec(...))`: it then trains, resumes,
validates, predicts, samples and scores through the generic paths (tests/test_cells.py does this
with a cell defined in the test file alone). tests/test_cells.py also holds every registered hook
to its cell's reference `step`.

The step's contract, for any array library whose arrays support slicing and + - * (NumPy, torch):

    step(ops, gi [B, G*H], gh [B, G*H], state (h [B, H], ...)) -> (new state (h, ...), {gate: [B, H]})

    gi = x_t W_ih^T + b_ih, gh = h_{t-1} W_hh^T + b_hh (the two affine maps every cell starts from)
    ops.sigmoid, ops.tanh: the elementwise functions of that library (NUMPY_OPS, torch_ops())

The activations it returns are the gates' values after their nonlinearity, named as in `gates`
(what the explorer plots and the gate-saturation figures count).

Hooks are named by backend and given as "module:attribute" strings, imported on first use, so
this module stays at the bottom of the package (it imports NumPy only) and the table below says in
one place which backend implements which cell:

    native        torch.nn class name with these equations and weight layout (cuDNN, oneDNN)
    python_loop   rnn_train.kernels: the fused layer whose time loop is torch ops
    cpp_loop      rnn_train.kernels: the fused layer whose time loop is C++ (csrc/cells.h)
    stepper       rnn_train.prediction.stepper: the NumPy step tuned for sampling
    decode        rnn_train.prediction.kernel_stepper: the cell's id in the C++ generation and
                  scoring steps (csrc/decode.cpp)
    bptt          rnn_train.teaching.bptt: the backward pass written as the derivation
    js            rnn_train.explore.cells_js: the step in JavaScript, for `rnn-train explore`'s page
"""
from __future__ import annotations

import difflib
import functools
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import numpy as np

from rnn_train.errors import UserError


class Ops(NamedTuple):
    """The elementwise functions a cell's equations use, for one array library."""

    sigmoid: Callable[[Any], Any]
    tanh: Callable[[Any], Any]


def _np_sigmoid(a: np.ndarray) -> np.ndarray:
    """Logistic function 1 / (1 + e^-a), computed without overflow for large |a|."""
    e = np.exp(-np.abs(a))  # in (0, 1]: never overflows
    return np.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(a.dtype, copy=False)


NUMPY_OPS = Ops(sigmoid=_np_sigmoid, tanh=np.tanh)


@functools.cache
def torch_ops() -> Ops:
    """The same functions for torch tensors (imported on first use: this module needs no torch)."""
    import torch

    return Ops(sigmoid=torch.sigmoid, tanh=torch.tanh)


def blocks(g, count: int) -> list:
    """[B, count*H] -> `count` views [B, H] along the last axis (the gate blocks of gi or gh)."""
    H = g.shape[-1] // count
    return [g[..., k * H:(k + 1) * H] for k in range(count)]


@dataclass(frozen=True)
class CellSpec:
    """Everything the package knows about one recurrent cell. See the module docstring."""

    name: str
    """The value of `model.cell` that selects it."""
    summary: str
    """One line: what it computes (help texts, docs)."""
    blocks: tuple[str, ...]
    """Names of the [H]-blocks of W_ih / W_hh rows, in order; len(blocks) = G."""
    step: Callable[..., tuple[tuple, dict]]
    """The reference equations: step(ops, gi, gh, state) -> (state, activations)."""
    gates: tuple[str, ...] | None = None
    """The activations `step` returns, by name (default: one per block)."""
    state: tuple[str, ...] = ("h",)
    """What the cell carries between steps; state[0] is h, the output."""
    keep_gate: str | None = None
    """The gate whose bias pushes the cell to keep its old state (gradient-flow what-ifs), if any."""
    elman: bool = False
    """True when the step Jacobian is diag(phi') W_hh, so W_hh's spectrum says how gradients scale."""
    hooks: dict[str, str] = field(default_factory=dict)
    """backend -> "module:attribute" (see the module docstring); a backend without one uses `step`."""

    def __post_init__(self):
        if self.gates is None:
            object.__setattr__(self, "gates", self.blocks)
        if not self.blocks or not self.state or self.state[0] != "h":
            raise ValueError(f"cell {self.name!r}: needs blocks and a state that starts with h")
        if self.keep_gate is not None and self.keep_gate not in self.blocks:
            raise ValueError(f"cell {self.name!r}: keep_gate {self.keep_gate!r} is not one of its blocks")

    @property
    def num_blocks(self) -> int:
        """G: W_ih is [G*H, I], W_hh [G*H, H]."""
        return len(self.blocks)

    def hook(self, backend: str) -> Any:
        """The object a backend registered for this cell, or None (the backend then uses `step`)."""
        target = self.hooks.get(backend)
        if target is None:
            return None
        module, _, attribute = target.partition(":")
        return getattr(importlib.import_module(module), attribute) if attribute else target

    def pack(self, parts: tuple):
        """State parts (h, ...) -> the form modules pass around: h alone, or the tuple (h, c)."""
        return parts[0] if len(self.state) == 1 else tuple(parts)

    def unpack(self, state) -> tuple:
        """The inverse of `pack`."""
        return tuple(state) if len(self.state) > 1 else (state,)


# ---------------------------------------------------------------------------------------- equations


def rnn_step(ops: Ops, gi, gh, state):
    """h_t = tanh(x W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)   (torch.nn.RNN, tanh)"""
    return (ops.tanh(gi + gh),), {}


def gru_step(ops: Ops, gi, gh, state):
    """r = sigmoid(gi_r + gh_r); z = sigmoid(gi_z + gh_z); n = tanh(gi_n + r * gh_n);
    h_t = (1 - z) * n + z * h_{t-1}   (torch.nn.GRU: r scales W_hn h + b_hn)"""
    (h,) = state
    i_r, i_z, i_n = blocks(gi, 3)
    h_r, h_z, h_n = blocks(gh, 3)
    r = ops.sigmoid(i_r + h_r)
    z = ops.sigmoid(i_z + h_z)
    n = ops.tanh(i_n + r * h_n)
    return ((1 - z) * n + z * h,), {"r": r, "z": z, "n": n}


def lstm_step(ops: Ops, gi, gh, state):
    """i, f, o = sigmoid(.); g = tanh(.); c_t = f * c_{t-1} + i * g; h_t = o * tanh(c_t)
    (torch.nn.LSTM, gate blocks i, f, g, o)"""
    _, c = state
    a_i, a_f, a_g, a_o = (x + y for x, y in zip(blocks(gi, 4), blocks(gh, 4)))
    i, f, g, o = ops.sigmoid(a_i), ops.sigmoid(a_f), ops.tanh(a_g), ops.sigmoid(a_o)
    c = f * c + i * g
    return (o * ops.tanh(c), c), {"i": i, "f": f, "g": g, "o": o}


_REGISTRY: dict[str, CellSpec] = {}


def register(spec: CellSpec) -> CellSpec:
    """Add a cell; its name becomes a valid `model.cell`. Registering a taken name is an error."""
    if spec.name in _REGISTRY:
        raise ValueError(f"a cell named {spec.name!r} is registered already")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a cell added by `register` (tests that define their own)."""
    _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def unknown_cell_message(name: str) -> str:
    """'must be one of rnn | gru | lstm, got 'gur' (did you mean gru?)'"""
    close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"must be one of {' | '.join(_REGISTRY)}, got {name!r}{hint}"


def get(name: str) -> CellSpec:
    """The cell named `name`, or a UserError listing the registered ones with a did-you-mean."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UserError(f"model.cell {unknown_cell_message(name)}") from None


def of_module(module) -> CellSpec | None:
    """The cell a recurrent module computes: its own `spec`, or the one whose native class it is."""
    spec = getattr(module, "spec", None)
    if isinstance(spec, CellSpec):
        return spec
    for candidate in _REGISTRY.values():
        native = candidate.hooks.get("native")
        if native and type(module).__name__ == native and type(module).__module__.startswith("torch.nn"):
            return candidate
    return None


register(CellSpec(
    name="rnn", summary="Elman RNN: h = tanh(W_ih x + b_ih + W_hh h + b_hh)", blocks=("a",), gates=(), step=rnn_step,
    elman=True,
    hooks={"native": "RNN", "python_loop": "rnn_train.kernels.python_layers:RNN_LOOP",
           "cpp_loop": "rnn_train.kernels.cpp_layers:RNN_LOOP", "stepper": "rnn_train.prediction.stepper:RNNStepper",
           "decode": "rnn_train.prediction.kernel_stepper:RNN",
           "bptt": "rnn_train.teaching.bptt.rnn:BPTT", "js": "rnn_train.explore.cells_js:RNN"}))
register(CellSpec(
    name="gru", summary="gated recurrent unit (reset r, update z, candidate n)", blocks=("r", "z", "n"), step=gru_step,
    keep_gate="z",
    hooks={"native": "GRU", "python_loop": "rnn_train.kernels.python_layers:GRU_LOOP",
           "cpp_loop": "rnn_train.kernels.cpp_layers:GRU_LOOP", "stepper": "rnn_train.prediction.stepper:GRUStepper",
           "decode": "rnn_train.prediction.kernel_stepper:GRU",
           "bptt": "rnn_train.teaching.bptt.gru:BPTT", "js": "rnn_train.explore.cells_js:GRU"}))
register(CellSpec(
    name="lstm", summary="long short-term memory (input i, forget f, cell g, output o; cell state c)",
    blocks=("i", "f", "g", "o"), step=lstm_step, state=("h", "c"), keep_gate="f",
    hooks={"native": "LSTM", "cpp_loop": "rnn_train.kernels.cpp_layers:LSTM_LOOP",
           "stepper": "rnn_train.prediction.stepper:LSTMStepper",
           "decode": "rnn_train.prediction.kernel_stepper:LSTM", "bptt": "rnn_train.teaching.bptt.lstm:BPTT",
           "js": "rnn_train.explore.cells_js:LSTM"}))
