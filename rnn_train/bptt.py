"""NumPy reference RNN / GRU / LSTM with hand-written backpropagation through time (BPTT).

Why this module exists: autograd hides how a gradient reaches step 1 from a loss at step T.
Here every cell's forward pass is written as the equations PyTorch documents, and every
backward pass as the derivation: walk time in reverse, add the gradient arriving from the
step's own output to the one carried back from the future (``dh_next``), push it through the
cell's local derivatives, accumulate the parameter gradients, and hand ``dh_next`` (and
``dc_next`` for the LSTM) to the previous step. ``tests/test_bptt.py`` proves every number
equal to ``torch.autograd`` on ``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM``; ``docs/bptt.md`` has the
derivation. This module imports NumPy only (the CLI at the bottom imports torch inside
``main`` to compare against it).

Public API
----------
Cells (single layer, time-major; G = 1, 3, 4 gates for "rnn", "gru", "lstm")::

    rnn_forward(x, h0, params, activation="tanh")  -> ForwardResult(hs, h_T, None, cache)
    gru_forward(x, h0, params)                     -> ForwardResult(hs, h_T, None, cache)
    lstm_forward(x, h0, c0, params)                -> ForwardResult(hs, h_T, c_T, cache)
    rnn_backward(dhs, cache, dh_T=None)            -> Gradients(dx, dh0, None, params)
    gru_backward(dhs, cache, dh_T=None)            -> Gradients(dx, dh0, None, params)
    lstm_backward(dhs, cache, dh_T=None, dc_T=None) -> Gradients(dx, dh0, dc0, params)

    forward(cell, x, h0, params, c0=None, activation="tanh")  dispatches on `cell`
    backward(dhs, cache, dh_T=None, dc_T=None)     dispatches on the cell recorded in `cache`

Parameters and helpers::

    init_params(cell, input_size, hidden_size, rng, bias=True, dtype=np.float64) -> params
    params_from_torch(state_dict, prefix="") -> params   ("weight_ih_l0" -> "W_ih", ...)
    params_to_torch(params, prefix="")       -> state_dict
    linear_forward(x, W, b=None)  -> y                   y = x W^T + b (nn.Linear layout)
    linear_backward(dy, x, W)     -> (dx, dW, db)
    softmax_cross_entropy(logits [N, V], targets [N]) -> (mean loss, dlogits [N, V])

Conventions
-----------
- ``params`` is a plain dict with PyTorch's single-layer names and shapes:
  ``W_ih`` [G*H, I], ``W_hh`` [G*H, H] and, optionally (``bias=False`` leaves them out),
  ``b_ih`` [G*H], ``b_hh`` [G*H]. Gate blocks are stacked along rows in PyTorch's order:
  GRU (r, z, n), LSTM (i, f, g, o).
- ``x`` [T, B, I] is time-major; ``h0``/``c0`` [B, H] (``None`` means zeros);
  ``hs`` [T, B, H] holds every step's hidden output, so ``hs[-1]`` equals ``h_T``.
- Arithmetic runs in ``x``'s floating dtype (float64 or float32); parameters and states are
  cast to it, and every returned array has it. An integer ``x`` (a one-hot array built as
  ints) takes the dtype of ``W_hh``.
- ``dhs`` [T, B, H] is the upstream gradient dL/dh_t of a scalar loss L on every step's
  output; ``dh_T``/``dc_T`` [B, H] add a gradient on the final state (``None`` means zero).
  The gradient w.r.t. ``h_T`` is therefore ``dhs[-1] + dh_T``, exactly as autograd sums it
  when both ``output`` and ``h_n`` of a PyTorch RNN feed the loss.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

__all__ = [
    "CELLS",
    "GATES",
    "ForwardResult",
    "Gradients",
    "Cache",
    "rnn_forward",
    "rnn_backward",
    "gru_forward",
    "gru_backward",
    "lstm_forward",
    "lstm_backward",
    "forward",
    "backward",
    "init_params",
    "params_from_torch",
    "params_to_torch",
    "linear_forward",
    "linear_backward",
    "softmax_cross_entropy",
    "sigmoid",
    "main",
]

CELLS = ("rnn", "gru", "lstm")
GATES = {"rnn": 1, "gru": 3, "lstm": 4}  # G: how many [H]-blocks W_ih / W_hh stack
ACTIVATIONS = ("tanh", "relu", "identity")  # vanilla RNN only; "identity" = linear toy networks

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


def sigmoid(a: np.ndarray) -> np.ndarray:
    """Logistic function 1 / (1 + e^-a), computed without overflow for large |a|."""
    e = np.exp(-np.abs(a))  # in (0, 1]: never overflows
    return np.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(a.dtype, copy=False)


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
    _check_cell(cell)
    rows, k = GATES[cell] * hidden_size, 1.0 / np.sqrt(hidden_size)
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


def _check_cell(cell: str) -> None:
    if cell not in GATES:
        raise ValueError(f"unknown cell {cell!r}; expected one of {CELLS}")


def _prepare(cell: str, x, h0, c0, params: dict):
    """Validate shapes and cast everything to the compute dtype.

    Returns (x [T, B, I], h0 [B, H], c0 [B, H] or None, params, H). Doing every check here
    keeps the cell functions as bare equations.
    """
    _check_cell(cell)
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
    G, H = GATES[cell], W_hh.shape[-1]
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
    return x, state(h0, "h0"), (state(c0, "c0") if cell == "lstm" else None), params, H


def _upstream(dhs, dh_T, dc_T, cache: Cache):
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

    if dc_T is not None and cache.cell != "lstm":
        raise ValueError(f"dc_T is only meaningful for an LSTM, not for cell {cache.cell!r}")
    return dhs, final(dh_T, "dh_T"), (final(dc_T, "dc_T") if cache.cell == "lstm" else None)


def _zero_grads(params: dict) -> dict:
    return {name: np.zeros_like(value) for name, value in params.items()}


def _affine_backward(grads: dict, params: dict, dgi: np.ndarray, dgh: np.ndarray, x_t, h_prev):
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


def _affine(params: dict, x_t, h_prev):
    """The two affine maps every cell starts from: (x_t W_ih^T + b_ih, h_prev W_hh^T + b_hh), each [B, G*H]."""
    gi = linear_forward(x_t, params["W_ih"], params.get("b_ih"))
    gh = linear_forward(h_prev, params["W_hh"], params.get("b_hh"))
    return gi, gh


# ----------------------------------------------------------------------------- vanilla RNN


def rnn_forward(x, h0, params: dict, activation: str = "tanh") -> ForwardResult:
    """Elman RNN, ``torch.nn.RNN`` with one layer (``nonlinearity`` = activation).

        a_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh      [B, H]
        h_t = phi(a_t),   phi = tanh | relu | identity

    "identity" without biases is the linear toy network of textbook BPTT examples,
    h_t = W_hh h_{t-1} + W_ih x_t. Saves ``hs`` and (for relu) the pre-activations ``as``.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")
    x, h0, _, params, H = _prepare("rnn", x, h0, None, params)
    T, B, _ = x.shape
    hs = np.empty((T, B, H), dtype=x.dtype)
    pre = np.empty_like(hs) if activation == "relu" else None
    h = h0
    for t in range(T):
        gi, gh = _affine(params, x[t], h)
        a = gi + gh  # [B, H]
        if activation == "tanh":
            h = np.tanh(a)
        elif activation == "relu":
            pre[t] = a
            h = np.maximum(a, 0)
        else:
            h = a
        hs[t] = h
    saved = {"hs": hs} if pre is None else {"hs": hs, "as": pre}
    cache = Cache("rnn", params, x, h0, None, activation, saved)
    return ForwardResult(hs, hs[-1].copy(), None, cache)


