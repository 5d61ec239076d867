"""`model.backend: numpy`: train a one-layer RNN, GRU or LSTM with the hand-written BPTT of
`rnn_train.teaching.bptt` (any registered cell whose CellSpec has the hook "bptt").

Why this backend exists: it is for learning, not speed. Every number of an update is computed in
plain NumPy where you can read it, with no autograd anywhere:

    ids X [B, T] ──transpose──> [T, B] ──one-hot──> x [T, B, V]
    x ──bptt.forward (the cell, biases)──> hs [T, B, H] ──decoder, every step──> logits [T, B, V]
    logits, Y ──bptt.softmax_cross_entropy (mean over all B·T)──> loss, dlogits = (p - y) / (B·T)
    dlogits ──bptt.linear_backward──> dhs [T, B, H], dW_hy, db_y
    dhs ──bptt.backward (walks t = T..1)──> dW_ih, dW_hh, db_ih, db_hh
    global L2 norm of all six gradients ──clip like clip_grad_norm_──> p -= lr * g

Everything around the step is the ordinary pipeline: `trainer.train` builds the config, corpus,
batches, schedule, logging and checkpoints exactly as for the torch backend and only asks this
`NumpyLearner` (a `training.protocol.Learner`, like `TorchLearner`) to do the step. So a numpy
run and a torch run of the same config and seed start from the same weights, see the same batches
and, in float64, take the same steps (tests/test_numpy_backend.py: over 50 updates the learners'
losses, gradient norms, carried states and weights agree to 1e-12; the logged losses, which pass
through TensorBoard's float32 scalars, to 1e-6).

How the weights are held: the learner owns a `CharRNN` built exactly as the torch backend builds
it (same draws from torch's RNG, hence the same initial weights), and its NumPy arrays are *views*
of that model's parameter storage. An in-place NumPy update `p -= lr * g` therefore changes the
model too: `torch_model()` (text samples, parameter count) and `state_dict()` (checkpoints that
predict.py loads and --resume continues) are always current without copying anything.

The arithmetic runs on the CPU whatever `train.device` says; the hidden state travels between
steps as a torch tensor [1, B, H] (a pair of them for an LSTM) so the trainer can detach it and
store it in checkpoints.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch

from rnn_train.config import Config
from rnn_train.data.batching import Batch
from rnn_train.model.charrnn import CharRNN, State
from rnn_train.teaching import bptt
from rnn_train.training.protocol import Learner
from rnn_train.training.schedule import clip_coefficient

# our maths name -> CharRNN state_dict key; the order is CharRNN.parameters()' order, which the
# global gradient norm follows so that it is summed like torch's clip_grad_norm_ sums it.
TORCH_KEYS = {
    "W_ih": "rnn.weight_ih_l0",  # [G*H, V]  input -> hidden (one-hot input: column v is char v's vector)
    "W_hh": "rnn.weight_hh_l0",  # [G*H, H]  hidden -> hidden
    "b_ih": "rnn.bias_ih_l0",  # [G*H]
    "b_hh": "rnn.bias_hh_l0",  # [G*H]
    "W_hy": "decoder.weight",  # [V, H]  hidden -> logits
    "b_y": "decoder.bias",  # [V]
}
RNN_NAMES = ("W_ih", "W_hh", "b_ih", "b_hh")


def global_norm(grads: list[np.ndarray]) -> float:
    """L2 norm of all gradients taken together, computed as torch does: the norm of the per-tensor norms."""
    return float(np.linalg.norm([np.linalg.norm(g.ravel()) for g in grads]))


class NumpyLearner(Learner):
    """A one-layer cell + linear decoder trained by NumPy BPTT and plain SGD.

    The `Learner` protocol (training/protocol.py). `config.py` guarantees a cell with a hand-written
    BPTT, one layer, one-hot input, no dropout and plain SGD (no momentum, no weight decay).
    """

    def __init__(self, cfg: Config, vocab_size: int, device: torch.device):
        self.cfg, self.device, self.vocab_size = cfg, device, vocab_size
        # Built like TorchLearner builds it, after the trainer's set_seed: the same initial weights.
        self.model = CharRNN.from_config(vocab_size, cfg.model)
        self.dtype = np.dtype(cfg.model.dtype)
        named = dict(self.model.named_parameters())
        # Views, not copies: NumPy's in-place updates are the model's updates (see the module docstring).
        self.params: dict[str, np.ndarray] = {name: named[key].detach().numpy() for name, key in TORCH_KEYS.items()}
        self.lr = cfg.train.lr
        self._one_hot = np.eye(vocab_size, dtype=self.dtype)  # row v = one-hot vector of character v

    # -- the interface the trainer uses --------------------------------------------------------
    def set_lr(self, lr: float) -> None:
        self.lr = lr

    def train_step(self, x: np.ndarray, y: np.ndarray, state: State | None
                   ) -> tuple[torch.Tensor, torch.Tensor, State]:
        """One SGD update on X, Y [B, T] -> (mean CE, pre-clip global grad norm, final state [1, B, H])."""
        p = self.params
        fwd, logits = self._forward(x, state)  # logits [T, B, V]
        T, B, V = logits.shape
        # Targets time-major like the logits: row t*B + b of both is (step t, stream b). The mean
        # over all B·T rows is the same number F.cross_entropy takes over torch's batch-first rows.
        loss, dlogits = bptt.softmax_cross_entropy(logits.reshape(T * B, V), y.T.reshape(T * B))

        # ---- backward: decoder on every step, then through time ----
        dhs, dW_hy, db_y = bptt.linear_backward(dlogits.reshape(T, B, V), fwd.hs, p["W_hy"])  # dhs [T, B, H]
        # The final state goes on to the next batch only as a detached value (truncated BPTT), so
        # no gradient arrives on h_T (or c_T): dh_T = dc_T = None.
        grads = {**bptt.backward(dhs, fwd.cache).params, "W_hy": dW_hy, "b_y": db_y}

        # ---- clip the global norm, then SGD ----
        norm = global_norm([grads[name] for name in TORCH_KEYS])
        if self.cfg.train.clip_norm > 0:
            coef = clip_coefficient(norm, self.cfg.train.clip_norm)
            if coef != 1.0:
                for g in grads.values():
                    g *= coef
        for name, g in grads.items():
            p[name] -= self.lr * g  # in place: the CharRNN's parameters move with it

        return torch.tensor(loss, dtype=torch.float64), torch.tensor(norm, dtype=torch.float64), self._final(fwd)

    def evaluate(self, batches: Iterable[Batch]) -> float:
        """Mean CE over the whole split, streams read in order with the state carried from zero."""
        total, count, state = 0.0, 0, None
        for x, y in batches:
            fwd, logits = self._forward(x, state)
            mean, _ = bptt.softmax_cross_entropy(logits.reshape(-1, self.vocab_size), y.T.reshape(-1))
            total += mean * y.size
            count += y.size
            state = self._final(fwd)
        return total / max(count, 1)

    @property
    def kernel(self) -> str:
        return "numpy"  # the training path, as logged in the run

    @property
    def precision(self) -> str:
        from rnn_train.kernels.precision import taken_label

        return taken_label("fp32", self.model.decoder.weight.dtype)  # NumPy in the model's dtype, never bf16

    precision_note = ""

    def torch_model(self) -> CharRNN:
        """The CharRNN whose parameters share memory with `self.params`: always current."""
        return self.model

    def state_dict(self) -> dict[str, Any]:
        """An ordinary CharRNN state_dict (copies, so later updates do not change it); plain SGD has no
        optimiser state."""
        return {"model": {k: v.detach().clone() for k, v in self.model.state_dict().items()}, "optimizer": {}}

    def load_state_dict(self, d: dict[str, Any]) -> bool:
        # nn.Module.load_state_dict copies into the existing tensors, so the NumPy views stay valid.
        self.model.load_state_dict(d["model"])
        return True  # plain SGD: no state

    # -- helpers ---------------------------------------------------------------------------------
    def _part(self, part: torch.Tensor) -> np.ndarray:
        """One part [1, B, H] of the trainer's state (maybe on another device) -> [B, H]."""
        return part.detach().cpu().numpy()[0].astype(self.dtype, copy=False)

    def _final(self, fwd: bptt.ForwardResult) -> State:
        """The forward's final state as the trainer carries it: [1, B, H] per part."""
        parts = (fwd.h_T,) if fwd.c_T is None else (fwd.h_T, fwd.c_T)
        return self.model.spec.pack(tuple(torch.from_numpy(part[None]) for part in parts))

    def _forward(self, x: np.ndarray, state: State | None) -> tuple[bptt.ForwardResult, np.ndarray]:
        """ids X [B, T] -> (the cell's ForwardResult, logits [T, B, V]), time-major as the BPTT is.
        `state` None means zeros."""
        p = self.params
        inputs = self._one_hot[x.T]  # [T, B, V]
        h0 = c0 = None
        if state is not None:
            h0, *rest = (self._part(part) for part in self.model.spec.unpack(state))
            c0 = rest[0] if rest else None
        fwd = bptt.forward(self.model.cell, inputs, h0, {name: p[name] for name in RNN_NAMES}, c0=c0)
        return fwd, bptt.linear_forward(fwd.hs, p["W_hy"], p["b_y"])
