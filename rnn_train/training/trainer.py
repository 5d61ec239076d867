"""The training loop: mean cross-entropy -> backward -> clip global norm -> step -> log -> validate
-> checkpoint, with truncated BPTT in sequential partitioning and exact resume.

    train(cfg, run_dir)              set up (device, seed, corpus, learner, run state), then
    Trainer.run                        while no limit is reached: run_epoch
      run_epoch                          for each batch left in the epoch:
        train_step                         lr from the schedule, one update, RunState.advance
        flush_log                          every log.log_every updates: means of the interval
        validate_and_save                  every train.eval_every updates (or per epoch): val, best.pt, last.pt
        should_stop                        a limit, early stopping (training.rules)
      end_of_run, report               final validation and checkpoints; test split; metrics.json

Exact resume: everything that decides what happens next is in `RunState` (training/state.py),
which is also the definition of what a checkpoint holds. A run interrupted and resumed ends with
the same weights as one that never stopped (tests/test_resume.py).

Ctrl-C (SIGINT) or SIGTERM sets a flag; the step in flight finishes, `last.pt` is written and the
run returns with `interrupted` set. A second signal stops at once.

A failed write (a full disk; files.WriteError) ends the run with that one-line error, on every
rank: a checkpoint or metrics.json is written inside `World.from_writer`, so rank 0's failure is
raised on all ranks at once, and the file it was replacing stays as it was (atomic writes). The
event file fails late and is only noted by the Monitor; the run then stops as if interrupted
(the step's agreement carries the flag to every rank), last.pt is written if it can be, and the
error is raised.

Hooks for a caller that watches the run (a sweep, a study): `on_step(step)` after every update, and
`on_validation(Validation)` after every finite validation. The latter may end the run by returning
a reason (the study's pruner returns "pruned"): the run then ends like one that reached a limit,
with last.pt saved and metrics.json saying `stopped_by: <reason>`, so its directory is as complete
as any other finished run's.

Data-parallel (torchrun, `world.size` > 1; training/distributed.py): every rank runs this same loop
on its rows of each global batch, and the loop's decisions stay identical on all ranks because
everything they read is: the batches (a function of seed and epoch), the averaged gradients, the
reduced validation loss, and one exchange per update (`World.agree_step`: a stop flag and the
clock). Only rank 0 writes; a checkpoint holds the global hidden state, so it resumes on any
number of ranks.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from rnn_train.config import Config
from rnn_train.data.batching import Batch, batches, batches_per_epoch, epoch_rng, eval_batches
from rnn_train.data.dataset import Dataset, changed_since, check_one_batch, prepare_data, run_cache, run_data
from rnn_train.data.vocab import Vocab
from rnn_train.errors import UserError
from rnn_train.model import checkpoint as ckpt_io
from rnn_train.model.charrnn import count_parameters, detach_state
from rnn_train.prediction.choose import SamplingOptions
from rnn_train.prediction.generate import stream
from rnn_train.prediction.textstream import corpus_text
from rnn_train.runtime import available_cores, derived_seed, keep_freed_memory, resolve_device, set_seed, set_threads
from rnn_train.training.distributed import check_world
from rnn_train.training.learner import make_learner
from rnn_train.training.protocol import Learner
from rnn_train.training.logwindow import LogWindow
from rnn_train.training.monitor import Monitor
from rnn_train.training.rules import planned_steps, should_log, should_stop, should_validate, validates_each_epoch
from rnn_train.files import shell_word
from rnn_train.runfiles import BEST, LAST
from rnn_train.training.rundir import RunDir, claimed
from rnn_train.training.schedule import bits_per_char, lr_at, perplexity, ppl_text
from rnn_train.training.start import check_best, check_own_run, check_resume_config, init_weights, resume_state
from rnn_train.training.state import RunState, capture_rng, combine_rng
from rnn_train.training.world import World

SAME_STOP_S = 2.0
"""Under torchrun, or in a study's worker, a second signal within this many seconds of the first is
the same stop (_Interrupt)."""
_stops_relayed = False


def stops_relayed() -> None:
    """Say that this process's stop signals may come twice: it is a study's worker, whose parent
    passes a Ctrl-C or SIGTERM on while a scheduler may signal every process of the job itself (and
    a dying parent's SIGTERM was seen twice). Its trainings then take a second signal within
    SAME_STOP_S of the first for the same stop, as a rank under torchrun does: taken for a second
    Ctrl-C, it stopped at once, without last.pt."""
    global _stops_relayed
    _stops_relayed = True


_stopped_at: float | None = None  # time.monotonic() of the last stop a training of this process took


def a_copy_of_the_last_stop() -> bool:
    """A stop signal now is a copy of the one a training of this process took within SAME_STOP_S
    (stops_relayed). Copies also come after the training has stopped and handed the signals back
    (a dying parent's SIGTERM reached its workers three or four times within ~50 ms): the study
    loop then drops them too, where one was taken for a second stop and cut off its trial's record."""
    return _stops_relayed and _stopped_at is not None and time.monotonic() - _stopped_at <= SAME_STOP_S


LONG_SAMPLE = 100_000
"""A log.sample_length past which the run's first lines say what it costs (it is allowed: a bound in
the config would make checkpoints saved with a longer one unloadable)."""


@dataclass(frozen=True)
class Validation:
    """What `on_validation` is told after a validation: where the run is and the loss it measured."""
    step: int  # updates done
    tokens: int  # training tokens read
    train_seconds: float  # seconds of training (validation excluded)
    loss: float  # the validation loss (finite)


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
    kernel: str = ""  # the training path taken: native, a fused path's label, or numpy
    precision: str = ""  # the arithmetic of its matrix products: fp32, bf16 (or fp64 for a float64 model)
    test_loss: float = math.nan  # only with data.test_fraction > 0: best.pt on the test split
    test_ppl: float = math.nan
    test_bpc: float = math.nan
    init_from: str = ""  # the checkpoint whose weights a fine-tuning run started from


class _Interrupt:
    """SIGINT / SIGTERM -> a flag checked between steps; a second signal raises KeyboardInterrupt at once.

    SIGTERM too: it is what a job scheduler and torchrun send to stop a process (torchrun forwards
    the Ctrl-C it gets to each rank as SIGINT). `same_stop_s`: a second signal that soon after the
    first is the same stop, not a second one: a scheduler stopping a torchrun job (scancel, systemd)
    signals every process of it, and torchrun then forwards its own copy to each rank, which took
    that copy for a second Ctrl-C and stopped without its checkpoint (5 of 6 jobs so stopped)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, same_stop_s: float = 0.0):
        self.requested = False
        self.same_stop_s, self._first = same_stop_s, 0.0
        self._previous: dict[int, object] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS
                              if signal.getsignal(sig) is not signal.SIG_IGN}  # ignored by our starter: stays so
        return self

    def _handle(self, signum, frame):
        global _stopped_at
        if not self.requested:
            self.requested, self._first = True, time.monotonic()
            _stopped_at = self._first
        elif time.monotonic() - self._first > self.same_stop_s:
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        return False


def _sample_prefix(cfg: Config, data: Dataset) -> str:
    """The fixed prefix of the text sample logged at each validation."""
    if cfg.log.sample_prefix:
        return corpus_text(cfg.log.sample_prefix, cfg, "log.sample_prefix")[0]  # as predict reads a prefix
    source = data.val if len(data.val) else data.train
    return data.vocab.decode(source[:24]).replace("<unk>", "")


class Trainer:
    """One run in progress: the learner, the data and the RunState, and the loop's named steps."""

    def __init__(self, cfg: Config, learner: Learner, data: Dataset, state: RunState, run_dir: RunDir,
                 monitor: Monitor, device: torch.device, *, world: World = World(),
                 on_step: Callable[[int], None] | None = None,
                 on_validation: Callable[[Validation], str] | None = None, init_from: str = "",
                 workdir: str = ""):
        self.cfg, self.learner, self.data, self.state = cfg, learner, data, state
        self.workdir = workdir or os.getcwd()  # what relative data.paths were read against
        self.run_dir, self.monitor, self.device, self.world = run_dir, monitor, device, world
        self.on_step, self.on_validation = on_step, on_validation
        self.init_from, self.kernel, self.precision = init_from, learner.kernel, learner.precision
        d = cfg.data
        self.total = planned_steps(cfg, len(data.train))
        self.per_epoch = batches_per_epoch(len(data.train), d.batch_size, d.num_steps, d.partition)
        self.window = LogWindow(device, cfg.train.clip_norm, world)
        self.window.restore(state.log)  # a resumed run: the interval it was stopped in goes on
        self.sample_prefix = _sample_prefix(cfg, data)
        samples = cfg.log.sample_prefix and cfg.log.sample_length and len(data.val)  # logged at each validation
        shown = data.vocab.unknown_shown(self.sample_prefix) if samples else ""
        if shown and world.is_writer:
            monitor.note(f"log.sample_prefix has characters that are not in the vocab ({shown}): the logged "
                         f"samples read them as <unk>")
        self.lr = cfg.train.lr  # of the latest step, for logging
        self.interrupt: _Interrupt | None = None  # run()'s, while it runs

    # -- the loop --------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        try:
            with _Interrupt(SAME_STOP_S if self.world.distributed or _stops_relayed else 0.0) as interrupt:
                self.interrupt = interrupt
                reason = should_stop(self.state, self.cfg)
                while not reason:
                    reason = self.run_epoch(interrupt)
                reason = self.end_of_run(reason)
            if reason == "interrupt":
                self.monitor.close()
                self.world.from_writer(self.monitor.check)  # stopped by a failed event file: its error
                return self.result(reason, interrupted=True)
            return self.report(reason)
        finally:
            self.monitor.close()  # also when a write failed: the events logged so far reach the disk

    def epoch_batches(self) -> Iterator[Batch]:
        """The current epoch's batches not trained on yet (all of them, unless resumed mid-epoch)."""
        d, s = self.cfg.data, self.state
        it = batches(d.partition, self.data.train, d.batch_size, d.num_steps, epoch_rng(self.cfg.train.seed, s.epoch))
        return self.data.checked(itertools.islice(it, s.batch_in_epoch, None))

    def split_batches(self, split: np.ndarray) -> Iterator[Batch]:
        """A validation or test split's batches, in order (eval_batches), each checked."""
        return self.data.checked(eval_batches(split, self.cfg.data.batch_size, self.cfg.data.num_steps))

    def run_epoch(self, interrupt: _Interrupt) -> str:
        """Train through the rest of the current epoch: the reason to stop, or '' to go on to the next."""
        cfg, s = self.cfg, self.state
        for x, y in self.epoch_batches():
            loss = self.train_step(x, y)
            logged = should_log(s.step, cfg)
            if logged:
                self.flush_log()
            if self.on_step is not None:
                self.on_step(s.step)
            validate = should_validate(s.step, cfg)
            # A NaN/inf loss never recovers. Checked where the loop syncs anyway (logging) and
            # before anything is validated or saved, so the last good checkpoints stay in place.
            if (validate or logged) and not math.isfinite(float(self.world.mean(loss))):
                return "diverged"
            if validate:
                stop = self.validate_and_save()
                if stop:
                    return stop
            # a failed event file (rank 0) stops the run like Ctrl-C; `run` then raises its error
            stop, s.train_seconds = self.world.agree_step(interrupt.requested or self.monitor.failed, s.train_seconds)
            if stop:
                return "interrupt"
            reason = should_stop(s, cfg)
            if reason:
                return reason
        s.end_epoch()
        if validates_each_epoch(cfg):
            stop = self.validate_and_save()
            if stop:
                return stop
        return should_stop(s, cfg)

    def train_step(self, x: np.ndarray, y: np.ndarray) -> torch.Tensor:
        """One update on the global batch X, Y [B, T] (this rank's rows of it); returns the mean loss of
        those rows (a tensor: no host sync). The state counts the global batch's tokens."""
        t0 = time.perf_counter()
        cfg, s, t = self.cfg, self.state, self.cfg.train
        sequential = cfg.data.partition == "sequential"
        self.lr = lr_at(s.step, t.lr, t.schedule, t.warmup_steps, self.total, t.min_lr, s.plateau.scale)
        self.learner.set_lr(self.lr)
        # random: a fresh zero state per batch; sequential: the carried state (of this rank's rows),
        # its graph cut (truncated BPTT)
        hidden = s.hidden if sequential else None
        loss, grad_norm, hidden = self.learner.train_step(self.world.rows(x), self.world.rows(y), hidden)
        s.hidden = detach_state(hidden) if sequential else None
        s.advance(y.size)
        self.window.add(loss, grad_norm)
        if self.device.type == "cuda" and should_log(s.step, cfg):
            torch.cuda.synchronize(self.device)  # honest tokens/s: wait for the queued kernels
        dt = time.perf_counter() - t0
        s.train_seconds += dt
        self.window.timed(y.size, dt)
        return loss

    def flush_log(self) -> None:
        """Log the means of the interval since the last logging step (TensorBoard, console)."""
        m, s = self.window.flush(), self.state
        if m is None:
            return
        self.monitor.scalars({"train/loss": m.loss, "train/ppl": perplexity(m.loss), "train/bpc": bits_per_char(m.loss),
                              "train/grad_norm": m.grad_norm, "train/clipped_fraction": m.clipped_fraction,
                              "train/lr": self.lr, "train/tokens_per_s": m.tokens_per_s,
                              "train/epoch": s.epoch + s.batch_in_epoch / max(self.per_epoch, 1)}, s.step)
        self.monitor.progress(s.step, m.loss, perplexity(m.loss), m.tokens_per_s, self.lr)

    # -- validation and checkpoints ---------------------------------------------------------------------
    def validate(self) -> float | None:
        """The validation loss of the current weights (None without a validation split). A finite one
        is booked in the RunState, logged with a text sample, and saved as best.pt if it is the best;
        a non-finite one (diverged) is only returned."""
        s, t = self.state, self.cfg.train
        s.validated_at = s.step
        if not len(self.data.val):
            return None
        val = self.learner.evaluate(self.split_batches(self.data.val))
        if not math.isfinite(val):
            return val
        improved = s.record_validation(val, t.plateau_factor, t.plateau_patience)
        self.monitor.scalars({"val/loss": val, "val/ppl": perplexity(val), "val/bpc": bits_per_char(val),
                              "val/best_loss": s.best_val_loss}, s.step)
        if self.cfg.log.sample_length and self.world.is_writer:
            pieces = []  # generate()'s text, chunk by chunk: a stop asked for during a long sample ends it
            for chunk in stream(self.learner.torch_model(), self.data.vocab, self.sample_prefix,
                                self.cfg.log.sample_length, SamplingOptions(0.8, seed=t.seed), unk="replace"):
                pieces.append(chunk[0])
                if self.interrupt is not None and self.interrupt.requested:
                    break  # the part made so far is logged; the loop stops after this validation
            self.monitor.text("sample", self.sample_prefix + "".join(pieces), s.step)
        self.monitor.info(f"step {s.step} | val loss {val:.4f} | val ppl {ppl_text(perplexity(val))} | "
                          f"{bits_per_char(val):.3f} bpc" + (" | best" if improved else ""))
        if improved:
            self.save(BEST)
        return val

    def validate_and_save(self) -> str:
        """Validate, tell `on_validation`, then save last.pt. Returns '' to go on, 'diverged' (nothing
        validated or saved) if a weight is not finite, or (nothing saved but best.pt of an improvement)
        if the validation loss is not, or the reason `on_validation` gave to stop."""
        if not self.weights_finite():  # before anything is validated or saved, as run_epoch's loss check
            return "diverged"
        val = self.validate()
        if val is not None and not math.isfinite(val):
            return "diverged"
        stop = self.after_validation(val)
        self.save(LAST)
        return stop

    def weights_finite(self) -> bool:
        """No weight is NaN or infinite. Checked before a validation saves and at the run's end, where
        no finite validation loss vouches for them (a run without a validation split): one that
        diverged between its logged losses wrote NaN checkpoints and ended 'done', exit status 0, and a
        weight no validation character reaches may be NaN. Every rank holds the same weights."""
        weights = (torch.as_tensor(v) for v in self.learner.state_dict()["model"].values())
        return all(bool(w.isfinite().all()) for w in weights if w.is_floating_point())

    def after_validation(self, val: float | None) -> str:
        """The `on_validation` hook's answer for a finite validation loss ('' = go on). Every rank asks
        it, so a hook must answer alike on all of them (the loss it is given is the same everywhere)."""
        if val is None or self.on_validation is None:
            return ""
        s = self.state
        return self.on_validation(Validation(s.step, s.tokens, s.train_seconds, val)) or ""

    def save(self, name: str) -> None:
        """Write checkpoint `name` of the current state. Every rank calls it at the same point: the
        ranks' rows of the hidden state and their generators are gathered, and rank 0 writes."""
        w = self.world
        rng = combine_rng(w.gather_objects(capture_rng(self.device)))
        hidden = w.gather_state(self.state.hidden)
        self.state.log = self.window.snapshot()

        def write() -> None:
            self.state.rng = rng
            whole = replace(self.state, hidden=hidden)  # world-size independent: all B rows
            payload = whole.to_checkpoint(self.learner.state_dict(), self.cfg.to_dict(), self.data.vocab.to_list())
            if self.data.corpus_sha256:
                payload["corpus_sha256"] = self.data.corpus_sha256  # what --resume checks the text against
            payload["workdir"] = self.workdir  # where explore, gradflow and --resume find relative data.paths
            payload["precision"] = self.precision  # what --resume compares the precision it takes with
            if self.init_from:
                payload["init_from"] = self.init_from  # a resumed fine-tuning's metrics.json says it still
            ckpt_io.save_checkpoint(self.run_dir / name, payload)
        w.from_writer(write)  # a failed write (a full disk) is raised on every rank, not only on rank 0

    # -- the end -------------------------------------------------------------------------------------
    def end_of_run(self, reason: str) -> str:
        """The last checkpoints. Interrupted: last.pt as it is. Diverged: nothing (the last good
        checkpoints stay), as when a weight is not finite. Otherwise the final weights are validated
        (unless just done) and saved; returns the stop reason, 'diverged' if that validation was not finite."""
        s = self.state
        if reason != "diverged" and not self.weights_finite():
            reason = "diverged"
        if reason == "interrupt":
            self.save(LAST)
            return reason
        if reason != "diverged" and s.validated_at != s.step:
            val = self.validate()
            if val is not None and not math.isfinite(val):
                reason = "diverged"
            else:
                self.after_validation(val)  # the run has ended: the hook is told, its answer changes nothing
        if reason == "diverged":
            self.monitor.info(f"step {s.step}: the loss is not finite; stopping (lower train.lr or set train.clip_norm)")
            return reason
        if not len(self.data.val):
            self.save(BEST)  # without a validation split the last weights are the best we know
        self.save(LAST)
        return reason

    def result(self, reason: str, interrupted: bool = False) -> TrainResult:
        s, w = self.state, self.window
        val = s.val_loss
        return TrainResult(run_dir=str(self.run_dir), step=s.step, epoch=s.epoch, tokens=s.tokens,
                           train_seconds=round(s.train_seconds, 3),
                           tokens_per_s=s.tokens / s.train_seconds if s.train_seconds else 0.0,
                           train_loss=w.last_loss, val_loss=val, val_ppl=perplexity(val) if math.isfinite(val) else math.nan,
                           val_bpc=bits_per_char(val), best_val_loss=s.best_val_loss, grad_norm=w.last_grad_norm,
                           clipped_fraction=w.run_clipped_fraction, stopped_by=reason, interrupted=interrupted,
                           kernel=self.kernel, precision=self.precision, init_from=self.init_from)

    def report(self, reason: str) -> TrainResult:
        """The result of a run that ended (not interrupted): test split, hparams, metrics.json."""
        self.window.flush()  # the unfinished logging interval counts in the result (it is not logged)
        result = self.result(reason)
        if len(self.data.test) and self.world.from_writer(self.run_dir.best.exists):
            self.score_test(result)
        elif len(self.data.test) and self.world.is_writer and math.isfinite(self.state.best_val_loss):
            # a validation wrote best.pt, which was deleted since (a run that diverged before one has none)
            self.monitor.note(f"{self.run_dir.best} is missing (deleted?), so the test split is not scored "
                              f"(metrics.json's test_loss is null); restore it and resume to score it")
        taken = {"run": {"kernel": result.kernel, "precision": result.precision}}  # what the config's "auto"s became
        # its metrics: the last points of the series (training/events.py)
        self.monitor.hparams({**self.cfg.to_dict(), **taken})
        self.monitor.close()

        def write_metrics() -> None:
            self.monitor.check()  # events not all written: the run is not reported as done
            self.run_dir.write_metrics(asdict(result))
        self.world.from_writer(write_metrics)
        return result

    def score_test(self, result: TrainResult) -> None:
        """The held-out test split, scored once with the weights best.pt keeps (chosen on val): rank 0
        reads them, the other ranks (perhaps on machines without the run directory) receive them."""
        model = self.learner.torch_model()
        if self.world.is_writer:
            model.load_state_dict(ckpt_io.load_checkpoint(self.run_dir.best, map_location=self.device)["model"])
        self.world.broadcast_(list(model.state_dict().values()))
        result.test_loss = self.learner.evaluate(self.split_batches(self.data.test))
        result.test_ppl, result.test_bpc = perplexity(result.test_loss), bits_per_char(result.test_loss)
        self.monitor.scalars({"test/loss": result.test_loss, "test/ppl": result.test_ppl, "test/bpc": result.test_bpc},
                             self.state.step)
        self.monitor.info(f"test loss {result.test_loss:.4f} | test ppl {ppl_text(result.test_ppl)} (best.pt)")


# ----------------------------------------------------------------------------------------------
# setting a run up


def _describe(cfg: Config, data: Dataset, learner: Learner, device: torch.device, kernel: str, start: str) -> str:
    """The run's first console line: corpus, splits, vocab, model, partition, device, kernel."""
    m, v = cfg.model, data.vocab
    test = f", test {len(data.test):,}" if len(data.test) else ""
    unk = f" ({data.unk_fraction:.2%} <unk>)" if data.unk_fraction else ""
    return (f"corpus {data.text_chars:,} chars (train {len(data.train):,}, val {len(data.val):,}{test}), "
            f"vocab {len(v)}{unk}, {m.cell.upper()} {m.hidden_size}x{m.num_layers} {m.embedding}, "
            f"{count_parameters(learner.torch_model()):,} params, {cfg.data.partition} partition, "
            f"device {device}, kernel {kernel}, precision {learner.precision}" + start)


def _check_batches(cfg: Config, data: Dataset) -> None:
    """A training split handed in (`data=`) must give one batch (prepare_data checks its own)."""
    check_one_batch(len(data.train), cfg.data)


def _device(cfg: Config, world: World) -> torch.device:
    """The device of this process: the CPU, or with CUDA the GPU of its local rank."""
    if cfg.model.backend == "numpy":
        return torch.device("cpu")
    device = resolve_device(cfg.train.device, local_rank=world.local_rank, local_size=world.local_size)
    if device.type == "cuda" and world.distributed:
        # indexed even where this machine runs one process (several machines, a GPU each): set_device
        # refuses a bare "cuda", and NCCL's communicator and this rank's default stream live on it
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    return device


def _open_run_dir(cfg: Config, run_dir: Path, clear: bool, resumed: bool, world: World) -> RunDir:
    """Rank 0 clears (--force) and creates the run directory; a failure stops every rank. A resumed
    run that trains on loses the metrics.json of its earlier end (an extended limit): that no longer
    describes it, and an interruption before its new end would leave it standing."""
    rd = RunDir(run_dir)

    def create() -> None:
        if clear:
            rd.clear()
        elif resumed:
            rd.forget_result()
        elif rd.holds_run():  # train.py refuses it before this point: a library call without clear=True
            raise UserError(f"{rd} already holds a run ({', '.join(rd.existing())}); resume it, or pass "
                            f"clear=True to replace it")
        rd.create(cfg)
    world.from_writer(create)
    return rd


def train(cfg: Config, run_dir: str | Path, *, resume: dict | None = None, init_from: str | Path | None = None,
          clear: bool = False, quiet: bool = False, cache_dir: Path | None = Path("data/cache"),
          data: Dataset | None = None, on_step: Callable[[int], None] | None = None,
          on_validation: Callable[[Validation], str] | None = None, stream=None,
          world: World = World()) -> TrainResult:
    """Train per `cfg`, writing config.yaml, checkpoints, events and metrics.json into `run_dir`.

    `resume`: a loaded checkpoint to continue (model.checkpoint.load_checkpoint; its data, model
    and seed keys must be the config's: training/start.py); `init_from`: a checkpoint file whose
    weights and vocab start a new run; `clear`: delete an earlier run's files first (--force).
    Without `resume` or `clear`, a directory that holds a run is refused, as train.py refuses it
    without --force; while training, the directory is claimed on this machine (rundir.claimed).
    Everything that can fail because of the user's input (corpus, device, checkpoint) fails before
    anything in `run_dir` is deleted or written. The process keeps what a training sets:
    torch's thread count (train.threads), the seeded generators, malloc's settings.

    `world`: this process's place in a data-parallel run (training/distributed.py; its process group
    joined by the caller). Every rank calls `train` with the same arguments; rank 0 reads `init_from`
    and writes `run_dir`, each machine's first rank prepares the corpus cache before the others
    open it, and every rank is seeded alike (identical initial weights) before the ranks other
    than 0 move on to their own dropout streams."""
    if resume is not None and init_from is not None:
        raise ValueError("resume and init_from exclude each other")  # a bug in the caller
    if resume is not None and not isinstance(resume, dict):
        raise TypeError(f"resume is a loaded checkpoint (model.checkpoint.load_checkpoint), not {type(resume).__name__}")
    with contextlib.ExitStack() as held:
        error = None
        if world.is_writer:
            try:
                held.enter_context(claimed(Path(run_dir)))
            except UserError as e:
                error = e
        world.agree(error)
        return _train(cfg, Path(run_dir), resume, init_from, clear, quiet, cache_dir, data, on_step, on_validation,
                      stream, world)


def _train(cfg: Config, run_dir: Path, resume: dict | None, init_from: str | Path | None, clear: bool, quiet: bool,
           cache_dir: Path | None, data: Dataset | None, on_step: Callable[[int], None] | None,
           on_validation: Callable[[Validation], str] | None, stream, world: World) -> TrainResult:
    if resume is not None:
        check_resume_config(resume, cfg)
        if not clear:
            world.from_writer(lambda: (check_own_run(RunDir(run_dir), resume), check_best(RunDir(run_dir))))
    check_world(cfg, world, resuming=resume is not None)
    device = _device(cfg, world)
    set_threads(cfg.train.threads, world.local_size)
    keep_freed_memory()
    set_seed(cfg.train.seed)
    init = None
    if init_from is not None:
        init_from, init = world.from_writer(lambda: _load_init(init_from))
        if clear and world.from_writer(lambda: RunDir(run_dir).clears(init_from)):
            raise UserError(f"--init-from {init_from} is a file of the run in {run_dir}, which --force clears "
                            f"first: copy it out of there, or give this run another log.name")
    source = resume if resume is not None else init
    data_cfg, moved_note = run_data(cfg.data, resume) if resume is not None and data is None else (cfg.data, "")
    if data is None:
        vocab = Vocab.from_list(source["vocab"]) if source else None
        cache_dir = run_cache(cache_dir, resume) if resume is not None else cache_dir
        data = world.node_first(lambda: prepare_data(data_cfg, cache_dir, vocab))
    _check_batches(cfg, data)
    if resume is not None and changed_since(resume, data):
        workdir, relative = resume.get("workdir"), any(not os.path.isabs(p) for p in data_cfg.paths)
        where = (f" (read from {os.getcwd()}; the run last read it in {workdir})"
                 if relative and isinstance(workdir, str) and workdir != os.getcwd() else "")
        moved = list(cfg.data.paths) != list(resume["config"].get("data", {}).get("paths", []))
        how = "data.paths now names other text" if moved else "it changed since"
        raise UserError(f"the corpus ({', '.join(data_cfg.paths) or 'the built-in one'}){where} is not the text this "
                        f"run trained on: {how}; --resume continues on the same text, so restore it, point "
                        f"data.paths at it, or start a new run from these weights (--config ... --init-from)")
    learner = make_learner(cfg, len(data.vocab), device, world)
    kernel = learner.kernel  # a kernel the device cannot run is a UserError here, before anything is written
    if world.rank:
        torch.manual_seed(derived_seed(cfg.train.seed, world.rank))  # dropout draws per rank
    state, start, resumed_note = RunState(), "", ""
    if resume is not None:
        error = None
        try:  # each rank restores its own generators: a damaged state of rank 1's is said by rank 0 too
            state, resumed_note = resume_state(learner, resume, cfg, device, world)
        except UserError as e:
            error = e
        world.agree(error)
        start = f", resumed at step {state.step}"
    elif init is not None:
        init_weights(learner, init, cfg, str(init_from))
        start = f", weights and vocab from {init_from} (step {init['step']})"
    if world.distributed:
        start += f", {world.size} processes (DDP) × {cfg.data.batch_size // world.size} rows"
    if resume is not None:
        finished = world.from_writer(lambda: _finished_result(cfg, state, Path(run_dir), stream))
        if finished is not None:
            return finished

    # ---- nothing has been deleted or written before this point ----
    rd = _open_run_dir(cfg, run_dir, clear, resume is not None, world)
    mon = Monitor(rd.path if world.is_writer else None, cfg.log.tensorboard, quiet or not world.is_writer,
                  planned_steps(cfg, len(data.train)), state.step, stream=stream)
    world.from_writer(mon.check)  # an event file that cannot be created stops every rank now
    mon.info(f"run {rd}: " + _describe(cfg, data, learner, device, kernel, start))
    saved = resume.get("precision") if resume is not None else None
    if isinstance(saved, str) and saved != learner.precision and not should_stop(state, cfg):  # trains on in another
        resumed_note = "; ".join(filter(None, (resumed_note, (
            f"the run trained in {saved} until step {state.step} and goes on in {learner.precision}: its losses from "
            f"here are not those of an uninterrupted run (a resume is exact within one precision)"))))
    notes = [moved_note, learner.precision_note, resumed_note,
             *_config_notes(cfg, device, world.local_size, len(data.val)),
             *(_init_notes(cfg, data, init_from) if init is not None else [])]
    if world.is_writer:
        for note in filter(None, notes):
            mon.note(note)
    return Trainer(cfg, learner, data, state, rd, mon, device, world=world, on_step=on_step,
                   on_validation=on_validation,
                   init_from=str(init_from or "") if resume is None else str(resume.get("init_from", "")),
                   workdir=resume["workdir"] if moved_note else "").run()


def _config_notes(cfg: Config, device: torch.device, local_size: int, val_chars: int) -> list[str]:
    """What the run's first lines say of settings that are allowed but cost or do nothing: each is
    noted, not refused (a bound in the config would make checkpoints saved with it unloadable, or a
    machine shared on purpose would be refused its threads)."""
    notes, t = [], cfg.train
    if cfg.log.sample_length > LONG_SAMPLE:
        notes.append(f"log.sample_length={cfg.log.sample_length:,}: every validation generates that many characters "
                     "and logs them to TensorBoard too (100M took minutes and ~150 MB of event file per validation)")
    threads, cores = max(t.threads, 1) * local_size, available_cores()
    if device.type == "cpu" and threads > cores:  # each step waits on the slowest thread
        on = f"on {cores} CPU core{'s' if cores > 1 else ''}"
        if local_size > cores:  # no thread count helps: the processes themselves take turns
            notes.append(f"{local_size} processes {on}: they take turns and slow every step; start at most "
                         f"{cores} (--nproc_per_node)")
        elif t.threads:
            each = f" in each of {local_size} processes" if local_size > 1 else ""
            notes.append(f"train.threads={t.threads}{each} {on}: threads beyond the cores take turns and slow "
                         f"every step; {cores // local_size} would use them all")
    if t.momentum and t.optimizer != "sgd":
        notes.append(f"train.momentum={t.momentum:g} is SGD's: train.optimizer={t.optimizer} does not use it")
    elif t.momentum >= 1:
        notes.append(f"train.momentum={t.momentum:g}: at 1 or more SGD's velocity never forgets a gradient and the "
                     "steps grow without bound (the usual value is 0.9)")
    on_val = [k for k, used in (("train.patience", t.patience), ("train.schedule=plateau", t.schedule == "plateau"))
              if used]
    if not val_chars and on_val:  # the split itself: train(data=...) may bring one whatever val_fraction says
        notes.append(f"no validation split (data.val_fraction={cfg.data.val_fraction:g}), so {' and '.join(on_val)} "
                     "never act (they follow the validation loss)")
    elif 0 < val_chars <= cfg.data.num_steps:  # under one window: best.pt chosen on a handful of predictions
        notes.append(f"the validation split has {val_chars} character{'s' if val_chars > 1 else ''} "
                     f"(data.val_fraction={cfg.data.val_fraction:g}): the validation loss, which chooses best.pt, is "
                     f"the mean of {val_chars - 1} prediction{'s' if val_chars != 2 else ''}")
    return notes


def _init_notes(cfg: Config, data: Dataset, init_from) -> list[str]:
    """What a run started --init-from another's weights says of the vocab it took with them."""
    notes = []
    cut = [f"data.{k}={getattr(cfg.data, k)}" for k, default in (("min_freq", 1), ("max_size", 0))
           if getattr(cfg.data, k) != default]
    if cut:  # they shape a vocab built from the corpus; this one is given
        notes.append(f"{', '.join(cut)} not applied: the vocab is {init_from}'s, as its weights need")
    if data.unk_fraction:
        unknown = round(data.unk_fraction * data.text_chars)
        notes.append(f"{unknown:,} characters of the corpus ({data.unk_fraction:.2%}) are not in the vocab of "
                     f"{init_from} and read as <unk>")
    return notes


def _finished_result(cfg: Config, state: RunState, run_dir: Path, stream) -> TrainResult | None:
    """A resumed run that has already reached a limit and whose end was reported (metrics.json at
    this step): its result as reported, after one note saying which limit to raise. None otherwise.

    Why not run the loop: it would train nothing, yet validate again and book that validation into
    the state (patience and plateau counters, best loss) and write last.pt and events anew, so each
    such --resume would move the run on. A run that reached its limit but was stopped before its end
    was reported (no metrics.json yet) goes through the loop, which reports it."""
    reached = should_stop(state, cfg)
    metrics = RunDir(run_dir).read_metrics() if reached else None
    if metrics is None or metrics.get("step") != state.step or metrics.get("interrupted"):
        return None
    key = "train.patience" if reached == "early_stopping" else f"train.{reached}"
    print(f"note: {run_dir} already reached {key} at step {state.step}: nothing to train, nothing written; "
          f"to train on, raise it (--resume {shell_word(run_dir)} {key}=...)", file=stream or sys.stderr, flush=True)
    known = {f.name for f in fields(TrainResult)}
    return TrainResult(**{**{k: v for k, v in metrics.items() if k in known}, "run_dir": str(run_dir)})


def _load_init(init_from: str | Path) -> tuple[Path, dict]:
    """--init-from's checkpoint: a run directory means its best.pt."""
    path = ckpt_io.resolve_checkpoint(init_from)
    return path, ckpt_io.load_checkpoint(path)
