"""The training loop: mean cross-entropy -> backward -> clip global norm -> step -> log -> validate
-> checkpoint, with truncated BPTT in sequential partitioning and exact resume.

Exact resume: everything that decides what happens next is in the checkpoint or is a pure function
of it. Batches of epoch e come from `epoch_rng(seed, e)`, so a resumed run rebuilds that epoch's
order and skips the batches already done; the carried hidden state (sequential mode), optimiser,
plateau state, counters and torch RNG (dropout) are saved. A run interrupted and resumed therefore
ends with the same weights as one that never stopped (tests/test_resume.py).

Ctrl-C sets a flag; the step in flight finishes, `last.pt` is written and the run exits with a
message. A second Ctrl-C stops at once.
"""
from __future__ import annotations

import itertools
import json
import math
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from rnn_train.model import checkpoint as ckpt_io
from rnn_train.files import atomic_write_text
from rnn_train.data.batching import batches, batches_per_epoch, epoch_rng, eval_batches
from rnn_train.config import Config, config_to_yaml
from rnn_train.data.dataset import Dataset, prepare_data
from rnn_train.errors import UserError
from rnn_train.runtime import resolve_device, set_seed
from rnn_train.prediction.generate import generate
from rnn_train.model.charrnn import DTYPES, CharRNN, State, count_parameters, detach_state
from rnn_train.training.monitor import Monitor
from rnn_train.training.schedule import PlateauState, bits_per_char, lr_at, perplexity, plateau_step
from rnn_train.data.vocab import Vocab


RUN_FILES = ("best.pt", "last.pt", "metrics.json", "config.yaml", "events.out.tfevents.*")
"""What `train` writes into a run directory (glob patterns): what starting afresh there removes."""


def clear_run_files(run_dir: Path, extra: tuple[str, ...] = ()) -> None:
    """Delete what an earlier run wrote into `run_dir` (RUN_FILES and `extra` patterns), nothing else."""
    if not run_dir.is_dir():
        return
    for pattern in RUN_FILES + extra:
        for f in run_dir.glob(pattern):
            if f.is_file():
                f.unlink()


# ----------------------------------------------------------------------------------------------
# learners: the part of a step that depends on the backend


