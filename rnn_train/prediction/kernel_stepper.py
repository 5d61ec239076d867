"""A CharRNN's generation and scoring steps on the C++ kernels (rnn_train/kernels/csrc/decode.cpp).

The NumPy stepper (stepper.py) pays a GEMM call and a dozen ufunc calls per character, and its
GEMMs round a row differently with the rows per call. This stepper packs the weights once into
the register tiles' panel layout and runs many steps per call: a whole chunk of sampling (each
character chosen in C++ and fed back) or a whole scored segment. What that buys:

- speed: the Python overhead is paid once per chunk; batch rows are split over torch's threads
  with no barrier (rows are independent); the cell runs on each tile's gates while they are in
  the L1 cache;
- batch invariance: a row's arithmetic is the same instruction sequence whatever the other rows
  (csrc/decode.cpp), so on one machine sample i of N is bit for bit sample i of any other N, and
  a segment scores the same in any batch.

Public surface, shared with stepper.Stepper (rnn_train/serve/scheduler.py batches requests on it):

    step(ids [B]) -> logits [B, V]     one step for every row
    load_state(state, rows=None)       every row's state (or the given rows') from a torch state
    copy_rows(src, dst)                rows' state copied onto other rows (they may overlap)
    rows(n, gemm_rows=None)            a view of the first n rows: the same weights and state buffers
    state()                            the current state as torch tensors [L, B, H]
and its own:
    threads                            threads `step` splits the rows over (0, the default: torch's)
    sample(n, advance, keys, position, out, temperature)   n characters per row chosen and fed back in C++
    score(ids [B, T], targets [B, T]) -> nats [B, T]   teacher-forced surprisal

A view (`rows(n)`) steps its n rows exactly as a stepper made for n rows would, and, the rows being
independent, exactly as they step inside the whole batch: a server's request gets the numbers
predict gets, whatever else is in the batch (tests/test_serve.py).

The cell's C++ id comes from its CellSpec hook "decode" (rnn_train/model/cells.py); a cell without
one samples on the NumPy stepper.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from rnn_train.model.charrnn import CharRNN, State
from rnn_train.kernels.precision import fused_bf16_available
from rnn_train.model.checkpoint import refuse_not_finite

UNK_LOGIT = -1e30  # as stepper.UNK_LOGIT (not imported: stepper imports this module): <unk>'s logit when sampling


@dataclass(frozen=True)
class DecodeCell:
    """A cell's id in csrc/decode.cpp (its equations are written there, as PyTorch has them)."""

    id: int


RNN, GRU, LSTM = DecodeCell(0), DecodeCell(1), DecodeCell(2)


def decode_ops():
    """The C++ ops, or None where the kernels are not built (no compiler, RNN_TRAIN_NO_CPP=1)."""
    from rnn_train.kernels.build import extension

    return extension()


PRECISIONS = ("fp32", "bf16")


def supports(model: CharRNN) -> bool:
    """Whether this stepper can run `model` here: its cell has a "decode" hook, its weights are
    float32 or float64, and the C++ kernels are built."""
    if model.spec.hook("decode") is None or getattr(model.rnn, "nonlinearity", "tanh") != "tanh":
        return False
    return model.decoder.weight.dtype in (torch.float32, torch.float64) and decode_ops() is not None


