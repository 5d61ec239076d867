"""What every fused layer does around its time loop, whichever loop runs (Python or C++):
validating the arguments, laying the input out time-major, the all-steps input projection, and
the all-steps input-side gradients.

Layout: the loops are time-major ([T, B, ...] buffers: each step reads and writes contiguous
blocks, and the all-steps GEMMs see plain [T*B, ...] matrices). A batch_first input is transposed
on the way in (for ids a tiny copy); the output is returned as a transposed *view* of the
time-major buffer (see rnn_train/kernels/fused.py for what that means to a caller).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch

from rnn_train.kernels.build import extension
from rnn_train.kernels.gemm import BLAS, cpp_takes, linear, weight_grad
from rnn_train.model.cells import CellSpec

FLOATS = (torch.float32, torch.float64)
STEP_GEMMS = {"blas": 0, "aten": 1, "tiled": 2}  # the C++ loop's per-step GEMM: csrc/common.h GemmPath
STEP_BF16 = 3  # the tiled loop with bf16 products (csrc/common.h kBf16): what step "tiled" becomes in bf16
THREADS = {"blas": 0, "rows": 1, "units": 2}  # how the C++ loop uses threads: csrc/common.h Threads


class LayerTensors(NamedTuple):
    """The tensors of one layer call, in the order every fused autograd Function takes them after
    its options: `Function.apply(opts, *tensors)`. c0 is None for a cell whose state is h alone;
    the biases are both None for a bias-free layer."""

    inp: torch.Tensor  # [B, T, I] / [T, B, I] float, or ids [B, T] / [T, B] with one_hot_ids
    h0: torch.Tensor  # [B, H]
    c0: torch.Tensor | None  # [B, H]
    w_ih: torch.Tensor  # [G*H, I]
    w_hh: torch.Tensor  # [G*H, H]
    b_ih: torch.Tensor | None  # [G*H]
    b_hh: torch.Tensor | None  # [G*H]


# Where each tensor sits in `Function.apply(opts, *tensors)` (ctx.needs_input_grad[...]).
INP, H0, C0, W_IH, W_HH, B_IH, B_HH = range(1, 8)


@dataclass(frozen=True)
class LayerOptions:
    """Everything besides tensors that one fused layer call needs, resolved once per call."""

    one_hot_ids: bool  # inp holds ids standing for F.one_hot(ids, I)
    batch_first: bool  # inp and out are [B, T, ...] (else [T, B, ...])
    relu: bool = False  # an Elman cell with ReLU instead of tanh (nn.RNN(nonlinearity="relu"))
    gemm: int = BLAS  # the all-steps GEMMs: rnn_train.kernels.gemm's resolved choice (BF16 in bf16)
    step: int = 0  # the C++ loop's per-step GEMM (STEP_GEMMS, or STEP_BF16)
    threads: int = 0  # the C++ loop's threading (THREADS)

    def dims(self, inp: torch.Tensor) -> tuple[int, int]:
        """(T, B) of an input laid out as these options say."""
        return (inp.shape[1], inp.shape[0]) if self.batch_first else (inp.shape[0], inp.shape[1])


@dataclass(frozen=True)
class LayerLoop:
    """One cell's fused time loop (a CellSpec hook "python_loop" / "cpp_loop"):

    function  a torch.autograd.Function: apply(opts, *LayerTensors) -> (out, h_T[, c_T])
    states    the same forward without autograd: states(opts, x2, tensors, T, B)
              -> (hs [T+1, B, H] with hs[0] = h0, the further final state parts (c_T,) or ())
    """

    function: type
    states: Callable[..., tuple[torch.Tensor, tuple]]


def check_layer(spec: CellSpec, t: LayerTensors, opts: LayerOptions) -> tuple[int, int, int]:
    """Validate once, so the Functions can be bare equations. Returns (T, B, H)."""
    cell, inp, G, H = spec.name, t.inp, spec.num_blocks, t.w_hh.shape[-1]
    dtype = t.w_hh.dtype
    if dtype not in FLOATS:
        raise TypeError(f"fused {cell} computes in float32 or float64, got {dtype}")
    if opts.one_hot_ids:
        if inp.dim() != 2 or inp.dtype.is_floating_point or inp.dtype.is_complex or inp.dtype == torch.bool:
            raise ValueError(f"one_hot_ids expects integer ids [B, T] / [T, B], got {inp.dtype} {tuple(inp.shape)}")
    elif inp.dim() != 3 or inp.dtype != dtype:
        raise ValueError(f"inp must be {dtype} [B, T, I] / [T, B, I], got {inp.dtype} {tuple(inp.shape)}")
    T, B = opts.dims(inp)
    if T < 1:
        raise ValueError("the sequence must have at least one step (T >= 1)")
    I = t.w_ih.shape[-1]
    if not opts.one_hot_ids and inp.shape[-1] != I:
        raise ValueError(f"inp has {inp.shape[-1]} features but w_ih expects {I}")
    if (t.c0 is not None) != (len(spec.state) == 2):
        raise ValueError(f"c0 [B, H] is required for a cell with a cell state (({', '.join(spec.state)})) and only there")
    expected = {"w_ih": (G * H, I), "w_hh": (G * H, H), "b_ih": (G * H,), "b_hh": (G * H,), "h0": (B, H), "c0": (B, H)}
    for name in ("w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0"):
        value = getattr(t, name)
        if value is None:
            if name in ("b_ih", "b_hh", "c0"):
                continue
            raise ValueError(f"fused {cell}: {name} is required")
        if tuple(value.shape) != expected[name]:
            raise ValueError(f"fused {cell}: {name} must have shape {expected[name]}, got {tuple(value.shape)}")
        if value.dtype != dtype:
            raise ValueError(f"fused {cell}: {name} is {value.dtype} but w_hh is {dtype}; use one dtype")
    if (t.b_ih is None) != (t.b_hh is None):
        raise ValueError("pass both b_ih and b_hh or neither")
    return T, B, H


def time_major_rows(inp: torch.Tensor, batch_first: bool, T: int, B: int) -> torch.Tensor:
    """[B, T, ...] or [T, B, ...] -> contiguous [T*B, ...] in time-major row order.

    A no-op for a previous fused layer's output (a transposed view of a time-major buffer)."""
    tm = inp.transpose(0, 1) if batch_first else inp
    return tm.contiguous().view(T * B, *inp.shape[2:])


