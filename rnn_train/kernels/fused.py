"""Fused single-layer RNN (tanh / ReLU) and GRU for the CPU: a hand-written forward and BPTT in torch.

Why this module exists: on the CPU, ``nn.RNN`` / ``nn.GRU`` run every time step through
autograd. Per step the forward does one addmm with W_hh and a handful of tiny elementwise ops,
each recorded in the graph; the backward replays all of them in reverse, including one mm for
dL/dh_{t-1} *and* one small mm for the step's share of dL/dW_hh. Here the same equations
(``bptt.py``'s derivation, PyTorch's gate layout) run inside one ``torch.autograd.Function``
per layer:

forward (no graph is built)
    * the input projection of all T steps is ONE GEMM over [T*B, I] -- or, for one-hot input
      given as integer ids, one row gather of W_ih^T: the one-hot tensor never exists;
    * per step: one GEMM with W_hh that also adds the step's input projection, then a few
      elementwise ops into preallocated [T, B, ...] buffers, which are what backward needs.
backward
    * the per-step factors that do not depend on the incoming gradient (sigmoid' / tanh'
      products) are computed for all steps at once, so each step of the reverse walk is one
      broadcast multiply for the gate deltas, one addcmul for the GRU's direct z-path and one
      GEMM for dL/dh_{t-1} = ... + delta_hh @ W_hh;
    * the per-step deltas stay in a [T, B, G*H] buffer, so dW_hh, dW_ih, db_* and dx are each
      ONE GEMM / reduction over all T*B rows instead of T small ones.

Public API
----------
::

    fused_rnn_layer(cell, inp, h0, w_ih, w_hh, b_ih=None, b_hh=None, *, one_hot_ids=False,
                    batch_first=True, nonlinearity="tanh", gemm="auto") -> (out, h_T)
    fused_rnn(module, inp, hx=None, *, one_hot_ids=False, gemm="auto") -> (out, h_n)
        drop-in for ``module(inp, hx)`` on an nn.RNN / nn.GRU (all layers, dropout between them)
    can_fuse(module, inp=None) -> bool        whether the fused path applies
    onednn_available() -> bool                whether gemm="auto" may use oneDNN for float32
    release_scratch()                         free this thread's cached scratch buffers

Shapes (H hidden, I input size, G = 1 for "rnn", 3 for "gru")::

    inp   [B, T, I] float (batch_first) or [T, B, I]; with one_hot_ids, integer ids [B, T] / [T, B]
          standing for F.one_hot(ids, I) -- I is read from w_ih, so ids must lie in [0, I)
    h0    [B, H]  (zeros allowed; never None here)
    w_ih  [G*H, I], w_hh [G*H, H], b_ih / b_hh [G*H] or None: an nn.RNN / nn.GRU layer's
          weight_ih_l{k}, weight_hh_l{k}, bias_ih_l{k}, bias_hh_l{k} as they are, so checkpoints
          do not change and a model can switch between this path and the nn module freely
    out   [B, T, H] (batch_first) or [T, B, H]: every step's hidden state;  h_T [B, H]

Layout: the computation is time-major ([T, B, ...] buffers: every step reads and writes
contiguous blocks, and the all-steps GEMMs see plain [T*B, ...] matrices). With
``batch_first=True`` the ids / input are transposed on the way in (for ids a tiny copy) and
``out`` is returned as a *transposed view* of the time-major buffer: ``out.is_contiguous()`` is
False, and a consumer that flattens it (``nn.Linear`` on 3-D input does) pays one copy of
[B, T, H]. A model can skip that copy by decoding time-major: ``decoder(out.transpose(0, 1))``
is [T, B, V] on the contiguous buffer (V < H, so transposing the logits is the cheaper copy).
Stacked layers pass the time-major buffer to the next layer without a copy. ``out`` views the
states saved for backward, so autograd refuses in-place ops on it (``out.mul_(2)`` raises);
out-of-place use is unrestricted.

GRU equations (``torch.nn.GRU``; gate blocks r, z, n of W_ih, W_hh, b_ih, b_hh)::

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)        z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))     h' = (1 - z) * n + z * h

RNN: h' = tanh(W_ih x + b_ih + W_hh h + b_hh), or relu (``nonlinearity="relu"``, as nn.RNN).

Three choices made by measurement (benchmarks/fused_bench.py; AMD EPYC under KVM, torch 2.13
CPU build):

* tanh(a) is computed as 2 sigmoid(2a) - 1: torch's CPU ``tanh_`` took ~19 us on a [32, 256]
  block against ~2.5 us for ``sigmoid_``. Same function; the results differ from torch.tanh by
  rounding only (a few ulp, absolute), well inside the float64 1e-10 tests.
* ``gemm="auto"`` runs float32 GEMMs of at least 1.25e6 multiply-adds per thread through oneDNN
  (``torch.ops.mkldnn._linear_pointwise``, a private op of torch's oneDNN integration that
  torch.compile's CPU backend calls) when this torch build has it and ``torch.backends.mkldnn``
  is enabled; smaller GEMMs, float64 and non-CPU tensors use torch.mm / addmm (MKL here). On
  that CPU MKL runs its AVX2 code and oneDNN its AVX-512 code: 1.6-1.9x faster per GEMM, but
  oneDNN pays ~20 us per call, which loses below the threshold. The op is probed once at import;
  if it is missing or wrong, everything uses torch.mm. Both backends give full float32 accuracy
  (relative error ~1e-6 against float64) and are deterministic for a given shape and thread
  count, but they differ from each other by rounding. ``gemm="blas"`` forces torch.mm,
  ``gemm="onednn"`` forces oneDNN (float32 only).
* Big temporaries of the backward (and the forward's 2 (W_in x + b_in)) live in per-thread
  scratch buffers reused across calls: a fresh multi-MB buffer is fresh pages, and first-touch
  page faults (~3 us per 4 KiB page on this VM) cost ~4 ms per GRU-256 backward, 20-25% of
  a training step. The buffers only grow and stay allocated (about [T, B, 11H] per thread for
  the largest layer seen: ~13 MB for GRU-256, B=32, T=35, float32) until ``release_scratch()``.
  Nothing that leaves a call (outputs, saved tensors, gradients) lives in them.

When it applies: CPU, one-direction ``nn.RNN`` / ``nn.GRU`` without projections, float32 or
float64, any B, T >= 1, H, I (``can_fuse``). Not for ``nn.LSTM`` (PyTorch already runs it
through oneDNN on the CPU) nor CUDA (cuDNN is faster there; the code runs there with
gemm="blas" but is not tuned for it). The backward is ``once_differentiable``: no double
backward. Gradients equal ``nn.GRU`` / ``nn.RNN`` autograd to rounding (tests/test_fused.py).

Memory per layer: forward keeps [T, B, 3H] gates + [T, B, H] n + [T+1, B, H] states for the GRU
([T+1, B, H] for the RNN), about what nn.GRU's graph keeps; the scratch above comes on top.

Measured (``python benchmarks/fused_bench.py``; one training step = forward, CE through a Linear
decoder, backward, clip_grad_norm_, SGD; B=32, T=35, V=66, float32, median of interleaved steps):
GRU-256 1.5-1.6x the tokens/s of nn.GRU at 2 threads, ~1.6x at 1; RNN-256 ~1.3x at 2 threads,
~1.45x at 1; float64 ~1.3x. nn.LSTM-256 (oneDNN) is still faster than the fused GRU-256.
"""
from __future__ import annotations

