"""`--workers K`: K processes on this machine run trials of one study at the same time.

Each worker is the same command started again as a child (`python -m rnn_train tune|sweep ... --worker
I`), so it validates, opens the storage and runs the worker loop exactly as a process on another
machine would; the storage is all they share. The parent only starts them, passes Ctrl-C / SIGTERM
on, waits, and writes the study's tables and plots once they are done.

A user error is one line however many workers meet it: the workers' standard error passes through
the parent, which holds back their `error: ...` lines and, when a worker ended with one, raises the
first as its own (K workers on a full disk each fail on the same file: one line, exit status 2,
and no tables written after it).

Signals: the children run in their own session, so the terminal's Ctrl-C reaches the parent alone,
which sends it on to each child once (a trainer stops at the end of its update on the first signal,
at once on the second: a double delivery would lose the update). A child asks the kernel for SIGTERM
when its parent dies (Linux's PR_SET_PDEATHSIG), so killing the parent, even with SIGKILL, stops the
workers cleanly: their trials are failed and queued again, to be resumed by the next run. A stop can
still reach a child twice (a scheduler signals every process of the job, and the parent passes its
own copy on; a dying parent's SIGTERM was seen twice): a child takes a second signal within 2 s of
the first for the same stop, as torchrun's ranks do (trainer.stops_relayed).
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Callable

from rnn_train.cli import signals_handled
from rnn_train.errors import UserError

PR_SET_PDEATHSIG = 1


def spawn(child_argv: Callable[[int], list[str]], k: int, log: Callable[[str], None] = print) -> int:
    """Start K workers, forward SIGINT / SIGTERM to them, wait for all; 130 if interrupted, else the
    first non-zero exit status of a worker, else 0. A worker that ended on a user error (status 2)
    raises it here as a UserError, once."""
    import rnn_train

    env = dict(os.environ)  # the workers import this same package, wherever the parent was started
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(rnn_train.__file__).resolve().parents[1]),
                                                      env.get("PYTHONPATH")]))
    procs, relays, errors = [], [], []
    for i in range(1, k + 1):
        procs.append(subprocess.Popen([sys.executable, "-m", "rnn_train", *child_argv(i),
                                       "--worker", str(i), "--worker-of", str(os.getpid())],
                                      start_new_session=True, env=env, stderr=subprocess.PIPE, text=True))
        relays.append(threading.Thread(target=_relay, args=(procs[-1].stderr, errors), daemon=True))
        relays[-1].start()
    log(f"started {k} workers (pids {', '.join(str(p.pid) for p in procs)})")
    interrupted = False

    def forward(signum, frame):
        nonlocal interrupted
        interrupted = True
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    with signals_handled(forward, signal.SIGINT, signal.SIGTERM):
        codes = [p.wait() for p in procs]
        for relay in relays:
            relay.join()
    for i, (proc, code) in enumerate(zip(procs, codes), 1):
        if code < 0 and not interrupted:  # its trial was queued again (and resumed by the others, if any were left)
            log(f"worker {i} (pid {proc.pid}) was killed by signal {-code}")
    if interrupted or 130 in codes:
        return 130
    if 2 in codes and errors:
        raise UserError(errors[0][len("error: "):])
    return next((c if c > 0 else 1 for c in codes if c), 0)  # killed by a signal: < 0


def _relay(stream: IO[str], errors: list[str]) -> None:
    """A worker's standard error, line by line, to ours as it comes; its `error: ...` lines kept
    in `errors` instead (spawn says the first)."""
    for line in stream:
        if line.startswith("error: "):
            errors.append(line.rstrip("\n"))
        else:
            sys.stderr.write(line)
            sys.stderr.flush()


def become_worker(parent: int) -> None:
    """In a child: SIGTERM when the parent dies; exit at once if it already has; a stop signal that
    comes twice within a moment is one stop (trainer.stops_relayed). SIGTERM is taken here even
    where the command was started with it ignored (signals_handled leaves an ignored signal so):
    it is how a worker learns that its parent died, and it would otherwise train on, orphaned."""
    from rnn_train.training.trainer import stops_relayed

    stops_relayed()
    if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        sys.exit(130)