def project(x2: torch.Tensor, one_hot_ids: bool, w: torch.Tensor, bias, gemm: int) -> torch.Tensor:
    """[T*B, O] = x W^T + bias for all steps at once, a new tensor: ONE GEMM, or one row gather for ids.

    x2 is [T*B, I] (float) or [T*B] (ids); w [O, I]; bias [O] or None. A one-hot row picks a
    row of W^T, so the gather table is W^T + bias ([I, O], tiny) and no one-hot tensor is built.
    """
    if one_hot_ids:
        return torch.index_select(gather_table(w, bias), 0, x2)
    return linear(x2, w, gemm, bias=bias)


def gather_table(w: torch.Tensor, bias) -> torch.Tensor:
    """W^T + bias as a new row-major [I, O] tensor: what a one-hot input's rows are gathered from.

    Row-major because a gather from W^T's strided rows is ~8x slower; written in one pass (an add
    into a transposed view and then .contiguous() was a second copy: LSTM-512's table took 0.22 ms
    that way and takes 0.10 in one pass, on one thread of the Xeon of docs/kernels.md)."""
    if cpp_takes(w):  # the same adds, in blocks, bit for bit (csrc/recurrence.cpp)
        return extension().gather_table(w, bias)
    table = torch.empty(w.shape[1], w.shape[0], dtype=w.dtype, device=w.device)  # [I, O]
    if bias is None:
        return table.copy_(w.t())
    return torch.add(w.t(), bias, out=table)


def input_grads(ctx, dgi2: torch.Tensor, x2: torch.Tensor, w_ih: torch.Tensor, T: int, B: int):
    """(dx, dW_ih, db_ih) from the input-side deltas dgi2 [T*B, G*H]: each one GEMM / reduction,
    each only where inp, w_ih, b_ih want a gradient. Reads ctx.opts (LayerOptions) and
    ctx.has_bias, which every fused Function sets the same way."""
    opts, need = ctx.opts, ctx.needs_input_grad
    dx = dw = db = None
    if need[INP] and not opts.one_hot_ids:  # ids have no gradient
        dx = linear(dgi2, w_ih.t(), opts.gemm).view(T, B, -1)  # [T, B, I] = dgi W_ih
        if opts.batch_first:
            dx = dx.transpose(0, 1)
    if need[W_IH]:
        if opts.one_hot_ids:
            # row v of dW_ih^T sums the deltas of every (t, b) whose id is v: a scatter-add, no GEMM
            if cpp_takes(dgi2):
                dw_t = extension().rows_added(x2, dgi2, w_ih.shape[1])  # index_add_'s sums, bit for bit
            else:
                dw_t = torch.zeros(w_ih.shape[1], w_ih.shape[0], dtype=dgi2.dtype, device=dgi2.device)
                dw_t.index_add_(0, x2, dgi2)
            dw = dw_t.t().contiguous()  # [G*H, I]
        else:
            dw = weight_grad(dgi2, x2, opts.gemm)  # [G*H, T*B] @ [T*B, I]
    if need[B_IH] and ctx.has_bias:
        db = dgi2.sum(0)
    return dx, dw, db


def shared_bias_grad(ctx, deltas2: torch.Tensor, db_ih: torch.Tensor | None) -> torch.Tensor | None:
    """db_hh where both biases get the same sum (RNN, LSTM): db_ih's, or computed when b_ih wants none."""
    if not (ctx.has_bias and ctx.needs_input_grad[B_HH]):
        return None
    return deltas2.sum(0) if db_ih is None else db_ih  # (autograd copies a tensor handed to two params)


def out_view(hs: torch.Tensor, batch_first: bool) -> torch.Tensor:
    """Every step's state [T, B, H] in the caller's layout (a view, never a copy)."""
    return hs.transpose(0, 1) if batch_first else hs


def begin(ctx, opts: LayerOptions, inp: torch.Tensor, b_ih) -> tuple[torch.Tensor, int, int]:
    """What every fused Function's forward starts with: ctx.opts and ctx.has_bias set, and
    (x2: the input as time-major rows [T*B, ...], T, B)."""
    ctx.opts, ctx.has_bias = opts, b_ih is not None
    T, B = opts.dims(inp)
    return time_major_rows(inp, opts.batch_first, T, B), T, B


def time_major_grad(ctx, d_out: torch.Tensor) -> torch.Tensor:
    """The gradient of `out` as a time-major [T, B, H] view."""
    return d_out.transpose(0, 1) if ctx.opts.batch_first else d_out
