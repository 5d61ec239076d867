"""Continuous batching: every generate request in flight is stepped in one batched step per
character, whatever its options; requests join and leave the running batch between steps.

    request ──warm-up (one module call on its prefix)──> Job(logits, state, options, rules, k)
                                                             │ submit
    engine thread, per character:
        admit waiting jobs into free rows ─> hand out text, refill noise (every `period` steps of a job)
        ─> choose every row's character (filters per job, noise per row, one argmax)
        ─> stop rules ─> record ─> finished jobs leave, the rows after them move up
        ─> ONE step of the live rows (the stepper's view of n rows) ─> ...

Why: a step's cost is mostly reading the weights, which one product does once for all its rows,
so 64 rows cost a few times one row, not 64 times (docs/serve.md has the figures). A job of N
samples holds N consecutive rows; live rows are rows 0..n-1 (a job that leaves is closed up behind
it), so each step is the stepper's view of its first n rows, `rows(n)`.

The stepper is predict's (stepper.make_stepper): the C++ generation steps (kernel_stepper.py)
wherever they are built and the cell has them, else the NumPy stepper. On the NumPy one a view of
n rows runs its GEMMs in the blocks predict uses for n rows (`gemm_rows`) for n up to the largest
job (max_samples), above in the blocks measured for the whole capacity; all are measured before
the server listens (`prepare`). The C++ steps have no blocks to measure.

What each row keeps of its own: its state; its random numbers (row i of a job has the key predict's
sample i has, and its t-th character the noise of position t: choose.py's counter-based stream);
its temperature, inside its noise (choose.py: argmax(l + T*G)), so rows of any temperatures share
the decoder product; its job's filters (top-k, top-p, applied on the job's rows), stop rules
(sampler.RuleState) and k. The choice is made by the same functions as predict's Chooser, so a
row's character is predict's whenever its logits are.

What a seeded request can be promised (tests/test_serve.py checks them):
- its random numbers are predict --seed's, always;
- on the C++ steps, its samples are predict --seed's to the bit, alone or sharing the batch: a
  row's arithmetic there does not depend on the other rows (csrc/decode.cpp), the noise comes from
  the one C++ function predict's sampling chunk uses, and the choice code is predict's;
- on the NumPy stepper, stepped alone (no other job in the batch during its life), its samples are
  predict --seed's to the bit (a stepper of N rows with the same blocks); sharing the batch, its
  rows are multiplied in GEMM calls with other rows, and OpenBLAS rounds a row's products
  differently with the rows in the call: its logits can differ from predict's in the last bits,
  and where two characters' (noisy) logits are that close, the choice and the rest of the sample
  differ. benchmarks/serve_bench.py measures how often under load.
"""
from __future__ import annotations

import collections
import sys
import threading
import traceback
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from rnn_train.data.vocab import Vocab
from rnn_train.model.charrnn import CharRNN, State
from rnn_train.prediction.choose import SamplingOptions, effective_top_k, filter_logits, gumbel_noise, row_keys
from rnn_train.prediction.sampler import RuleState
from rnn_train.prediction.stepper import GEMM_ROWS, gemm_rows, make_stepper
from rnn_train.runtime import available_cores

NOISE_BYTES = 8 << 20  # the noise buffer's budget: [period, rows, V]


def engine_threads() -> int:
    """Threads a step's rows are split over on the C++ steps: the cores this process may use, less
    one for the event loop (HTTP, warm-ups). Why not torch's number: a step's threads meet at its
    end, and one whose core the event loop holds keeps the others waiting. On the 2-vCPU Xeon of
    docs/serve.md, one thread instead of two took 8 clients from ~45k to ~90k characters/s and
    64 clients from ~122k to ~123k (`python benchmarks/serve_bench.py`)."""
    return max(1, available_cores() - 1)


