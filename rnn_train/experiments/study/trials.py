"""One trial = one ordinary run directory, trained by the project's trainer.

`TrialRunner(trial)` asks the experiment (the tuner's search space, or the sweep's grid) for the
trial's run directory name and config, trains it with `training.train`, reports each validation loss
to the study (`Reporter`: the pruner may stop the run through the trainer's `on_validation` hook, and
the run then ends like any other, last.pt saved and metrics.json saying `stopped_by: pruned`), and
stores what the results need on the trial itself (user attributes), so that any process with the
storage, on any machine, can write the study's tables and best.yaml:

    run_dir        the run directory's name under --out        host       the machine that ran it
    config         the resolved config (a dict of sections)    result     the TrainResult (metrics.json)
    wall_seconds   wall time over all the sessions of the run (a resumed run adds up)

A trial queued again (study/engine.py) inherits these attributes, and so runs in its predecessor's
run directory (trial 9 continuing trial 3 trains in trial-0003/): where that directory is under this
--out, RunDir.status says how to go on: `done` (the run had finished: its metrics are the result,
nothing is trained), `resume` (last.pt of this config: the trainer's exact resume) or `new` (start
afresh); on another machine the directory is not there and the trial starts afresh.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import socket
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

import optuna

from rnn_train.config import Config, DataConfig
from rnn_train.errors import UserError
from rnn_train.experiments.study.budget import Budget, budget_step
from rnn_train.experiments.study.engine import BadTrialConfig, Outcome, StudyHandle
from rnn_train.training.rundir import RunDir, claimed, comparable

if TYPE_CHECKING:
    from rnn_train.data.dataset import Dataset


class Experiment(Protocol):
    """What a study trains: the tuner's search space or the sweep's grid."""
    out: Path
    budget: Budget
    evals: int
    redraws: bool  # a trial whose parameters cannot train can be replaced by other draws (a search, not a grid)

    def configure(self, trial: optuna.Trial) -> tuple[str, Config]:
        """The trial's run directory name (under `out`) and its config, from parameters the trial
        suggests; BadTrialConfig if they make no valid config."""


# ---- corpora: read and encoded once per process, shared by every trial that reads the same text

def corpus_key(d: DataConfig) -> DataConfig:
    """The data settings that decide the encoded corpus, with the ones that only cut it into batches
    (batch_size, num_steps, partition) set to 1, 1, random."""
    return dataclasses.replace(d, batch_size=1, num_steps=1, partition="random")


class Datasets:
    """Each distinct corpus prepared once (`prepare_data` of its `corpus_key`) and handed to every run."""

    def __init__(self, cache_dir: Path | None):
        self.cache_dir, self.loaded = cache_dir, {}

    def get(self, d: DataConfig):
        from rnn_train.data.dataset import prepare_data

        key = json.dumps(dataclasses.asdict(corpus_key(d)), sort_keys=True)
        if key not in self.loaded:
            self.loaded[key] = prepare_data(corpus_key(d), self.cache_dir)
        return self.loaded[key]

    def check(self, configs: list[tuple[str, DataConfig]]) -> None:
        """Every config's batch shape fits its training split; one UserError for all that do not."""
        from rnn_train.data.dataset import too_short

        problems = []
        for label, d in configs:
            problem = too_short(len(self.get(d).train), d)
            if problem:
                problems.append(f"{label}: the training split {problem}")
        if problems:
            raise UserError("corpus too short: " + "; ".join(problems))


# ---- reporting validations to the study

class Reporter:
    """The trainer's on_validation hook: reports the loss at the budget step (study/budget.py) and
    answers 'pruned' when the study's pruner says so. Each step is reported once (a resumed trial
    has its predecessor's reports already)."""

    def __init__(self, trial: optuna.Trial, budget: Budget, evals: int, reported: set[int]):
        self.trial, self.budget, self.evals, self.reported = trial, budget, evals, set(reported)
        self.pruned_at = 0

    def __call__(self, v) -> str:
        k = budget_step(self.budget, self.evals, v.tokens, v.train_seconds)
        if k < 1 or k in self.reported:
            return ""
        self.trial.report(v.loss, k)
        self.reported.add(k)
        if k < self.evals and self.trial.should_prune():
            self.pruned_at = k
            return "pruned"
        return ""


# ---- running one trial

def _resumable(rd: RunDir, cfg: Config, vocab: list[str]) -> dict[str, Any] | None:
    """The run's last.pt if it continues exactly this run (same config and vocab), else None."""
    from rnn_train.model.checkpoint import load_checkpoint

    try:
        ckpt = load_checkpoint(rd.last)
    except UserError:
        return None
    if ckpt["vocab"] != vocab or comparable(ckpt["config"]) != comparable(cfg.to_dict()):
        return None
    return ckpt


