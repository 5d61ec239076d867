"""Where a run's TensorBoard series live, and the one way to read them back.

    runs/<name>/          the hparams record (HPARAMS view) and the text samples (TEXT view)
    runs/<name>/train/    the training split's series
    runs/<name>/val/      the validation split's
    runs/<name>/test/     the test split's (once, at the end of a run with data.test_fraction)

Why a directory per split: TensorBoard draws one chart per tag with one curve per run, and a
subdirectory is a run of its own. The same tag in train/ and val/ is one chart with both curves,
so overfitting (validation loss turning up while training loss falls) shows at a glance; with
tags train/loss and val/loss in one directory they were two charts. (Keras writes train/ and
validation/ the same way.) The hparams record stays in the run directory itself, and
TensorBoard's HPARAMS view finds the metrics below it on its own: its columns are the last value
of each series (val loss/cross_entropy is the final validation loss, loss/cross_entropy_best the
best), so no one-point `hparam/*` scalar charts are written any more.

In Python a series is named "SPLIT/NAME" (what the trainer logs, `monitor.scalars({"val/loss":
...})`, and what tests and sweeps read, `read_series(run_dir, "val/ppl")`); `location` maps a name
to its directory and tag. Tags are grouped so that the loss charts come first:

    loss/cross_entropy  loss/bits_per_char  loss/perplexity  loss/cross_entropy_best (val)
    optim/grad_norm  optim/clipped_fraction  optim/lr  progress/epoch  speed/tokens_per_s   (train)

A name not in TAGS keeps its NAME as the tag.
"""
from __future__ import annotations

from pathlib import Path

from rnn_train.runfiles import EVENTS, SPLITS

TAGS = {
    "loss": "loss/cross_entropy",
    "bpc": "loss/bits_per_char",
    "ppl": "loss/perplexity",
    "best_loss": "loss/cross_entropy_best",
    "grad_norm": "optim/grad_norm",
    "clipped_fraction": "optim/clipped_fraction",
    "lr": "optim/lr",
    "epoch": "progress/epoch",
    "tokens_per_s": "speed/tokens_per_s",
}


def location(name: str) -> tuple[str, str]:
    """"val/bpc" -> ("val", "loss/bits_per_char"): the subdirectory of the run and the tag."""
    split, sep, metric = name.partition("/")
    if not sep or split not in SPLITS:
        raise ValueError(f"series {name!r} is not SPLIT/NAME with SPLIT one of {', '.join(SPLITS)}")
    return split, TAGS.get(metric, metric)


def _accumulator(directory: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(directory), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


def read_series(run_dir: str | Path, name: str) -> list[tuple[int, float]]:
    """(step, value) pairs of series `name` ("val/ppl") of a run; [] when there are none."""
    split, tag = location(name)
    directory = Path(run_dir) / split
    if not any(directory.glob(EVENTS)):
        return []
    acc = _accumulator(directory)
    if tag not in acc.Tags().get("scalars", []):
        return []
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def series_names(run_dir: str | Path) -> set[str]:
    """Every series a run holds, as SPLIT/NAME."""
    names = {tag: metric for metric, tag in TAGS.items()}
    out = set()
    for split in SPLITS:
        directory = Path(run_dir) / split
        if any(directory.glob(EVENTS)):
            out |= {f"{split}/{names.get(tag, tag)}" for tag in _accumulator(directory).Tags().get("scalars", [])}
    return out