import functools
import math
import threading

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = ["fused_rnn_layer", "fused_rnn", "can_fuse", "onednn_available", "release_scratch", "FUSED_CELLS", "GEMMS"]

FUSED_CELLS = ("rnn", "gru")
GEMMS = ("auto", "onednn", "blas")
_GATES = {"rnn": 1, "gru": 3}
_FLOATS = (torch.float32, torch.float64)


# ----------------------------------------------------------------------------- GEMM backend


@functools.cache
def _onednn_linear():
    """oneDNN's linear kernel if this torch build has one that works, else None.

    Probed on first use (not at import) with a generator of its own, so that importing this module
    or probing never changes the global torch RNG a run's dropout draws from."""
    op = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return None
    g = torch.Generator().manual_seed(0)
    try:
        x, w = torch.randn(3, 5, generator=g), torch.randn(4, 5, generator=g)
        other, b = torch.randn(3, 4, generator=g), torch.randn(4, generator=g)
        ok = torch.allclose(op(x, w, b, "none", [], ""), torch.addmm(b, x, w.t()), rtol=1e-5, atol=1e-5)
        ok = ok and torch.allclose(op.binary(x, other, w, None, "add"), torch.addmm(other, x, w.t()),
                                   rtol=1e-5, atol=1e-5)
    except (RuntimeError, TypeError, AttributeError):
        return None
    return op if ok else None
