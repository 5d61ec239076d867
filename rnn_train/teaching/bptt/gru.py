"""GRU: forward and BPTT, the derivation as code."""
from __future__ import annotations

import numpy as np

from rnn_train.model import cells
from rnn_train.teaching.bptt.common import (BpttCell, Cache, ForwardResult, Gradients, affine, affine_backward,
                                            prepare, upstream_grads, zero_grads)


def gru_forward(x, h0, params: dict) -> ForwardResult:
    """Gated recurrent unit, ``torch.nn.GRU`` with one layer; gate blocks (r, z, n).

        [gi_r, gi_z, gi_n] = x_t W_ih^T + b_ih              each [B, H]
        [gh_r, gh_z, gh_n] = h_{t-1} W_hh^T + b_hh
        r_t = sigmoid(gi_r + gh_r)                           reset gate
        z_t = sigmoid(gi_z + gh_z)                           update gate
        n_t = tanh(gi_n + r_t * gh_n)                        candidate; r scales W_hn h + b_hn
        h_t = (1 - z_t) * n_t + z_t * h_{t-1}

    The step itself is the registry's (rnn_train/model/cells.py, `gru_step`), the one place the
    equations are written; this loop keeps what the backward pass needs. Saves hs, r, z, n and
    gh_n (the reset gate's derivative needs W_hn h + b_hn).
    """
    x, h0, _, params, H = prepare("gru", x, h0, None, params)
    T, B, _ = x.shape
    hs, r, z, n, gh_n = (np.empty((T, B, H), dtype=x.dtype) for _ in range(5))
    h, step = h0, cells.get("gru").step
    for t in range(T):
        gi, gh = affine(params, x[t], h)  # [B, 3H] each
        (h,), gates = step(cells.NUMPY_OPS, gi, gh, (h,))
        r[t], z[t], n[t] = gates["r"], gates["z"], gates["n"]
        gh_n[t] = gh[:, 2 * H :]
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
    dhs, dh_next, _ = upstream_grads(dhs, dh_T, None, cache)
    params, x, s = cache.params, cache.x, cache.saved
    hs, r, z, n, gh_n = s["hs"], s["r"], s["z"], s["n"], s["gh_n"]
    grads = zero_grads(params)
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
        dx[t], dh_via_W = affine_backward(grads, params, dgi, dgh, x[t], h_prev)
        dh_next = dh * z[t] + dh_via_W
    return Gradients(dx, dh_next, None, grads)


BPTT = BpttCell(forward=lambda x, h0, c0, params, activation: gru_forward(x, h0, params),
                backward=lambda dhs, cache, dh_T, dc_T: gru_backward(dhs, cache, dh_T))
"""The CellSpec hook "bptt" of the GRU (rnn_train/model/cells.py)."""
