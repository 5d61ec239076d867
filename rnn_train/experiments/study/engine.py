"""The worker loop: ask the study for a trial, run it, tell the result, until the study has its trials.

What Optuna does here, and what this file adds to it. Optuna owns the trials: their numbers, states
(WAITING, RUNNING, COMPLETE, PRUNED, FAIL), parameters, reported validation losses and the queue of
trials to run first; its sampler picks the parameters and its pruner decides when to stop a trial.
This file adds three rules that make "N trials" mean exactly N, whoever runs them and whatever dies:

* **Every trial that does not finish is queued again.** A trial interrupted (Ctrl-C, SIGTERM), one
  that raised, and one whose process died (found by `reap`) is set to FAIL and a copy with the same
  parameters, reported losses and user attributes is queued (`queue_again`; Optuna's
  RetryHeartbeatStaleTrialCallback does the same for stale heartbeats, and `queue_again` is what the
  storage calls then). The copy resumes the failed trial's run from its last.pt when it runs where
  that run directory is (study/trials.py), and is retried from the start elsewhere.
  Not queued again: a trial whose parameters cannot train (BadTrialConfig: a clash of keys, a model
  too large to allocate); it would fail the same way on every rerun, so the sampler draws others.
* **FAIL never counts.** The study is done when COMPLETE + PRUNED reach N. Before asking for a new
  trial a worker counts the trials that will finish (COMPLETE, PRUNED, RUNNING, WAITING); queued
  trials are run first.
* **No trial beyond N.** Two workers may ask at the same moment when one trial is left. Trial
  numbers are handed out by the storage in order, so after asking, a worker whose trial has N live
  trials before it sets its own to FAIL unrun (noted "surplus") and stops.

A worker with nothing left to ask waits for the trials other processes are running (reaping the
dead ones) rather than leaving a study that may still need it, so the command ends when the study
is complete, with no trial left RUNNING.
"""
from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import optuna
from optuna.trial import TrialState

from rnn_train.cli import signals_handled
from rnn_train.errors import UserError
from rnn_train.experiments.study.liveness import alive, whoami

WORKER = "rnn_train:worker"
"""The trial's system attribute naming the process that runs it (study/liveness.py)."""
FAILURE = "failure"
"""The user attribute that says why a trial was set to FAIL."""
SURPLUS = "surplus:"
"""How the reason of a trial failed unrun because the study already had its trials begins."""
BAD_CONFIG = "config:"
"""How the reason of a trial whose parameters cannot train (BadTrialConfig) begins: failed for good."""
LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
BAD_CONFIGS_ALLOWED = 20
"""Trials that drew parameters that cannot train, beyond which (or beyond 3 per trial asked for) the
study stops and asks for a narrower space. A sampler does not learn from a failed trial: half of a
two-value choice may be drawn again and again, so a few are no sign of a space that is mostly bad."""
POLL_S = 2.0
"""How often a worker with nothing left to ask looks again at the trials other processes run."""


class BadTrialConfig(UserError):
    """The parameters a sampler drew make an invalid config (two ranges that clash, say min_lr > lr)
    or a model too large to allocate: the trial fails and is not queued again; the sampler draws others."""


@dataclass
class StudyHandle:
    """A study with the storage it lives in: the storage's own calls act on trials of other processes."""
    study: optuna.Study
    storage: Any  # optuna.storages.RDBStorage
    id: int

    @classmethod
    def of(cls, study: optuna.Study, storage) -> "StudyHandle":
        return cls(study, storage, storage.get_study_id_from_name(study.study_name))

    def trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.id, number)

    def frozen(self, number: int) -> optuna.trial.FrozenTrial:
        return self.storage.get_trial(self.trial_id(number))

    def trials(self, *states: TrialState) -> list[optuna.trial.FrozenTrial]:
        """The study's trials (of these states), less the surplus ones: a trial a worker asked for
        when the others already held the last ones is failed unrun, a trace of the race between
        workers rather than a trial of the study (no row in results.csv, not counted as failed)."""
        return [t for t in self.study.get_trials(deepcopy=False, states=states or None)
                if not (t.state == TrialState.FAIL and t.user_attrs.get(FAILURE, "").startswith(SURPLUS))]

    def set_system(self, number: int, key: str, value: Any) -> None:
        self.storage.set_trial_system_attr(self.trial_id(number), key, value)