# gemm="auto" hands a GEMM of M*N*K multiply-adds to oneDNN from this size per thread on: below
# it oneDNN's extra cost per call (~10-20 us) outweighs its faster kernel. Measured crossovers:
# ~1.2e6 at 1 thread, ~2.5e6 at 2 (a GRU-256 step with B=32 is 6.3e6, an RNN-256 step 2.1e6,
# the all-steps weight-gradient GEMMs are far above). More threads were not measured.
_ONEDNN_MIN_WORK_PER_THREAD = 1_250_000
_BLAS, _ONEDNN, _AUTO = 0, 1, 2  # resolved gemm choice carried into the Functions


def onednn_available() -> bool:
    """True when gemm="auto" may run float32 CPU GEMMs through oneDNN (see the module docstring)."""
    return _onednn_linear() is not None and torch.backends.mkldnn.enabled


def _resolve_gemm(gemm: str, w: torch.Tensor) -> int:
    if gemm not in GEMMS:
        raise ValueError(f"gemm must be one of {GEMMS}, got {gemm!r}")
    fits = w.dtype == torch.float32 and w.device.type == "cpu"
    if gemm == "onednn":
        if not (fits and _onednn_linear() is not None):
            raise ValueError("gemm='onednn' needs float32 CPU tensors and a torch build with oneDNN")
        return _ONEDNN
    return _AUTO if gemm == "auto" and fits and onednn_available() else _BLAS


def _uses_onednn(gemm: int, m: int, n: int, k: int) -> bool:
    return gemm == _ONEDNN or (gemm == _AUTO and m * n * k >= _ONEDNN_MIN_WORK_PER_THREAD * torch.get_num_threads())


def _linear(x: torch.Tensor, w: torch.Tensor, gemm: int, *, bias=None, add=None) -> torch.Tensor:
    """x [M, K] @ w[N, K]^T (+ bias [N]) (+ add [M, N]) as a new [M, N] tensor; any strides."""
    if _uses_onednn(gemm, x.shape[0], w.shape[0], x.shape[1]):
        if add is None:
            return _onednn_linear()(x, w, bias, "none", [], "")
        return _onednn_linear().binary(x, add, w, bias, "add")
    if add is not None and bias is not None:
        add = add + bias
    elif add is None:
        add = bias
    return torch.mm(x, w.t()) if add is None else torch.addmm(add, x, w.t())


def _weight_grad(d2: torch.Tensor, x2: torch.Tensor, gemm: int) -> torch.Tensor:
    """d2^T @ x2 ([T*B, O]^T [T*B, D] -> [O, D]): a weight gradient summed over all steps in ONE GEMM.

    oneDNN wants its left operand row-major and both operands here are [T*B, .]: x2 (the
    narrower one for a GRU's deltas) is transposed into a reused scratch buffer and the product
    computed as (x2^T d2)^T, cheaper than torch.mm's AVX2 GEMM on the CPU measured."""
    if not _uses_onednn(gemm, d2.shape[1], x2.shape[1], d2.shape[0]):
        return d2.t() @ x2
    x_t = _scratch("weight_grad_lhs", (x2.shape[1], x2.shape[0]), x2).copy_(x2.t())  # [D, T*B]
    return _onednn_linear()(x_t, d2.t(), None, "none", [], "").t().contiguous()


# ----------------------------------------------------------------------------- scratch memory


class _Scratch(threading.local):
    """Per-thread scratch buffers that outlive one call, for temporaries that never leave it.

    Why: a fresh multi-MB buffer is fresh pages, and each first touch of a 4 KiB page is a page
    fault (~3 us on a VM: ~1,200 faults, ~4 ms, in one GRU-256 backward before this cache).
    A buffer only grows; ``release_scratch()`` frees them all."""

    def __init__(self):
        self.buffers: dict[tuple, torch.Tensor] = {}


_SCRATCH = _Scratch()


