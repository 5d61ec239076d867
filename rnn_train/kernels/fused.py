"""Fused RNN (tanh / ReLU), GRU and LSTM layers for the CPU: a hand-written forward and BPTT with
the weights and gradients of ``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM``.

Why: on the CPU, ``nn.RNN`` / ``nn.GRU`` run every time step through autograd. Per step the
forward does one addmm with W_hh and a handful of tiny element-wise ops, each recorded in the
graph; the backward replays all of them in reverse, including one mm for dL/dh_{t-1} *and* one
small mm for the step's share of dL/dW_hh. Here one ``torch.autograd.Function`` per layer runs
the same equations (rnn_train/teaching/bptt's derivation, PyTorch's gate layout):

* the input projection of all T steps is ONE GEMM over [T*B, I] -- or, for one-hot input given
  as integer ids, one row gather of W_ih^T: the one-hot tensor never exists;
* per step, forward and backward: one GEMM with W_hh and the gate arithmetic;
* after the reverse walk, dW_hh, dW_ih, db_* and dx are each ONE GEMM / reduction over all
  T*B rows instead of T small ones.

Two implementations of the time loop, chosen by ``FusedPath.loop``; a cell has the loops its
CellSpec names as hooks ("cpp_loop", "python_loop"; rnn_train/model/cells.py):

    "cpp"     C++ (rnn_train/kernels/cpp_layers.py): per step one GEMM (BLAS, or csrc/tiled.h's
              tiles with the gates computed in registers) and one fused loop over the gates;
              RNN, GRU and LSTM. Built on first use (rnn_train/kernels/build.py).
    "python"  torch ops (rnn_train/kernels/python_layers.py): RNN and GRU; needs no compiler.

``rnn_train.kernels.resolve_kernel`` picks the path per machine by measurement; this module
runs whichever it is given.

Public API
----------
::

    fused_rnn_layer(cell, inp, h0, w_ih, w_hh, b_ih=None, b_hh=None, *, c0=None, one_hot_ids=False,
                    batch_first=True, nonlinearity="tanh", path=FusedPath(), precision="fp32") -> (out, h_T[, c_T])
    fused_rnn(module, inp, hx=None, *, one_hot_ids=False, path=FusedPath(), precision="fp32")
        -> (out, h_n or (h_n, c_n))
        drop-in for ``module(inp, hx)`` on an nn.RNN / nn.GRU / nn.LSTM (all layers, dropout between them)
    can_fuse(module, inp=None, loop="python") -> bool     whether that loop applies to the module
    bf16_linear(x, weight, bias=None), onednn_linear(x, weight, bias=None)
        F.linear with its three products in bf16 (a bf16 run's decoder) or through oneDNN and the
        tiles (a float32 run's decoder where measured faster than nn.Linear: DECODER_GEMMS)

Shapes (H hidden, I input size, G = 1 for "rnn", 3 for "gru", 4 for "lstm")::

    inp   [B, T, I] float (batch_first) or [T, B, I]; with one_hot_ids, integer ids [B, T] / [T, B]
          standing for F.one_hot(ids, I) -- I is read from w_ih, so ids must lie in [0, I)
    h0    [B, H] (zeros allowed; never None here); c0 [B, H] for the LSTM
    w_ih  [G*H, I], w_hh [G*H, H], b_ih / b_hh [G*H] or None: the nn layer's weight_ih_l{k},
          weight_hh_l{k}, bias_ih_l{k}, bias_hh_l{k} as they are, so checkpoints do not change
          and a model can switch between this path and the nn module freely
    out   [B, T, H] (batch_first) or [T, B, H]: every step's hidden state;  h_T, c_T [B, H]

With ``batch_first=True``, ``out`` is a *transposed view* of a time-major buffer:
``out.is_contiguous()`` is False, and a consumer that flattens it (``nn.Linear`` on 3-D input
does) pays one copy. Stacked layers pass the buffer to the next layer without a copy. ``out``
views the states saved for backward, so autograd refuses in-place ops on it (``out.mul_(2)``
raises); out-of-place use is unrestricted.

When it applies: CPU, one-direction modules without projections, float32 or float64, any B,
T >= 1, H, I (``can_fuse``). Not CUDA (cuDNN is faster there). The backward is
``once_differentiable``: no double backward. Every path's gradients equal the nn module's
autograd to rounding (tests/test_fused.py, tests/test_model.py). Memory per layer: about
what the nn module's graph keeps ([T, B, G*H] gates + [T+1, B, H] states, + [T, B, H] n for the
GRU, + c and tanh(c) for the LSTM).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from rnn_train.kernels.gemm import BF16, GEMMS, ONEDNN, TILED, linear, resolve_gemm, tiled_available, weight_grad
from rnn_train.kernels.layer_io import (FLOATS, STEP_BF16, STEP_GEMMS, THREADS, LayerOptions, LayerTensors, check_layer,
                                        out_view, time_major_rows)
from rnn_train.model import cells
from rnn_train.model.cells import CellSpec

__all__ = ["FusedPath", "fused_rnn_layer", "fused_rnn", "bf16_linear", "onednn_linear", "can_fuse", "LOOPS",
           "DECODER_GEMMS"]

LOOPS = ("python", "cpp")
"""The time loops; a cell has one where its CellSpec names a hook "<loop>_loop"."""


@dataclass(frozen=True)
class FusedPath:
    """How a fused layer computes: which time loop, which GEMMs, how it uses threads.

    loop      "python" or "cpp" (LOOPS; the cells that have each: `loop_cells`)
    gemm      the all-steps GEMMs (and the Python loop's per-step ones): rnn_train.kernels.gemm.GEMMS
              ("tiled": the weight gradients by the C++ kernels' tiles; "auto-tiled": those and oneDNN)
    step      the C++ loop's per-step GEMM: "blas" (the BLAS torch links, called directly),
              "aten" (torch.mm; for torch builds whose BLAS is not exported) or "tiled"
              (csrc/tiled.h: register tiles over W_hh packed once per call)
    threads   how the C++ loop uses torch's threads (csrc/common.h): "blas" (BLAS threads each
              step's GEMM), "rows" (a block of batch rows per thread, no waiting between steps),
              "units" (a block of hidden units per thread, full-height GEMMs, a barrier per
              step; step "blas" or "tiled")
    """

    loop: str = "python"
    gemm: str = "auto"
    step: str = "blas"
    threads: str = "blas"

    def __post_init__(self):
        if (self.loop not in LOOPS or self.gemm not in GEMMS or self.step not in STEP_GEMMS
                or self.threads not in THREADS or (self.threads == "units" and self.step not in ("blas", "tiled"))):
            raise ValueError(f"not a fused path: {self}")

    def label(self) -> str:
        """How the run log names this path."""
        if self.loop == "python":
            return f"fused-python(gemm={self.gemm})"
        return f"fused-cpp(step={self.step}, threads={self.threads}, gemm={self.gemm})"

    def computes_bf16(self) -> bool:
        """Whether this path can compute in bf16 (train.precision): the C++ loop's tiled step,
        whose products then run on csrc/bf16.h's AMX tiles, and its all-steps GEMMs in bf16 too."""
        return self.loop == "cpp" and self.step == "tiled" and self.threads != "units"


def loop_cells(loop: str) -> tuple[str, ...]:
    """The registered cells that `loop` implements."""
    return tuple(name for name in cells.names() if f"{loop}_loop" in cells.get(name).hooks)


def _spec(cell: str | CellSpec) -> CellSpec:
    if isinstance(cell, CellSpec):
        return cell
    if cell not in cells.names():
        raise ValueError(f"fused cell must be one of {cells.names()}, got {cell!r}")
    return cells.get(cell)


def fused_rnn_layer(cell: str | CellSpec, inp: torch.Tensor, h0: torch.Tensor, w_ih: torch.Tensor,
                    w_hh: torch.Tensor, b_ih: torch.Tensor | None = None, b_hh: torch.Tensor | None = None, *,
                    c0: torch.Tensor | None = None, one_hot_ids: bool = False, batch_first: bool = True,
                    nonlinearity: str = "tanh", path: FusedPath = FusedPath(), precision: str = "fp32"):
    """One layer of ``nn.GRU`` / ``nn.RNN`` / ``nn.LSTM`` (a registered cell, by name or CellSpec)
    with the fused forward/BPTT.

    inp [B, T, I] (batch_first) or [T, B, I], or integer ids [B, T] / [T, B] with
    ``one_hot_ids=True`` (equal to feeding ``F.one_hot(ids, I).to(dtype)``); h0 [B, H] (and
    c0 [B, H] for a cell with a cell state); the parameters are the nn layer's own tensors. Returns
    (out [B, T, H] or [T, B, H], h_T [B, H]), and c_T [B, H] third for the LSTM.
    ``nonlinearity`` ("tanh" or "relu") applies to the Elman cell only, as in nn.RNN.
    Differentiable w.r.t. inp (float), h0, c0 and all parameters; only what requires grad is computed.
    ``precision="bf16"``: every matrix product in bf16 with float32 sums (rnn_train.kernels.precision),
    on a path that `computes_bf16` where the C++ kernels have their bf16 products; the tensors, the
    states and the cell's arithmetic stay float32.
    """
    spec = _spec(cell)
    bf16 = _check_precision(precision, path, w_hh)
    loop = spec.hook(f"{path.loop}_loop")
    if loop is None:
        raise ValueError(f"the {path.loop} loop runs cells {loop_cells(path.loop)}, not cell {spec.name!r}")
    if nonlinearity not in ("tanh", "relu") or (not spec.elman and nonlinearity != "tanh"):
        raise ValueError(f"nonlinearity {nonlinearity!r} does not apply to fused {spec.name}")
    tensors = LayerTensors(inp, h0, c0, w_ih, w_hh, b_ih, b_hh)
    opts = LayerOptions(one_hot_ids, batch_first, nonlinearity == "relu", BF16 if bf16 else resolve_gemm(path.gemm, w_hh),
                        STEP_BF16 if bf16 else STEP_GEMMS[path.step], THREADS[path.threads])
    T, B, _ = check_layer(spec, tensors, opts)
    if one_hot_ids and inp.dtype not in (torch.int32, torch.int64):
        inp = inp.long()  # uint8 / int16 ids: the gather and the scatter-add index with int32/int64
        tensors = tensors._replace(inp=inp)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return loop.function.apply(opts, *tensors)
    with torch.no_grad():  # evaluation / generation: the same recurrence without an autograd node
        hs, finals = loop.states(opts, time_major_rows(inp, batch_first, T, B), tensors, T, B)
    return (out_view(hs[1:], batch_first), hs[T].clone(), *finals)


def _check_precision(precision: str, path: FusedPath, w: torch.Tensor) -> bool:
    """True for bf16, False for fp32; a ValueError where this path cannot compute in `precision`."""
    if precision == "fp32":
        return False
    if precision != "bf16":
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
    from rnn_train.kernels.precision import fused_bf16_available

    if not (path.computes_bf16() and w.dtype == torch.float32 and w.device.type == "cpu" and fused_bf16_available()):
        raise ValueError(f"{path.label()} cannot compute in bf16 here: that needs the C++ loop's tiled step, float32 "
                         "CPU weights and C++ kernels built with AMX-BF16")
    return True


class _Linear(torch.autograd.Function):
    """y = x W^T + b with its three products (y, dx, dW) on the kernels' GEMM backends
    (rnn_train.kernels.gemm): `gemm` for y and dx, `wgrad` for dW; x [..., K] of any layout,
    W [N, K], b [N] or None. The bias gradient is dy's column sums, as nn.Linear's."""

    @staticmethod
    def forward(ctx, x, w, b, gemm, wgrad):
        x2 = x.reshape(-1, x.shape[-1])  # [M, K]
        ctx.save_for_backward(x2, w)
        ctx.has_bias, ctx.shape, ctx.gemm, ctx.wgrad = b is not None, x.shape, gemm, wgrad
        y = linear(x2, w, gemm, bias=b)  # [M, N]
        return y.view(*x.shape[:-1], w.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x2, w = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1])  # [M, N]
        need = ctx.needs_input_grad
        dx = linear(dy2, w.t(), ctx.gemm).view(ctx.shape) if need[0] else None  # dy W: [M, K]
        dw = weight_grad(dy2, x2, ctx.wgrad) if need[1] else None  # dy^T x: [N, K]
        db = dy2.sum(0) if ctx.has_bias and need[2] else None
        return dx, dw, db, None, None


def bf16_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` with its products in bf16 and float32 sums and results, for a
    model training in bf16 on the fused path (its decoder): float32 CPU tensors where the C++
    kernels have their bf16 products (rnn_train.kernels.precision.fused_bf16_available)."""
    return _Linear.apply(x, weight, bias, BF16, BF16)


DECODER_GEMMS = ("blas", "onednn")
"""How a float32 model's decoder computes its products in training: "blas" is nn.Linear (torch.mm,
MKL), "onednn" is `onednn_linear`. The autotuner chooses per machine and shape
(rnn_train.kernels.resolve_decoder): MKL runs its AVX2 code on AMD CPUs, where oneDNN's and the
tiles' products at a decoder's shapes (a narrow vocab) measured about twice as fast."""


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` in float32 on the CPU with y and dx through oneDNN and dW through
    the C++ kernels' tiled weight gradient (oneDNN where they are not built): the same products as
    nn.Linear, summed in another order, so equal to rounding, not bit for bit."""
    return _Linear.apply(x, weight, bias, ONEDNN, TILED if tiled_available() else ONEDNN)


def can_fuse(module: nn.Module, inp: torch.Tensor | None = None, loop: str = "python") -> bool:
    """True when ``fused_rnn(module, ...)`` applies with that loop: a cell the loop implements, one
    direction, no projection, float32/float64 weights on the CPU (and ``inp``, if given, on the CPU too)."""
    spec = cells.of_module(module)
    if spec is None or f"{loop}_loop" not in spec.hooks or len(spec.state) > 2:
        return False
    if getattr(module, "bidirectional", False) or getattr(module, "proj_size", 0):
        return False
    w = module.weight_hh_l0
    if w.device.type != "cpu" or w.dtype not in FLOATS:
        return False
    return inp is None or inp.device.type == "cpu"


def fused_rnn(module: nn.Module, inp: torch.Tensor, hx=None, *, one_hot_ids: bool = False,
              path: FusedPath = FusedPath(), precision: str = "fp32"):
    """Drop-in for ``module(inp, hx)`` on an ``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM`` (or the
    CellLayers of another registered cell): every layer through ``fused_rnn_layer``, the module's
    batch_first, nonlinearity and (in training mode) its dropout between layers.

    ``one_hot_ids=True``: ``inp`` is integer ids standing for ``F.one_hot(ids, input_size)``.
    hx [num_layers, B, H] (LSTM: a pair of them) or None (zeros). Returns (out, h_n) -- (out,
    (h_n, c_n)) for the LSTM -- like the module; ``out`` is a non-contiguous view when the module
    is batch_first.
    """
    if not can_fuse(module, inp, path.loop):
        raise ValueError(f"fused_rnn with the {path.loop} loop needs a one-direction "
                         f"{'/'.join(loop_cells(path.loop))} module with float32/float64 weights on the CPU")
    spec = cells.of_module(module)
    B = inp.shape[0] if module.batch_first else inp.shape[1]
    if hx is None:
        w = module.weight_hh_l0
        zeros = torch.zeros(module.num_layers, B, module.hidden_size, dtype=w.dtype, device=w.device)
        hx = spec.pack(tuple(zeros for _ in spec.state))
    parts_in = spec.unpack(hx)
    x, parts_out = inp, []
    for k in range(module.num_layers):
        params = [getattr(module, f"{kind}_l{k}", None) for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        x, *finals = fused_rnn_layer(spec, x, parts_in[0][k], *params,
                                     c0=parts_in[1][k] if len(parts_in) > 1 else None,
                                     one_hot_ids=one_hot_ids and k == 0, batch_first=module.batch_first,
                                     nonlinearity=getattr(module, "nonlinearity", "tanh"), path=path,
                                     precision=precision)
        parts_out.append(finals)
        if module.dropout and module.training and k < module.num_layers - 1:
            x = F.dropout(x, module.dropout, training=True)  # as the nn modules: between layers, not after the last
    return x, spec.pack(tuple(torch.stack(part) for part in zip(*parts_out)))