@dataclass(frozen=True)
class Census:
    finished: int  # COMPLETE + PRUNED
    running: list[int]  # numbers of RUNNING trials
    waiting: int  # queued (WAITING)

    @property
    def live(self) -> int:
        return self.finished + len(self.running) + self.waiting


def census(h: StudyHandle) -> Census:
    trials = h.trials(*LIVE)
    return Census(sum(t.state in FINISHED for t in trials), [t.number for t in trials if t.state == TrialState.RUNNING],
                  sum(t.state == TrialState.WAITING for t in trials))


# ---- failing and queueing again

def queue_again(study: optuna.Study, failed: optuna.trial.FrozenTrial) -> None:
    """Queue a copy of a FAIL trial: the same parameters, reported losses and user attributes (among
    them its run directory's name), with `retry_history` listing the trials it continues. Also the
    storage's heartbeat callback (a trial whose heartbeat went stale)."""
    system = {k: v for k, v in failed.system_attrs.items() if k != WORKER}  # nobody runs the copy yet
    system["retry_history"] = [*failed.system_attrs.get("retry_history", []), failed.number]
    system.setdefault("failed_trial", failed.number)
    user = {k: v for k, v in failed.user_attrs.items() if k != FAILURE}
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=failed.params, distributions=failed.distributions,
        user_attrs=user, system_attrs=system, intermediate_values=failed.intermediate_values))


def fail(h: StudyHandle, number: int, why: str, *, again: bool) -> bool:
    """Set a RUNNING trial to FAIL with the reason, and queue it again if `again`. False if another
    process got there first (the trial was finished or failed meanwhile): then nothing is done.
    A Ctrl-C or SIGTERM that comes meanwhile is held until both are written (then raised): one
    between the two left the trial failed with no copy (a double Ctrl-C 10 ms apart, a stop signal
    delivered twice), and so did one while the trial's id was looked up (a dying parent's SIGTERM
    reaches its workers three or four times within ~50 ms: 3 runs in 8 left a trial RUNNING). What
    no handler can hold, a SIGKILL there, `requeue_orphans` mends."""
    with _interrupts_held():
        tid = h.trial_id(number)
        try:
            h.storage.set_trial_user_attr(tid, FAILURE, why)
            if not h.storage.set_trial_state_values(tid, TrialState.FAIL):
                return False
        except optuna.exceptions.UpdateFinishedTrialError:
            return False
        if again:
            queue_again(h.study, h.storage.get_trial(tid))
    return True


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """SIGINT and SIGTERM noted rather than acted on inside; KeyboardInterrupt on leaving if one came.
    Python runs signal handlers in the main thread only, so elsewhere nothing is held or needed
    (signals_handled sets nothing there)."""
    from rnn_train.training.trainer import a_copy_of_the_last_stop

    came: list[int] = []
    with signals_handled(lambda signum, frame: a_copy_of_the_last_stop() or came.append(signum),
                         signal.SIGINT, signal.SIGTERM):
        yield
    if came:
        raise KeyboardInterrupt


def continuable(t: optuna.trial.FrozenTrial) -> bool:
    """A FAIL trial that is to be continued by a copy: not one whose parameters cannot train, nor a surplus one."""
    why = t.user_attrs.get(FAILURE, "")
    return t.state == TrialState.FAIL and not why.startswith(BAD_CONFIG) and not why.startswith(SURPLUS)


def requeue_orphans(h: StudyHandle, log: Callable[[str], None]) -> None:
    """Queue a copy of every continuable FAIL trial that no trial continues, where the process that
    failed it is gone (on this machine: elsewhere it cannot be told): it died between the two writes
    of `fail` (a SIGKILL), so no copy was queued, and the study would never run that trial (or grid
    point) again. Called as a command starts, before its workers. Two commands starting together
    may both queue a copy of one trial: each then keeps the first copy of every trial and fails the
    later ones unrun as surplus (the same rule in both, so they agree whoever looks last)."""
    trials = h.study.get_trials(deepcopy=False)
    continued = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    mended = [t for t in trials if continuable(t) and t.number not in continued
              and alive(t.system_attrs.get(WORKER)) is False]
    for t in mended:
        queue_again(h.study, t)
        log(f"trial {t.number}: failed ({t.user_attrs.get(FAILURE, '?')}) with no copy queued; queued again")
    if mended:
        _one_copy_each(h)


