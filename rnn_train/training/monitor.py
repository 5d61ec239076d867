"""Everything a run prints or logs goes through one `Monitor`: console lines, the tqdm bar and
TensorBoard event files.

Why one place: with several processes (torchrun + DDP) only rank 0 may write; the other ranks get a
Monitor without a run directory and with `quiet`, which silences all of it at once.

TensorBoard layout (rnn_train/training/events.py): the run directory holds the hparams record and
the text samples; each split's series go to its own subdirectory (train/, val/, test/) under
shared tags, so that TensorBoard draws training and validation loss on one chart.

Console behaviour: on a terminal, a tqdm bar shows loss, ppl and tokens/s; in a non-TTY log (CI,
`nohup`, a pipe) the bar would be a wall of carriage returns, so a plain line is printed at every
logging step instead. `quiet` keeps only the final summary and errors.

A failed write of the event file (a full disk) never raises here: TensorBoard's writer reports it
late (files.summary_writer), at whichever call comes next, and on rank 0 only, where raising
would leave the other ranks waiting. It is kept in `failure` (TensorBoard stops); the trainer
asks `failed` at the step every rank agrees on, stops the run there, and `check` raises it as the
one-line WriteError.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rnn_train.files import WriteError, event_file, summary_writer, writing
from rnn_train.runfiles import EVENTS
from rnn_train.training.events import location
from rnn_train.training.schedule import ppl_text

HPARAMS_SUFFIX = ".hparams"
"""The end of the name of the run directory's event file that holds the hparams record alone."""


