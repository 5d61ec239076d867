"""The recurrent core of a CharRNN, built from a cell's CellSpec.

A cell torch implements itself (CellSpec hook "native": nn.RNN, nn.GRU, nn.LSTM) gets torch's
module: cuDNN on a GPU, oneDNN's LSTM on a CPU, and the weight names and initialisation every
earlier checkpoint holds. Any other registered cell gets `CellLayers`: the same interface and
weight layout, its time loop in Python with the cell's reference `step` under autograd. Slow next
to a fused kernel, but it makes a cell written in a few lines of equations trainable, resumable
and exportable everywhere at once.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rnn_train.model.cells import CellSpec, torch_ops


def build_core(spec: CellSpec, input_size: int, hidden_size: int, num_layers: int, dropout: float) -> nn.Module:
    """The batch_first recurrent module for `spec` (dropout between layers only, as torch's)."""
    dropout = dropout if num_layers > 1 else 0.0
    native = spec.hooks.get("native")
    if native:
        return getattr(nn, native)(input_size, hidden_size, num_layers, batch_first=True, dropout=dropout)
    return CellLayers(spec, input_size, hidden_size, num_layers, dropout)


class CellLayers(nn.Module):
    """Stacked layers of any registered cell with `nn.RNN`'s interface (batch_first):

        forward(x [B, T, I], hx=None) -> (out [B, T, H], h_n [L, B, H] or a tuple of them)

    Parameters are named and shaped like torch's (`weight_ih_l{k}` [G*H, I], `weight_hh_l{k}`
    [G*H, H], `bias_ih_l{k}`, `bias_hh_l{k}` [G*H]) and drawn like torch's, uniform in
    +-1/sqrt(H), so every consumer of a state_dict (checkpoints, the stepper, export) reads
    either module alike."""

    batch_first = True
    bidirectional = False
    proj_size = 0

    def __init__(self, spec: CellSpec, input_size: int, hidden_size: int, num_layers: int = 1,
                 dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.spec, self.input_size, self.hidden_size = spec, input_size, hidden_size
        self.num_layers, self.dropout, self.bias = num_layers, dropout, bias
        rows = spec.num_blocks * hidden_size
        for k in range(num_layers):
            width = input_size if k == 0 else hidden_size
            self.register_parameter(f"weight_ih_l{k}", nn.Parameter(torch.empty(rows, width)))
            self.register_parameter(f"weight_hh_l{k}", nn.Parameter(torch.empty(rows, hidden_size)))
            if bias:
                self.register_parameter(f"bias_ih_l{k}", nn.Parameter(torch.empty(rows)))
                self.register_parameter(f"bias_hh_l{k}", nn.Parameter(torch.empty(rows)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def layer_weights(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        return tuple(getattr(self, f"{kind}_l{k}", None) for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))

    def forward(self, x: torch.Tensor, hx=None):
        B, T = x.shape[0], x.shape[1]
        if hx is None:
            w = self.weight_hh_l0
            zeros = torch.zeros(self.num_layers, B, self.hidden_size, dtype=w.dtype, device=w.device)
            hx = self.spec.pack(tuple(zeros for _ in self.spec.state))
        parts_in = self.spec.unpack(hx)  # each [L, B, H]
        ops, out, last = torch_ops(), x, []
        for k in range(self.num_layers):
            w_ih, w_hh, b_ih, b_hh = self.layer_weights(k)
            gi = F.linear(out, w_ih, b_ih)  # [B, T, G*H]: the input side of every step in one GEMM
            state = tuple(p[k] for p in parts_in)
            hs = []
            for t in range(T):
                state, _ = self.spec.step(ops, gi[:, t], F.linear(state[0], w_hh, b_hh), state)
                hs.append(state[0])
            out = torch.stack(hs, dim=1)  # [B, T, H]
            if self.dropout and self.training and k < self.num_layers - 1:
                out = F.dropout(out, self.dropout, training=True)
            last.append(state)
        return out, self.spec.pack(tuple(torch.stack(parts) for parts in zip(*last)))

    def extra_repr(self) -> str:
        return f"{self.spec.name}, {self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, batch_first=True"
