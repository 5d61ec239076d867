"""Picking the next character of every row of a batch from its logits: greedy, or sampled with
temperature, top-k and top-p (nucleus), each row from its own random stream.

Sampling is the Gumbel-max trick: argmax(logits + G) with G = -log(-log(U)), U ~ Uniform(0, 1)
independent per row and character, is a draw from softmax(logits) exactly. It needs no softmax, no
cumulative sum and no search per step, only an add and an argmax, and the noise for many steps is
made in one call. Filters set the logits they remove to -inf first, so the draw is from the softmax
renormalised over what is left, as with torch.multinomial on the filtered probabilities.

Where the numbers come from: U for row i, its t-th generated character and vocab entry v is

    U = (splitmix64(key_i + (t * V + v + 1) * GAMMA) >> 41 + 0.5) / 2^23     (exact in float32)

with key_i made from (seed, i): a counter-based stream, whose numbers depend only on the row's key
and the position, and which NumPy (here) and C++ (csrc/decode.cpp, which samples whole chunks
without returning to Python, the noise made in the threads that own the rows) compute alike. So
with a given seed sample i draws the same random numbers whatever the batch size, no row's
randomness depends on what another row did, and a row that starts later (a server's new request)
needs only its key and its position. (The noise is then computed in float32 by each side's own
log; the two may differ in the last bit.) Before, each row drew from NumPy's `default_rng([seed,
i])`: the same guarantees, but its exponentials cost ~1 us per character of a 66-symbol vocab on
the machine measured, more than the C++ step itself, and only one Python thread could make them.

The text of sample i is then the same whatever N wherever its logits are: always on the C++
steps (a row's arithmetic does not depend on the other rows; tests/test_sampling.py), and to float
rounding on the NumPy stepper, whose GEMMs round a row differently with the number of rows per
call (benchmarks/sample_drift.py).
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
    precision: str = "fp32"  # the steps' products: fp32, or bf16 on AMX tiles (stepper.make_stepper)

    def __post_init__(self):
        if self.precision not in ("fp32", "bf16"):
            raise UserError(f"--precision must be fp32 or bf16, got {self.precision!r}")
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
    base = np.uint64(int(splitmix64(np.array([seed & _U64], np.uint64))[0]))
    with np.errstate(over="ignore"):
        return splitmix64(np.arange(1, batch + 1, dtype=np.uint64) * np.uint64(GAMMA) + base)


def uniforms(keys: np.ndarray, position, steps: int, vocab_size: int) -> np.ndarray:
    """U of every row for `steps` characters from `position` (one per row, or one for all) and
    every vocab entry: [B, steps, V] float32 in (0, 1), 23 random bits each."""
    start = np.asarray(position, np.uint64).reshape(-1, 1) * np.uint64(vocab_size)  # [B or 1, 1]
    counters = start + np.arange(1, steps * vocab_size + 1, dtype=np.uint64)  # [B or 1, steps * V]
    with np.errstate(over="ignore"):
        z = splitmix64(keys[:, None] + counters * np.uint64(GAMMA))
    u = ((z >> np.uint64(41)).astype(np.float32) + 0.5) * 2.0 ** -23
    return u.reshape(len(keys), steps, vocab_size)


def gumbel_noise(keys: np.ndarray, position, steps: int, vocab_size: int, dtype) -> np.ndarray:
    """-log(-log(U)): the noise `choose` adds, [B, steps, V] of `dtype` (computed in float32)."""
    u = uniforms(keys, position, steps, vocab_size)
    np.log(u, out=u)
    np.negative(u, out=u)
    np.log(u, out=u)
    np.negative(u, out=u)
    return u.astype(dtype, copy=False)


class Chooser:
    """`refill(position, n)` before every n steps from `position` (the index of the next character
    in the generated text); `choose(logits [B, V], j, out [B])` for the j-th of them."""

    def __init__(self, options: SamplingOptions, batch: int, vocab_size: int, dtype: np.dtype):
        self.options, self.batch, self.vocab_size, self.dtype = options, batch, vocab_size, dtype
        seed = options.seed if options.seed is not None else secrets.randbits(63)
        self.keys = row_keys(seed, batch)  # [B] uint64
        self.noise = np.empty((batch, 0, vocab_size), dtype)  # [B, steps, V] Gumbel noise, rows contiguous
        self.top_k = options.top_k if 0 < options.top_k < vocab_size else 0

    @property
    def plain(self) -> bool:
        """No filter: what the C++ sampling chunk (KernelStepper.sample) does by itself."""
        return not self.top_k and self.options.top_p >= 1

    def refill(self, position: int, steps: int) -> None:
        """Make the noise of the `steps` steps from `position` for every row (nothing for greedy)."""
        if not self.options.greedy:
            self.noise = gumbel_noise(self.keys, position, steps, self.vocab_size, self.dtype)

    def choose(self, logits: np.ndarray, step: int, out: np.ndarray) -> None:
        """Write each row's character into out [B]; `step` indexes the noise made by `refill`.
        `logits` may be changed in place (filters, noise)."""
        if self.options.greedy:
            np.argmax(logits, axis=1, out=out)
            return
        if self.top_k:
            kth = np.partition(logits, -self.top_k, axis=1)[:, -self.top_k, None]  # [B, 1]
            logits[logits < kth] = -np.inf  # ties with the k-th are kept, as in torch's top-k filter
        if self.options.top_p < 1:
            nucleus_filter(logits, self.options.top_p)
        logits += self.noise[:, step]
        np.argmax(logits, axis=1, out=out)


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
