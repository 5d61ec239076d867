"""The part of a training step that depends on the backend, behind one typed interface.

The trainer drives a `Learner` (training/protocol.py); it never asks which one. `TorchLearner` is the ordinary backend (a
CharRNN, autograd, a torch optimiser); `teaching.numpy_backend.NumpyLearner` does the same update
with the hand-written NumPy BPTT. Both keep a CharRNN whose state_dict is what checkpoints hold,
so a run of either backend is predicted from, resumed and fine-tuned the same way.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from rnn_train.config import Config
from rnn_train.data.batching import Batch
from rnn_train.errors import UserError
from rnn_train.model.charrnn import DTYPES, CharRNN, State
from rnn_train.runtime import available_memory, out_of_memory
from rnn_train.training.protocol import Learner
from rnn_train.training.world import World


def make_optimizer(params: list[torch.nn.Parameter], cfg: Config) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)


class TorchLearner:
    """A CharRNN and its optimiser; the ordinary backend.

    With several processes (`world.size` > 1) the CharRNN trains wrapped in DistributedDataParallel:
    each rank runs forward and backward on its rows of the global batch, DDP averages the gradients
    during the backward pass (equal rows per rank: the average of the ranks' mean losses is the
    global batch's mean), and every rank then clips the same averaged gradients and takes the same
    optimiser step, so the weights stay identical without being sent. DDP needs nothing but
    gradients arriving on the parameters through autograd, which the fused kernels' autograd
    Functions deliver like torch's own modules."""

    def __init__(self, cfg: Config, vocab_size: int, device: torch.device, world: World = World()):
        self.cfg, self.device, self.vocab_size, self.world = cfg, device, vocab_size, world
        self.model = CharRNN.from_config(vocab_size, cfg.model).to(device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.params, cfg)
        self.net: torch.nn.Module = self.model  # what a training forward goes through
        if world.distributed:
            # built on every rank at once (it broadcasts rank 0's weights: the same, seeded alike)
            self.net = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.precision_note = ""  # why train.precision=bf16 could not be had here, or ""
        self.kernel = self._resolve_kernel()

    def _resolve_kernel(self) -> str:
        """Chooses the training path and its precision once, here (and on a new machine measures
        them) at the batch shape each rank trains with; -> the path's label. With several ranks,
        rank 0 decides and the others take its path: every rank computes alike."""
        from rnn_train.kernels import resolve_decoder, resolve_training_path

        rows, steps, m = self.cfg.data.batch_size // self.world.size, self.cfg.data.num_steps, self.model
        kernel, one_hot = self.cfg.model.kernel, m.embed is None

        def decide():
            chosen = resolve_training_path(kernel, self.cfg.train.precision, m.rnn, rows, steps, one_hot)
            return chosen, resolve_decoder(kernel, chosen, m.rnn, self.vocab_size, rows, steps, one_hot)

        chosen, decoder = self.world.from_writer(decide)
        if self.device.type == "cuda" and chosen.precision == "fp32":
            # float32 means float32: cuDNN's RNNs take TF32 (10-bit mantissa) on Ampere and later by default
            torch.backends.cudnn.allow_tf32 = False
        m.use_training_path(chosen.path, chosen.precision, decoder)
        self.precision_note = chosen.note
        return m.training_kernel

    @property
    def precision(self) -> str:
        """The precision the training step's matrix products take: "fp32" ("fp64" for a float64
        model) or "bf16" (rnn_train.kernels.precision)."""
        from rnn_train.kernels.precision import taken_label

        return taken_label(self.model.precision, self.model.decoder.weight.dtype)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(self.device, non_blocking=True)

    def train_step(self, x: np.ndarray, y: np.ndarray, state: State | None) -> tuple[torch.Tensor, torch.Tensor, State]:
        self.model.train()
        logits, state = self.net(self._tensor(x), state)  # [B, T, V] (this rank's rows)
        loss = F.cross_entropy(logits.reshape(-1, self.vocab_size), self._tensor(y).reshape(-1))
        for p in self.params:  # what optimizer.zero_grad(set_to_none=True) does, without its ~70 us of bookkeeping
            p.grad = None
        loss.backward()  # with DDP: the gradients are the ranks' average when this returns
        grad_norm = self._clip(self.cfg.train.clip_norm)
        self.optimizer.step()
        return loss.detach(), grad_norm.detach(), state

    def _clip(self, clip: float) -> torch.Tensor:
        """What `torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)` does, bit for bit; -> the
        norm before clipping. torch always multiplies by min(clip / (norm + 1e-6), 1), because asking
        whether the factor is 1 would wait for a GPU; on the CPU asking is free, and a multiply by 1
        changes nothing but costs a pass over every gradient (~1.5% of an LSTM-512 step)."""
        norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None], foreach=True)
        if clip > 0 and (norm.device.type != "cpu" or not float(clip / (norm + 1e-6)) >= 1.0):
            torch.nn.utils.clip_grads_with_norm_(self.params, clip, norm, foreach=True)
        return norm

    @torch.no_grad()
    def evaluate(self, batches: Iterable[Batch]) -> float:
        """With several ranks each reads its block of the streams (state carried per row, so any
        split of the rows gives the same per-row losses); the CE sums and counts are added up."""
        self.model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.device)  # [CE sum, targets]
        state = None
        for x, y in batches:
            mine = self.world.share(x.shape[0])
            x, y = x[mine], y[mine]
            if not len(x):
                continue  # a split so short that its batch has fewer rows than there are ranks
            logits, state = self.model(self._tensor(x), state)
            total[0] += F.cross_entropy(logits.reshape(-1, self.vocab_size), self._tensor(y).reshape(-1),
                                        reduction="sum")
            total[1] += y.size
        self.model.train()
        ce, count = self.world.sum_(total).tolist()
        return ce / max(count, 1)

    def torch_model(self) -> CharRNN:
        return self.model

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, d: dict[str, Any]) -> bool:
        """The weights, and the optimiser's state where it is of this kind of optimiser (False where
        it is not: SGD's momentum does not make Adam's moments, so those start fresh). The settings
        stay the config's: torch's load_state_dict would bring back the saved weight decay and
        momentum too, and --resume may change them (the learning rate is the schedule's)."""
        self.model.load_state_dict(d["model"])
        saved, settings = d["optimizer"], [{k: v for k, v in g.items() if k != "params"}
                                           for g in self.optimizer.param_groups]
        groups = saved.get("param_groups") if isinstance(saved, dict) else None
        if isinstance(groups, list) and groups and all(isinstance(g, dict) for g in groups) and \
                {_kind(g) for g in groups} != {_kind(g) for g in settings}:
            return False
        self.optimizer.load_state_dict(saved)
        for group, own in zip(self.optimizer.param_groups, settings):
            group.update(own)
        return True


