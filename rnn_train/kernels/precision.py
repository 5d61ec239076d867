"""Mixed precision for training: which arithmetic the matrix products of a training step use.

    fp32   every product in the model's own dtype (float32; float64 models are always "fp32" here)
    bf16   the matrix products in bfloat16 with float32 sums, everything else in float32: the
           weights (the optimiser's master copy), the optimiser state, the gates and states of
           the recurrence, the loss and its softmax. On the CPU through the fused C++ loop's AMX
           products (csrc/bf16.h) or torch.autocast around the nn module (oneDNN's bf16 LSTM);
           on CUDA through torch.autocast (cuDNN).
    auto   bf16 where the hardware has it and it measured faster for this model on this machine
           than the float32 path, by at least BF16_MARGIN; else fp32

Why only where the hardware has it: without bf16 instructions (AVX512-BF16, AMX-BF16) a bf16
product is emulated, slower than float32, and it still rounds. Why measure: bf16 is no win where
a step is bound by something other than its products (a small model, a GRU's per-step work in the
nn module), and it always costs accuracy (8 bits of mantissa in each product's operands), so
`auto` takes it only where it pays. Evaluation, generation, scoring and checkpoints stay float32.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")
BF16_MARGIN = 1.15
"""`auto` takes bf16 only where its step measured at least this many times faster than float32's:
below that a noisy measurement could flip the choice between machines of one class, and bf16's
rounding buys too little."""

_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_ONEDNN_BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
                     "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2",
                     "ALL", "DEFAULT", "")


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.split(":")[0].strip() == "flags":
                return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


ONEDNN_ISA_ENV = ("ONEDNN_MAX_CPU_ISA", "MKLDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
"""oneDNN's cap on the instructions it uses, under its current name and its older ones; where several
are set, the first wins: oneDNN reads ONEDNN_ before DNNL_, and torch, when imported, copies
MKLDNN_MAX_CPU_ISA over DNNL_MAX_CPU_ISA (in the C environment, which os.environ does not see)."""


def onednn_isa_cap() -> tuple[str, str]:
    """(the variable that caps oneDNN, its value upper-cased), or ("", "") where neither is set."""
    for name in ONEDNN_ISA_ENV:
        value = os.environ.get(name, "").strip().upper()
        if value:
            return name, value
    return "", ""


def bf16_hardware(device: torch.device) -> str | None:
    """None where `device` multiplies bf16 in hardware, else why not (a phrase for a one-line note).

    CPU: the AVX512-BF16 or AMX-BF16 flag (Linux's /proc/cpuinfo), unless torch's kernels or oneDNN
    are capped below them (ATEN_CPU_CAPABILITY=avx2 or default, ONEDNN_ISA_ENV): a capped run
    stands in for an older CPU and must behave like one. CUDA: torch.cuda.is_bf16_supported."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return None
        return f"{torch.cuda.get_device_name(device)} has no bf16 arithmetic"
    if device.type != "cpu":
        return f"bf16 is not supported on {device.type} here"
    cap = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    if cap in ("avx2", "default"):
        return f"ATEN_CPU_CAPABILITY={cap} caps torch below bf16 instructions"
    name, isa = onednn_isa_cap()
    if isa not in _ONEDNN_BF16_ISAS:
        return f"{name}={isa} caps oneDNN below bf16 instructions"
    if not any(flag in _cpu_flags() for flag in _CPU_BF16_FLAGS):
        return "this CPU has no bf16 instructions (AVX512-BF16 or AMX-BF16)"
    return None


def autocast_reaches(module: torch.nn.Module) -> bool:
    """Whether torch.autocast in bf16 computes `module`'s products in bf16. Not a cuDNN RNN on CUDA
    (nn.RNN, nn.GRU, nn.LSTM there): torch's autocast rule for it casts to float16 whatever dtype it
    was given, and float16 without loss scaling is not what train.precision=bf16 promises (its
    gradients can underflow). Under bf16 such a module trains in float32; the decoder in bf16."""
    w = next(module.parameters())
    return not (w.device.type == "cuda" and isinstance(module, torch.nn.RNNBase))


def fused_bf16_available() -> bool:
    """True where the C++ loop was built with its bf16 products (csrc/bf16.h: AMX) and may use them."""
    from rnn_train.kernels.build import extension

    ops = extension()
    return ops is not None and bool(ops.bf16_available())


def taken_label(precision: str, dtype: torch.dtype) -> str:
    """How the run names the precision it trains in: "bf16", "fp32", or "fp64" for a float64 model."""
    return "fp64" if precision == "fp32" and dtype == torch.float64 else precision
