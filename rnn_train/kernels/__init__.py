"""Speed kernels: hand-written forward + BPTT for the CPU, chosen by `model.kernel`.

    native   torch's own nn.RNN / nn.GRU / nn.LSTM (autograd step by step; oneDNN for LSTM on the CPU)
    fused    rnn_train.kernels.fused: the same equations as one autograd Function per layer, its
             time loop in C++ (RNN, GRU, LSTM; built once per machine) or in Python (RNN, GRU)
    auto     whichever of these is fastest for the model on this machine

`fused` and `auto` measure their candidates on first use and remember the answer per machine
(rnn_train.kernels.autotune); `resolve_kernel` is the one place that decides, and the trainer
logs its answer in the run. Timings: docs/kernels.md.
"""
from __future__ import annotations

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
