"""RNN, GRU and LSTM layers whose time loops run in C++ (csrc/recurrence.cpp), as autograd Functions.

The Python side does the all-steps work, each one GEMM or gather (rnn_train/kernels/layer_io.py):
the input projection before the loop, the weight and input gradients after it. The C++ ops do
the T sequential steps, each one GEMM with W_hh and one fused element-wise loop, and keep what
the backward needs. Tensors between the two (T steps, B sequences, H units, G gate blocks):

    x      [T, B, G*H]  x W_ih^T + biases (GRU: b_hh folded into r, z only), read by the forward op;
                        for one-hot ids the gather table [V, G*H] with ids [T, B] instead
    gates  [T, B, G*H]  GRU / LSTM: the activated gates the forward op writes, saved for backward
    hs     [T+1, B, H]  h_0 .. h_T;  LSTM also cs [T+1, B, H] (c_0 .. c_T), tc [T, B, H] = tanh(c_t)
    n      [T, B, H]    GRU candidate states
    deltas [T, B, G*H]  dL/d(pre-activations) per step, hidden side (GRU: and input side, which
                        differs from it in the n block only); RNN / LSTM: one for both sides.
                        They live in per-thread scratch buffers (rnn_train.kernels.gemm.scratch),
                        reused by every backward: fresh multi-MB buffers cost ~800 page faults per
                        GRU-256 step on the machine measured (docs/kernels.md)

``opts.step`` picks the per-step GEMM (layer_io.STEP_GEMMS: the BLAS torch links, called
directly, torch.mm, or csrc/tiled.h's register tiles over W_hh packed once per call) and
``opts.threads`` how the loop uses torch's threads (layer_io.THREADS: BLAS threads each GEMM, a
block of batch rows per thread, or a block of hidden units per thread; csrc/common.h says why
each can win). Which is faster depends
on the machine and the shapes: the autotuner decides.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from rnn_train.kernels.build import extension
from rnn_train.kernels.gemm import scratch, weight_grad
from rnn_train.kernels.layer_io import (B_HH, C0, H0, W_HH, LayerLoop, LayerOptions, LayerTensors, begin,
                                        gather_table, input_grads, out_view, project, shared_bias_grad,
                                        time_major_grad)


def _ops():
    ops = extension()
    if ops is None:
        raise RuntimeError("the C++ kernels are not available on this machine (see the note printed earlier)")
    return ops


def _gates_input(opts: LayerOptions, x2, w_ih, bias, T: int, B: int):
    """(x, ids): where the loop reads each step's input projection x W_ih^T + `bias` (the biases
    the loop does not add itself). For one-hot ids, x is the gather table W_ih^T + bias [V, G*H]
    and ids [T, B] say which row each step's row is (no [T, B, G*H] projection is built); else x
    is the projection of all steps [T, B, G*H] and ids None."""
    if not opts.one_hot_ids:
        return project(x2, False, w_ih, bias, opts.gemm).view(T, B, -1), None
    return gather_table(w_ih, bias), x2.long().view(T, B)


def _summed_bias(lt: LayerTensors):
    """b_ih + b_hh: what the RNN and LSTM loops add to every step's input projection."""
    return None if lt.b_ih is None else lt.b_ih + lt.b_hh


def rnn_states(opts: LayerOptions, x2, lt: LayerTensors, T: int, B: int) -> torch.Tensor:
    """The Elman forward recurrence without autograd: hs [T+1, B, H]."""
    x, ids = _gates_input(opts, x2, lt.w_ih, _summed_bias(lt), T, B)
    return _ops().rnn_forward(x, ids, lt.h0.contiguous(), lt.w_hh.contiguous(), opts.relu, opts.step, opts.threads)


def gru_states(opts: LayerOptions, x2, lt: LayerTensors, T: int, B: int) -> dict[str, torch.Tensor]:
    """The GRU forward recurrence without autograd: {"hs", "gates", "n"}."""
    w, H = lt.w_hh.contiguous(), lt.w_hh.shape[1]
    # b_hn stays inside r * (W_hn h + b_hn): the loop adds it; b_hr, b_hz join the input side
    bias = None if lt.b_ih is None else torch.cat([lt.b_ih[: 2 * H] + lt.b_hh[: 2 * H], lt.b_ih[2 * H:]])
    x, ids = _gates_input(opts, x2, lt.w_ih, bias, T, B)
    b_hn = lt.b_hh[2 * H:].contiguous() if lt.b_hh is not None else torch.zeros(H, dtype=w.dtype, device=w.device)
    hs, gates, n = _ops().gru_forward(x, ids, lt.h0.contiguous(), w, b_hn, opts.step, opts.threads)
    return {"hs": hs, "gates": gates, "n": n}


def lstm_states(opts: LayerOptions, x2, lt: LayerTensors, T: int, B: int) -> dict[str, torch.Tensor]:
    """The LSTM forward recurrence without autograd: {"hs", "gates", "cs", "tc"}."""
    x, ids = _gates_input(opts, x2, lt.w_ih, _summed_bias(lt), T, B)
    hs, cs, tc, gates = _ops().lstm_forward(x, ids, lt.h0.contiguous(), lt.c0.contiguous(), lt.w_hh.contiguous(),
                                            opts.step, opts.threads)
    return {"hs": hs, "gates": gates, "cs": cs, "tc": tc}