def rnn_backward(dhs, cache: Cache, dh_T=None) -> Gradients:
    """BPTT for ``rnn_forward``. Walking t = T..1 with dh_next = dL/dh_t from the future (dh_T at t = T):

        dh      = dhs[t] + dh_next                       total dL/dh_t
        da      = dh * phi'(a_t)                         tanh: 1 - h_t^2, relu: [a_t > 0], identity: 1
        dW_ih  += da^T x_t      dW_hh += da^T h_{t-1}    db_ih += sum_b da   db_hh += sum_b da
        dx_t    = da W_ih
        dh_next = da W_hh                                 becomes dL/dh_{t-1}

    and finally dh0 = dh_next. The repeated product of W_hh^T and phi' in dh_next is where
    gradients vanish or explode over long sequences.
    """
    dhs, dh_next, _ = _upstream(dhs, dh_T, None, cache)
    params, x, hs = cache.params, cache.x, cache.saved["hs"]
    grads = _zero_grads(params)
    dx = np.empty_like(x)
    for t in reversed(range(x.shape[0])):
        h_prev = hs[t - 1] if t > 0 else cache.h0
        dh = dhs[t] + dh_next
        if cache.activation == "tanh":
            da = dh * (1 - hs[t] ** 2)
        elif cache.activation == "relu":
            da = dh * (cache.saved["as"][t] > 0)
        else:
            da = dh
        dx[t], dh_next = _affine_backward(grads, params, da, da, x[t], h_prev)
    return Gradients(dx, dh_next, None, grads)


