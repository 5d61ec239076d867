"""What every cell of the NumPy BPTT shares: result types, the affine maps and their backward,
softmax cross-entropy, parameter initialisation and PyTorch name conversion, input checks."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np

from rnn_train.model import cells
from rnn_train.model.cells import CellSpec

ACTIVATIONS = ("tanh", "relu", "identity")  # vanilla RNN only; "identity" = linear toy networks


class BpttCell(NamedTuple):
    """A cell's hand-written BPTT (its CellSpec hook "bptt"), in one calling convention:

    forward(x, h0, c0, params, activation) -> ForwardResult
    backward(dhs, cache, dh_T, dc_T) -> Gradients
    """

    forward: Callable[..., "ForwardResult"]
    backward: Callable[..., "Gradients"]


def bptt_cells() -> tuple[str, ...]:
    """The registered cells that have a hand-written BPTT."""
    return tuple(name for name in cells.names() if "bptt" in cells.get(name).hooks)


def cell_spec(cell: str) -> CellSpec:
    """The CellSpec of a cell with a hand-written BPTT; ValueError for any other name."""
    if cell not in bptt_cells():
        raise ValueError(f"unknown cell {cell!r}; expected one of {bptt_cells()}")
    return cells.get(cell)


def has_cell_state(cell: str) -> bool:
    """Whether the cell carries c besides h (its forward takes c0, its backward dc_T)."""
    return len(cells.get(cell).state) == 2

# PyTorch single-layer state_dict key -> our maths name
_TORCH_NAMES = {"weight_ih_l0": "W_ih", "weight_hh_l0": "W_hh", "bias_ih_l0": "b_ih", "bias_hh_l0": "b_hh"}


class ForwardResult(NamedTuple):
    """What a forward pass returns; unpack as ``hs, h_T, c_T, cache``."""

    hs: np.ndarray  # [T, B, H] hidden output of every step
    h_T: np.ndarray  # [B, H] final hidden state (a copy of hs[-1])
    c_T: np.ndarray | None  # [B, H] final cell state (LSTM), else None
    cache: "Cache"  # what backward needs; treat as opaque


class Gradients(NamedTuple):
    """What a backward pass returns; unpack as ``dx, dh0, dc0, dparams``."""

    dx: np.ndarray  # [T, B, I] dL/dx_t
    dh0: np.ndarray  # [B, H]   dL/dh_0
    dc0: np.ndarray | None  # [B, H] dL/dc_0 (LSTM), else None
    params: dict  # same keys and shapes as the params dict: dL/dW_ih, dL/dW_hh, (dL/db_ih, dL/db_hh)


@dataclass
class Cache:
    """Everything backward needs from forward: inputs, weights and per-step activations.

    ``saved`` maps a name to an array stacked over time ([T, B, ...]); which names exist
    depends on the cell (see each ``*_forward``).
    """

    cell: str
    params: dict  # cast to the compute dtype
    x: np.ndarray  # [T, B, I]
    h0: np.ndarray  # [B, H]
    c0: np.ndarray | None  # [B, H] (LSTM)
    activation: str = "tanh"  # vanilla RNN only
    saved: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- small pure helpers


sigmoid = cells.NUMPY_OPS.sigmoid  # 1 / (1 + e^-a) without overflow: the registry's, which the cells' steps use

def linear_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Affine map y = x W^T + b with ``nn.Linear``'s layout.

    x [..., D], W [O, D], b [O] or None -> y [..., O]. Leading dimensions are kept, so
    ``hs`` [T, B, H] maps to logits [T, B, V] in one call.
    """
    y = x @ W.T
    return y if b is None else y + b


