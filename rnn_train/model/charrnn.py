"""CharRNN: character ids -> (one-hot | learned embedding) -> recurrent core -> Linear on every step.

The recurrent core is built from the cell's CellSpec (rnn_train/model/cells.py): PyTorch's own
`nn.RNN` / `nn.GRU` / `nn.LSTM` where the cell has one (cuDNN on a GPU, oneDNN for the LSTM on a
CPU), else `recurrent.CellLayers`. Training may run the same module's weights through a fused
kernel instead (`rnn_train.kernels.fused.fused_rnn`: a hand-written BPTT with the same
gradients, faster on the CPU), and may compute its matrix products in bf16 (train.precision;
rnn_train.kernels.precision); both are decided once, by whoever builds the model for training
(`use_training_path`, see `rnn_train.kernels.resolve_training_path`), never inside `forward`.
Evaluation and generation always use the module in the weights' own dtype. The loss lives in the
trainer: `forward` returns logits for every time step, float32 whatever the precision.
"""
from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from rnn_train.config import ModelConfig
from rnn_train.errors import UserError
from rnn_train.kernels.fused import DECODER_GEMMS, FusedPath, bf16_linear, fused_rnn, onednn_linear
from rnn_train.kernels.precision import autocast_reaches
from rnn_train.model import cells
from rnn_train.model.recurrent import build_core

State = Union[torch.Tensor, tuple[torch.Tensor, ...]]  # h [L, B, H], or a tuple (h, c, ...) per CellSpec.state

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def check_vocab(model: "CharRNN", vocab) -> None:
    """Refuse a vocab that cannot be the model's: its ids index the model's input and output rows,
    so a vocab from another run would map characters to rows they never meant (silently, where the
    other vocab is smaller, and an IndexError deep in sampling where it is larger). Only the sizes
    can be compared: two runs' vocabs of one size pass."""
    if len(vocab) != model.vocab_size:
        raise UserError(f"the vocab has {len(vocab)} symbols but the model {model.vocab_size}: "
                        "they come from different runs (load both with load_model from one checkpoint)")


class CharRNN(nn.Module):
    def __init__(self, vocab_size: int, cell: str = "gru", hidden_size: int = 256, num_layers: int = 1,
                 dropout: float = 0.0, embedding: str = "one_hot", embed_dim: int = 64):
        super().__init__()
        self.vocab_size, self.cell, self.embedding_kind = vocab_size, cell, embedding
        self.spec = cells.get(cell)
        if embedding == "learned":
            self.embed = nn.Embedding(vocab_size, embed_dim)
            input_size = embed_dim
        else:
            self.embed = None
            input_size = vocab_size
        # batch_first: every tensor this project passes around is [B, T, ...].
        self.rnn = build_core(self.spec, input_size, hidden_size, num_layers, dropout)
        self.drop = nn.Dropout(dropout)
        self.decoder = nn.Linear(hidden_size, vocab_size)
        self.path: FusedPath | None = None  # the training path: a fused kernel, or None for the module
        self.precision = "fp32"  # of the training path's matrix products: "fp32" or "bf16"
        self.decoder_gemm = "blas"  # the decoder's products in a float32 training forward (DECODER_GEMMS)

    @classmethod
    def from_config(cls, vocab_size: int, cfg: ModelConfig) -> "CharRNN":
        model = cls(vocab_size, cfg.cell, cfg.hidden_size, cfg.num_layers, cfg.dropout, cfg.embedding, cfg.embed_dim)
        return model.to(DTYPES[cfg.dtype])

    def begin_state(self, batch_size: int) -> State:
        """The zero initial state, on the model's device and dtype."""
        p = self.decoder.weight
        shape = (self.rnn.num_layers, batch_size, self.rnn.hidden_size)
        return self.spec.pack(tuple(torch.zeros(shape, device=p.device, dtype=p.dtype) for _ in self.spec.state))

    def use_training_path(self, path: FusedPath | None, precision: str = "fp32", decoder: str = "blas") -> None:
        """How training forwards run from now on: `path` (a fused kernel for the CPU, chosen by
        rnn_train.kernels.resolve_kernel where the model lives), or None for the module itself;
        `precision` "bf16" computes their matrix products in bf16 (the fused path's own bf16
        products, or torch.autocast around the module and the decoder), "fp32" in the weights' dtype;
        `decoder` how a float32 forward computes the decoder's products (DECODER_GEMMS: "blas" is the
        nn.Linear itself; rnn_train.kernels.resolve_decoder)."""
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
        if decoder not in DECODER_GEMMS or (decoder != "blas" and precision != "fp32"):
            raise ValueError(f"decoder must be one of {DECODER_GEMMS} (in bf16 only blas), got {decoder!r}")
        self.path, self.precision, self.decoder_gemm = path, precision, decoder

    @property
    def training_kernel(self) -> str:
        """The training path as the run logs it: "native" (the module) or a fused path's label,
        e.g. "fused-cpp(step=blas, threads=rows, gemm=blas)", and the decoder's products where they
        are not nn.Linear's ("... decoder=onednn")."""
        label = "native" if self.path is None else self.path.label()
        return label if self.decoder_gemm == "blas" else f"{label} decoder={self.decoder_gemm}"

    def decode(self, out: torch.Tensor) -> torch.Tensor:
        """Training: hidden states [B, T, H] -> logits [B, T, V] through dropout and the decoder,
        whose products run as `decoder_gemm` says (float32 forwards)."""
        h = self.drop(out)
        if self.decoder_gemm == "onednn":
            return onednn_linear(h, self.decoder.weight, self.decoder.bias)
        return self.decoder(h)

    def encode_input(self, x: torch.Tensor) -> torch.Tensor:
        """ids [B, T] -> inputs [B, T, input_size]."""
        if self.embed is not None:
            return self.drop(self.embed(x))
        return F.one_hot(x, self.vocab_size).to(self.decoder.weight.dtype)

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """x [B, T] int64 -> logits [B, T, V], final state. `state=None` means zeros."""
        if state is None:
            state = self.begin_state(x.shape[0])
        training = torch.is_grad_enabled()
        bf16 = training and self.precision == "bf16"
        if self.path is not None and training:
            # the hand-written BPTT (same weights, same gradients); one-hot input stays as ids; in
            # bf16 its products and the decoder's are the kernels' own (float32 sums and results)
            inp = x if self.embed is None else self.encode_input(x)
            out, state = fused_rnn(self.rnn, inp, state, one_hot_ids=self.embed is None, path=self.path,
                                   precision=self.precision)
            if bf16:
                return bf16_linear(self.drop(out), self.decoder.weight, self.decoder.bias), state
            return self.decode(out), state
        if bf16:  # the module and the decoder under autocast; the loss, softmax and carried state float32
            device = self.decoder.weight.device.type
            with torch.autocast(device, dtype=torch.bfloat16):
                with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast_reaches(self.rnn)):
                    out, state = self.rnn(self.encode_input(x), state)
                logits = self.decoder(self.drop(out))
            dtype = self.decoder.weight.dtype
            return logits.to(dtype), self.spec.pack(tuple(s.to(dtype) for s in self.spec.unpack(state)))
        out, state = self.rnn(self.encode_input(x), state)  # out [B, T, H]
        return (self.decode(out) if training else self.decoder(self.drop(out))), state  # [B, T, V]


def detach_state(state: State | None) -> State | None:
    """Cut the graph at a batch boundary (truncated BPTT) while keeping the values."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)  # type: ignore[return-value]
    return state.detach()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
