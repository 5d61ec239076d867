"""Speed kernels: hand-written forward + BPTT for the CPU, chosen by `model.kernel`.

    native   torch's own nn.RNN / nn.GRU / nn.LSTM (autograd step by step; oneDNN for LSTM on the CPU)
    fused    rnn_train.kernels.fused: the same equations as one autograd Function per layer, its
             time loop in C++ (RNN, GRU, LSTM; built once per machine) or in Python (RNN, GRU)
    auto     whichever of these is fastest for the model on this machine

`fused` and `auto` measure their candidates on first use and remember the answer per machine
(rnn_train.kernels.autotune); `resolve_kernel` is the one place that decides the float32 path,
`resolve_training_path` adds the precision (train.precision: rnn_train.kernels.precision),
`resolve_decoder` how a float32 model's decoder computes, and the trainer logs them in the run.
Timings: docs/kernels.md.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from rnn_train.errors import UserError

KERNELS = ("auto", "native", "fused")


def resolve_kernel(requested: str, rnn: nn.Module, batch_size: int, num_steps: int, one_hot: bool):
    """The training path of the recurrent module `rnn` where it lives now (device, dtype, cell):
    a rnn_train.kernels.fused.FusedPath, or None for the module itself."""
    from rnn_train.kernels import autotune
    from rnn_train.kernels.fused import LOOPS, can_fuse
    from rnn_train.model import cells

    if requested not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {requested!r}")
    if requested == "native":
        return None
    fusable = can_fuse(rnn, loop="python") or (can_fuse(rnn, loop="cpp") and autotune.loop_candidates(rnn, "blas"))
    if not fusable:
        if requested == "fused":
            w, spec = next(rnn.parameters()), cells.of_module(rnn)
            loops = [loop for loop in LOOPS if spec is not None and f"{loop}_loop" in spec.hooks]
            has = f"it has the {' and '.join(loops)} loop" if loops else "it has no fused loop"
            raise UserError(f"model.kernel=fused cannot train the {spec.name if spec else type(rnn).__name__} cell on "
                            f"{w.device.type} here (the fused layers are CPU-only; {has}, and the C++ loop needs "
                            f"the C++ kernels built); use model.kernel=auto or native")
        return None
    return autotune.choose(rnn, batch_size, num_steps, one_hot, with_native=requested == "auto")


class TrainingPath(NamedTuple):
    """How a model trains: `path` (a FusedPath, or None for the module itself) computing its matrix
    products in `precision` ("fp32" or "bf16"), and `note`, one line for the user where the
    requested precision could not be had (else "")."""

    path: object
    precision: str
    note: str = ""


def bf16_candidates(kernel: str, rnn: nn.Module) -> list:
    """The paths that can train `rnn` in bf16 here under model.kernel=`kernel`: the fused C++ loop's
    tiled step with its bf16 products (CPU, where built with AMX), and the module under autocast."""
    from rnn_train.kernels.fused import FusedPath, can_fuse
    from rnn_train.kernels.precision import fused_bf16_available

    out: list = []
    if kernel in ("auto", "fused") and can_fuse(rnn, loop="cpp") and fused_bf16_available():
        threads = ["blas"] + ["rows"] * (torch.get_num_threads() > 1)
        out += [FusedPath("cpp", "blas", "tiled", t) for t in threads]
    if kernel in ("auto", "native"):
        out.append(None)
    return out


def resolve_training_path(kernel: str, precision: str, rnn: nn.Module, batch_size: int, num_steps: int,
                          one_hot: bool) -> TrainingPath:
    """The training path and precision of `rnn` where it lives now, for model.kernel=`kernel` and
    train.precision=`precision`. The float32 path is `resolve_kernel`'s, so an "fp32" run, and an
    "auto" run that keeps float32, trains exactly as before precision existed."""
    from rnn_train.kernels import autotune
    from rnn_train.kernels.fused import can_fuse
    from rnn_train.kernels.precision import PRECISIONS, autocast_reaches, bf16_hardware

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    def fp32_path():  # the float32 decision: timed on a new machine, so asked for only where it is used
        return resolve_kernel(kernel, rnn, batch_size, num_steps, one_hot)

    if precision == "fp32":
        return TrainingPath(fp32_path(), "fp32")
    w = rnn.weight_hh_l0
    why = f"the model computes in {str(w.dtype).split('.')[-1]}" if w.dtype != torch.float32 else bf16_hardware(w.device)
    candidates = [] if why else [p for p in bf16_candidates(kernel, rnn) if autotune.runs_here(rnn, p, one_hot, "bf16")]
    if why is None and not candidates:
        why = f"model.kernel={kernel} has no bf16 path that runs this model here"
    if why is not None:
        note = f"train.precision=bf16: {why}; training in float32" if precision == "bf16" else ""
        return TrainingPath(fp32_path(), "fp32", note)
    # bf16 asked for: the float32 decision would be timed for nothing (and one candidate is no race)
    path = fp32_path() if precision == "auto" else None
    if precision == "bf16" and len(candidates) == 1:
        chosen, taken = candidates[0], "bf16"
    else:
        chosen, taken = autotune.choose_precision(rnn, batch_size, num_steps, one_hot, kernel, path, candidates,
                                                  precision)
    note = ""
    if (precision == "bf16" and kernel == "auto" and w.device.type == "cpu" and candidates == [None]
            and can_fuse(rnn, loop="cpp")):
        # asked for where the C++ loop, float32's likely path, has no bf16 products: autocast may lose to it
        note = ("train.precision=bf16 here is torch's autocast around the module (the C++ loop's bf16 products "
                "need AMX), which can be slower than the C++ loop in float32 (docs/kernels.md: GRU-256 11.8 ms a "
                "step against 7.1 on an AMD Zen 5); train.precision=auto keeps the faster by measurement")
    if taken == "bf16" and chosen is None and not autocast_reaches(rnn):
        note = ("train.precision=bf16 on CUDA: the recurrent layers (cuDNN) train in float32, the decoder in bf16 "
                "(torch's autocast would run cuDNN's RNNs in float16)")
    return TrainingPath(chosen, taken, note)


def resolve_decoder(kernel: str, chosen: TrainingPath, rnn: nn.Module, vocab: int, batch_size: int, num_steps: int,
                    one_hot: bool) -> str:
    """How the decoder ([B*T, H] -> [B*T, vocab]) of a model whose recurrent module `rnn` trains on
    `chosen` computes its products (rnn_train.kernels.fused.DECODER_GEMMS): "onednn" where, for
    model.kernel auto or fused, a float32 CPU model's measured decision says it is faster here, else
    nn.Linear's own "blas". Not measured for a model too small to measure (autotune.SMALL_STEP_WORK)."""
    from rnn_train.kernels import autotune
    from rnn_train.kernels.gemm import onednn_available

    w = rnn.weight_hh_l0
    if (kernel == "native" or chosen.precision != "fp32" or w.device.type != "cpu" or w.dtype != torch.float32
            or not onednn_available() or autotune.is_small(rnn, batch_size)):
        return "blas"
    return autotune.choose_decoder(rnn, vocab, batch_size, num_steps, one_hot, with_native=kernel == "auto")