def _one_copy_each(h: StudyHandle) -> None:
    """Fail unrun (as surplus) every WAITING copy of a trial that an earlier trial already continues."""
    first: dict[int, int] = {}
    for t in sorted(h.study.get_trials(deepcopy=False), key=lambda t: t.number):
        history = t.system_attrs.get("retry_history")
        if not history:
            continue
        if history[-1] not in first:
            first[history[-1]] = t.number
        elif t.state == TrialState.WAITING:
            tid = h.trial_id(t.number)
            try:  # claimed first (WAITING -> RUNNING succeeds for one process only): never one another runs
                with _interrupts_held():  # not left RUNNING by a Ctrl-C: reaped, it would be queued again
                    if not h.storage.set_trial_state_values(tid, TrialState.RUNNING):
                        continue
                    h.storage.set_trial_user_attr(tid, FAILURE, f"{SURPLUS} a second copy of trial {history[-1]} "
                                                                f"(trial {first[history[-1]]} continues it)")
                    h.storage.set_trial_state_values(tid, TrialState.FAIL)
            except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
                pass  # another process failed it meanwhile


def reap(h: StudyHandle, log: Callable[[str], None], unclaimed: dict[int, float] | None = None) -> None:
    """Fail and queue again every RUNNING trial whose process is gone: at once for a process of this
    machine, after the grace period of its heartbeat for one of another machine.

    A process killed between asking for a trial and claiming it (a few milliseconds) leaves a RUNNING
    trial with neither a claim nor a heartbeat; `unclaimed` (number -> when this process first saw it
    so, by its own clock) fails such a trial once it has stayed unclaimed for the grace period."""
    optuna.storages.fail_stale_trials(h.study)
    grace = h.storage.grace_period or 2 * (h.storage.get_heartbeat_interval() or 30)
    running = h.trials(TrialState.RUNNING)
    for t in running:
        who = t.system_attrs.get(WORKER)
        if alive(who) is False:
            why = f"its process (pid {who['pid']} on {who['host']}) ended without finishing it"
            if fail(h, t.number, why, again=True):
                log(f"trial {t.number}: {why}; queued again")
        elif who is None and unclaimed is not None:
            first = unclaimed.setdefault(t.number, time.monotonic())
            if time.monotonic() - first > grace:
                del unclaimed[t.number]
                why = "no process claimed it (the one that asked for it must have died at once)"
                if fail(h, t.number, why, again=True):
                    log(f"trial {t.number}: {why}; queued again")
    if unclaimed is not None:
        for number in set(unclaimed) - {t.number for t in running if WORKER not in t.system_attrs}:
            del unclaimed[number]


# ---- heartbeats and signals

class Heartbeat:
    """Records the trial's heartbeat every interval from a thread while the trial runs."""

    def __init__(self, h: StudyHandle, number: int):
        self.h, self.tid = h, h.trial_id(number)
        self.interval = h.storage.get_heartbeat_interval()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name=f"heartbeat-{number}")

    def _beat(self) -> None:
        while True:
            try:
                self.h.storage.record_heartbeat(self.tid)
            except Exception:  # noqa: BLE001 - a missed beat is retried; a long outage fails the trial
                pass
            if self.stop.wait(self.interval):
                return

    def __enter__(self) -> "Heartbeat":
        if self.interval:
            self.thread.start()
        return self

    def __exit__(self, *exc) -> bool:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()
        return False


def _term_is_interrupt(signum, frame):
    """SIGTERM outside a training run ends the loop as Ctrl-C does (the trainer handles both itself
    while a run is training), so a scheduler's stop records the trial's state too; in a worker, not
    a copy of the stop its training just took (trainer.a_copy_of_the_last_stop)."""
    from rnn_train.training.trainer import a_copy_of_the_last_stop

    if not a_copy_of_the_last_stop():
        raise KeyboardInterrupt


# ---- the loop

@dataclass(frozen=True)
class Outcome:
    """How a trial's run ended: its objective value, or pruned, or interrupted (to be queued again)."""
    value: float = math.nan
    pruned: bool = False
    interrupted: bool = False
    note: str = ""  # for the log: why interrupted, or what ran


@dataclass
class WorkResult:
    ran: list[int] = field(default_factory=list)  # trials this process finished (COMPLETE or PRUNED)
    interrupted: bool = False
    complete: bool = False  # the study has its N finished trials and nothing running


def _surplus(h: StudyHandle, number: int, n_trials: int) -> bool:
    """True if `n_trials` live trials were asked before this one (two workers asked for the last)."""
    return sum(t.number < number for t in h.trials(*LIVE)) >= n_trials