def _scratch(name: str, shape: tuple, like: torch.Tensor) -> torch.Tensor:
    """A [shape] tensor of like's dtype/device whose contents are garbage; valid until the next
    request for the same name on this thread, so callers use it within one forward/backward."""
    key = (name, like.dtype, like.device)
    numel = math.prod(shape)
    buf = _SCRATCH.buffers.get(key)
    if buf is None or buf.numel() < numel:
        buf = _SCRATCH.buffers[key] = torch.empty(numel, dtype=like.dtype, device=like.device)
    return buf[:numel].view(shape)


def release_scratch() -> None:
    """Free this thread's scratch buffers (they are rebuilt on the next call that needs them)."""
    _SCRATCH.buffers.clear()


# ----------------------------------------------------------------------------- shared pieces


def _check(cell: str, inp, h0, w_ih, w_hh, b_ih, b_hh, one_hot_ids: bool, batch_first: bool):
    """Validate once, so the Functions can be bare equations. Returns (T, B, H)."""
    if cell not in _GATES:
        raise ValueError(f"fused cell must be one of {FUSED_CELLS}, got {cell!r}")
    G, H = _GATES[cell], w_hh.shape[-1]
    dtype = w_hh.dtype
    if dtype not in _FLOATS:
        raise TypeError(f"fused {cell} computes in float32 or float64, got {dtype}")
    if one_hot_ids:
        if inp.dim() != 2 or inp.dtype.is_floating_point or inp.dtype.is_complex or inp.dtype == torch.bool:
            raise ValueError(f"one_hot_ids expects integer ids [B, T] / [T, B], got {inp.dtype} {tuple(inp.shape)}")
    elif inp.dim() != 3 or inp.dtype != dtype:
        raise ValueError(f"inp must be {dtype} [B, T, I] / [T, B, I], got {inp.dtype} {tuple(inp.shape)}")
    T, B = (inp.shape[1], inp.shape[0]) if batch_first else (inp.shape[0], inp.shape[1])
    if T < 1:
        raise ValueError("the sequence must have at least one step (T >= 1)")
    I = w_ih.shape[-1]
    if not one_hot_ids and inp.shape[-1] != I:
        raise ValueError(f"inp has {inp.shape[-1]} features but w_ih expects {I}")
    expected = {"w_ih": (G * H, I), "w_hh": (G * H, H), "b_ih": (G * H,), "b_hh": (G * H,), "h0": (B, H)}
    for name, value in (("w_ih", w_ih), ("w_hh", w_hh), ("b_ih", b_ih), ("b_hh", b_hh), ("h0", h0)):
        if value is None:
            if name in ("b_ih", "b_hh"):
                continue
            raise ValueError(f"fused {cell}: {name} is required")
        if tuple(value.shape) != expected[name]:
            raise ValueError(f"fused {cell}: {name} must have shape {expected[name]}, got {tuple(value.shape)}")
        if value.dtype != dtype:
            raise ValueError(f"fused {cell}: {name} is {value.dtype} but w_hh is {dtype}; use one dtype")
    if (b_ih is None) != (b_hh is None):
        raise ValueError("pass both b_ih and b_hh or neither")
    return T, B, H


def _time_major_rows(inp: torch.Tensor, batch_first: bool, T: int, B: int) -> torch.Tensor:
    """[B, T, ...] or [T, B, ...] -> contiguous [T*B, ...] in time-major row order.

    A no-op for a previous fused layer's output (a transposed view of a time-major buffer)."""
    tm = inp.transpose(0, 1) if batch_first else inp
    return tm.contiguous().view(T * B, *inp.shape[2:])


def _project(x2: torch.Tensor, one_hot_ids: bool, w: torch.Tensor, bias, gemm: int) -> torch.Tensor:
    """[T*B, O] = x W^T + bias for all steps at once: ONE GEMM, or one row gather for ids.

    x2 is [T*B, I] (float) or [T*B] (ids); w [O, I]; bias [O] or None. A one-hot row picks a
    row of W^T, so the gather table is W^T + bias ([I, O], tiny) and no one-hot tensor is built.
    """
    if one_hot_ids:
        # the table must be row-major: a gather from W^T's strided rows is ~8x slower
        table = torch.empty(w.shape[1], w.shape[0], dtype=w.dtype, device=w.device)  # [I, O]
        if bias is None:
            table.copy_(w.t())
        else:
            torch.add(w.t(), bias, out=table)
        return torch.index_select(table, 0, x2)
    return _linear(x2, w, gemm, bias=bias)


