"""The time loops of the fused RNN and GRU layers written in torch ops: the path that needs no
compiler (rnn_train/kernels/cpp_layers.py runs the same loops in C++ where a build exists).

forward (no graph is built)
    * per step: one GEMM with W_hh that also adds the step's input projection, then a few
      element-wise ops into preallocated [T, B, ...] buffers, which are what backward needs.
backward
    * the per-step factors that do not depend on the incoming gradient (sigmoid' / tanh'
      products) are computed for all steps at once, so each step of the reverse walk is one
      broadcast multiply for the gate deltas, one addcmul for the GRU's direct z-path and one
      GEMM for dL/dh_{t-1} = ... + delta_hh @ W_hh;
    * the per-step deltas stay in a [T, B, G*H] buffer, so dW_hh, dW_ih, db_* and dx are each
      ONE GEMM / reduction over all T*B rows (rnn_train/kernels/layer_io.py).

tanh(a) is computed as 2 sigmoid(2a) - 1: torch's CPU ``tanh_`` was several times slower than
``sigmoid_`` on the machine measured (docs/kernels.md). Same function; the results differ from
torch.tanh by rounding only (a few ulp, absolute), well inside the float64 1e-10 tests.

Big temporaries of the backward (and the forward's 2 (W_in x + b_in)) live in per-thread scratch
buffers reused across calls (rnn_train.kernels.gemm.scratch). Nothing that leaves a call
(outputs, saved tensors, gradients) lives in them.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from rnn_train.kernels.gemm import linear, scratch, weight_grad
from rnn_train.kernels.layer_io import (B_HH, H0, W_HH, LayerLoop, LayerOptions, LayerTensors, begin, input_grads,
                                        out_view, project, shared_bias_grad, time_major_grad)


def _one_minus(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out <- 1 - x."""
    return torch.neg(x, out=out).add_(1)


def _two_sigmoid_minus_one_(s: torch.Tensor) -> torch.Tensor:
    """s <- 2 s - 1 in place: with s = sigmoid(2a) this is tanh(a) (three fast ops beat one slow tanh_)."""
    return s.mul_(2).sub_(1)


# ----------------------------------------------------------------------------- GRU


def gru_states(opts: LayerOptions, x2, lt: LayerTensors, T: int, B: int):
    """The GRU recurrence without autograd. Returns (hs [T+1, B, H] with hs[0] = h0,
    gates [T, B, 3H] holding (r, z, W_hn h + b_hn) per step, n [T, B, H])."""
    h0, w_ih, w_hh, b_ih, b_hh, gemm = lt.h0, lt.w_ih, lt.w_hh, lt.b_ih, lt.b_hh, opts.gemm
    H = w_hh.shape[1]
    H2 = 2 * H
    bias = None if b_ih is None else torch.cat([b_ih[:H2] + b_hh[:H2], b_ih[H2:]])
    # gates[t] starts as (W_ir x + b_ir + b_hr, W_iz x + b_iz + b_hz, b_hn); adding h W_hh^T in the
    # step's GEMM then yields both gates' pre-activations and the reset-scaled term W_hn h + b_hn.
    gates = project(x2, opts.one_hot_ids, w_ih, bias, gemm).view(T, B, 3 * H)
    gin2 = torch.mul(gates[..., H2:], 2, out=scratch("gru_gin2", (T, B, H), w_hh))  # 2 (W_in x + b_in)
    if b_hh is None:
        gates[..., H2:].zero_()
    else:
        gates[..., H2:].copy_(b_hh[H2:].expand(T, B, H))
    hs = torch.empty(T + 1, B, H, dtype=w_hh.dtype, device=w_hh.device)
    hs[0].copy_(h0)
    n = torch.empty(T, B, H, dtype=w_hh.dtype, device=w_hh.device)
    step_gates = []
    for t in range(T):
        g = linear(hs[t], w_hh, gemm, add=gates[t])  # [B, 3H]: the step's one GEMM
        g[:, :H2].sigmoid_()  # r, z
        nt = torch.addcmul(gin2[t], g[:, :H], g[:, H2:], value=2, out=n[t])  # 2 (W_in x + b_in + r (W_hn h + b_hn))
        _two_sigmoid_minus_one_(nt.sigmoid_())  # tanh(a) = 2 sigmoid(2a) - 1
        torch.lerp(nt, hs[t], g[:, H:H2], out=hs[t + 1])  # n + z (h - n) = (1 - z) n + z h
        step_gates.append(g)
    torch.stack(step_gates, out=gates)  # gates[t] has been read: keep (r, z, W_hn h + b_hn) there
    return hs, gates, n


