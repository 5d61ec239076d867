"""`--workers K`: K processes on this machine run trials of one study at the same time.

Each worker is the same command started again as a child (`python -m rnn_train tune|sweep ... --worker
I`), so it validates, opens the storage and runs the worker loop exactly as a process on another
machine would; the storage is all they share. The parent only starts them, passes Ctrl-C / SIGTERM
on, waits, and writes the study's tables and plots once they are done.

Signals: the children run in their own session, so the terminal's Ctrl-C reaches the parent alone,
which sends it on to each child once (a trainer stops at the end of its update on the first signal,
at once on the second: a double delivery would lose the update). A child asks the kernel for SIGTERM
when its parent dies (Linux's PR_SET_PDEATHSIG), so killing the parent, even with SIGKILL, stops the
workers cleanly: their trials are failed and queued again, to be resumed by the next run.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

PR_SET_PDEATHSIG = 1


def spawn(child_argv: Callable[[int], list[str]], k: int, log: Callable[[str], None] = print) -> int:
    """Start K workers, forward SIGINT / SIGTERM to them, wait for all; 130 if interrupted, else the
    first non-zero exit status of a worker, else 0."""
    import rnn_train

    env = dict(os.environ)  # the workers import this same package, wherever the parent was started
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(rnn_train.__file__).resolve().parents[1]),
                                                      env.get("PYTHONPATH")]))
    procs = []
    for i in range(1, k + 1):
        procs.append(subprocess.Popen([sys.executable, "-m", "rnn_train", *child_argv(i),
                                       "--worker", str(i), "--worker-of", str(os.getpid())],
                                      start_new_session=True, env=env))
    log(f"started {k} workers (pids {', '.join(str(p.pid) for p in procs)})")
    interrupted = False

    def forward(signum, frame):
        nonlocal interrupted
        interrupted = True
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes = [p.wait() for p in procs]
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if interrupted or 130 in codes:
        return 130
    return next((c if c > 0 else 1 for c in codes if c), 0)  # killed by a signal: < 0


def become_worker(parent: int) -> None:
    """In a child: SIGTERM when the parent dies; exit at once if it already has."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        sys.exit(130)
