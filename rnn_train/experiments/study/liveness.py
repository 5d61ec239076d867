"""Is the process that runs a trial still alive? Answered at once for a process on this machine.

A trial RUNNING in the storage whose process was killed (SIGKILL, a crash, the machine's OOM killer)
would stay RUNNING for ever. Heartbeats (study/storage.py) catch that after a grace period, which is
the only way to know about another machine. On this machine we know better and sooner: each trial
records who runs it (`whoami`), and `alive` checks that process directly. The record names the
machine by its boot (Linux's boot_id) and PID namespace, since a PID means something only there, and
holds the process's start time, so a PID reused by a later process is not mistaken for the worker.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any


def _start_ticks(pid: int) -> int | None:
    """The process's start time since boot in clock ticks (field 22 of /proc/PID/stat); None if it is
    gone or a zombie (dead, only not yet waited for by its parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: count fields after the last ')'
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):  # field 3, the state
        return None
    return int(fields[19])


def _machine() -> str | None:
    """This kernel's boot and PID namespace, or None where /proc does not tell (not Linux)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pidns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    return f"{boot}/{pidns}"


def whoami() -> dict[str, Any]:
    """The record a worker stores on the trial it runs."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "machine": _machine(), "pid": pid, "started": _start_ticks(pid)}


def alive(record: dict[str, Any] | None) -> bool | None:
    """True / False for a worker of this machine; None when it cannot be told from here."""
    if not record or record.get("machine") is None or record.get("machine") != _machine():
        return None
    started = _start_ticks(int(record["pid"]))
    return started is not None and started == record.get("started")