@dataclass(eq=False)
class Job:
    """One generate request: `rows` samples of up to k characters after a warmed-up prefix."""

    first: np.ndarray  # [V] the model's logits after the prefix (generate.sampler_logits)
    state: State  # the state after the prefix, batch 1 (torch)
    k: int  # characters per sample, >= 1
    options: SamplingOptions
    rules: RuleState | None  # per-row stop rules for `rows` rows and k, or None
    rows: int  # samples
    on_text: Callable[[list[str]], None] | None = None  # new text per sample (streamed), engine thread
    on_end: Callable[[BaseException | None], None] = lambda error: None  # finished (None) or failed
    cancelled: bool = False  # set from another thread (a client gone): the job leaves at its next hand-out
    result: list[str] = field(default_factory=list)  # the samples, once finished
    pieces: list[list] = field(default_factory=list)  # per sample: characters so far, as id arrays
    # the engine's bookkeeping
    start: int = 0  # its first row
    born: int = 0  # the engine step of its first character
    handed: int = 0  # characters per row handed out so far
    keys: np.ndarray | None = None  # [rows] uint64: its rows' random streams (choose.row_keys)

    @property
    def stop(self) -> int:
        return self.start + self.rows

    def samples(self) -> list[str]:
        """The samples (after on_end(None))."""
        return self.result


class Unavailable(Exception):
    """What the jobs still in flight end with when the server stops before they finish (a 503, or
    a stream's 'error' event), and every job submitted after that."""


