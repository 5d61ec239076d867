"""What every fused layer does around its time loop, whichever loop runs (Python or C++):
validating the arguments, laying the input out time-major, the all-steps input projection, and
the all-steps input-side gradients.

Layout: the loops are time-major ([T, B, ...] buffers: each step reads and writes contiguous
blocks, and the all-steps GEMMs see plain [T*B, ...] matrices). A batch_first input is transposed
on the way in (for ids a tiny copy); the output is returned as a transposed *view* of the
time-major buffer (see rnn_train/kernels/fused.py for what that means to a caller).
"""
from __future__ import annotations

import torch

from rnn_train.kernels.gemm import linear, weight_grad

GATES = {"rnn": 1, "gru": 3, "lstm": 4}
"""Gate blocks per cell: the rows of W_ih / W_hh are [G*H, .] in PyTorch's gate order."""
FLOATS = (torch.float32, torch.float64)


def check_layer(cell: str, inp, h0, w_ih, w_hh, b_ih, b_hh, one_hot_ids: bool, batch_first: bool) -> tuple[int, int, int]:
    """Validate once, so the Functions can be bare equations. Returns (T, B, H)."""
    if cell not in GATES:
        raise ValueError(f"fused cell must be one of {tuple(GATES)}, got {cell!r}")
    G, H = GATES[cell], w_hh.shape[-1]
    dtype = w_hh.dtype
    if dtype not in FLOATS:
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
        # the table must be row-major: a gather from W^T's strided rows is ~8x slower
        table = torch.empty(w.shape[1], w.shape[0], dtype=w.dtype, device=w.device)  # [I, O]
        if bias is None:
            table.copy_(w.t())
        else:
            torch.add(w.t(), bias, out=table)
        return torch.index_select(table, 0, x2)
    return linear(x2, w, gemm, bias=bias)


def input_grads(ctx, dgi2: torch.Tensor, x2: torch.Tensor, w_ih: torch.Tensor, T: int, B: int,
                need: tuple[bool, bool, bool]):
    """(dx, dW_ih, db_ih) from the input-side deltas dgi2 [T*B, G*H]: each one GEMM / reduction.

    need: whether inp, w_ih and b_ih want a gradient. Reads ctx.one_hot_ids, ctx.batch_first,
    ctx.has_bias and ctx.gemm, which every fused Function sets the same way."""
    need_x, need_w, need_b = need
    dx = dw = db = None
    if need_x and not ctx.one_hot_ids:  # ids have no gradient
        dx = linear(dgi2, w_ih.t(), ctx.gemm).view(T, B, -1)  # [T, B, I] = dgi W_ih
        if ctx.batch_first:
            dx = dx.transpose(0, 1)
    if need_w:
        if ctx.one_hot_ids:
            # row v of dW_ih^T sums the deltas of every (t, b) whose id is v: a scatter-add, no GEMM
            dw_t = torch.zeros(w_ih.shape[1], w_ih.shape[0], dtype=dgi2.dtype, device=dgi2.device)
            dw = dw_t.index_add_(0, x2, dgi2).t().contiguous()  # [G*H, I]
        else:
            dw = weight_grad(dgi2, x2, ctx.gemm)  # [G*H, T*B] @ [T*B, I]
    if need_b and ctx.has_bias:
        db = dgi2.sum(0)
    return dx, dw, db


def out_view(hs: torch.Tensor, batch_first: bool) -> torch.Tensor:
    """Every step's state [T, B, H] in the caller's layout (a view, never a copy)."""
    return hs.transpose(0, 1) if batch_first else hs
