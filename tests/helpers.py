"""Small builders shared by the integration tests."""
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rnn_train.config import build_config
from rnn_train.training.events import read_series

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(tmp_path, *overrides, name="run"):
    """A seconds-long GRU run on the built-in pinyin corpus, writing under tmp_path."""
    raw = {"data": {"kind": "pinyin", "val_fraction": 0.01, "batch_size": 4, "num_steps": 12},
           "model": {"cell": "gru", "hidden_size": 16},
           "train": {"optimizer": "adam", "lr": 0.01, "max_steps": 40, "eval_every": 20, "threads": 1},
           "log": {"dir": str(tmp_path), "name": name, "log_every": 5, "sample_length": 20}}
    return build_config(raw, list(overrides))


def read_events(run_dir):
    """The run directory's own event file: the hparams record and the text samples."""
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def scalar_series(run_dir, name):
    """(step, value) of a series named SPLIT/NAME, e.g. "val/loss" (rnn_train/training/events.py)."""
    return read_series(run_dir, name)