class PythonGRU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, opts: LayerOptions, inp, h0, c0, w_ih, w_hh, b_ih, b_hh):
        x2, T, B = begin(ctx, opts, inp, b_ih)  # [T*B, I] or ids [T*B]
        hs, gates, n = gru_states(opts, x2, LayerTensors(inp, h0, c0, w_ih, w_hh, b_ih, b_hh), T, B)
        ctx.save_for_backward(x2, w_ih, w_hh, hs, gates, n)
        return out_view(hs[1:], opts.batch_first), hs[T].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_hT):
        x2, w_ih, w_hh, hs, gates, n = ctx.saved_tensors
        T, B, H = n.shape
        H2 = 2 * H
        gemm = ctx.opts.gemm
        d_out = time_major_grad(ctx, d_out)  # [T, B, H] (a view)
        r, z, ghn = gates[..., :H], gates[..., H:H2], gates[..., H2:]

        # The factors of the gate deltas that do not depend on dh, for all steps at once:
        #   da_n = dh (1 - z)(1 - n^2)            =: dh * a
        #   da_r = da_n * ghn * r (1 - r)         =  dh * a ghn r (1 - r)
        #   da_z = dh (h_{t-1} - n) z (1 - z)
        # so the hidden-side deltas dgh = (da_r, da_z, da_n * r) are dh * coef.
        one_minus = scratch("gru_one_minus", (T, B, H), n)
        a = torch.mul(n, n, out=scratch("gru_a", (T, B, H), n)).neg_().add_(1)
        a.mul_(_one_minus(z, one_minus))
        coef = scratch("gru_coef", (T, B, 3, H), n)
        torch.mul(a, ghn, out=coef[:, :, 0]).mul_(r).mul_(_one_minus(r, one_minus))
        torch.sub(hs[:T], n, out=coef[:, :, 1]).mul_(z).mul_(_one_minus(z, one_minus))
        torch.mul(a, r, out=coef[:, :, 2])

        # The reverse walk. dh = dL/dh_t (total); dgh[t] = dL/d(h_{t-1} W_hh^T + b_hh).
        w_hh_t = w_hh.t()  # [H, 3H] (a view): "x @ w^T" with w = W_hh^T is x @ W_hh
        dgh = scratch("gru_dgh", (T, B, 3 * H), n)
        dhs = [None] * T
        dh = d_out[T - 1] + d_hT
        dh0 = None
        for t in range(T - 1, -1, -1):
            dhs[t] = dh
            torch.mul(dh.unsqueeze(1), coef[t], out=dgh[t].view(B, 3, H))
            if t > 0:  # dh_{t-1} = dout_{t-1} + dh_t z_t + dgh_t W_hh
                dh = linear(dgh[t], w_hh_t, gemm, add=torch.addcmul(d_out[t - 1], dh, z[t]))
            elif ctx.needs_input_grad[H0]:
                dh0 = linear(dgh[0], w_hh_t, gemm, add=dh * z[0])

        dgh2 = dgh.view(T * B, 3 * H)
        dw_hh = weight_grad(dgh2, hs[:T].view(T * B, H), gemm) if ctx.needs_input_grad[W_HH] else None
        db_hh = dgh2.sum(0) if ctx.has_bias and ctx.needs_input_grad[B_HH] else None
        # The input-side deltas differ from dgh only in the n block (da_n, not da_n * r): reuse the buffer.
        dh_all = torch.stack(dhs, out=scratch("gru_dh", (T, B, H), n))
        torch.mul(dh_all, a, out=dgh[..., H2:])
        dx, dw_ih, db_ih = input_grads(ctx, dgh2, x2, w_ih, T, B)
        return None, dx, dh0, None, dw_ih, dw_hh, db_ih, db_hh


