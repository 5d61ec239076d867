"""The GEMM backends of the fused layers' Python side: torch.mm (BLAS: MKL in the x86 wheels) or oneDNN.

Which one is faster depends on the machine: on an AVX-512 EPYC oneDNN ran its AVX-512 kernels
and beat MKL on large float32 GEMMs, on an AVX2-only EPYC MKL won (docs/kernels.md). So the
choice is a parameter, ``gemm``, that the autotuner (rnn_train.kernels.autotune) sets per machine
by measurement:

    "blas"    every GEMM through torch.mm / addmm
    "auto"    float32 GEMMs of at least ONEDNN_MIN_WORK_PER_THREAD multiply-adds per thread
              through oneDNN, smaller ones, float64 and non-CPU tensors through torch.mm:
              oneDNN pays a fixed cost per call that loses on small GEMMs
    "onednn"  every GEMM through oneDNN (float32 CPU only; for tests)
    "tiled"   the weight gradients through the C++ kernels' tiles (csrc/tiled.h: weight_grad),
              everything else through torch.mm; float32 / float64 on the CPU where the C++
              kernels are built, else the same as "blas"
    "auto-tiled"  the weight gradients through the tiles, everything else as "auto": on the AMD
              Zen 5 of docs/kernels.md oneDNN's products beat MKL's and the tiles' weight
              gradient beat oneDNN's, which needs two transposing copies; "tiled" where oneDNN
              cannot run the tensors, "auto" where the C++ kernels are not built

and, not a choice of its own but what a layer computing in bf16 (train.precision) uses, BF16:
every GEMM in bf16 products with float32 sums and a float32 result (csrc/bf16.h's bf16_matmul,
AMX), the operands rounded to bf16 as they are read.

oneDNN is reached through ``torch.ops.mkldnn._linear_pointwise``, a private op of torch's oneDNN
integration (torch.compile's CPU backend calls it). It is probed on first use with a generator
of its own, so probing never moves the global RNG a run's dropout draws from; if it is missing
or wrong, "auto" means "blas". Both backends give full float32 accuracy and are deterministic
for a given shape and thread count, but they differ from each other by rounding.
"""
from __future__ import annotations

import functools
import math
import threading

import torch

from rnn_train.kernels.build import extension

GEMMS = ("auto", "onednn", "blas", "tiled", "auto-tiled")
BLAS, ONEDNN, AUTO, TILED, BF16, AUTO_TILED = 0, 1, 2, 3, 4, 5  # a resolved choice, carried into the autograd Functions
ONEDNN_MIN_WORK_PER_THREAD = 1_250_000
"""Below this many multiply-adds per thread, "auto" keeps a GEMM on torch.mm (crossover measured
on the AVX-512 machine of docs/kernels.md; the autotuner decides whether "auto" is used at all)."""


@functools.cache
def _onednn_linear():
    """oneDNN's linear kernel if this torch build has one that works, else None."""
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


def onednn_available() -> bool:
    """True when float32 CPU GEMMs may run through oneDNN."""
    return _onednn_linear() is not None and torch.backends.mkldnn.enabled


def resolve_gemm(gemm: str, w: torch.Tensor) -> int:
    """The choice `gemm` (GEMMS) for weights like `w`, as BLAS / ONEDNN / AUTO / TILED / AUTO_TILED.
    Only "tiled" and "auto-tiled" ask for the C++ kernels (whose first use builds them)."""
    if gemm not in GEMMS:
        raise ValueError(f"gemm must be one of {GEMMS}, got {gemm!r}")
    fits = w.dtype == torch.float32 and w.device.type == "cpu"
    if gemm == "onednn":
        if not (fits and _onednn_linear() is not None):
            raise ValueError("gemm='onednn' needs float32 CPU tensors and a torch build with oneDNN")
        return ONEDNN
    if gemm in ("blas", "auto"):
        return AUTO if gemm == "auto" and fits and onednn_available() else BLAS
    tiles = cpp_takes(w)
    if gemm == "tiled" or not (fits and onednn_available()):  # "auto-tiled" without oneDNN is "tiled"
        return TILED if tiles else BLAS
    return AUTO_TILED if tiles else AUTO