class Batcher:
    """The engine: a thread that steps every job in flight together (see the module docstring).
    `submit(job)` from any thread; `start()`, `abort(error)`, `close()`; `stats()` for /healthz."""

    def __init__(self, model: CharRNN, vocab: Vocab, capacity: int, exact: int):
        """`capacity` rows in all. On the NumPy stepper, a job of up to `exact` rows stepped alone is
        stepped as predict steps it (the block size measured for its number of rows; larger
        batches, which no job fills alone, use the block size measured for `capacity`)."""
        self.model, self.vocab, self.capacity, self.exact = model, vocab, capacity, min(exact, capacity)
        self.base = make_stepper(model, capacity, rows=GEMM_ROWS)  # owns the state buffers; steps through views
        self.kernel = self.base.kernel  # "cpp" or "numpy"
        if self.kernel == "cpp":
            self.base.threads = engine_threads()  # the views made later inherit it
        self.dtype = self.base.dtype
        V = len(vocab)
        # every `period` steps of its own, a job hands out its text and draws its next noise: 64 steps
        # (predict's refill) where the buffer of [period, rows, V] noise fits NOISE_BYTES, fewer for a
        # large vocab (a Chinese-character model)
        fit = NOISE_BYTES // (capacity * V * self.base.logits.itemsize)
        self.period = int(max(4, min(64, 1 << max(fit, 1).bit_length() - 1)))
        self.ids = np.zeros(capacity, np.int64)  # [rows] this step's characters
        self.noise = np.zeros((self.period, capacity, V), self.dtype)  # [slot, row, V], slot = step % period
        self.history = np.zeros((self.period, capacity), np.int64)  # [slot, row] characters not yet handed out
        self.views: dict = {}  # n -> the stepper's view of its first n rows
        self.jobs: list[Job] = []  # in row order
        self.buckets: list[list[Job]] = [[] for _ in range(self.period)]  # jobs by born % period
        self.filtered: list[Job] = []  # jobs with top-k or top-p
        self.ruled: list[Job] = []  # jobs with stop rules
        self.ending: dict[int, list[Job]] = collections.defaultdict(list)  # step of the k-th character -> jobs
        self.n = 0  # live rows
        self.step = 0  # characters chosen per live row so far, all jobs together
        self.pending: collections.deque[Job] = collections.deque()
        self.wake = threading.Condition()
        self.stopping = False
        self.aborted: Unavailable | None = None  # set by abort(): every job ends with it
        self.thread: threading.Thread | None = None
        self.counts = {"steps": 0, "rows_stepped": 0, "largest_batch": 0, "jobs_done": 0, "jobs_failed": 0,
                       "jobs_cancelled": 0}

    # -- from other threads
    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="rnn-train-batcher", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        if not 1 <= job.rows <= self.capacity or job.k < 1:
            raise ValueError(f"a job of {job.rows} rows and k={job.k} in a batch of {self.capacity}")
        with self.wake:
            aborted = self.aborted
            if aborted is None:
                self.pending.append(job)
                self.wake.notify()
        if aborted is not None:
            job.on_end(aborted)

    def abort(self, error: Unavailable) -> None:
        """End every job in flight or waiting, and every one submitted from now on, with `error`
        (the server stops: its clients get an answer before their connections are cut)."""
        with self.wake:
            self.aborted = error
            self.wake.notify()

    def close(self, timeout: float = 5.0) -> None:
        """Finish the jobs in flight, then stop the thread."""
        with self.wake:
            self.stopping = True
            self.wake.notify()
        if self.thread is not None:
            self.thread.join(timeout)

    def stats(self) -> dict:
        return {**self.counts, "live_rows": self.n, "live_jobs": len(self.jobs), "waiting_jobs": len(self.pending),
                "capacity": self.capacity, "stepper": self.kernel}

    # -- the engine thread
    def _run(self) -> None:
        while True:
            with self.wake:
                while not self.jobs and not self.pending and not self.stopping:
                    self.wake.wait()
                if self.stopping and not self.jobs and not self.pending:
                    return
                admitted = []
                aborted = self.aborted
                if aborted is not None:
                    admitted, self.pending = list(self.pending), collections.deque()
                while self.pending and self.n + sum(j.rows for j in admitted) + self.pending[0].rows <= self.capacity:
                    admitted.append(self.pending.popleft())
            if aborted is not None:
                self._fail_all(aborted, admitted)
                continue
            try:
                self._iteration(admitted)
            except Exception as error:  # a bug: fail the jobs in flight, keep serving
                traceback.print_exc(file=sys.stderr)
                self._fail_all(error, admitted)

    def _iteration(self, admitted: list[Job]) -> None:
        s, slot = self.step, self.step % self.period
        for job in admitted:
            self._admit(job, s)
        gone = [job for job in self.buckets[slot] if job.cancelled]
        if gone:  # their clients left: free the rows
            self._leave(gone)
            self.counts["jobs_cancelled"] += len(gone)
        for job in self.buckets[slot]:
            if job.born < s:
                self._hand_out(job, s)  # its characters of the last period, before their slots are reused
                self._refill(job, s)
        leaving = self.ending.pop(s, [])
        if not self.n:
            return
        n = self.n
        logits = self.base.logits[:n]  # [n, V]: after the prefix for new rows, else the last step's
        for job in self.filtered:
            o = job.options
            filter_logits(logits[job.start:job.stop], effective_top_k(o.top_k, len(self.vocab)), o.top_p, o.temperature)
        logits += self.noise[slot, :n]  # zero for greedy rows
        ids = self.ids[:n]
        np.argmax(logits, axis=1, out=ids)
        for job in self.ruled:
            if job.rules.apply(ids[job.start:job.stop], s - job.born) and job not in leaving:
                leaving.append(job)
        self.history[slot, :n] = ids
        self.step += 1
        if leaving:
            for job in leaving:
                self._hand_out(job, s + 1)
                job.result = [self.vocab.decode(np.concatenate(p)) if p else "" for p in job.pieces]
            self._leave(leaving)
            for job in leaving:
                self.counts["jobs_done"] += 1
                job.on_end(None)
        if self.n:
            self._view(self.n).step(self.ids[:self.n])  # writes self.base.logits[:n]
            self.counts["steps"] += 1
            self.counts["rows_stepped"] += self.n
            self.counts["largest_batch"] = max(self.counts["largest_batch"], self.n)

    def _admit(self, job: Job, s: int) -> None:
        job.start, job.born, job.handed = self.n, s, 0
        job.pieces = [[] for _ in range(job.rows)]
        rows = slice(job.start, job.stop)
        self.base.load_state(job.state, rows)
        self.base.logits[rows] = job.first
        self.n = job.stop
        self.jobs.append(job)
        self.buckets[s % self.period].append(job)
        if job.options.greedy:
            self.noise[:, rows] = 0
        else:
            job.keys = row_keys(job.options.seed, job.rows)
            self._refill(job, s)
            if job.options.top_k or job.options.top_p < 1:
                self.filtered.append(job)
        if job.rules is not None:
            self.ruled.append(job)
        self.ending[s + job.k - 1].append(job)

    def _refill(self, job: Job, s: int) -> None:
        """The noise of the job's rows for steps s .. s + period - 1 (its characters s - born ..),
        from each row's own stream."""
        if job.options.greedy:
            return
        slots = (s + np.arange(self.period)) % self.period
        noise = gumbel_noise(job.keys, s - job.born, self.period, len(self.vocab), job.options.temperature,
                             self.dtype)  # [rows, period, V]
        self.noise[slots, job.start:job.stop] = noise.transpose(1, 0, 2)

    def _hand_out(self, job: Job, upto: int) -> None:
        """The job's characters chosen before engine step `upto` and not yet handed out, decoded per
        row (a row its rules ended gets nothing past its end), appended to its pieces and streamed."""
        t0, t1 = job.handed, upto - job.born
        if t1 <= t0:
            return
        block = self.history[(job.born + np.arange(t0, t1)) % self.period, job.start:job.stop].T  # [rows, t1 - t0]
        ends = np.minimum(job.rules.end, t1) - t0 if job.rules is not None else np.full(job.rows, t1 - t0)
        rows = [block[i, :max(int(e), 0)] for i, e in enumerate(ends)]
        job.handed = t1
        for pieces, ids in zip(job.pieces, rows):
            pieces.append(ids)
        if job.on_text is not None:
            job.on_text([self.vocab.decode(ids) for ids in rows])

    def _leave(self, leaving: list[Job]) -> None:
        """Take jobs out of the batch and move the rows after each one up (their state, logits, noise
        and unhanded characters with them), keeping live rows first and in order. The logits matter
        where jobs leave before the step's choice (a cancelled job): the rows moved up choose from
        them next."""
        gone = set(leaving)
        row = 0
        kept = []
        for job in self.jobs:
            if job in gone:
                continue
            if job.start != row:  # moving down: never onto a kept job's rows not yet moved
                src, dst = slice(job.start, job.stop), slice(row, row + job.rows)
                self.base.copy_rows(src, dst)
                self.base.logits[dst] = self.base.logits[src]
                self.noise[:, dst] = self.noise[:, src]
                self.history[:, dst] = self.history[:, src]
                self.ids[dst] = self.ids[src]
                job.start = row
            row += job.rows
            kept.append(job)
        self.jobs, self.n = kept, row
        for group in (self.filtered, self.ruled, *self.buckets):
            group[:] = [j for j in group if j not in gone]
        for job in leaving:
            ends = self.ending.get(job.born + job.k - 1)
            if ends and job in ends:
                ends.remove(job)

    def prepare(self) -> None:
        """Measure now the block sizes `_view` will read on the NumPy stepper (once per machine,
        model shape and batch size, then stored: stepper.gemm_rows), so that no request waits for
        a measurement. The C++ steps have nothing to measure."""
        if self.kernel != "numpy":
            return
        for n in range(1, self.exact + 1):
            self._view(n)
        self._view(self.capacity)

    def _view(self, n: int):
        """The stepper of the first n rows: on the NumPy stepper, the blocks predict uses for n rows
        up to `exact`, the blocks measured for the whole capacity above."""
        view = self.views.get(n)
        if view is None:
            rows = None
            if self.kernel == "numpy":
                rows = gemm_rows(self.model, n if n <= self.exact else self.capacity)
            view = self.views[n] = self.base.rows(n, rows)
        return view

    def _fail_all(self, error: BaseException, admitted: list[Job]) -> None:
        failed = list(dict.fromkeys(self.jobs + admitted))
        self.jobs, self.n = [], 0
        self.filtered, self.ruled, self.ending = [], [], collections.defaultdict(list)
        self.buckets = [[] for _ in range(self.period)]
        for job in failed:
            self.counts["jobs_failed"] += 1
            job.on_end(error)