# ----------------------------------------------------------------------------- GRU


def gru_forward(x, h0, params: dict) -> ForwardResult:
    """Gated recurrent unit, ``torch.nn.GRU`` with one layer; gate blocks (r, z, n).

        [gi_r, gi_z, gi_n] = x_t W_ih^T + b_ih              each [B, H]
        [gh_r, gh_z, gh_n] = h_{t-1} W_hh^T + b_hh
        r_t = sigmoid(gi_r + gh_r)                           reset gate
        z_t = sigmoid(gi_z + gh_z)                           update gate
        n_t = tanh(gi_n + r_t * gh_n)                        candidate; r scales W_hn h + b_hn
        h_t = (1 - z_t) * n_t + z_t * h_{t-1}

    Saves hs, r, z, n and gh_n (the reset gate's derivative needs W_hn h + b_hn).
    """
    x, h0, _, params, H = _prepare("gru", x, h0, None, params)
    T, B, _ = x.shape
    hs, r, z, n, gh_n = (np.empty((T, B, H), dtype=x.dtype) for _ in range(5))
    h = h0
    for t in range(T):
        gi, gh = _affine(params, x[t], h)  # [B, 3H] each
        r[t] = sigmoid(gi[:, :H] + gh[:, :H])
        z[t] = sigmoid(gi[:, H : 2 * H] + gh[:, H : 2 * H])
        gh_n[t] = gh[:, 2 * H :]
        n[t] = np.tanh(gi[:, 2 * H :] + r[t] * gh_n[t])
        h = (1 - z[t]) * n[t] + z[t] * h
        hs[t] = h
    cache = Cache("gru", params, x, h0, None, saved={"hs": hs, "r": r, "z": z, "n": n, "gh_n": gh_n})
    return ForwardResult(hs, hs[-1].copy(), None, cache)


def gru_backward(dhs, cache: Cache, dh_T=None) -> Gradients:
    """BPTT for ``gru_forward``. At each step t = T..1, with dh_next = dL/dh_t from the future:

        dh    = dhs[t] + dh_next
        dn    = dh * (1 - z)           dz = dh * (h_{t-1} - n)       (h_t = n + z (h_{t-1} - n))
        da_n  = dn * (1 - n^2)                                         through tanh
        dr    = da_n * gh_n            da_r = dr * r (1 - r)           through sigmoid
        da_z  = dz * z (1 - z)
        dgi   = [da_r, da_z, da_n]     dgh = [da_r, da_z, da_n * r]   r gates only the h-side of n
        dW_ih += dgi^T x_t   dW_hh += dgh^T h_{t-1}   db_ih += sum_b dgi   db_hh += sum_b dgh
        dx_t    = dgi W_ih
        dh_next = dh * z + dgh W_hh    direct path through z, plus through all three gates
    """
    dhs, dh_next, _ = _upstream(dhs, dh_T, None, cache)
    params, x, s = cache.params, cache.x, cache.saved
    hs, r, z, n, gh_n = s["hs"], s["r"], s["z"], s["n"], s["gh_n"]
    grads = _zero_grads(params)
    dx = np.empty_like(x)
    for t in reversed(range(x.shape[0])):
        h_prev = hs[t - 1] if t > 0 else cache.h0
        dh = dhs[t] + dh_next
        dn = dh * (1 - z[t])
        dz = dh * (h_prev - n[t])
        da_n = dn * (1 - n[t] ** 2)
        da_r = da_n * gh_n[t] * r[t] * (1 - r[t])
        da_z = dz * z[t] * (1 - z[t])
        dgi = np.concatenate([da_r, da_z, da_n], axis=1)  # [B, 3H]
        dgh = np.concatenate([da_r, da_z, da_n * r[t]], axis=1)  # [B, 3H]
        dx[t], dh_via_W = _affine_backward(grads, params, dgi, dgh, x[t], h_prev)
        dh_next = dh * z[t] + dh_via_W
    return Gradients(dx, dh_next, None, grads)


