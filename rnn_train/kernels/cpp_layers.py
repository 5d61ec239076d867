"""RNN, GRU and LSTM layers whose time loops run in C++ (csrc/recurrence.cpp), as autograd Functions.

The Python side does the all-steps work, each one GEMM or gather (rnn_train/kernels/layer_io.py):
the input projection before the loop, the weight and input gradients after it. The C++ ops do
the T sequential steps, each one GEMM with W_hh and one fused element-wise loop, and keep what
the backward needs. Tensors between the two (T steps, B sequences, H units, G gate blocks):

    gx     [T, B, G*H]  x W_ih^T + biases (GRU: b_hh folded into r, z only); the forward op
                        overwrites it with the activated gates, saved for backward
    hs     [T+1, B, H]  h_0 .. h_T;  LSTM also cs [T+1, B, H] (c_0 .. c_T), tc [T, B, H] = tanh(c_t)
    n      [T, B, H]    GRU candidate states
    deltas [T, B, G*H]  dL/d(pre-activations) per step, hidden side (GRU: and input side, which
                        differs from it in the n block only); RNN / LSTM: one for both sides.
                        They live in per-thread scratch buffers (rnn_train.kernels.gemm.scratch),
                        reused by every backward: fresh multi-MB buffers cost ~800 page faults per
                        GRU-256 step on the machine measured (docs/kernels.md)

``step`` picks the per-step GEMM (STEP_GEMMS: the BLAS torch links, called directly, torch.mm,
or csrc/tiled.h's register tiles over W_hh packed once per call) and ``threads`` how the loop
uses torch's threads (THREADS: BLAS threads each GEMM, a block of batch rows per thread, or a
block of hidden units per thread; csrc/common.h says why each can win). Which is faster depends
on the machine and the shapes: the autotuner decides.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from rnn_train.kernels.build import extension
from rnn_train.kernels.gemm import scratch, weight_grad
from rnn_train.kernels.layer_io import input_grads, out_view, project, time_major_rows

STEP_GEMMS = {"blas": 0, "aten": 1, "tiled": 2}  # csrc/common.h GemmPath
THREADS = {"blas": 0, "rows": 1, "units": 2}  # csrc/common.h Threads


def _ops():
    ops = extension()
    if ops is None:
        raise RuntimeError("the C++ kernels are not available on this machine (see the note printed earlier)")
    return ops


def _gates_input(cell: str, x2, one_hot_ids: bool, w_ih, b_ih, b_hh, gemm: int, T: int, B: int):
    """(gx [T, B, G*H], ids, table): the input projection of all steps plus the biases the loop
    does not add itself. For one-hot ids, gx is left empty and the loop gathers its rows from
    table = W_ih^T + biases [V, G*H] as it goes (one pass fewer over gx); else ids = table = None."""
    H = w_ih.shape[0] // {"rnn": 1, "gru": 3, "lstm": 4}[cell]
    if b_ih is None:
        bias = None
    elif cell == "gru":  # b_hn stays inside r * (W_hn h + b_hn)
        bias = torch.cat([b_ih[: 2 * H] + b_hh[: 2 * H], b_ih[2 * H:]])
    else:
        bias = b_ih + b_hh
    if not one_hot_ids:
        return project(x2, False, w_ih, bias, gemm).view(T, B, -1), None, None
    table = w_ih.t().contiguous() if bias is None else torch.add(w_ih.t(), bias).contiguous()  # [V, G*H]
    gx = torch.empty(T, B, w_ih.shape[0], dtype=w_ih.dtype, device=w_ih.device)
    return gx, x2.long().contiguous(), table


def cpp_states(cell: str, x2, one_hot_ids: bool, h0, c0, w_ih, w_hh, b_ih, b_hh, T: int, B: int, relu: bool,
               gemm: int, step: int, threads: int) -> dict[str, torch.Tensor]:
    """The forward recurrence without autograd: {"hs", "gates", and "n" (GRU) or "cs", "tc" (LSTM)}."""
    ops, w = _ops(), w_hh.contiguous()
    gx, ids, table = _gates_input(cell, x2, one_hot_ids, w_ih, b_ih, b_hh, gemm, T, B)
    h0 = h0.contiguous()
    if cell == "rnn":
        return {"hs": ops.rnn_forward(gx, ids, table, h0, w, relu, step, threads), "gates": gx}
    if cell == "gru":
        H = w.shape[1]
        b_hn = b_hh[2 * H:].contiguous() if b_hh is not None else torch.zeros(H, dtype=w.dtype, device=w.device)
        hs, n = ops.gru_forward(gx, ids, table, h0, w, b_hn, step, threads)
        return {"hs": hs, "gates": gx, "n": n}
    hs, cs, tc = ops.lstm_forward(gx, ids, table, h0, c0.contiguous(), w, step, threads)
    return {"hs": hs, "gates": gx, "cs": cs, "tc": tc}


def _set_ctx(ctx, one_hot_ids, batch_first, has_bias, relu, gemm, step, threads):
    ctx.one_hot_ids, ctx.batch_first, ctx.has_bias = one_hot_ids, batch_first, has_bias
    ctx.relu, ctx.gemm, ctx.step, ctx.threads = relu, gemm, step, threads


def _hidden_grads(ctx, deltas2, hs, T: int, B: int, need_w: bool, need_b: bool):
    """(dW_hh, db_hh) from the hidden-side deltas [T*B, G*H]: one GEMM and one reduction."""
    H = hs.shape[2]
    dw_hh = weight_grad(deltas2, hs[:T].reshape(T * B, H), ctx.gemm) if need_w else None
    db_hh = deltas2.sum(0) if ctx.has_bias and need_b else None
    return dw_hh, db_hh


class CppRNN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inp, h0, w_ih, w_hh, b_ih, b_hh, one_hot_ids, batch_first, relu, gemm, step, threads):
        T, B = (inp.shape[1], inp.shape[0]) if batch_first else (inp.shape[0], inp.shape[1])
        x2 = time_major_rows(inp, batch_first, T, B)
        s = cpp_states("rnn", x2, one_hot_ids, h0, None, w_ih, w_hh, b_ih, b_hh, T, B, relu, gemm, step, threads)
        hs = s["hs"]
        ctx.save_for_backward(x2, w_ih, w_hh, hs)
        _set_ctx(ctx, one_hot_ids, batch_first, b_ih is not None, relu, gemm, step, threads)
        return out_view(hs[1:], batch_first), hs[T].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_hT):
        x2, w_ih, w_hh, hs = ctx.saved_tensors
        T, B = hs.shape[0] - 1, hs.shape[1]
        d_out = d_out.transpose(0, 1) if ctx.batch_first else d_out  # [T, B, H] (a view)
        da = scratch("cpp_deltas_hidden", (T, B, hs.shape[2]), hs)
        need = ctx.needs_input_grad
        dh0 = _ops().rnn_backward(d_out, d_hT, w_hh.contiguous(), hs, da, ctx.relu, need[1], ctx.step, ctx.threads)
        da2 = da.view(T * B, -1)
        dw_hh, _ = _hidden_grads(ctx, da2, hs, T, B, need[3], False)
        dx, dw_ih, db_ih = input_grads(ctx, da2, x2, w_ih, T, B, (need[0], need[2], need[4]))
        db_hh = None
        if ctx.has_bias and need[5]:  # b_ih and b_hh get the same sum
            db_hh = da2.sum(0) if db_ih is None else db_ih  # (autograd copies a tensor handed to two params)
        return dx, dh0 if need[1] else None, dw_ih, dw_hh, db_ih, db_hh, None, None, None, None, None, None


class CppGRU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inp, h0, w_ih, w_hh, b_ih, b_hh, one_hot_ids, batch_first, gemm, step, threads):
        T, B = (inp.shape[1], inp.shape[0]) if batch_first else (inp.shape[0], inp.shape[1])
        x2 = time_major_rows(inp, batch_first, T, B)
        s = cpp_states("gru", x2, one_hot_ids, h0, None, w_ih, w_hh, b_ih, b_hh, T, B, False, gemm, step, threads)
        hs = s["hs"]
        ctx.save_for_backward(x2, w_ih, w_hh, hs, s["gates"], s["n"])
        _set_ctx(ctx, one_hot_ids, batch_first, b_ih is not None, False, gemm, step, threads)
        return out_view(hs[1:], batch_first), hs[T].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_hT):
        x2, w_ih, w_hh, hs, gates, n = ctx.saved_tensors
        T, B = n.shape[0], n.shape[1]
        d_out = d_out.transpose(0, 1) if ctx.batch_first else d_out
        dgh, dgi = scratch("cpp_deltas_hidden", gates.shape, gates), scratch("cpp_deltas_input", gates.shape, gates)
        need = ctx.needs_input_grad
        dh0 = _ops().gru_backward(d_out, d_hT, w_hh.contiguous(), hs, gates, n, dgh, dgi, need[1], ctx.step, ctx.threads)
        dx, dw_ih, db_ih = input_grads(ctx, dgi.view(T * B, -1), x2, w_ih, T, B, (need[0], need[2], need[4]))
        # the two sides' deltas differ in the n block only: b_hh's r, z sums are b_ih's
        own_db_hh = need[5] and db_ih is None
        dw_hh, db_hh = _hidden_grads(ctx, dgh.view(T * B, -1), hs, T, B, need[3], own_db_hh)
        if need[5] and db_ih is not None:
            H = hs.shape[2]
            db_hh = torch.cat([db_ih[: 2 * H], dgh.view(T * B, -1)[:, 2 * H:].sum(0)])
        return dx, dh0 if need[1] else None, dw_ih, dw_hh, db_ih, db_hh, None, None, None, None, None


class CppLSTM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inp, h0, c0, w_ih, w_hh, b_ih, b_hh, one_hot_ids, batch_first, gemm, step, threads):
        T, B = (inp.shape[1], inp.shape[0]) if batch_first else (inp.shape[0], inp.shape[1])
        x2 = time_major_rows(inp, batch_first, T, B)
        s = cpp_states("lstm", x2, one_hot_ids, h0, c0, w_ih, w_hh, b_ih, b_hh, T, B, False, gemm, step, threads)
        hs, cs = s["hs"], s["cs"]
        ctx.save_for_backward(x2, w_ih, w_hh, hs, cs, s["gates"], s["tc"])
        _set_ctx(ctx, one_hot_ids, batch_first, b_ih is not None, False, gemm, step, threads)
        return out_view(hs[1:], batch_first), hs[T].clone(), cs[T].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_hT, d_cT):
        x2, w_ih, w_hh, hs, cs, gates, tc = ctx.saved_tensors
        T, B = tc.shape[0], tc.shape[1]
        d_out = d_out.transpose(0, 1) if ctx.batch_first else d_out
        dg = scratch("cpp_deltas_hidden", gates.shape, gates)
        need = ctx.needs_input_grad
        dh0, dc0 = _ops().lstm_backward(d_out, d_hT, d_cT, w_hh.contiguous(), cs, gates, tc, dg, need[1], ctx.step,
                                        ctx.threads)
        dg2 = dg.view(T * B, -1)
        dw_hh, _ = _hidden_grads(ctx, dg2, hs, T, B, need[4], False)
        dx, dw_ih, db_ih = input_grads(ctx, dg2, x2, w_ih, T, B, (need[0], need[3], need[5]))
        db_hh = None
        if ctx.has_bias and need[6]:
            db_hh = dg2.sum(0) if db_ih is None else db_ih
        return dx, dh0 if need[1] else None, dc0, dw_ih, dw_hh, db_ih, db_hh, None, None, None, None, None