class KernelStepper:
    """The weights of one CharRNN packed for csrc/decode.cpp, a batch of B states, and the steps."""

    kernel = "cpp"

    def __init__(self, model: CharRNN, batch: int, mask_unk: bool = True, precision: str = "fp32"):
        ops = decode_ops()
        if ops is None:
            raise RuntimeError("the C++ kernels are not available on this machine")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        bf16 = precision == "bf16"
        if bf16 and (model.decoder.weight.dtype != torch.float32 or not fused_bf16_available()):
            raise RuntimeError("bf16 steps need a float32 model and a CPU with AMX tiles (precision.fused_bf16_available)")
        self.precision = precision
        self._ops, self.spec, self.batch = ops, model.spec, batch
        self._cell = model.spec.hook("decode").id
        params = {name: p.detach().cpu().contiguous() for name, p in model.named_parameters()}
        refuse_not_finite(params.values())
        rnn = model.rnn
        self.layers, self.hidden = rnn.num_layers, rnn.hidden_size
        w_dec = params["decoder.weight"]
        self.dtype = np.dtype(str(w_dec.dtype).split(".")[-1])
        zeros = lambda layer: torch.zeros(params[f"rnn.weight_hh_l{layer}"].shape[0], dtype=w_dec.dtype)  # noqa: E731
        bias = lambda name, layer: params.get(f"rnn.{name}_l{layer}", zeros(layer))  # noqa: E731
        w_ih0, b_ih0 = params["rnn.weight_ih_l0"], bias("bias_ih", 0)
        if model.embed is not None:  # lookup then linear map = one lookup table [V, G*H]
            table = torch.addmm(b_ih0, params["embed.weight"], w_ih0.t())
        else:  # one-hot: row x of W_ih^T, plus the bias
            table = w_ih0.t() + b_ih0
        dec, dec_bias = ops.decode_pack_decoder(w_dec, params["decoder.bias"], bf16)
        weights = [table.contiguous(), dec, dec_bias]
        for layer in range(self.layers):
            weights += ops.decode_pack_gates(params[f"rnn.weight_hh_l{layer}"], bias("bias_hh", layer), self._cell, bf16)
            if layer:
                weights += ops.decode_pack_gates(params[f"rnn.weight_ih_l{layer}"], bias("bias_ih", layer), self._cell,
                                                 bf16)
        self._weights = weights
        self.vocab_size = w_dec.shape[0]
        shape = (self.layers, batch, self.hidden)
        self._h = torch.zeros(shape, dtype=w_dec.dtype)
        self._c = torch.zeros(shape, dtype=w_dec.dtype) if len(self.spec.state) > 1 else None
        self.logits = np.zeros((batch, self.vocab_size), self.dtype)  # [B, V] of the next character
        self._logits = torch.from_numpy(self.logits)
        self._unk = UNK_LOGIT if mask_unk else None
        self.threads = 0  # threads `step` splits the rows over; 0 = torch's number

    # -- the state
    def rows(self, n: int, gemm_rows: int | None = None) -> "KernelStepper":
        """A stepper over the first `n` rows: the same packed weights, state and logits buffers
        (views, nothing copied). `gemm_rows` is the NumPy stepper's and means nothing here."""
        if not 0 < n <= self.batch:
            raise ValueError(f"rows({n}) of a stepper of {self.batch} rows")
        view = copy.copy(self)
        view.batch = n
        view._h = self._h[:, :n]  # rows contiguous within a layer: the ops take it as it is
        view._c = self._c[:, :n] if self._c is not None else None
        view.logits, view._logits = self.logits[:n], self._logits[:n]
        return view

    def copy_rows(self, src: slice, dst: slice) -> None:
        """Copy the state of rows `src` into rows `dst` (as many; they may overlap)."""
        self._h[:, dst] = self._h[:, src].clone()
        if self._c is not None:
            self._c[:, dst] = self._c[:, src].clone()

    def load_state(self, state: State, rows=None) -> None:
        """Set the state of every row (or of `rows`, an index array or slice) from a torch state of
        batch 1 (broadcast) or of as many rows as are set."""
        where = slice(None) if rows is None else rows
        parts = self.spec.unpack(state)
        self._h[:, where] = parts[0].detach().to("cpu", self._h.dtype)
        if self._c is not None:
            self._c[:, where] = parts[1].detach().to("cpu", self._c.dtype)

    def state(self) -> State:
        """The current state as torch tensors [L, B, H] (copies)."""
        parts = (self._h.clone(),) + ((self._c.clone(),) if self._c is not None else ())
        return self.spec.pack(parts)

    # -- steps
    def step(self, ids: np.ndarray) -> np.ndarray:
        """ids [B] int64 -> logits [B, V] of the character after them, <unk> masked (the returned
        buffer is reused)."""
        ids_t = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64))
        self._ops.decode_step(self._weights, self._cell, self._h, self._c, ids_t, self._unk, self._logits, self.threads)
        return self.logits

    def sample(self, n: int, advance: int, keys: np.ndarray, position: int | np.ndarray, out: np.ndarray,
               temperature: float | np.ndarray) -> None:
        """Choose n characters per row into out[:n] ([>= n, B] int64), each the argmax of the current
        `logits` plus the row's noise T * G for position `position` + j (choose.gumbel_noise: the
        same numbers, from the same function), greedy where the row's sampling `temperature` T is 0;
        feed the first `advance` of them to the model, whose logits replace `logits`. `position`, `temperature`: one for all rows or one
        per row."""
        counters = np.broadcast_to(np.asarray(position, np.int64), (self.batch,)).copy()
        temperatures = np.broadcast_to(np.asarray(temperature, np.float64), (self.batch,)).copy()
        self._ops.decode_sample(self._weights, self._cell, self._h, self._c, self._logits,
                                torch.from_numpy(temperatures), torch.from_numpy(np.ascontiguousarray(keys).view(np.int64)),
                                torch.from_numpy(counters), self._unk, n, advance, torch.from_numpy(out))

    def score(self, ids: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Teacher-forced: row b reads ids[b, t] at step t -> surprisal in nats [B, T] of
        targets[b, t], NaN where the target is -1 (warm-up, padding). The state carries on."""
        nll = torch.empty(ids.shape, dtype=torch.float64)
        self._ops.decode_score(self._weights, self._cell, self._h, self._c, self.vocab_size,
                               torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)),
                               torch.from_numpy(np.ascontiguousarray(targets, dtype=np.int64)), nll)
        return nll.numpy()