def _input_grads(ctx, dgi2: torch.Tensor, x2: torch.Tensor, w_ih: torch.Tensor, T: int, B: int):
    """(dx, dW_ih, db_ih) from the input-side deltas dgi2 [T*B, G*H]: each one GEMM / reduction."""
    need_x, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[2], ctx.needs_input_grad[4]
    dx = dw = db = None
    if need_x and not ctx.one_hot_ids:  # ids have no gradient
        dx = _linear(dgi2, w_ih.t(), ctx.gemm).view(T, B, -1)  # [T, B, I] = dgi W_ih
        if ctx.batch_first:
            dx = dx.transpose(0, 1)
    if need_w:
        if ctx.one_hot_ids:
            # row v of dW_ih^T sums the deltas of every (t, b) whose id is v: a scatter-add, no GEMM
            dw_t = torch.zeros(w_ih.shape[1], w_ih.shape[0], dtype=dgi2.dtype, device=dgi2.device)
            dw = dw_t.index_add_(0, x2, dgi2).t().contiguous()  # [G*H, I]
        else:
            dw = _weight_grad(dgi2, x2, ctx.gemm)  # [G*H, T*B] @ [T*B, I]
    if need_b and ctx.has_bias:
        db = dgi2.sum(0)
    return dx, dw, db


def _out(hs: torch.Tensor, batch_first: bool) -> torch.Tensor:
    """Every step's state [T, B, H] in the caller's layout (a view, never a copy)."""
    return hs.transpose(0, 1) if batch_first else hs


