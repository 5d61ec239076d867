"""A torchrun entry for tests/test_distributed.py: train.py's main, with a fault on one rank.

    DDP_FAULT=sigint:R:K    rank R sends itself SIGINT (what Ctrl-C sends) after update K
    DDP_FAULT=sigterm:R:K   rank R sends itself SIGTERM after update K
    DDP_FAULT=raise:R:K     rank R raises RuntimeError after update K (a crash)
    DDP_FAULT=group:R:K     rank R sends SIGTERM to torchrun and to every rank at once after update K (what
                            scancel or a systemd stop does: each rank then also gets torchrun's copy)
    DDP_SHUTDOWN_MARK=DIR   a rank that runs Python's shutdown (atexit handlers) leaves DIR/rankR
    DDP_FILE_LIMIT=BYTES    no file may grow past BYTES (RLIMIT_FSIZE; SIGXFSZ ignored, so that a write
                            fails with EFBIG as on a full disk: torchrun starts each rank with SIGXFSZ
                            at its default, which kills)

The fault rides on the trainer's own per-update hook (`on_step`), so it strikes at a known step.
"""
import atexit
import os
import resource
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rnn_train.commands import run_command  # noqa: E402
from rnn_train.training import trainer  # noqa: E402


def _fault_hook(kind: str, rank: int, step: int):
    def hook(done: int) -> None:
        if done != step or int(os.environ["RANK"]) != rank:
            return
        if kind == "raise":
            raise RuntimeError(f"injected failure on rank {rank} at step {step}")
        if kind == "group":
            parent = os.getppid()  # torchrun, whose children are the ranks
            ranks = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
            for pid in (parent, *map(int, ranks)):
                os.kill(pid, signal.SIGTERM)
            return
        os.kill(os.getpid(), {"sigint": signal.SIGINT, "sigterm": signal.SIGTERM}[kind])
    return hook


def _install(spec: str) -> None:
    kind, rank, step = spec.split(":")
    hook = _fault_hook(kind, int(rank), int(step))
    original = trainer.Trainer.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.on_step = hook
    trainer.Trainer.__init__ = init


if __name__ == "__main__":
    if os.environ.get("DDP_SHUTDOWN_MARK"):
        atexit.register((Path(os.environ["DDP_SHUTDOWN_MARK"]) / f"rank{os.environ['RANK']}").touch)
    if os.environ.get("DDP_FAULT"):
        _install(os.environ["DDP_FAULT"])
    if os.environ.get("DDP_FILE_LIMIT"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        limit = int(os.environ["DDP_FILE_LIMIT"])
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    sys.exit(run_command("train", sys.argv[1:], prog="train.py"))