# ----------------------------------------------------------------------------- LSTM


def lstm_forward(x, h0, c0, params: dict) -> ForwardResult:
    """Long short-term memory, ``torch.nn.LSTM`` with one layer; gate blocks (i, f, g, o).

        [a_i, a_f, a_g, a_o] = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh     each [B, H]
        i = sigmoid(a_i)   f = sigmoid(a_f)   g = tanh(a_g)   o = sigmoid(a_o)
        c_t = f * c_{t-1} + i * g
        h_t = o * tanh(c_t)

    Saves hs, cs, the four gates and tanh(c_t).
    """
    x, h0, c0, params, H = _prepare("lstm", x, h0, c0, params)
    T, B, _ = x.shape
    hs, cs, i, f, g, o, tanh_c = (np.empty((T, B, H), dtype=x.dtype) for _ in range(7))
    h, c = h0, c0
    for t in range(T):
        gi, gh = _affine(params, x[t], h)
        a = gi + gh  # [B, 4H]
        i[t] = sigmoid(a[:, :H])
        f[t] = sigmoid(a[:, H : 2 * H])
        g[t] = np.tanh(a[:, 2 * H : 3 * H])
        o[t] = sigmoid(a[:, 3 * H :])
        c = f[t] * c + i[t] * g[t]
        tanh_c[t] = np.tanh(c)
        h = o[t] * tanh_c[t]
        hs[t], cs[t] = h, c
    saved = {"hs": hs, "cs": cs, "i": i, "f": f, "g": g, "o": o, "tanh_c": tanh_c}
    cache = Cache("lstm", params, x, h0, c0, saved=saved)
    return ForwardResult(hs, hs[-1].copy(), cs[-1].copy(), cache)


def lstm_backward(dhs, cache: Cache, dh_T=None, dc_T=None) -> Gradients:
    """BPTT for ``lstm_forward``; two quantities travel back in time, dh_next and dc_next:

        dh    = dhs[t] + dh_next
        do    = dh * tanh(c_t)
        dc    = dc_next + dh * o * (1 - tanh(c_t)^2)     the cell state's own highway plus via h_t
        di    = dc * g    df = dc * c_{t-1}    dg = dc * i
        da    = [di * i(1-i), df * f(1-f), dg * (1-g^2), do * o(1-o)]      [B, 4H]
        dW_ih += da^T x_t   dW_hh += da^T h_{t-1}   db_ih += sum_b da   db_hh += sum_b da
        dx_t    = da W_ih
        dh_next = da W_hh
        dc_next = dc * f                                  only multiplied by the forget gate
    """
    dhs, dh_next, dc_next = _upstream(dhs, dh_T, dc_T, cache)
    params, x, s = cache.params, cache.x, cache.saved
    hs, cs, i, f, g, o, tanh_c = (s[k] for k in ("hs", "cs", "i", "f", "g", "o", "tanh_c"))
    grads = _zero_grads(params)
    dx = np.empty_like(x)
    for t in reversed(range(x.shape[0])):
        h_prev = hs[t - 1] if t > 0 else cache.h0
        c_prev = cs[t - 1] if t > 0 else cache.c0
        dh = dhs[t] + dh_next
        do = dh * tanh_c[t]
        dc = dc_next + dh * o[t] * (1 - tanh_c[t] ** 2)
        di, df, dg = dc * g[t], dc * c_prev, dc * i[t]
        da = np.concatenate(
            [di * i[t] * (1 - i[t]), df * f[t] * (1 - f[t]), dg * (1 - g[t] ** 2), do * o[t] * (1 - o[t])],
            axis=1,
        )  # [B, 4H]
        dx[t], dh_next = _affine_backward(grads, params, da, da, x[t], h_prev)
        dc_next = dc * f[t]
    return Gradients(dx, dh_next, dc_next, grads)


