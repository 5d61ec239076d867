"""Vanilla (Elman) RNN: forward and BPTT, the derivation as code."""
from __future__ import annotations

import numpy as np

from rnn_train.model import cells
from rnn_train.teaching.bptt.common import (ACTIVATIONS, BpttCell, Cache, ForwardResult, Gradients, affine,
                                            affine_backward, prepare, upstream_grads, zero_grads)


def rnn_forward(x, h0, params: dict, activation: str = "tanh") -> ForwardResult:
    """Elman RNN, ``torch.nn.RNN`` with one layer (``nonlinearity`` = activation).

        a_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh      [B, H]
        h_t = phi(a_t),   phi = tanh | relu | identity

    "identity" without biases is the linear toy network of textbook BPTT examples,
    h_t = W_hh h_{t-1} + W_ih x_t. tanh is the registry's step (rnn_train/model/cells.py,
    `rnn_step`); relu and identity are this module's teaching variants. Saves ``hs`` and (for
    relu) the pre-activations ``as``.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")
    x, h0, _, params, H = prepare("rnn", x, h0, None, params)
    T, B, _ = x.shape
    hs = np.empty((T, B, H), dtype=x.dtype)
    pre = np.empty_like(hs) if activation == "relu" else None
    h, step = h0, cells.get("rnn").step
    for t in range(T):
        gi, gh = affine(params, x[t], h)
        a = gi + gh  # [B, H]
        if activation == "tanh":
            (h,), _ = step(cells.NUMPY_OPS, gi, gh, (h,))
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
    dhs, dh_next, _ = upstream_grads(dhs, dh_T, None, cache)
    params, x, hs = cache.params, cache.x, cache.saved["hs"]
    grads = zero_grads(params)
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
        dx[t], dh_next = affine_backward(grads, params, da, da, x[t], h_prev)
    return Gradients(dx, dh_next, None, grads)


BPTT = BpttCell(forward=lambda x, h0, c0, params, activation: rnn_forward(x, h0, params, activation),
                backward=lambda dhs, cache, dh_T, dc_T: rnn_backward(dhs, cache, dh_T))
"""The CellSpec hook "bptt" of the Elman RNN (rnn_train/model/cells.py)."""