def tiled_available() -> bool:
    """True when the C++ kernels (and with them the tiled weight gradient) are built here."""
    return extension() is not None


def cpp_takes(t: torch.Tensor) -> bool:
    """Whether the C++ kernels' all-steps ops (the tiled weight gradient, the one-hot input's
    gather_table and rows_added) take tensors like `t` here: float32 / float64 on the CPU, where
    the kernels are built (asking builds them on first use)."""
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) and tiled_available()


def _uses_onednn(gemm: int, m: int, n: int, k: int) -> bool:
    return gemm == ONEDNN or (gemm in (AUTO, AUTO_TILED)
                              and m * n * k >= ONEDNN_MIN_WORK_PER_THREAD * torch.get_num_threads())


def linear(x: torch.Tensor, w: torch.Tensor, gemm: int, *, bias=None, add=None) -> torch.Tensor:
    """x [M, K] @ w[N, K]^T (+ bias [N]) (+ add [M, N]) as a new [M, N] tensor; any strides."""
    if gemm == BF16:
        out = extension().bf16_matmul(x, w)
        if add is not None:
            out.add_(add)
        return out if bias is None else out.add_(bias)
    if _uses_onednn(gemm, x.shape[0], w.shape[0], x.shape[1]):
        if add is None:
            return _onednn_linear()(x, w, bias, "none", [], "")
        return _onednn_linear().binary(x, add, w, bias, "add")
    if add is not None and bias is not None:
        add = add + bias
    elif add is None:
        add = bias
    return torch.mm(x, w.t()) if add is None else torch.addmm(add, x, w.t())


def weight_grad(d2: torch.Tensor, x2: torch.Tensor, gemm: int) -> torch.Tensor:
    """d2^T @ x2 ([T*B, O]^T [T*B, D] -> [O, D]): a weight gradient summed over all steps in ONE GEMM.

    TILED, AUTO_TILED: csrc/tiled.h's weight_grad, which reads both operands in place.

    oneDNN wants its left operand row-major and both operands here are [T*B, .]: x2 (the
    narrower one for a GRU's deltas) is transposed into a reused scratch buffer and the product
    computed as (x2^T d2)^T."""
    if gemm in (TILED, AUTO_TILED):
        return extension().weight_grad(d2, x2)
    if gemm == BF16:
        return extension().bf16_matmul(d2.t(), x2.t())
    if not _uses_onednn(gemm, d2.shape[1], x2.shape[1], d2.shape[0]):
        return d2.t() @ x2
    x_t = scratch("weight_grad_lhs", (x2.shape[1], x2.shape[0]), x2).copy_(x2.t())  # [D, T*B]
    return _onednn_linear()(x_t, d2.t(), None, "none", [], "").t().contiguous()


class _Scratch(threading.local):
    """Per-thread scratch buffers that outlive one call, for temporaries that never leave it.

    Why: a fresh multi-MB buffer can be fresh pages, and each first touch of a 4 KiB page is a
    page fault, expensive on a VM. A buffer only grows; it lives as long as the thread."""

    def __init__(self):
        self.buffers: dict[tuple, torch.Tensor] = {}


_SCRATCH = _Scratch()


def scratch(name: str, shape: tuple, like: torch.Tensor) -> torch.Tensor:
    """A [shape] tensor of like's dtype/device whose contents are garbage; valid until the next
    request for the same name on this thread, so callers use it within one forward/backward."""
    key = (name, like.dtype, like.device)
    numel = math.prod(shape)
    buf = _SCRATCH.buffers.get(key)
    if buf is None or buf.numel() < numel:
        buf = _SCRATCH.buffers[key] = torch.empty(numel, dtype=like.dtype, device=like.device)
    return buf[:numel].view(shape)
