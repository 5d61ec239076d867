"""LSTM: forward and BPTT, the derivation as code."""
from __future__ import annotations

import numpy as np

from rnn_train.model import cells
from rnn_train.teaching.bptt.common import (BpttCell, Cache, ForwardResult, Gradients, affine, affine_backward,
                                            prepare, upstream_grads, zero_grads)


def lstm_forward(x, h0, c0, params: dict) -> ForwardResult:
    """Long short-term memory, ``torch.nn.LSTM`` with one layer; gate blocks (i, f, g, o).

        [a_i, a_f, a_g, a_o] = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh     each [B, H]
        i = sigmoid(a_i)   f = sigmoid(a_f)   g = tanh(a_g)   o = sigmoid(a_o)
        c_t = f * c_{t-1} + i * g
        h_t = o * tanh(c_t)

    The step itself is the registry's (rnn_train/model/cells.py, `lstm_step`), the one place the
    equations are written; this loop keeps what the backward pass needs. Saves hs, cs, the four
    gates and tanh(c_t).
    """
    x, h0, c0, params, H = prepare("lstm", x, h0, c0, params)
    T, B, _ = x.shape
    hs, cs, i, f, g, o, tanh_c = (np.empty((T, B, H), dtype=x.dtype) for _ in range(7))
    h, c, step = h0, c0, cells.get("lstm").step
    for t in range(T):
        gi, gh = affine(params, x[t], h)  # [B, 4H] each
        (h, c), gates = step(cells.NUMPY_OPS, gi, gh, (h, c))
        i[t], f[t], g[t], o[t] = gates["i"], gates["f"], gates["g"], gates["o"]
        tanh_c[t] = np.tanh(c)
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
    dhs, dh_next, dc_next = upstream_grads(dhs, dh_T, dc_T, cache)
    params, x, s = cache.params, cache.x, cache.saved
    hs, cs, i, f, g, o, tanh_c = (s[k] for k in ("hs", "cs", "i", "f", "g", "o", "tanh_c"))
    grads = zero_grads(params)
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
        dx[t], dh_next = affine_backward(grads, params, da, da, x[t], h_prev)
        dc_next = dc * f[t]
    return Gradients(dx, dh_next, dc_next, grads)


BPTT = BpttCell(forward=lambda x, h0, c0, params, activation: lstm_forward(x, h0, c0, params),
                backward=lambda dhs, cache, dh_T, dc_T: lstm_backward(dhs, cache, dh_T, dc_T))
"""The CellSpec hook "bptt" of the LSTM (rnn_train/model/cells.py)."""