def _hidden_grads(ctx, deltas2, hs, T: int, B: int, own_bias: bool):
    """(dW_hh, db_hh) from the hidden-side deltas [T*B, G*H]: one GEMM and, with own_bias, one reduction."""
    need, H = ctx.needs_input_grad, hs.shape[2]
    dw_hh = weight_grad(deltas2, hs[:T].reshape(T * B, H), ctx.opts.gemm) if need[W_HH] else None
    db_hh = deltas2.sum(0) if ctx.has_bias and need[B_HH] and own_bias else None
    return dw_hh, db_hh


class CppRNN(torch.autograd.Function):
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
        T, B, opts, need = hs.shape[0] - 1, hs.shape[1], ctx.opts, ctx.needs_input_grad
        da = scratch("cpp_deltas_hidden", (T, B, hs.shape[2]), hs)
        dh0 = _ops().rnn_backward(time_major_grad(ctx, d_out), d_hT, w_hh.contiguous(), hs, da, opts.relu, need[H0],
                                  opts.step, opts.threads)
        da2 = da.view(T * B, -1)
        dw_hh, _ = _hidden_grads(ctx, da2, hs, T, B, own_bias=False)
        dx, dw_ih, db_ih = input_grads(ctx, da2, x2, w_ih, T, B)
        return None, dx, dh0 if need[H0] else None, None, dw_ih, dw_hh, db_ih, shared_bias_grad(ctx, da2, db_ih)


class CppGRU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, opts: LayerOptions, inp, h0, c0, w_ih, w_hh, b_ih, b_hh):
        x2, T, B = begin(ctx, opts, inp, b_ih)
        s = gru_states(opts, x2, LayerTensors(inp, h0, c0, w_ih, w_hh, b_ih, b_hh), T, B)
        hs = s["hs"]
        ctx.save_for_backward(x2, w_ih, w_hh, hs, s["gates"], s["n"])
        return out_view(hs[1:], opts.batch_first), hs[T].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_hT):
        x2, w_ih, w_hh, hs, gates, n = ctx.saved_tensors
        T, B, opts, need = n.shape[0], n.shape[1], ctx.opts, ctx.needs_input_grad
        dgh, dgi = scratch("cpp_deltas_hidden", gates.shape, gates), scratch("cpp_deltas_input", gates.shape, gates)
        dh0 = _ops().gru_backward(time_major_grad(ctx, d_out), d_hT, w_hh.contiguous(), hs, gates, n, dgh, dgi,
                                  need[H0], opts.step, opts.threads)
        dx, dw_ih, db_ih = input_grads(ctx, dgi.view(T * B, -1), x2, w_ih, T, B)
        # the two sides' deltas differ in the n block only: b_hh's r, z sums are b_ih's
        dw_hh, db_hh = _hidden_grads(ctx, dgh.view(T * B, -1), hs, T, B, own_bias=db_ih is None)
        if need[B_HH] and db_ih is not None:
            H = hs.shape[2]
            db_hh = torch.cat([db_ih[: 2 * H], dgh.view(T * B, -1)[:, 2 * H:].sum(0)])
        return None, dx, dh0 if need[H0] else None, None, dw_ih, dw_hh, db_ih, db_hh


class CppLSTM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, opts: LayerOptions, inp, h0, c0, w_ih, w_hh, b_ih, b_hh):
        x2, T, B = begin(ctx, opts, inp, b_ih)
        s = lstm_states(opts, x2, LayerTensors(inp, h0, c0, w_ih, w_hh, b_ih, b_hh), T, B)
        hs, cs = s["hs"], s["cs"]
        ctx.save_for_backward(x2, w_ih, w_hh, hs, cs, s["gates"], s["tc"])
        return out_view(hs[1:], opts.batch_first), hs[T].clone(), cs[T].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_hT, d_cT):
        x2, w_ih, w_hh, hs, cs, gates, tc = ctx.saved_tensors
        T, B, opts, need = tc.shape[0], tc.shape[1], ctx.opts, ctx.needs_input_grad
        dg = scratch("cpp_deltas_hidden", gates.shape, gates)
        dh0, dc0 = _ops().lstm_backward(time_major_grad(ctx, d_out), d_hT, d_cT, w_hh.contiguous(), cs, gates, tc, dg,
                                        need[H0], opts.step, opts.threads)
        dg2 = dg.view(T * B, -1)
        dw_hh, _ = _hidden_grads(ctx, dg2, hs, T, B, own_bias=False)
        dx, dw_ih, db_ih = input_grads(ctx, dg2, x2, w_ih, T, B)
        return (None, dx, dh0 if need[H0] else None, dc0 if need[C0] else None, dw_ih, dw_hh, db_ih,
                shared_bias_grad(ctx, dg2, db_ih))


# The CellSpec hooks "cpp_loop" (rnn_train/model/cells.py)
RNN_LOOP = LayerLoop(CppRNN, lambda opts, x2, lt, T, B: (rnn_states(opts, x2, lt, T, B), ()))
GRU_LOOP = LayerLoop(CppGRU, lambda opts, x2, lt, T, B: (gru_states(opts, x2, lt, T, B)["hs"], ()))


def _lstm_final(opts, x2, lt, T, B):
    s = lstm_states(opts, x2, lt, T, B)
    return s["hs"], (s["cs"][T].clone(),)


LSTM_LOOP = LayerLoop(CppLSTM, _lstm_final)