def _one_minus(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out <- 1 - x."""
    return torch.neg(x, out=out).add_(1)


def _two_sigmoid_minus_one_(s: torch.Tensor) -> torch.Tensor:
    """s <- 2 s - 1 in place: with s = sigmoid(2a) this is tanh(a) (three fast ops beat one slow tanh_)."""
    return s.mul_(2).sub_(1)


# ----------------------------------------------------------------------------- GRU


def _gru_forward(x2, one_hot_ids, h0, w_ih, w_hh, b_ih, b_hh, T, B, H, gemm):
    """The GRU recurrence without autograd. Returns (hs [T+1, B, H] with hs[0] = h0,
    gates [T, B, 3H] holding (r, z, W_hn h + b_hn) per step, n [T, B, H])."""
    H2 = 2 * H
    bias = None if b_ih is None else torch.cat([b_ih[:H2] + b_hh[:H2], b_ih[H2:]])
    # gates[t] starts as (W_ir x + b_ir + b_hr, W_iz x + b_iz + b_hz, b_hn); adding h W_hh^T in the
    # step's GEMM then yields both gates' pre-activations and the reset-scaled term W_hn h + b_hn.
    gates = _project(x2, one_hot_ids, w_ih, bias, gemm).view(T, B, 3 * H)
    gin2 = torch.mul(gates[..., H2:], 2, out=_scratch("gru_gin2", (T, B, H), w_hh))  # 2 (W_in x + b_in)
    if b_hh is None:
        gates[..., H2:].zero_()
    else:
        gates[..., H2:].copy_(b_hh[H2:].expand(T, B, H))
    hs = torch.empty(T + 1, B, H, dtype=w_hh.dtype, device=w_hh.device)
    hs[0].copy_(h0)
    n = torch.empty(T, B, H, dtype=w_hh.dtype, device=w_hh.device)
    step_gates = []
    for t in range(T):
        g = _linear(hs[t], w_hh, gemm, add=gates[t])  # [B, 3H]: the step's one GEMM
        g[:, :H2].sigmoid_()  # r, z
        nt = torch.addcmul(gin2[t], g[:, :H], g[:, H2:], value=2, out=n[t])  # 2 (W_in x + b_in + r (W_hn h + b_hn))
        _two_sigmoid_minus_one_(nt.sigmoid_())  # tanh(a) = 2 sigmoid(2a) - 1
        torch.lerp(nt, hs[t], g[:, H:H2], out=hs[t + 1])  # n + z (h - n) = (1 - z) n + z h
        step_gates.append(g)
    torch.stack(step_gates, out=gates)  # gates[t] has been read: keep (r, z, W_hn h + b_hn) there
    return hs, gates, n


class _FusedGRU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inp, h0, w_ih, w_hh, b_ih, b_hh, one_hot_ids, batch_first, gemm):
        T, B = (inp.shape[1], inp.shape[0]) if batch_first else (inp.shape[0], inp.shape[1])
        x2 = _time_major_rows(inp, batch_first, T, B)  # [T*B, I] or ids [T*B]
        hs, gates, n = _gru_forward(x2, one_hot_ids, h0, w_ih, w_hh, b_ih, b_hh, T, B, w_hh.shape[1], gemm)
        ctx.save_for_backward(x2, w_ih, w_hh, hs, gates, n)
        ctx.one_hot_ids, ctx.batch_first, ctx.has_bias, ctx.gemm = one_hot_ids, batch_first, b_ih is not None, gemm
        return _out(hs[1:], batch_first), hs[T].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_hT):
        x2, w_ih, w_hh, hs, gates, n = ctx.saved_tensors
        T, B, H = n.shape
        H2 = 2 * H
        d_out = d_out.transpose(0, 1) if ctx.batch_first else d_out  # [T, B, H] (a view)
        r, z, ghn = gates[..., :H], gates[..., H:H2], gates[..., H2:]

        # The factors of the gate deltas that do not depend on dh, for all steps at once:
        #   da_n = dh (1 - z)(1 - n^2)            =: dh * a
        #   da_r = da_n * ghn * r (1 - r)         =  dh * a ghn r (1 - r)
        #   da_z = dh (h_{t-1} - n) z (1 - z)
        # so the hidden-side deltas dgh = (da_r, da_z, da_n * r) are dh * coef.
        one_minus = _scratch("gru_one_minus", (T, B, H), n)
        a = torch.mul(n, n, out=_scratch("gru_a", (T, B, H), n)).neg_().add_(1)
        a.mul_(_one_minus(z, one_minus))
        coef = _scratch("gru_coef", (T, B, 3, H), n)
        torch.mul(a, ghn, out=coef[:, :, 0]).mul_(r).mul_(_one_minus(r, one_minus))
        torch.sub(hs[:T], n, out=coef[:, :, 1]).mul_(z).mul_(_one_minus(z, one_minus))
        torch.mul(a, r, out=coef[:, :, 2])

        # The reverse walk. dh = dL/dh_t (total); dgh[t] = dL/d(h_{t-1} W_hh^T + b_hh).
        w_hh_t = w_hh.t()  # [H, 3H] (a view): "x @ w^T" with w = W_hh^T is x @ W_hh
        dgh = _scratch("gru_dgh", (T, B, 3 * H), n)
        dhs = [None] * T
        dh = d_out[T - 1] + d_hT
        dh0 = None
        for t in range(T - 1, -1, -1):
            dhs[t] = dh
            torch.mul(dh.unsqueeze(1), coef[t], out=dgh[t].view(B, 3, H))
            if t > 0:  # dh_{t-1} = dout_{t-1} + dh_t z_t + dgh_t W_hh
                dh = _linear(dgh[t], w_hh_t, ctx.gemm, add=torch.addcmul(d_out[t - 1], dh, z[t]))
            elif ctx.needs_input_grad[1]:
                dh0 = _linear(dgh[0], w_hh_t, ctx.gemm, add=dh * z[0])

        dgh2 = dgh.view(T * B, 3 * H)
        dw_hh = _weight_grad(dgh2, hs[:T].view(T * B, H), ctx.gemm) if ctx.needs_input_grad[3] else None
        db_hh = dgh2.sum(0) if ctx.has_bias and ctx.needs_input_grad[5] else None
        # The input-side deltas differ from dgh only in the n block (da_n, not da_n * r): reuse the buffer.
        dh_all = torch.stack(dhs, out=_scratch("gru_dh", (T, B, H), n))
        torch.mul(dh_all, a, out=dgh[..., H2:])
        dx, dw_ih, db_ih = _input_grads(ctx, dgh2, x2, w_ih, T, B)
        return dx, dh0, dw_ih, dw_hh, db_ih, db_hh, None, None, None


# ----------------------------------------------------------------------------- RNN


def _rnn_forward(x2, one_hot_ids, h0, w_ih, w_hh, b_ih, b_hh, T, B, H, relu: bool, gemm):
    """The Elman recurrence without autograd. Returns hs [T+1, B, H] with hs[0] = h0."""
    bias = None if b_ih is None else b_ih + b_hh
    pre = _project(x2, one_hot_ids, w_ih, bias, gemm).view(T, B, H)  # x W_ih^T + b_ih + b_hh
    w = w_hh
    if not relu:  # tanh(a) = 2 sigmoid(2a) - 1: let the GEMM produce 2a directly
        pre.mul_(2)
        w = w_hh * 2
    hs = torch.empty(T + 1, B, H, dtype=w_hh.dtype, device=w_hh.device)
    hs[0].copy_(h0)
    for t in range(T):
        a = _linear(hs[t], w, gemm, add=pre[t])  # [B, H] (2a for tanh): the step's one GEMM
        if relu:
            torch.clamp_min(a, 0, out=hs[t + 1])
        else:
            _two_sigmoid_minus_one_(torch.sigmoid(a, out=hs[t + 1]))
    return hs


class _FusedRNN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inp, h0, w_ih, w_hh, b_ih, b_hh, one_hot_ids, batch_first, relu, gemm):
        T, B = (inp.shape[1], inp.shape[0]) if batch_first else (inp.shape[0], inp.shape[1])
        x2 = _time_major_rows(inp, batch_first, T, B)
        hs = _rnn_forward(x2, one_hot_ids, h0, w_ih, w_hh, b_ih, b_hh, T, B, w_hh.shape[1], relu, gemm)
        ctx.save_for_backward(x2, w_ih, w_hh, hs)
        ctx.one_hot_ids, ctx.batch_first, ctx.has_bias = one_hot_ids, batch_first, b_ih is not None
        ctx.relu, ctx.gemm = relu, gemm
        return _out(hs[1:], batch_first), hs[T].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_hT):
        x2, w_ih, w_hh, hs = ctx.saved_tensors
        T, B, H = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
        d_out = d_out.transpose(0, 1) if ctx.batch_first else d_out
        # da[t] = dL/d(pre-activation_t) = dh_t * phi'(a_t), phi' read off the outputs:
        # tanh: 1 - h^2; relu: [h > 0] = sign(h), since h >= 0
        da = _scratch("rnn_da", (T, B, H), hs)
        if ctx.relu:
            torch.sign(hs[1:], out=da)
        else:
            torch.mul(hs[1:], hs[1:], out=da).neg_().add_(1)
        w_hh_t = w_hh.t()  # [H, H] (a view)
        dh = d_out[T - 1] + d_hT
        dh0 = None
        for t in range(T - 1, -1, -1):
            da[t].mul_(dh)
            if t > 0:  # dh_{t-1} = dout_{t-1} + da_t W_hh
                dh = _linear(da[t], w_hh_t, ctx.gemm, add=d_out[t - 1])
            elif ctx.needs_input_grad[1]:
                dh0 = _linear(da[0], w_hh_t, ctx.gemm)
        da2 = da.view(T * B, H)
        dw_hh = _weight_grad(da2, hs[:T].view(T * B, H), ctx.gemm) if ctx.needs_input_grad[3] else None
        dx, dw_ih, db_ih = _input_grads(ctx, da2, x2, w_ih, T, B)
        db_hh = None
        if ctx.has_bias and ctx.needs_input_grad[5]:  # b_ih and b_hh get the same sum
            db_hh = da2.sum(0) if db_ih is None else db_ih  # (autograd copies a tensor handed to two params)
        return dx, dh0, dw_ih, dw_hh, db_ih, db_hh, None, None, None, None


# ----------------------------------------------------------------------------- public API


def fused_rnn_layer(cell: str, inp: torch.Tensor, h0: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor,
                    b_ih: torch.Tensor | None = None, b_hh: torch.Tensor | None = None, *,
                    one_hot_ids: bool = False, batch_first: bool = True, nonlinearity: str = "tanh",
                    gemm: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """One layer of ``nn.GRU`` (cell="gru") or ``nn.RNN`` (cell="rnn") with the fused forward/BPTT.

    inp [B, T, I] (batch_first) or [T, B, I], or integer ids [B, T] / [T, B] with
    ``one_hot_ids=True`` (equal to feeding ``F.one_hot(ids, I).to(dtype)``); h0 [B, H]; the
    parameters are the nn layer's own tensors. Returns (out [B, T, H] or [T, B, H], h_T [B, H]);
    with batch_first, ``out`` is a non-contiguous view (see the module docstring).
    ``nonlinearity`` ("tanh" or "relu") applies to cell="rnn" only, as in nn.RNN. ``gemm``:
    "auto" (oneDNN for float32 on the CPU when available, else torch.mm), "onednn" or "blas".
    Differentiable w.r.t. inp (float), h0 and all parameters; only what requires grad is computed.
    """
    T, B, H = _check(cell, inp, h0, w_ih, w_hh, b_ih, b_hh, one_hot_ids, batch_first)
    if one_hot_ids and inp.dtype not in (torch.int32, torch.int64):
        inp = inp.long()  # uint8 / int16 ids: the gather and the scatter-add index with int32/int64
    if nonlinearity not in ("tanh", "relu") or (cell == "gru" and nonlinearity != "tanh"):
        raise ValueError(f"nonlinearity {nonlinearity!r} does not apply to fused {cell}")
    gemm_choice = _resolve_gemm(gemm, w_hh)
    relu = nonlinearity == "relu"
    tensors = (inp, h0, w_ih, w_hh, b_ih, b_hh)
    if not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)):
        # evaluation / generation: the same recurrence without an autograd node
        with torch.no_grad():
            x2 = _time_major_rows(inp, batch_first, T, B)
            if cell == "gru":
                hs = _gru_forward(x2, one_hot_ids, h0, w_ih, w_hh, b_ih, b_hh, T, B, H, gemm_choice)[0]
            else:
                hs = _rnn_forward(x2, one_hot_ids, h0, w_ih, w_hh, b_ih, b_hh, T, B, H, relu, gemm_choice)
            return _out(hs[1:], batch_first), hs[T].clone()
    if cell == "gru":
        return _FusedGRU.apply(*tensors, one_hot_ids, batch_first, gemm_choice)
    return _FusedRNN.apply(*tensors, one_hot_ids, batch_first, relu, gemm_choice)


def can_fuse(module: nn.Module, inp: torch.Tensor | None = None) -> bool:
    """True when ``fused_rnn(module, ...)`` applies: an nn.RNN / nn.GRU (not LSTM), one direction,
    no projection, float32/float64 weights on the CPU (and ``inp``, if given, on the CPU too)."""
    if not isinstance(module, (nn.RNN, nn.GRU)) or module.bidirectional or getattr(module, "proj_size", 0):
        return False
    w = module.weight_hh_l0
    if w.device.type != "cpu" or w.dtype not in _FLOATS:
        return False
    return inp is None or inp.device.type == "cpu"


def fused_rnn(module: nn.Module, inp: torch.Tensor, hx: torch.Tensor | None = None, *,
              one_hot_ids: bool = False, gemm: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Drop-in for ``module(inp, hx)`` on an ``nn.RNN`` / ``nn.GRU``: every layer through
    ``fused_rnn_layer``, the module's batch_first, nonlinearity and (in training mode) its dropout
    between layers.

    ``one_hot_ids=True``: ``inp`` is integer ids standing for ``F.one_hot(ids, input_size)``.
    hx [num_layers, B, H] or None (zeros). Returns (out, h_n [num_layers, B, H]) like the module;
    ``out`` is a non-contiguous view when the module is batch_first.
    """
    if not can_fuse(module, inp):
        raise ValueError("fused_rnn needs a one-direction nn.RNN / nn.GRU with float32/float64 weights on the CPU")
    cell = "gru" if isinstance(module, nn.GRU) else "rnn"
    B = inp.shape[0] if module.batch_first else inp.shape[1]
    if hx is None:
        w = module.weight_hh_l0
        hx = torch.zeros(module.num_layers, B, module.hidden_size, dtype=w.dtype, device=w.device)
    x, h_n = inp, []
    for k in range(module.num_layers):
        params = [getattr(module, f"{kind}_l{k}", None) for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        x, h_k = fused_rnn_layer(cell, x, hx[k], *params, one_hot_ids=one_hot_ids and k == 0,
                                 batch_first=module.batch_first, nonlinearity=getattr(module, "nonlinearity", "tanh"),
                                 gemm=gemm)
        h_n.append(h_k)
        if module.dropout and module.training and k < module.num_layers - 1:
            x = F.dropout(x, module.dropout, training=True)  # as nn.GRU: between layers, not after the last
    return x, torch.stack(h_n)