def linear_backward(dy: np.ndarray, x: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of ``linear_forward`` given dL/dy.

    dy [..., O], x [..., D], W [O, D] -> dx [..., D] = dy W, dW [O, D] = sum over rows of
    dy^T x (one outer product per row), db [O] = dy summed over rows. Callers without a
    bias ignore ``db``.
    """
    dy2 = dy.reshape(-1, dy.shape[-1])  # [N, O] with N = product of leading dims
    x2 = x.reshape(-1, x.shape[-1])  # [N, D]
    return dy @ W, dy2.T @ x2, dy2.sum(axis=0)


def softmax_cross_entropy(logits: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of softmax(logits) against integer class targets, and its gradient.

    logits [N, V], targets [N] (ints in [0, V)) -> (loss, dlogits [N, V]) with
    loss = -1/N sum_n log softmax(logits_n)[targets_n] and
    dlogits = (softmax(logits) - onehot(targets)) / N: the famous "p - y", divided by N
    because the loss is a mean. Uses log-sum-exp with the row max subtracted, so large
    logits do not overflow.
    """
    logits = np.asarray(logits)
    targets = np.asarray(targets)
    if logits.ndim != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"expected logits [N, V] and targets [N], got {logits.shape} and {targets.shape}")
    if targets.dtype.kind not in "iu":
        raise ValueError(f"targets must be integer class ids, got dtype {targets.dtype}")
    n, v = logits.shape
    if n and (targets.min() < 0 or targets.max() >= v):
        raise ValueError(f"targets must lie in [0, {v}), got min {targets.min()} max {targets.max()}")
    shifted = logits - logits.max(axis=1, keepdims=True)  # [N, V], max 0 per row
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))  # [N, V]
    rows = np.arange(n)
    loss = -log_probs[rows, targets].mean()
    dlogits = np.exp(log_probs)  # softmax, [N, V]
    dlogits[rows, targets] -= 1.0
    dlogits /= n
    return float(loss), dlogits


# ----------------------------------------------------------------------------- parameters


def init_params(
    cell: str,
    input_size: int,
    hidden_size: int,
    rng: np.random.Generator,
    bias: bool = True,
    dtype=np.float64,
) -> dict:
    """Fresh parameters drawn like PyTorch's default: every entry ~ U(-1/sqrt(H), 1/sqrt(H))."""
    rows, k = cell_spec(cell).num_blocks * hidden_size, 1.0 / np.sqrt(hidden_size)
    shapes = {"W_ih": (rows, input_size), "W_hh": (rows, hidden_size)}
    if bias:
        shapes.update(b_ih=(rows,), b_hh=(rows,))
    return {name: rng.uniform(-k, k, size=shape).astype(dtype) for name, shape in shapes.items()}


def params_from_torch(state_dict: dict, prefix: str = "") -> dict:
    """Rename a single-layer PyTorch RNN/GRU/LSTM state_dict (values already NumPy) to ``params``.

    ``{k: v.detach().numpy() for k, v in nn.GRU(I, H).state_dict().items()}`` becomes
    ``{"W_ih": ..., "W_hh": ..., "b_ih": ..., "b_hh": ...}``; arrays are passed through, not
    copied. ``prefix`` selects a submodule's keys in a bigger state_dict (e.g. ``"rnn."``);
    keys outside the prefix are ignored. A second layer or reverse direction under the prefix
    raises ValueError rather than being dropped silently.
    """
    ours = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    unsupported = sorted(k for k in ours if k not in _TORCH_NAMES and k.startswith(("weight_", "bias_")))
    if unsupported:
        raise ValueError(f"only a single-layer, one-direction RNN is supported; unexpected keys {unsupported}")
    missing = [k for k in ("weight_ih_l0", "weight_hh_l0") if k not in ours]
    if missing:
        raise KeyError(f"state_dict has no {', '.join(prefix + k for k in missing)}")
    if ("bias_ih_l0" in ours) != ("bias_hh_l0" in ours):
        raise ValueError("state_dict must hold both bias_ih_l0 and bias_hh_l0 or neither")
    return {ours_name: ours[torch_name] for torch_name, ours_name in _TORCH_NAMES.items() if torch_name in ours}


def params_to_torch(params: dict, prefix: str = "") -> dict:
    """Inverse of ``params_from_torch``: ``{"W_ih": ...}`` -> ``{prefix + "weight_ih_l0": ...}``."""
    torch_names = {ours: theirs for theirs, ours in _TORCH_NAMES.items()}
    unknown = sorted(set(params) - set(torch_names))
    if unknown:
        raise ValueError(f"unknown parameter names {unknown}; expected {sorted(torch_names)}")
    return {prefix + torch_names[name]: value for name, value in params.items()}