# ----------------------------------------------------------------------------- RNN


def rnn_states(opts: LayerOptions, x2, lt: LayerTensors, T: int, B: int):
    """The Elman recurrence without autograd. Returns hs [T+1, B, H] with hs[0] = h0."""
    h0, w_ih, w_hh, b_ih, b_hh, gemm, relu = lt.h0, lt.w_ih, lt.w_hh, lt.b_ih, lt.b_hh, opts.gemm, opts.relu
    H = w_hh.shape[1]
    bias = None if b_ih is None else b_ih + b_hh
    pre = project(x2, opts.one_hot_ids, w_ih, bias, gemm).view(T, B, H)  # x W_ih^T + b_ih + b_hh
    w = w_hh
    if not relu:  # tanh(a) = 2 sigmoid(2a) - 1: let the GEMM produce 2a directly
        pre.mul_(2)
        w = w_hh * 2
    hs = torch.empty(T + 1, B, H, dtype=w_hh.dtype, device=w_hh.device)
    hs[0].copy_(h0)
    for t in range(T):
        a = linear(hs[t], w, gemm, add=pre[t])  # [B, H] (2a for tanh): the step's one GEMM
        if relu:
            torch.clamp_min(a, 0, out=hs[t + 1])
        else:
            _two_sigmoid_minus_one_(torch.sigmoid(a, out=hs[t + 1]))
    return hs


class PythonRNN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, opts: LayerOptions, inp, h0, c0, w_ih, w_hh, b_ih, b_hh):
        x2, T, B = begin(ctx, opts, inp, b_ih)
        hs = rnn_states(opts, x2, LayerTensors(inp, h0, c0, w_ih, w_hh, b_ih, b_hh), T, B)
        ctx.save_for_backward(x2, w_ih, w_hh, hs)
        return out_view(hs[1:], opts.batch_first), hs[T].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_hT):
        x2, w_ih, w_hh, hs = ctx.saved_tensors
        T, B, H = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
        gemm = ctx.opts.gemm
        d_out = time_major_grad(ctx, d_out)
        # da[t] = dL/d(pre-activation_t) = dh_t * phi'(a_t), phi' read off the outputs:
        # tanh: 1 - h^2; relu: [h > 0] = sign(h), since h >= 0
        da = scratch("rnn_da", (T, B, H), hs)
        if ctx.opts.relu:
            torch.sign(hs[1:], out=da)
        else:
            torch.mul(hs[1:], hs[1:], out=da).neg_().add_(1)
        w_hh_t = w_hh.t()  # [H, H] (a view)
        dh = d_out[T - 1] + d_hT
        dh0 = None
        for t in range(T - 1, -1, -1):
            da[t].mul_(dh)
            if t > 0:  # dh_{t-1} = dout_{t-1} + da_t W_hh
                dh = linear(da[t], w_hh_t, gemm, add=d_out[t - 1])
            elif ctx.needs_input_grad[H0]:
                dh0 = linear(da[0], w_hh_t, gemm)
        da2 = da.view(T * B, H)
        dw_hh = weight_grad(da2, hs[:T].view(T * B, H), gemm) if ctx.needs_input_grad[W_HH] else None
        dx, dw_ih, db_ih = input_grads(ctx, da2, x2, w_ih, T, B)
        return None, dx, dh0, None, dw_ih, dw_hh, db_ih, shared_bias_grad(ctx, da2, db_ih)


# The CellSpec hooks "python_loop" (rnn_train/model/cells.py)
GRU_LOOP = LayerLoop(PythonGRU, lambda opts, x2, lt, T, B: (gru_states(opts, x2, lt, T, B)[0], ()))
RNN_LOOP = LayerLoop(PythonRNN, lambda opts, x2, lt, T, B: (rnn_states(opts, x2, lt, T, B), ()))