# ----------------------------------------------------------------------------- dispatch


def forward(cell: str, x, h0, params: dict, c0=None, activation: str = "tanh") -> ForwardResult:
    """Run ``cell`` ("rnn", "gru" or "lstm") over ``x`` [T, B, I]; see the cell functions for equations.

    ``h0``/``c0`` may be None (zeros); ``c0`` is only accepted for the LSTM and ``activation``
    only changes the vanilla RNN.
    """
    _check_cell(cell)
    if cell == "lstm":
        return _FORWARD["lstm"](x, h0, c0, params)
    if c0 is not None:
        raise ValueError(f"c0 is only meaningful for an LSTM, not for cell {cell!r}")
    if cell == "rnn":
        return _FORWARD["rnn"](x, h0, params, activation)
    return _FORWARD[cell](x, h0, params)


def backward(dhs, cache: Cache, dh_T=None, dc_T=None) -> Gradients:
    """BPTT for whichever cell produced ``cache``; see the cell functions for the derivations."""
    if cache.cell == "lstm":
        return _BACKWARD["lstm"](dhs, cache, dh_T, dc_T)
    if dc_T is not None:
        raise ValueError(f"dc_T is only meaningful for an LSTM, not for cell {cache.cell!r}")
    return _BACKWARD[cache.cell](dhs, cache, dh_T)


_FORWARD = {"rnn": rnn_forward, "gru": gru_forward, "lstm": lstm_forward}
_BACKWARD = {"rnn": rnn_backward, "gru": gru_backward, "lstm": lstm_backward}


# ----------------------------------------------------------------------------- CLI: compare with PyTorch

_DEFAULT_TOL = {"float64": 1e-10, "float32": 1e-5}