def objective_value(result: dict[str, Any]) -> float:
    """What the study minimises: the run's best validation loss (the weights best.pt keeps); +inf
    for a run that never validated finitely (diverged at once)."""
    best = result.get("best_val_loss")
    return float(best) if isinstance(best, (int, float)) and math.isfinite(best) else math.inf


@dataclasses.dataclass
class TrialRunner:
    h: StudyHandle
    experiment: Experiment
    datasets: Datasets
    cache_dir: Path | None
    verbose: bool = False
    log: Callable[[str], None] = print
    on_step: Callable[[str, int], None] | None = None  # (run name, step): tests interrupt a run with it

    def __call__(self, trial: optuna.Trial) -> Outcome:
        ex = self.experiment
        try:
            name, cfg = ex.configure(trial)
        except UserError as e:
            raise BadTrialConfig(str(e)) from None
        before = trial.user_attrs.get("run_dir")  # a queued copy goes on in its predecessor's directory
        if before and before != name:
            name, cfg = before, cfg.replace(log=dataclasses.replace(cfg.log, name=before))
        tag = f"trial {trial.number}" + ("" if name.startswith("trial-") else f" ({name})")
        rd = RunDir(ex.out / name)
        trial.set_user_attr("run_dir", name)
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("config", cfg.to_dict())
        walled = float(trial.user_attrs.get("wall_seconds", 0.0))
        data = self.datasets.get(cfg.data)
        # this machine's lock on the run directory from before it is read or cleared until the run
        # ends (train() holds it too): a training another process is writing is neither deleted nor
        # resumed from a last.pt that process is about to move past
        with claimed(rd.path):
            return self._run(trial, name, cfg, rd, tag, walled, data)

    def _run(self, trial: optuna.Trial, name: str, cfg: Config, rd: RunDir, tag: str, walled: float,
             data: Dataset) -> Outcome:
        from rnn_train.training.learner import ModelTooLarge
        from rnn_train.training.trainer import train

        ex = self.experiment
        status = rd.status(cfg)
        if status == "done":  # the run had finished (its process died before telling the study)
            result = rd.read_metrics()
            self.log(f"{tag}: {rd.path} holds this run, finished; taken as it is")
            return self._finish(trial, result, walled, tag, pruned_at=0)
        resume = _resumable(rd, cfg, data.vocab.to_list()) if status == "resume" else None
        if resume is None:
            rd.clear()
            self.log(f"{tag}: training {describe_params(trial.params)}")
        else:
            self.log(f"{tag}: resuming {rd.path} from last.pt at step {resume['step']}")
            trial.set_user_attr("resumed_at_step", resume["step"])
        reporter = Reporter(trial, ex.budget, ex.evals, set(self.h.frozen(trial.number).intermediate_values))
        hook = (lambda step: self.on_step(name, step)) if self.on_step else None
        t0 = time.perf_counter()
        try:
            result = train(cfg, rd.path, resume=resume, quiet=not self.verbose, cache_dir=self.cache_dir, data=data,
                           on_step=hook, on_validation=reporter)
        except ModelTooLarge as e:  # queued again, it would fail again on every rerun
            if ex.redraws:
                raise BadTrialConfig(str(e)) from None
            raise ModelTooLarge(f"{tag}: {e}") from None
        except optuna.exceptions.UpdateFinishedTrialError:  # from the report of a validation
            raise UserError(f"{tag}: another process failed this trial while it ran (its heartbeat was late: this "
                            f"process was stopped or starved) and queued it again; rerun the command to resume its "
                            f"run from the last.pt of its last validation") from None
        finally:
            wall = round(walled + time.perf_counter() - t0, 3)
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # failed by another process
                trial.set_user_attr("wall_seconds", wall)
        if result.interrupted:
            return Outcome(interrupted=True, note=f"interrupted at step {result.step} (last.pt saved)")
        return self._finish(trial, asdict(result), wall, tag, pruned_at=reporter.pruned_at)

    def _finish(self, trial: optuna.Trial, result: dict[str, Any], wall: float, tag: str, pruned_at: int) -> Outcome:
        trial.set_user_attr("result", result)
        pruned = result.get("stopped_by") == "pruned"
        value = objective_value(result)
        loss = f"best val loss {value:.4f} (final {result['val_loss']:.4f})"
        if pruned:
            at = f" at {pruned_at}/{self.experiment.evals} of its budget" if pruned_at else ""
            self.log(f"{tag}: pruned{at}; {loss}, {result['tokens']:,} tokens, {wall:.1f} s")
        else:
            diverged = " — DIVERGED" if result.get("stopped_by") == "diverged" else ""
            self.log(f"{tag}: {loss}, {result['tokens']:,} tokens, {result['tokens_per_s']:,.0f} tok/s, "
                     f"{wall:.1f} s{diverged}")
        return Outcome(value=value, pruned=pruned)


def describe_params(params: dict[str, Any]) -> str:
    """A trial's parameters as the log, best.yaml and the summary write them: "key=value, ...", floats to 4 digits."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