def prepare(cell: str, x, h0, c0, params: dict):
    """Validate shapes and cast everything to the compute dtype.

    Returns (x [T, B, I], h0 [B, H], c0 [B, H] or None, params, H). Doing every check here
    keeps the cell functions as bare equations.
    """
    G = cell_spec(cell).num_blocks
    x = np.asarray(x)
    if x.ndim != 3 or x.shape[0] < 1:
        raise ValueError(f"x must be [T, B, I] with T >= 1 (time-major), got shape {x.shape}")
    T, B, I = x.shape
    if "W_ih" not in params or "W_hh" not in params:
        raise KeyError(f"params must hold W_ih and W_hh, got {sorted(params)}")
    unknown = sorted(set(params) - {"W_ih", "W_hh", "b_ih", "b_hh"})
    if unknown:
        raise ValueError(f"unknown parameter names {unknown}")
    if ("b_ih" in params) != ("b_hh" in params):
        raise ValueError("params must hold both b_ih and b_hh or neither")
    W_hh = np.asarray(params["W_hh"])
    dtype = x.dtype if x.dtype.kind == "f" else W_hh.dtype
    if dtype.kind != "f":
        raise ValueError(f"cannot compute in dtype {dtype}; use float32 or float64")
    H = W_hh.shape[-1]
    expected = {"W_ih": (G * H, I), "W_hh": (G * H, H), "b_ih": (G * H,), "b_hh": (G * H,)}
    params = {k: np.asarray(v).astype(dtype, copy=False) for k, v in params.items()}
    for name, value in params.items():
        if value.shape != expected[name]:
            raise ValueError(
                f"{cell} parameter {name} must have shape {expected[name]} (G={G}, H={H}, I={I}), got {value.shape}"
            )

    def state(s, name):
        if s is None:
            return np.zeros((B, H), dtype=dtype)
        s = np.asarray(s).astype(dtype, copy=False)
        if s.shape != (B, H):
            raise ValueError(f"{name} must be [B, H] = {(B, H)}, got {s.shape}")
        return s

    x = x.astype(dtype, copy=False)
    return x, state(h0, "h0"), (state(c0, "c0") if has_cell_state(cell) else None), params, H


def upstream_grads(dhs, dh_T, dc_T, cache: Cache):
    """Check and cast the upstream gradients; ``None`` final-state gradients become zeros."""
    hs = cache.saved["hs"]
    dtype = hs.dtype
    dhs = np.asarray(dhs).astype(dtype, copy=False)
    if dhs.shape != hs.shape:
        raise ValueError(f"dhs must match hs' shape [T, B, H] = {hs.shape}, got {dhs.shape}")

    def final(g, name):
        if g is None:
            return np.zeros(hs.shape[1:], dtype=dtype)
        g = np.asarray(g).astype(dtype, copy=False)
        if g.shape != hs.shape[1:]:
            raise ValueError(f"{name} must be [B, H] = {hs.shape[1:]}, got {g.shape}")
        return g

    if dc_T is not None and not has_cell_state(cache.cell):
        raise ValueError(f"dc_T is only meaningful for a cell with a cell state (LSTM), not for cell {cache.cell!r}")
    return dhs, final(dh_T, "dh_T"), (final(dc_T, "dc_T") if has_cell_state(cache.cell) else None)


def zero_grads(params: dict) -> dict:
    return {name: np.zeros_like(value) for name, value in params.items()}


def affine_backward(grads: dict, params: dict, dgi: np.ndarray, dgh: np.ndarray, x_t, h_prev):
    """Backward through both affine maps of one step, gi = x_t W_ih^T + b_ih, gh = h_prev W_hh^T + b_hh.

    Adds this step's share to the parameter gradients (sums over time: the same weights are
    used at every step) and returns (dx_t [B, I], the part of dL/dh_prev that flows through W_hh).
    """
    dx_t, dW_ih, db_ih = linear_backward(dgi, x_t, params["W_ih"])
    dh_prev, dW_hh, db_hh = linear_backward(dgh, h_prev, params["W_hh"])
    grads["W_ih"] += dW_ih
    grads["W_hh"] += dW_hh
    if "b_ih" in grads:
        grads["b_ih"] += db_ih
        grads["b_hh"] += db_hh
    return dx_t, dh_prev


def affine(params: dict, x_t, h_prev):
    """The two affine maps every cell starts from: (x_t W_ih^T + b_ih, h_prev W_hh^T + b_hh), each [B, G*H]."""
    gi = linear_forward(x_t, params["W_ih"], params.get("b_ih"))
    gh = linear_forward(h_prev, params["W_hh"], params.get("b_hh"))
    return gi, gh