def _flat_hparams(cfg_dict: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """{'train': {'lr': 1}} -> {'train.lr': 1}; lists become comma-joined strings (TensorBoard's types).
    Text is stored as UTF-8, so a path that is not (its bytes held as lone surrogates) shows them as
    \\udcXX escapes."""
    out: dict[str, Any] = {}
    for section, body in cfg_dict.items():
        for key, value in body.items():
            value = ",".join(map(str, value)) if isinstance(value, list) else value
            out[f"{section}.{key}"] = value.encode("utf-8", "backslashreplace").decode("utf-8") \
                if isinstance(value, str) else value
    return out


class Monitor:
    def __init__(self, run_dir: Path | None, tensorboard: bool = True, quiet: bool = False, total_steps: int = 0,
                 start_step: int = 0, stream=None):
        self.quiet, self.total_steps = quiet, total_steps
        self.stream = stream or sys.stderr
        self.run_dir = Path(run_dir) if tensorboard and run_dir is not None else None
        # purge_step drops events a crashed run logged after its last checkpoint, so a resumed
        # run's curves do not show the same steps twice (in every directory it writes).
        self.purge_step = start_step + 1 if start_step else None
        self.writers: dict[str, Any] = {}  # "" (the run directory), "train", "val", "test" -> SummaryWriter
        self.failure: WriteError | None = None
        if self.run_dir is not None:
            self._writer("")  # now: a directory that cannot be written fails the run before it starts
        tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.bar = None
        if not quiet and tty:
            self.bar = tqdm(total=total_steps or None, initial=start_step, unit="step", dynamic_ncols=True,
                            file=self.stream, leave=True)

    # -- console ---------------------------------------------------------------------------
    def info(self, message: str) -> None:
        """A line for the user (hidden by --quiet)."""
        if not self.quiet:
            (self.bar.write if self.bar else lambda m: print(m, file=self.stream, flush=True))(message)

    def note(self, message: str) -> None:
        """A line the user must see even with --quiet (on stderr, with the other diagnostics)."""
        (self.bar.write if self.bar else lambda m: print(m, file=self.stream, flush=True))(f"note: {message}")

    def progress(self, step: int, loss: float, ppl: float, tokens_per_s: float, lr: float) -> None:
        """Called at every logging step."""
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix(loss=f"{loss:.3f}", ppl=f"{ppl:.2f}", tok_s=f"{tokens_per_s:,.0f}", refresh=True)
        else:
            total = f"/{self.total_steps}" if self.total_steps else ""
            print(f"step {step}{total} | loss {loss:.4f} | ppl {ppl_text(ppl)} | lr {lr:.3g} | {tokens_per_s:,.0f} tok/s",
                  file=self.stream, flush=True)

    # -- TensorBoard ------------------------------------------------------------------------
    def _writer(self, split: str):
        """The writer of `split`'s directory ("" = the run directory), opened on first use; None
        once TensorBoard has stopped (a failed write)."""
        if self.run_dir is None or self.failure is not None:
            return None
        if split not in self.writers:
            directory = self.run_dir / split if split else self.run_dir
            self._tensorboard(directory, lambda: self.writers.__setitem__(
                split, summary_writer(directory, purge_step=self.purge_step)))
        return self.writers.get(split)

    def _tensorboard(self, path: Path, write) -> None:
        """Run `write()` (TensorBoard calls on `path`, an event file or its directory); a failed
        write is kept in `failure` and ends TensorBoard."""
        try:
            with writing(path):
                write()
        except WriteError as error:
            self.failure = self.failure or error
            self.writers = {}  # their threads are gone; closing them would only fail again
            self.run_dir = None

    @property
    def failed(self) -> bool:
        return self.failure is not None

    def check(self) -> None:
        """Raise the failed write of the event file, if any (one line: `cannot write <file> (<why>)`)."""
        if self.failure is not None:
            raise self.failure

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Series named SPLIT/NAME ("val/loss"), each written to its split's directory."""
        for name, value in values.items():
            split, tag = location(name)
            writer = self._writer(split)
            if writer is not None:  # stored as float32 (classic scalar summaries)
                self._tensorboard(event_file(writer), lambda: writer.add_scalar(tag, value, step))

    def text(self, tag: str, text: str, step: int) -> None:
        writer = self._writer("")
        if writer is not None:
            # Markdown renders runs of spaces and newlines away; a code block keeps the sample as it is.
            self._tensorboard(event_file(writer), lambda: writer.add_text(tag, "```\n" + text + "\n```", step))

    def hparams(self, cfg_dict: dict[str, dict[str, Any]]) -> None:
        """The hparams plugin's record, in the run directory (not a timestamped subfolder). Its
        metrics are the series below it, which TensorBoard finds by itself: the HPARAMS view shows
        the last value of each (events.py), and no scalar is written here.

        In an event file of its own (HPARAMS_SUFFIX), which replaces the one an earlier session of
        the run wrote: TensorBoard keeps the first record it reads for a run, so a run resumed with
        new limits or settings would otherwise show the config of its first session."""
        if self.run_dir is None:
            return
        from torch.utils.tensorboard.summary import hparams

        # Only the session records: TensorBoard infers the experiment (and which hparams differ
        # between runs) from all sessions under a logdir; an experiment record per run would pin
        # the first one it finds and mark every hparam as "differs: false" across a sweep.
        _, ssi, sei = hparams(_flat_hparams(cfg_dict), {})
        run_dir = self.run_dir
        earlier = sorted(run_dir.glob(EVENTS + HPARAMS_SUFFIX))

        def write() -> None:
            writer = summary_writer(run_dir, in_order=False, filename_suffix=HPARAMS_SUFFIX)  # no steps to order
            fw = writer._get_file_writer()
            for summary in (ssi, sei):
                fw.add_summary(summary)
            writer.close()
            for old in earlier:  # after the new one is whole: a failure between leaves a record, not none
                old.unlink(missing_ok=True)
        self._tensorboard(run_dir, write)

    def close(self) -> None:
        """Close the bar and the event files (a failure to write their last events is kept, see `check`)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        for writer in list(self.writers.values()):
            self._tensorboard(event_file(writer), writer.close)
        self.writers = {}
