"""Picking the next character of every row of a batch from its logits: greedy, or sampled with
temperature, top-k and top-p (nucleus), each row from its own random stream.

A draw inverts the softmax's cumulative distribution with one uniform number u per row and step:
with e = exp(logits - max) (0 for a logit more than 87 below the max, and for filtered ones),
the character is the first i whose cumulative sum e_0 + ... + e_i, in float64, exceeds u * sum(e).
One uniform per character, where drawing Gumbel noise for every character of the vocab (the
previous way) cost more than the model's step once the step ran in C++ (NumPy's exponentials
took ~1 us per sampled character of a 66-symbol vocab on the machine measured, the step itself
~4 us). Filters set the logits they remove to -inf first, so the draw is from the softmax
renormalised over what is left, as with torch.multinomial on the filtered probabilities.

Where the numbers come from: row i's uniform at position t (the t-th character it generates) is

    u = (splitmix64(key_i + (t + 1) * GAMMA) >> 11 + 0.5) / 2^53,   key_i from (seed, i)

a counter-based stream: the same 53 random bits in NumPy (here) and in C++ (csrc/decode.cpp,
which draws whole chunks without returning to Python), on every machine. So with a given seed
sample i draws the same numbers whatever the batch size, no row's randomness depends on what
another row did, and a row that starts later (a server's new request) needs only its key and
its position. The text of sample i is then the same whatever N wherever its logits are: always
on the C++ kernels (a row's arithmetic does not depend on the other rows), and to float rounding
on the NumPy stepper (benchmarks/sample_drift.py).
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


GAMMA = 0x9E3779B97F4A7C15  # 2^64 / golden ratio, odd: splitmix64's counter increment
_U64 = (1 << 64) - 1


def splitmix64(z: np.ndarray) -> np.ndarray:
    """The splitmix64 output function of uint64 values (wrapping arithmetic), elementwise."""
    z = np.asarray(z, np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def row_keys(seed: int, batch: int) -> np.ndarray:
    """Row i's key for `seed`: [batch] uint64, the same for row i whatever the batch."""
    base = int(splitmix64(np.array([seed & _U64], np.uint64))[0])
    counters = (np.arange(1, batch + 1, dtype=np.uint64) * np.uint64(GAMMA)) if batch else np.empty(0, np.uint64)
    with np.errstate(over="ignore"):
        return splitmix64(counters + np.uint64(base))


def uniforms(keys: np.ndarray, position: int | np.ndarray) -> np.ndarray:
    """The rows' uniform numbers in (0, 1) at `position` (per row or for all): [B] float64."""
    t = np.asarray(position, np.uint64) + np.uint64(1)
    with np.errstate(over="ignore"):
        z = splitmix64(keys + t * np.uint64(GAMMA))
    return ((z >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53


def draw(logits: np.ndarray, u: np.ndarray, out: np.ndarray) -> None:
    """out[b] = the character of logits [B, V] that the uniform u[b] picks from its softmax (see the
    module docstring; the same rule as csrc/decode.cpp's draw)."""
    x = logits - logits.max(axis=1, keepdims=True)
    with np.errstate(under="ignore"):
        e = np.exp(x)
    e[x < -87] = 0
    cum = np.cumsum(e, axis=1, dtype=np.float64)  # [B, V]
    hit = cum > (u * cum[:, -1])[:, None]
    np.argmax(hit, axis=1, out=out)  # the first True
    missed = ~hit[:, -1]  # u * total rounded up to the total: the last character with e > 0
    if missed.any():
        out[missed] = e.shape[1] - 1 - np.argmax(e[missed, ::-1] > 0, axis=1)


class Chooser:
    """`choose(logits [B, V], position, out [B])` picks every row's character at `position` (the
    index of that character in the generated text); rows draw from their own streams (`keys`)."""

    def __init__(self, options: SamplingOptions, batch: int, vocab_size: int, dtype: np.dtype):
        self.options, self.batch, self.vocab_size, self.dtype = options, batch, vocab_size, dtype
        seed = options.seed if options.seed is not None else secrets.randbits(63)
        self.keys = row_keys(seed, batch)  # [B] uint64
        self.top_k = options.top_k if 0 < options.top_k < vocab_size else 0

    @property
    def plain(self) -> bool:
        """No filter: what the C++ sampling chunk (KernelStepper.sample) does by itself."""
        return not self.top_k and self.options.top_p >= 1

    def choose(self, logits: np.ndarray, position: int, out: np.ndarray) -> None:
        """Write each row's character into out [B]. `logits` may be changed in place (filters)."""
        if self.options.greedy:
            np.argmax(logits, axis=1, out=out)
            return
        if self.top_k:
            kth = np.partition(logits, -self.top_k, axis=1)[:, -self.top_k, None]  # [B, 1]
            logits[logits < kth] = -np.inf  # ties with the k-th are kept, as in torch's top-k filter
        if self.options.top_p < 1:
            nucleus_filter(logits, self.options.top_p)
        draw(logits, uniforms(self.keys, position), out)


def nucleus_filter(logits: np.ndarray, top_p: float) -> None:
    """Keep, per row, the most likely characters until their probability reaches `top_p` (the one
    that crosses it included, so at least one stays); set the rest to -inf in place. [B, V]"""
    order = np.argsort(-logits, axis=1, kind="stable")  # most likely first
    ranked = np.take_along_axis(logits, order, axis=1)
    probs = np.exp(ranked - ranked[:, :1])
    probs /= probs.sum(axis=1, keepdims=True)
    before = np.cumsum(probs, axis=1) - probs  # probability mass ranked above each character
    drop = np.zeros(logits.shape, bool)
    np.put_along_axis(drop, order, before >= top_p, axis=1)
    logits[drop] = -np.inf


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities [B, V] of logits [B, V] (what `choose` samples from when unfiltered)."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
