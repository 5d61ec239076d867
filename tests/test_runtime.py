"""Process-wide settings a run makes (rnn_train/runtime.py): malloc keeping freed memory.

What the setting saves is a measurement, not a unit test (page-fault counts vary with the heap's
layout from one process to the next): `python benchmarks/page_faults.py`, docs/kernels.md."""
import ctypes.util
import sys

import pytest

import rnn_train.training.trainer as trainer
from rnn_train.config import build_config
from rnn_train.runtime import keep_freed_memory


@pytest.mark.skipif(not (sys.platform.startswith("linux") and ctypes.util.find_library("c")),
                    reason="glibc malloc settings: Linux only")
def test_glibc_takes_the_settings():
    assert keep_freed_memory() is True


def test_a_training_run_keeps_freed_memory(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(trainer, "keep_freed_memory", lambda: calls.append(1) or True)
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 200, encoding="utf-8")
    cfg = build_config({"data": {"kind": "text", "paths": [str(text)]}, "model": {"hidden_size": 8},
                        "train": {"max_steps": 1, "eval_every": 0}}, [])
    trainer.train(cfg, tmp_path / "run", quiet=True, cache_dir=None)
    assert calls == [1]
