"""Picking the next character of every row of a batch from its logits: greedy, or sampled with
temperature, top-k and top-p (nucleus), each row from its own random stream.

Sampling is the Gumbel-max trick: argmax(logits + G) with G = -log(-log(U)), U ~ Uniform(0, 1)
independent per row and character, is a draw from softmax(logits) exactly. It needs no softmax, no
cumulative sum and no search per step, only an add and an argmax, and the noise for many steps is
made in one call. Filters set the logits they remove to -inf first, so the draw is from the softmax
renormalised over what is left, as with torch.multinomial on the filtered probabilities.

The temperature scales the noise, not the logits: argmax(logits / T + G) = argmax(logits + T·G)
for T > 0, so the choice is the same draw from softmax(logits / T), and the logits are the model's
own. Rows with different temperatures can then share one decoder product (the server batches
requests with different options: rnn_train/serve/scheduler.py), and T = 0 is greedy with zero
noise. Top-k needs no temperature (it keeps the same characters either way) and top-p computes its
probabilities at the temperature.

Where the numbers come from: U for row i, its t-th generated character and vocab entry v is

    U = (splitmix64(key_i + (t * V + v + 1) * GAMMA) >> 41 + 0.5) / 2^23     (exact in float32)

with key_i made from (seed, i): a counter-based stream, whose numbers depend only on the row's key
and the position. So with a given seed sample i draws the same random numbers whatever the batch
size, no row's randomness depends on what another row did, and a row that starts later (a server's
new request) needs only its key and its position. T·G is made by ONE function wherever the C++
kernels are built (csrc/decode.cpp's `gumbel_noise`, which the C++ sampling chunk calls in the
threads that own the rows, and which `gumbel_noise` here calls through the op decode_gumbel_noise),
so the chunk, predict's Python loop (filters, forced line starts) and the server draw the same
noise to the bit; without the kernels NumPy computes the same formula (np.log: it may differ from
the C++ log in the last bit). Before, each row drew from NumPy's `default_rng([seed, i])`: the same
guarantees, but its exponentials cost ~1 us per character of a 66-symbol vocab on the machine
measured, more than the C++ step itself, and only one Python thread could make them.

The text of sample i is then the same whatever N wherever its logits are: always on the C++
steps (a row's arithmetic does not depend on the other rows; tests/test_sampling.py), and to float
rounding on the NumPy stepper, whose GEMMs round a row differently with the number of rows per
call (benchmarks/sample_drift.py).
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np
import torch

from rnn_train.errors import UserError, integer


MAX_TEMPERATURE = 100.0  # hotter is uniform noise, and T * Gumbel noise stays far from overflow
MAX_SEED = 2 ** 63 - 1  # as training's seeds; a larger one was taken modulo 2^64 without a word


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
        if not 0 <= self.temperature <= MAX_TEMPERATURE:  # 1e39 made every logit 0 in float32: <unk> was drawn
            raise UserError(f"--temperature must be in [0, {MAX_TEMPERATURE:g}], got {self.temperature}")
        object.__setattr__(self, "top_k", integer(self.top_k, "--top-k"))
        if self.top_k < 0:
            raise UserError(f"--top-k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.seed is not None:
            object.__setattr__(self, "seed", integer(self.seed, "--seed"))
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise UserError(f"--seed must be in [0, 2^63), got {self.seed}")

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


def row_keys(seed: int | None, batch: int) -> np.ndarray:
    """Row i's key for `seed` (None: fresh entropy from the OS): [batch] uint64, the same for row i
    whatever the batch."""
    seed = seed if seed is not None else secrets.randbits(63)
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


def gumbel_noise(keys: np.ndarray, position, steps: int, vocab_size: int, temperature=1.0,
                 dtype=np.float32) -> np.ndarray:
    """T·(-log(-log(U))): the noise `choose` adds, [B, steps, V] of `dtype`, computed in float32 (T:
    one for all rows or one per row, as float32). On the C++ kernels' function where they are built
    (what the C++ sampling chunk adds), else in NumPy."""
    B = len(keys)
    ops = _noise_op()
    if ops is not None:
        positions = np.broadcast_to(np.asarray(position, np.int64), (B,)).copy()
        scales = np.broadcast_to(np.asarray(temperature, np.float64), (B,)).copy()
        out = torch.empty((B, steps, vocab_size), dtype=torch.float32)
        ops.decode_gumbel_noise(torch.from_numpy(np.ascontiguousarray(keys).view(np.int64)),
                                torch.from_numpy(positions), torch.from_numpy(scales), out)
        return out.numpy().astype(dtype, copy=False)
    u = uniforms(keys, position, steps, vocab_size)
    np.log(u, out=u)
    np.negative(u, out=u)
    np.log(u, out=u)
    np.negative(u, out=u)
    u *= np.asarray(temperature, np.float32).reshape(-1, 1, 1)
    return u.astype(dtype, copy=False)


def _noise_op():
    """The C++ ops where they are built, else None (tests take NumPy's noise by replacing this)."""
    from rnn_train.kernels.build import extension

    return extension()


class Chooser:
    """`refill(position, n)` before every n steps from `position` (the index of the next character
    in the generated text); `choose(logits [B, V], j, out [B])` for the j-th of them."""

    def __init__(self, options: SamplingOptions, batch: int, vocab_size: int, dtype: np.dtype):
        self.options, self.batch, self.vocab_size, self.dtype = options, batch, vocab_size, dtype
        self.keys = row_keys(options.seed, batch)  # [B] uint64
        self.noise = np.empty((batch, 0, vocab_size), dtype)  # [B, steps, V] Gumbel noise, rows contiguous
        self.top_k = effective_top_k(options.top_k, vocab_size)

    @property
    def plain(self) -> bool:
        """No filter: what the C++ sampling chunk (KernelStepper.sample) does by itself."""
        return not self.top_k and self.options.top_p >= 1

    def refill(self, position: int, steps: int) -> None:
        """Make the noise (T·G) of the `steps` steps from `position` for every row (nothing for greedy)."""
        if not self.options.greedy:
            self.noise = gumbel_noise(self.keys, position, steps, self.vocab_size, self.options.temperature,
                                      self.dtype)

    def choose(self, logits: np.ndarray, step: int, out: np.ndarray) -> None:
        """Write each row's character into out [B]; `step` indexes the noise made by `refill`.
        `logits` (the model's, no temperature) may be changed in place (filters, noise)."""
        if self.options.greedy:
            np.argmax(logits, axis=1, out=out)
            return
        filter_logits(logits, self.top_k, self.options.top_p, self.options.temperature)
        logits += self.noise[:, step]
        np.argmax(logits, axis=1, out=out)


def effective_top_k(top_k: int, vocab_size: int) -> int:
    """The k the filter uses: 0 (no filter) when top_k keeps every character anyway."""
    return top_k if 0 < top_k < vocab_size else 0


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
    below = ranked - ranked[:, :1]  # <= 0
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # a temperature near or below
        scaled = below / temperature  # float32's smallest number: -inf, the limit, without a warning
    scaled[below == 0] = 0  # the most likely and its ties: probability ratio 1 at any temperature (not 0/0)
    probs = np.exp(scaled)
    probs /= probs.sum(axis=1, keepdims=True)
    before = np.cumsum(probs, axis=1) - probs  # probability mass ranked above each character
    ranked_drop = before >= top_p
    ranked_drop[:, 0] = False  # the most likely always stays: a top_p below float32's smallest number is 0 here
    drop = np.zeros(logits.shape, bool)
    np.put_along_axis(drop, order, ranked_drop, axis=1)
    logits[drop] = -np.inf


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities [B, V] of logits [B, V] (what `choose` samples from when unfiltered)."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