def _kind(group: dict[str, Any]) -> str:
    """Which family an optimiser's param group is of, by a setting only that family has: SGD's state
    (momentum buffers) and Adam's or AdamW's (moments) cannot stand in for each other; Adam's and
    AdamW's can. (By family, not by the set of keys, which grows with torch's versions.)"""
    return "sgd" if "momentum" in group else "adam" if "betas" in group else "other"


class ModelTooLarge(UserError):
    """The model's weights could not be allocated: a fact about the config's sizes on this machine,
    which a search can answer by drawing other sizes (tune), where any other failure is retried."""


def make_learner(cfg: Config, vocab_size: int, device: torch.device, world: World = World()) -> Learner:
    """The backend `model.backend` names; a model too large for memory is ModelTooLarge naming its size."""
    available = available_memory()  # the host's on every device: the model is built there, then moved
    if available is not None and weight_bytes(cfg, vocab_size) > available:
        # refused before building: sizes past any memory overflowed torch's storage size (a traceback)
        # or built layer after layer for ever (model.num_layers=1e30). The weights alone, a lower bound
        # (training holds gradients and optimiser state too), against MemAvailable, which a container's
        # own memory limit may undercut: a model refused here could not have trained
        raise _too_large(cfg, vocab_size)
    try:
        if cfg.model.backend == "numpy":
            from rnn_train.teaching.numpy_backend import NumpyLearner

            return NumpyLearner(cfg, vocab_size, device)
        return TorchLearner(cfg, vocab_size, device, world)
    except (MemoryError, RuntimeError) as e:
        if not out_of_memory(e):
            raise
        raise _too_large(cfg, vocab_size) from None


def _too_large(cfg: Config, vocab_size: int) -> ModelTooLarge:
    m = cfg.model
    embed = f"model.embed_dim={m.embed_dim}, " if m.embedding == "learned" else ""
    return ModelTooLarge(f"not enough memory for the model ({embed}model.hidden_size={m.hidden_size}, "
                         f"model.num_layers={m.num_layers}, vocab {vocab_size}); make it smaller")


def weight_bytes(cfg: Config, vocab_size: int) -> int:
    """The bytes of the model's weights alone (Python integers: no overflow): each layer's
    [G*H, in] and [G*H, H] matrices and two biases, the decoder, a learned embedding."""
    from rnn_train.model import cells

    m = cfg.model
    g, h = cells.get(m.cell).num_blocks, m.hidden_size
    first = m.embed_dim if m.embedding == "learned" else vocab_size
    layers = g * h * (first + h + 2) + (m.num_layers - 1) * g * h * (2 * h + 2)
    params = layers + (h + 1) * vocab_size + (vocab_size * m.embed_dim if m.embedding == "learned" else 0)
    return params * DTYPES[m.dtype].itemsize