def work(h: StudyHandle, n_trials: int, run: Callable[[optuna.Trial], Outcome], *,
         log: Callable[[str], None] = print, after_trial: Callable[[], None] | None = None) -> WorkResult:
    """Run trials of the study until it has `n_trials` finished ones (see the module docstring).
    `run(trial)` trains one trial and says how it ended; BadTrialConfig fails it for good; an
    interruption (Ctrl-C, SIGTERM) fails it, queues it again and ends the loop; any other exception
    does the same and is raised again. `after_trial()` is called after each trial this process
    finishes (the commands rewrite their tables there, so a long study shows its progress)."""
    out = WorkResult()
    me = whoami()
    unclaimed: dict[int, float] = {}
    bad_configs = 0
    waiting_for: list[int] | None = None
    with signals_handled(_term_is_interrupt, signal.SIGTERM):
        try:
            while True:
                reap(h, log, unclaimed)
                c = census(h)
                if not c.waiting and c.live >= n_trials:
                    if not c.running:
                        out.complete = c.finished >= n_trials
                        return out
                    if c.running != waiting_for:
                        waiting_for = c.running
                        log(f"waiting for trial{'s' if len(c.running) > 1 else ''} "
                            f"{', '.join(map(str, c.running))}, running in another process")
                    time.sleep(POLL_S)
                    continue
                waiting_for = None
                trial = h.study.ask()
                try:
                    h.storage.record_heartbeat(h.trial_id(trial.number))  # claimed, as soon as can be
                    h.set_system(trial.number, WORKER, me)
                    surplus = _surplus(h, trial.number, n_trials)
                except KeyboardInterrupt:
                    fail(h, trial.number, "interrupted before it started", again=True)
                    raise
                if surplus:
                    fail(h, trial.number, f"{SURPLUS} the study had its {n_trials} trials when this one was asked",
                         again=False)
                    continue
                outcome = _run_one(h, trial, run)
                if outcome is None:  # a bad config: the sampler tries other parameters
                    bad_configs += 1
                    why = h.frozen(trial.number).user_attrs.get(FAILURE, "").removeprefix(BAD_CONFIG).strip()
                    log(f"trial {trial.number}: cannot train ({why}); other parameters are drawn")
                    if bad_configs > max(BAD_CONFIGS_ALLOWED, 3 * n_trials):
                        raise UserError(f"{bad_configs} trials drew parameters that make no valid config "
                                        f"(the last: {h.frozen(trial.number).user_attrs.get(FAILURE)}); "
                                        "narrow the search space")
                    continue
                if outcome.interrupted:
                    out.interrupted = True
                    log(f"trial {trial.number}: {outcome.note}; queued again: rerun the same command to continue")
                    return out
                if _tell(h, trial, outcome, log):
                    out.ran.append(trial.number)
                    if after_trial is not None:
                        after_trial()
        except KeyboardInterrupt:
            out.interrupted = True
            log("interrupted; rerun the same command to continue")
            return out


def _run_one(h: StudyHandle, trial: optuna.Trial, run: Callable[[optuna.Trial], Outcome]) -> Outcome | None:
    """Run one trial under its heartbeat; None if its parameters made a bad config. Whatever else
    stops it leaves it FAIL and queued again (an exception is raised again)."""
    try:
        with Heartbeat(h, trial.number):
            outcome = run(trial)
    except BadTrialConfig as e:
        fail(h, trial.number, f"{BAD_CONFIG} {e}", again=False)
        return None
    except KeyboardInterrupt:  # outside the trainer's own handling, or a second Ctrl-C
        fail(h, trial.number, "interrupted (its run goes on from the last.pt of its last validation, if any)",
             again=True)
        raise
    except BaseException as e:
        fail(h, trial.number, f"error: {e.__class__.__name__}: {e}", again=True)
        raise
    if outcome.interrupted:
        fail(h, trial.number, outcome.note, again=True)
    return outcome


def _tell(h: StudyHandle, trial: optuna.Trial, outcome: Outcome, log: Callable[[str], None]) -> bool:
    """Record a finished trial; False (and a log line) if another process failed it meanwhile
    (its heartbeat was late: that process queued it again, and the copy's result will count)."""
    try:
        if outcome.pruned:
            h.study.tell(trial, state=TrialState.PRUNED)
        else:
            h.study.tell(trial, outcome.value)
        return True
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError, RuntimeError) as e:
        log(f"trial {trial.number}: finished, but the study had already failed it ({e}); its copy counts instead")
        return False
