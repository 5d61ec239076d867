"""Vanilla (Elman) RNN: forward and BPTT, the derivation as code."""
from __future__ import annotations

import numpy as np

from rnn_train.teaching.bptt.common import (ACTIVATIONS, Cache, ForwardResult, Gradients, _affine, _affine_backward,
                                            _prepare, _upstream, _zero_grads)

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