class TorchLearner:
    """A CharRNN and its optimiser; the ordinary backend."""

    def __init__(self, cfg: Config, vocab_size: int, device: torch.device):
        self.cfg, self.device, self.vocab_size = cfg, device, vocab_size
        self.model = CharRNN.from_config(vocab_size, cfg.model).to(device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        t = cfg.train
        if t.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(self.params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
        elif t.optimizer == "adam":
            self.optimizer = torch.optim.Adam(self.params, lr=t.lr, weight_decay=t.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(self.params, lr=t.lr, weight_decay=t.weight_decay)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def begin_state(self, batch_size: int) -> State:
        return self.model.begin_state(batch_size)

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(self.device, non_blocking=True)

    def train_step(self, x: np.ndarray, y: np.ndarray, state: State | None) -> tuple[torch.Tensor, torch.Tensor, State]:
        """One update on X, Y [B, T] -> (mean CE, pre-clip global grad norm, final state); no host sync."""
        self.model.train()
        logits, state = self.model(self._tensor(x), state)  # [B, T, V]
        loss = F.cross_entropy(logits.reshape(-1, self.vocab_size), self._tensor(y).reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.cfg.train.clip_norm
        if clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip, foreach=True)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None], foreach=True)
        self.optimizer.step()
        return loss.detach(), grad_norm.detach(), state

    @torch.no_grad()
    def evaluate(self, data: np.ndarray, batch_size: int, num_steps: int) -> float:
        """Mean CE over the whole split, streams read in order with the state carried from zero."""
        self.model.eval()
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        count, state = 0, None
        for x, y in eval_batches(data, batch_size, num_steps):
            logits, state = self.model(self._tensor(x), state)
            total += F.cross_entropy(logits.reshape(-1, self.vocab_size), self._tensor(y).reshape(-1), reduction="sum")
            count += y.size
        self.model.train()
        return float(total) / max(count, 1)

    def torch_model(self) -> CharRNN:
        return self.model

    @property
    def kernel(self) -> str:
        """The training path of the recurrent layers, as logged in the run."""
        return self.model.training_kernel()

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.model.load_state_dict(d["model"])
        self.optimizer.load_state_dict(d["optimizer"])


def make_learner(cfg: Config, vocab_size: int, device: torch.device):
    if cfg.model.backend == "numpy":
        from rnn_train.teaching.numpy_backend import NumpyLearner

        return NumpyLearner(cfg, vocab_size, device)
    return TorchLearner(cfg, vocab_size, device)


# ----------------------------------------------------------------------------------------------
# the run


@dataclass
class TrainResult:
    run_dir: str
    step: int
    epoch: int
    tokens: int
    train_seconds: float
    tokens_per_s: float
    train_loss: float
    val_loss: float
    val_ppl: float
    val_bpc: float
    best_val_loss: float
    grad_norm: float
    clipped_fraction: float
    stopped_by: str
    interrupted: bool
    kernel: str = ""  # the training path taken: fused | native | numpy
    test_loss: float = math.nan  # only with data.test_fraction > 0: best.pt on the test split
    test_ppl: float = math.nan


class _Interrupt:
    """SIGINT -> a flag checked between steps; a second SIGINT raises KeyboardInterrupt at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    random.setstate((3, tuple(state["python"]), None))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def _state_to(state: Any, device: torch.device, dtype: torch.dtype) -> Any:
    if state is None:
        return None
    if isinstance(state, (tuple, list)):
        return tuple(s.to(device, dtype) for s in state)
    return state.to(device, dtype)


def _sample_prefix(cfg: Config, data: Dataset) -> str:
    """The fixed prefix of the text sample logged at each validation."""
    if cfg.log.sample_prefix:
        return cfg.log.sample_prefix
    source = data.val if len(data.val) else data.train
    return data.vocab.decode(source[:24]).replace("<unk>", "")


def planned_steps(cfg: Config, n_train: int) -> int:
    """Updates the run will make if no time limit or early stop cuts it (0 = unknown)."""
    d, t = cfg.data, cfg.train
    per_epoch = batches_per_epoch(n_train, d.batch_size, d.num_steps, d.partition)
    limits = []
    if t.max_steps:
        limits.append(t.max_steps)
    if t.epochs:
        limits.append(t.epochs * per_epoch)
    if t.max_tokens:
        limits.append(math.ceil(t.max_tokens / (d.batch_size * d.num_steps)))
    return min(limits) if limits else 0


def train(cfg: Config, run_dir: Path, *, resume: dict[str, Any] | None = None, quiet: bool = False,
          cache_dir: Path | None = Path("data/cache"), data: Dataset | None = None,
          on_step: Callable[[int], None] | None = None, stream=None) -> TrainResult:
    """Train per `cfg`, writing config.yaml, checkpoints and events into `run_dir`.

    `resume` is a loaded checkpoint dict to continue from. Everything that can fail because of the
    user's input (corpus, device) fails before anything is written to `run_dir`."""
    t = cfg.train
    # the NumPy backend computes on the CPU whatever train.device says
    device = torch.device("cpu") if cfg.model.backend == "numpy" else resolve_device(t.device)
    if t.threads:
        torch.set_num_threads(t.threads)
    set_seed(t.seed)
    vocab = Vocab.from_list(resume["vocab"]) if resume else None
    if data is None:
        data = prepare_data(cfg.data, cache_dir, vocab)
    vocab = data.vocab
    try:
        learner = make_learner(cfg, len(vocab), device)
    except (MemoryError, RuntimeError) as e:
        if not isinstance(e, MemoryError) and "alloc" not in str(e).lower() and "memory" not in str(e).lower():
            raise
        m = cfg.model
        raise UserError(f"not enough memory for the model (model.hidden_size={m.hidden_size}, "
                        f"model.num_layers={m.num_layers}, vocab {len(vocab)}); make it smaller") from None
    dtype = DTYPES[cfg.model.dtype]
    kernel = learner.kernel  # a kernel the device cannot run is a UserError here, before anything is written

    # ---- counters (restored on resume) ----
    step = epoch = batch_in_epoch = tokens = 0
    train_seconds, best_val, evals_since_best = 0.0, math.inf, 0
    plateau = PlateauState()
    state: State | None = None
    last_val = math.nan
    if resume:
        try:
            learner.load_state_dict({"model": resume["model"], "optimizer": resume["optimizer"]})
        except (KeyError, RuntimeError, ValueError):
            saved = resume["config"].get("model", {})
            changed = [f"model.{k}" for k, v in cfg.to_dict()["model"].items() if saved.get(k, v) != v]
            raise UserError("the checkpoint's weights do not fit this config's model"
                            + (f" ({', '.join(changed)} changed; keep them as saved)" if changed else "")) from None
        step, epoch, batch_in_epoch = resume["step"], resume["epoch"], resume["batch_in_epoch"]
        tokens, train_seconds = resume["tokens"], resume["train_seconds"]
        best_val, evals_since_best = resume["best_val_loss"], resume["evals_since_best"]
        last_val = resume.get("val_loss", math.nan)
        plateau = PlateauState(**resume["plateau"])
        state = _state_to(resume.get("hidden"), device, dtype)
        _set_rng_state(resume["rng"], device)

    # ---- nothing has been written before this point ----
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", config_to_yaml(cfg))
    except OSError as e:
        raise UserError(f"cannot write the run directory {run_dir} ({e.strerror or e}); set log.dir") from None
    total = planned_steps(cfg, len(data.train))
    mon = Monitor(run_dir, cfg.log.tensorboard, quiet, total, step, stream=stream)
    model_desc = f"{cfg.model.cell.upper()} {cfg.model.hidden_size}x{cfg.model.num_layers}"
    mon.info(f"run {run_dir}: corpus {data.text_chars:,} chars (train {len(data.train):,}, val {len(data.val):,}"
             f"{f', test {len(data.test):,}' if len(data.test) else ''}), vocab {len(vocab)}"
             f"{f' ({data.unk_fraction:.2%} <unk>)' if data.unk_fraction else ''}, {model_desc} "
             f"{cfg.model.embedding}, {count_parameters(learner.torch_model()):,} params, "
             f"{cfg.data.partition} partition, device {device}, kernel {kernel}"
             + (f", resumed at step {step}" if resume else ""))

    sample_prefix = _sample_prefix(cfg, data)
    d = cfg.data

    def save(name: str) -> None:
        payload = {**learner.state_dict(), "plateau": plateau.to_dict(), "step": step, "epoch": epoch,
                   "batch_in_epoch": batch_in_epoch, "tokens": tokens, "train_seconds": train_seconds,
                   "best_val_loss": best_val, "evals_since_best": evals_since_best, "val_loss": last_val,
                   "config": cfg.to_dict(), "vocab": vocab.to_list(), "rng": _rng_state(device),
                   "hidden": detach_state(state)}
        ckpt_io.save_checkpoint(run_dir / name, payload)

    def validate() -> float:
        """Val loss, logs, best checkpoint, plateau and early-stopping bookkeeping."""
        nonlocal best_val, evals_since_best, plateau, last_val, validated_at
        validated_at = step
        if not len(data.val):
            return math.nan
        val = learner.evaluate(data.val, d.batch_size, d.num_steps)
        if not math.isfinite(val):
            return val  # diverged: the caller stops; nothing is logged, sampled or saved from these weights
        last_val = val
        mon.scalars({"val/loss": val, "val/ppl": perplexity(val), "val/bpc": bits_per_char(val)}, step)
        if cfg.log.sample_length:
            sample = generate(learner.torch_model(), vocab, sample_prefix, cfg.log.sample_length,
                              temperature=0.8, seed=t.seed, unk="replace")
            mon.text("sample", sample_prefix + sample, step)
        plateau = plateau_step(plateau, val, t.plateau_factor, t.plateau_patience)
        improved = val < best_val
        if improved:
            best_val, evals_since_best = val, 0
        else:
            evals_since_best += 1
        mon.info(f"step {step} | val loss {val:.4f} | val ppl {perplexity(val):.3f} | {bits_per_char(val):.3f} bpc"
                 + (" | best" if improved else ""))
        if improved:
            save("best.pt")
        return val

    # ---- the loop ----
    log_loss = torch.zeros((), dtype=torch.float64, device=device)
    log_norm = torch.zeros((), dtype=torch.float64, device=device)
    log_clipped = torch.zeros((), dtype=torch.float64, device=device)
    log_steps, log_tokens, log_time = 0, 0, 0.0
    last_train_loss, last_grad_norm, clipped_total, clip_seen = math.nan, math.nan, 0.0, 0
    stopped_by, interrupted, validated_at = "", False, -1
    per_epoch = batches_per_epoch(len(data.train), d.batch_size, d.num_steps, d.partition)

    def limit_reached() -> str:
        if t.max_steps and step >= t.max_steps:
            return "max_steps"
        if t.max_tokens and tokens >= t.max_tokens:
            return "max_tokens"
        if t.max_time and train_seconds >= t.max_time:
            return "max_time"
        if t.epochs and epoch >= t.epochs:
            return "epochs"
        if t.patience and evals_since_best >= t.patience:
            return "early_stopping"
        return ""

    with _Interrupt() as interrupt:
        stopped_by = limit_reached()
        while not stopped_by:
            it = batches(d.partition, data.train, d.batch_size, d.num_steps, epoch_rng(t.seed, epoch))
            if batch_in_epoch:
                it = itertools.islice(it, batch_in_epoch, None)  # resume mid-epoch
            for x, y in it:
                t0 = time.perf_counter()
                # random: a fresh zero state per batch; sequential: carry it, cut the graph (truncated BPTT).
                state = None if d.partition == "random" else detach_state(state)
                lr = lr_at(step, t.lr, t.schedule, t.warmup_steps, total, t.min_lr, plateau.scale)
                learner.set_lr(lr)
                loss, grad_norm, state = learner.train_step(x, y, state)
                step, batch_in_epoch, tokens = step + 1, batch_in_epoch + 1, tokens + y.size
                log_loss += loss
                log_norm += grad_norm
                if t.clip_norm > 0:
                    log_clipped += (grad_norm > t.clip_norm)
                log_steps, log_tokens = log_steps + 1, log_tokens + y.size
                if device.type == "cuda" and step % cfg.log.log_every == 0:
                    torch.cuda.synchronize(device)  # honest tokens/s: wait for the queued kernels
                dt = time.perf_counter() - t0
                train_seconds += dt
                log_time += dt
                if step % cfg.log.log_every == 0:
                    last_train_loss = float(log_loss) / log_steps  # the one host sync per log interval
                    last_grad_norm = float(log_norm) / log_steps
                    clipped = float(log_clipped) / log_steps
                    clipped_total, clip_seen = clipped_total + float(log_clipped), clip_seen + log_steps
                    tps = log_tokens / max(log_time, 1e-9)
                    mon.scalars({"train/loss": last_train_loss, "train/ppl": perplexity(last_train_loss),
                                 "train/bpc": bits_per_char(last_train_loss), "train/grad_norm": last_grad_norm,
                                 "train/clipped_fraction": clipped, "train/lr": lr, "train/tokens_per_s": tps,
                                 "train/epoch": epoch + batch_in_epoch / max(per_epoch, 1)}, step)
                    mon.progress(step, last_train_loss, perplexity(last_train_loss), tps, lr)
                    log_loss.zero_(), log_norm.zero_(), log_clipped.zero_()
                    log_steps, log_tokens, log_time = 0, 0, 0.0
                if on_step is not None:
                    on_step(step)
                eval_now = bool(t.eval_every) and step % t.eval_every == 0
                # A NaN/inf loss never recovers. Checked where the loop syncs anyway (logging) and
                # before anything is validated or saved, so the last good checkpoints stay in place.
                if (eval_now or step % cfg.log.log_every == 0) and not math.isfinite(float(loss)):
                    stopped_by = "diverged"
                    break
                if eval_now:
                    if not math.isfinite(validate()):
                        stopped_by = "diverged"
                        break
                    save("last.pt")
                if interrupt.requested:
                    stopped_by, interrupted = "interrupt", True
                    break
                stopped_by = limit_reached()
                if stopped_by:
                    break
            else:  # the epoch ran out of batches
                epoch, batch_in_epoch, state = epoch + 1, 0, None
                if not t.eval_every:
                    if not math.isfinite(validate()):
                        stopped_by = "diverged"
                        break
                    save("last.pt")
                stopped_by = limit_reached()
                if per_epoch == 0 and not stopped_by:
                    raise UserError("the training split yields no batch; lower data.batch_size or data.num_steps")

        # ---- the end ----
        if interrupted:
            save("last.pt")
            mon.close()
            return _result(run_dir, step, epoch, tokens, train_seconds, last_train_loss, last_val, best_val,
                           last_grad_norm, clipped_total, clip_seen, stopped_by, True)
        if stopped_by == "diverged":
            final_val = last_val  # leave the checkpoints of the last good validation in place
            mon.info(f"step {step}: the loss is not finite; stopping (lower train.lr or set train.clip_norm)")
        else:
            final_val = validate() if len(data.val) and validated_at != step else last_val
            if not len(data.val):
                save("best.pt")  # without a validation split the last weights are the best we know
            save("last.pt")

    if log_steps:  # scalars of the unfinished logging interval
        last_train_loss = float(log_loss) / log_steps
        last_grad_norm = float(log_norm) / log_steps
        clipped_total, clip_seen = clipped_total + float(log_clipped), clip_seen + log_steps
    result = _result(run_dir, step, epoch, tokens, train_seconds, last_train_loss, final_val, best_val,
                     last_grad_norm, clipped_total, clip_seen, stopped_by, False)
    result.kernel = kernel
    if len(data.test) and (run_dir / "best.pt").exists():
        # The held-out test split is scored once, with the weights best.pt keeps (chosen on val).
        best = ckpt_io.load_checkpoint(run_dir / "best.pt", map_location=device)
        learner.load_state_dict({"model": best["model"], "optimizer": best["optimizer"]})
        result.test_loss = learner.evaluate(data.test, d.batch_size, d.num_steps)
        result.test_ppl = perplexity(result.test_loss)
        mon.scalars({"test/loss": result.test_loss, "test/ppl": result.test_ppl}, step)
        mon.info(f"test loss {result.test_loss:.4f} | test ppl {result.test_ppl:.3f} (best.pt)")
    mon.hparams(cfg.to_dict(), {"hparam/val_loss": result.val_loss, "hparam/val_ppl": result.val_ppl,
                                "hparam/best_val_loss": result.best_val_loss, "hparam/tokens_per_s": result.tokens_per_s})
    atomic_write_text(run_dir / "metrics.json", json.dumps(asdict(result), indent=2) + "\n")
    mon.close()
    return result


def _result(run_dir, step, epoch, tokens, seconds, train_loss, val, best, grad_norm, clipped, clip_seen,
            stopped_by, interrupted) -> TrainResult:
    return TrainResult(str(run_dir), step, epoch, tokens, round(seconds, 3), tokens / seconds if seconds else 0.0,
                       train_loss, val, perplexity(val) if math.isfinite(val) else math.nan,
                       bits_per_char(val), best, grad_norm, clipped / clip_seen if clip_seen else 0.0,
                       stopped_by, interrupted)
