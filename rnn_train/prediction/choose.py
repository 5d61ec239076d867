"""Picking the next character of every row of a batch from its logits: greedy, or sampled with
temperature, top-k and top-p (nucleus), each row from its own random stream.

Sampling is the Gumbel-max trick: argmax(logits + G) with G = -log(E), E ~ Exp(1) independent per
row and character, is a draw from softmax(logits) exactly. It needs no softmax, no cumulative sum
and no search per step, only an add and an argmax, and the noise for many steps is drawn in one
call per row. Filters set the logits they remove to -inf first, so the draw is from the softmax
renormalised over what is left, as with torch.multinomial on the filtered probabilities.

The temperature scales the noise, not the logits: argmax(logits / T + G) = argmax(logits + T·G)
for T > 0, so the choice is the same draw from softmax(logits / T), and the logits are the model's
own. Rows with different temperatures can then share one decoder GEMM (the server batches requests
with different options: rnn_train/serve/scheduler.py), and T = 0 is greedy with zero noise. The
noise is scaled once per refill, nothing per step; top-k needs no temperature (it keeps the same
characters either way) and top-p computes its probabilities at the temperature.

Why one stream per row: row i draws from `default_rng([seed, i])`, so with a given seed sample i
draws the same random numbers whatever the batch size, and no row's randomness depends on what
another row did. Its text is then the same whatever the batch size (sample 0 of `--num-samples 8`
is the `--num-samples 1` sample) as long as its logits are, and they are equal to float rounding
only: the stepper's GEMMs round a row differently with the number of rows per call, and a last-bit
difference changes a draw at a near tie, after which the samples part. Measured: 1 of 6 samples of
30,000 characters parted, at character 20,993 (benchmarks/sample_drift.py).
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np

from rnn_train.errors import UserError


@dataclass(frozen=True)
class SamplingOptions:
    temperature: float = 0.0  # 0 = greedy; > 0 samples from softmax(logits / temperature)
    top_k: int = 0  # sample among the k most likely characters only (0 = all)
    top_p: float = 1.0  # sample among the fewest most likely characters whose probabilities reach p
    seed: int | None = None  # None: fresh entropy from the OS

    def __post_init__(self):
        if not 0 <= self.temperature < float("inf"):
            raise UserError(f"--temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise UserError(f"--top-k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and self.seed < 0:
            raise UserError(f"--seed must be >= 0, got {self.seed}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class Chooser:
    """`choose(logits [B, V], out [B])` for one step; `refill(n)` before every n steps."""

    def __init__(self, options: SamplingOptions, batch: int, vocab_size: int, dtype: np.dtype):
        self.options, self.batch, self.vocab_size, self.dtype = options, batch, vocab_size, dtype
        self.streams = row_streams(options.seed, batch)
        self.noise = np.empty((batch, 0, vocab_size), dtype)  # [B, steps, V] Gumbel noise, rows contiguous
        self.top_k = effective_top_k(options.top_k, vocab_size)

    def refill(self, steps: int) -> None:
        """Draw the noise of the next `steps` steps for every row (nothing for greedy)."""
        if self.options.greedy:
            return
        if self.noise.shape[1] != steps:
            self.noise = np.empty((self.batch, steps, self.vocab_size), self.dtype)
        for i, rng in enumerate(self.streams):
            gumbel_noise(rng, self.noise[i], self.options.temperature)  # one draw per row for all steps

    def choose(self, logits: np.ndarray, step: int, out: np.ndarray) -> None:
        """Write each row's character into out [B]; `step` indexes the noise drawn by `refill`.
        `logits` (the model's, no temperature) may be changed in place (filters, noise)."""
        if self.options.greedy:
            np.argmax(logits, axis=1, out=out)
            return
        filter_logits(logits, self.top_k, self.options.top_p, self.options.temperature)
        logits += self.noise[:, step]
        np.argmax(logits, axis=1, out=out)


def row_streams(seed: int | None, rows: int) -> list[np.random.Generator]:
    """Row i's random stream: `default_rng([seed, i])` (a fresh seed from the OS when None)."""
    base = seed if seed is not None else secrets.randbits(63)
    return [np.random.default_rng([base, i]) for i in range(rows)]


def effective_top_k(top_k: int, vocab_size: int) -> int:
    """The k the filter uses: 0 (no filter) when top_k keeps every character anyway."""
    return top_k if 0 < top_k < vocab_size else 0


def gumbel_noise(rng: np.random.Generator, out: np.ndarray, temperature: float) -> None:
    """out [steps, V] <- temperature * Gumbel(0, 1): one row's noise for its next `steps` steps,
    drawn from its stream in order (so drawing 16 steps twice gives what drawing 32 once does)."""
    rng.standard_exponential(dtype=out.dtype, out=out)
    # E can be exactly 0 (float32 often enough to matter): its -log would be +inf and win over
    # -inf (filtered) logits. The smallest positive float keeps the race's winner and stays finite.
    np.maximum(out, np.finfo(out.dtype).tiny, out=out)
    np.log(out, out=out)
    out *= -temperature  # Gumbel(0, 1) = -log(Exp(1)), scaled by T


def filter_logits(logits: np.ndarray, top_k: int, top_p: float, temperature: float) -> None:
    """top-k (an `effective_top_k`) then top-p on logits [B, V] in place: what is removed is -inf."""
    if top_k:
        kth = np.partition(logits, -top_k, axis=1)[:, -top_k, None]  # [B, 1]
        logits[logits < kth] = -np.inf  # ties with the k-th are kept, as in torch's top-k filter
    if top_p < 1:
        nucleus_filter(logits, top_p, temperature)


def nucleus_filter(logits: np.ndarray, top_p: float, temperature: float = 1.0) -> None:
    """Keep, per row, the most likely characters until their probability at `temperature` reaches
    `top_p` (the one that crosses it included, so at least one stays); set the rest to -inf in
    place. [B, V]"""
    order = np.argsort(-logits, axis=1, kind="stable")  # most likely first
    ranked = np.take_along_axis(logits, order, axis=1)
    probs = np.exp((ranked - ranked[:, :1]) / temperature)
    probs /= probs.sum(axis=1, keepdims=True)
    before = np.cumsum(probs, axis=1) - probs  # probability mass ranked above each character
    drop = np.zeros(logits.shape, bool)
    np.put_along_axis(drop, order, before >= top_p, axis=1)
    logits[drop] = -np.inf


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities [B, V] of logits [B, V] (what `choose` samples from when unfiltered)."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
