"""Speed kernels: hand-written forward + BPTT for the CPU, chosen explicitly by `model.kernel`.

    native   torch's own nn.RNN / nn.GRU / nn.LSTM (autograd step by step; oneDNN for LSTM on the CPU)
    fused    rnn_train.kernels.fused: the same equations as one autograd Function per layer (RNN, GRU; CPU)
    auto     fused where it applies, else native

`resolve_kernel` is the one place that decides; the trainer logs its answer in the run.
"""
from __future__ import annotations

from torch import nn

from rnn_train.errors import UserError

KERNELS = ("auto", "native", "fused")


def resolve_kernel(requested: str, rnn: nn.Module) -> str:
    """'fused' or 'native' for the recurrent module `rnn` where it lives now (device, dtype, cell)."""
    from rnn_train.kernels.fused import can_fuse

    if requested not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {requested!r}")
    if requested == "native":
        return "native"
    if can_fuse(rnn):
        return "fused"
    if requested == "fused":
        w = next(rnn.parameters())
        raise UserError(f"model.kernel=fused runs RNN/GRU layers on the CPU only, not {type(rnn).__name__} on "
                        f"{w.device.type}; use model.kernel=auto or native")
    return "native"