def _parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m rnn_train.bptt",
        description="Run the NumPy BPTT and torch.autograd on the same random weights, inputs and "
        "upstream gradients, and print every output and gradient side by side.",
    )
    parser.add_argument("--cell", choices=CELLS, default="gru", help="which recurrent cell (default gru)")
    parser.add_argument("--steps", type=int, default=10, help="sequence length T (default 10)")
    parser.add_argument("--batch", type=int, default=3, help="batch size B (default 3)")
    parser.add_argument("--input", type=int, default=4, help="input size I (default 4)")
    parser.add_argument("--hidden", type=int, default=5, help="hidden size H (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights, inputs and upstream gradients")
    parser.add_argument("--dtype", choices=tuple(_DEFAULT_TOL), default="float64", help="compute dtype")
    parser.add_argument(
        "--activation", choices=("tanh", "relu"), default="tanh", help="vanilla RNN nonlinearity (--cell rnn)"
    )
    parser.add_argument("--no-bias", action="store_true", help="leave out b_ih and b_hh (bias=False)")
    parser.add_argument(
        "--tol",
        type=float,
        default=None,
        help="pass if max |numpy - torch| <= tol * max(1, max |torch|) "
        f"(default {_DEFAULT_TOL['float64']:g} for float64, {_DEFAULT_TOL['float32']:g} for float32)",
    )
    args = parser.parse_args(argv)
    for name in ("steps", "batch", "input", "hidden"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.tol is not None and args.tol < 0:
        parser.error(f"--tol must be >= 0, got {args.tol}")
    if args.activation != "tanh" and args.cell != "rnn":
        parser.error("--activation applies to --cell rnn only")
    return args


def _compare_with_torch(args) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Same problem through this module and through torch.autograd: [(name, numpy, torch), ...]."""
    import torch  # the comparison needs torch; the reference itself never does

    dtype = np.dtype(args.dtype)
    rng = np.random.default_rng(args.seed)
    T, B, I, H = args.steps, args.batch, args.input, args.hidden
    params = init_params(args.cell, I, H, rng, bias=not args.no_bias, dtype=dtype)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((B, H)).astype(dtype)
    c0 = rng.standard_normal((B, H)).astype(dtype) if args.cell == "lstm" else None
    dhs = rng.standard_normal((T, B, H)).astype(dtype)  # upstream gradient on every step's output
    dh_T = rng.standard_normal((B, H)).astype(dtype)  # ... and on the final state
    dc_T = rng.standard_normal((B, H)).astype(dtype) if args.cell == "lstm" else None

    hs, h_T, c_T, cache = forward(args.cell, x, h0, params, c0=c0, activation=args.activation)
    dx, dh0, dc0, dparams = backward(dhs, cache, dh_T, dc_T)

    modules = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}
    kwargs = {"nonlinearity": args.activation} if args.cell == "rnn" else {}
    module = modules[args.cell](I, H, bias=not args.no_bias, **kwargs).to(getattr(torch, args.dtype))
    module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in params_to_torch(params).items()})
    x_t = torch.tensor(x, requires_grad=True)
    h0_t = torch.tensor(h0[None], requires_grad=True)  # torch wants [layers, B, H]
    if args.cell == "lstm":
        c0_t = torch.tensor(c0[None], requires_grad=True)
        out, (hn, cn) = module(x_t, (h0_t, c0_t))
        loss = (out * torch.from_numpy(dhs)).sum() + (hn[0] * torch.from_numpy(dh_T)).sum()
        loss = loss + (cn[0] * torch.from_numpy(dc_T)).sum()
    else:
        out, hn = module(x_t, h0_t)
        loss = (out * torch.from_numpy(dhs)).sum() + (hn[0] * torch.from_numpy(dh_T)).sum()
    loss.backward()

    torch_grads = params_from_torch({k: p.grad.numpy() for k, p in module.named_parameters()})
    rows = [("hs", hs, out.detach().numpy()), ("h_T", h_T, hn[0].detach().numpy())]
    if args.cell == "lstm":
        rows.append(("c_T", c_T, cn[0].detach().numpy()))
    rows += [("dx", dx, x_t.grad.numpy()), ("dh0", dh0, h0_t.grad[0].numpy())]
    if args.cell == "lstm":
        rows.append(("dc0", dc0, c0_t.grad[0].numpy()))
    rows += [("d" + name, dparams[name], torch_grads[name]) for name in dparams]
    return rows


def main(argv=None) -> int:
    """``python -m rnn_train.bptt``: print NumPy vs PyTorch side by side; exit 0 if all match, else 1."""
    args = _parse_args(argv)
    tol = _DEFAULT_TOL[args.dtype] if args.tol is None else args.tol
    rows = _compare_with_torch(args)

    cfg = f"cell={args.cell} steps={args.steps} batch={args.batch} input={args.input} hidden={args.hidden}"
    cfg += f" seed={args.seed} dtype={args.dtype} bias={not args.no_bias}"
    if args.cell == "rnn":
        cfg += f" activation={args.activation}"
    print(f"NumPy BPTT vs torch.autograd: {cfg}")
    print(f"upstream gradient: random on every step's output and on the final state")
    print(f"pass if max|diff| <= tol * max(1, max|torch|), tol={tol:g}")
    header = (
        f"{'quantity':<9} {'shape':<14} {'numpy mean':>13} {'numpy norm':>12} "
        f"{'torch mean':>13} {'torch norm':>12} {'max|diff|':>10}  result"
    )
    print(header)
    print("-" * len(header))
    failures = 0
    for name, ours, theirs in rows:
        ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
        same_shape = ours.shape == theirs.shape
        diff = float(np.max(np.abs(ours - theirs))) if same_shape else float("inf")
        scale = max(1.0, float(np.max(np.abs(theirs)))) if theirs.size else 1.0
        ok = same_shape and diff <= tol * scale  # NaN compares False, so it fails too
        failures += not ok
        shape = "[" + ", ".join(map(str, ours.shape)) + "]"
        print(
            f"{name:<9} {shape:<14} {ours.mean():>+13.6e} {np.linalg.norm(ours):>12.6e} "
            f"{theirs.mean():>+13.6e} {np.linalg.norm(theirs):>12.6e} {diff:>10.2e}  {'PASS' if ok else 'FAIL'}"
        )
    verdict = "all match" if not failures else f"{failures} of {len(rows)} differ"
    print(f"{verdict}: {len(rows) - failures}/{len(rows)} quantities within tolerance")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
