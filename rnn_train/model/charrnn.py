"""CharRNN: character ids -> (one-hot | learned embedding) -> RNN/GRU/LSTM -> Linear on every step.

The recurrent core is PyTorch's own `nn.RNN` / `nn.GRU` / `nn.LSTM` (cuDNN on a GPU, oneDNN for
the LSTM on a CPU). With `model.kernel` fused (or auto, where measurement says so) training runs
the same module's weights through `rnn_train.kernels.fused.fused_rnn` instead: a hand-written BPTT
with the same gradients, faster on the CPU; evaluation and generation always use the module. This module only
adds the input encoding and the per-step decoder, and hides the one place where cells differ
(LSTM's state is a pair) behind `begin_state` and `detach_state`.
The loss lives in the trainer: `forward` returns logits for every time step.
"""
from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from rnn_train.config import ModelConfig
from rnn_train.kernels import resolve_kernel
from rnn_train.kernels.fused import FusedPath, fused_rnn

State = Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]  # h [L, B, H], or (h, c) for LSTM

CELLS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class CharRNN(nn.Module):
    def __init__(self, vocab_size: int, cell: str = "gru", hidden_size: int = 256, num_layers: int = 1,
                 dropout: float = 0.0, embedding: str = "one_hot", embed_dim: int = 64, kernel: str = "auto"):
        super().__init__()
        self.vocab_size, self.cell, self.embedding_kind, self.kernel = vocab_size, cell, embedding, kernel
        if embedding == "learned":
            self.embed = nn.Embedding(vocab_size, embed_dim)
            input_size = embed_dim
        else:
            self.embed = None
            input_size = vocab_size
        # batch_first: every tensor this project passes around is [B, T, ...].
        self.rnn = CELLS[cell](input_size, hidden_size, num_layers, batch_first=True,
                               dropout=dropout if num_layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.decoder = nn.Linear(hidden_size, vocab_size)
        self._path: tuple[tuple, FusedPath | None] | None = None  # (where it was resolved, the training path)

    @classmethod
    def from_config(cls, vocab_size: int, cfg: ModelConfig) -> "CharRNN":
        model = cls(vocab_size, cfg.cell, cfg.hidden_size, cfg.num_layers, cfg.dropout, cfg.embedding, cfg.embed_dim,
                    cfg.kernel)
        return model.to(DTYPES[cfg.dtype])

    def begin_state(self, batch_size: int) -> State:
        """The zero initial state, on the model's device and dtype."""
        p = self.decoder.weight
        h = torch.zeros(self.rnn.num_layers, batch_size, self.rnn.hidden_size, device=p.device, dtype=p.dtype)
        return (h, torch.zeros_like(h)) if self.cell == "lstm" else h

    def training_kernel(self, batch_size: int = 32, num_steps: int = 35) -> str:
        """The path a training forward takes where the model is now, as the run logs it: "native" or
        a fused path's label, e.g. "fused-cpp(step=blas, threads=rows, gemm=blas)".

        Resolved once per device and dtype (by the first call of this or of a training forward):
        `auto` and `fused` measure their candidates at [batch_size, num_steps] the first time a
        machine sees this model's shapes, then reuse that answer (rnn_train.kernels.autotune)."""
        path = self.training_path(batch_size, num_steps)
        return "native" if path is None else path.label()

    def training_path(self, batch_size: int = 32, num_steps: int = 35) -> FusedPath | None:
        """The fused path training takes where the model is now, or None for the nn module."""
        p = self.decoder.weight
        where = (self.kernel, p.device, p.dtype)
        if self._path is None or self._path[0] != where:
            self._path = (where, resolve_kernel(self.kernel, self.rnn, batch_size, num_steps, self.embed is None))
        return self._path[1]

    def set_training_path(self, path: FusedPath | None) -> None:
        """Pin the training path (None: the nn module) instead of resolving `kernel`; for tests and benchmarks."""
        p = self.decoder.weight
        self._path = ((self.kernel, p.device, p.dtype), path)

    def encode_input(self, x: torch.Tensor) -> torch.Tensor:
        """ids [B, T] -> inputs [B, T, input_size]."""
        if self.embed is not None:
            return self.drop(self.embed(x))
        return F.one_hot(x, self.vocab_size).to(self.decoder.weight.dtype)

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """x [B, T] int64 -> logits [B, T, V], final state. `state=None` means zeros."""
        if state is None:
            state = self.begin_state(x.shape[0])
        path = self.training_path(*x.shape) if torch.is_grad_enabled() and x.device.type == "cpu" else None
        if path is not None:
            # the hand-written BPTT (same weights, same gradients); one-hot input stays as ids
            inp = x if self.embed is None else self.encode_input(x)
            out, state = fused_rnn(self.rnn, inp, state, one_hot_ids=self.embed is None, path=path)
        else:
            out, state = self.rnn(self.encode_input(x), state)  # out [B, T, H]
        return self.decoder(self.drop(out)), state  # [B, T, V]


def detach_state(state: State | None) -> State | None:
    """Cut the graph at a batch boundary (truncated BPTT) while keeping the values."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)  # type: ignore[return-value]
    return state.detach()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
