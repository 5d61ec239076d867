"""How an encoded corpus is cut into (X, Y) batches of shape [B, T]: pure NumPy, no state.

Y is X shifted by one character: the model reads X[b, t] and must predict Y[b, t] = X[b, t + 1].
Both partitions start at a random offset in [0, T) drawn per epoch, so that over many epochs every
character boundary is seen at every window position.

Random partitioning (`random_batches`): non-overlapping windows, shuffled, B per batch.

    corpus    c0 c1 c2 c3 c4 c5 c6 c7 c8 c9 c10 c11 c12 c13 ...
    offset=1     [ w0     ][ w1     ][ w2     ][ w3       ] ...     (T = 3)
    batch 0   rows = w2, w0          batch 1   rows = w3, w1   ...  (B = 2, order shuffled)

  Neighbouring rows of consecutive batches are unrelated, so each batch starts from a zero state:
  the gradient sees at most T steps back and the model never learns to use longer context.

Sequential partitioning (`sequential_batches`): the corpus is split into B contiguous streams,
and batch i+1 row b continues exactly where batch i row b stopped.

    corpus (after offset) = s0 | s1            (B = 2 streams of equal length L)
    stream s0:  [ X0 row0 ][ X1 row0 ][ X2 row0 ] ...
    stream s1:  [ X0 row1 ][ X1 row1 ][ X2 row1 ] ...

  The hidden state at the end of batch i is the right starting state for batch i+1, so the trainer
  carries it over, but *detaches* it: the forward pass sees the whole history, the backward pass
  stops at the batch boundary (truncated BPTT with horizon T).

`eval_batches` is the sequential layout with offset 0 and the short last chunk kept, so that a
validation pass covers the split (all but fewer than B trailing characters) with state carried.

`data` may be a read-only memory map of a prepared corpus (rnn_train.data.prepare): the streams are
reshaped views of it and each batch copies only its own [B, T] ids, so no pass holds the corpus.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

Batch = tuple[np.ndarray, np.ndarray]  # X [B, T], Y [B, T], int64


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator for one epoch's offset and shuffle: a pure function of (seed, epoch), so that
    a resumed run rebuilds the exact batch order of the epoch it was interrupted in."""
    return np.random.default_rng([seed, epoch])


def _window_count(n: int, num_steps: int, offset: int) -> int:
    """Complete windows (each needs T inputs plus one target) after `offset`; window k starts at
    offset + k·T."""
    return max((n - offset - 1) // num_steps, 0)


def window_order(count: int, rng: np.random.Generator) -> np.ndarray:
    """`rng.permutation(count)` (the same numbers from the same draws) in int32 when it fits: one
    entry per window of the corpus, so half the memory on a corpus of gigabytes."""
    order = np.arange(count, dtype=np.int32 if count < 2**31 else np.int64)
    rng.shuffle(order)
    return order


def random_batches(data: np.ndarray, batch_size: int, num_steps: int, rng: np.random.Generator) -> Iterator[Batch]:
    """Shuffled non-overlapping windows; the last incomplete batch is dropped. Only the shuffled
    window numbers are held; each batch reads its [B, T] ids from `data` (which may be a memory map)."""
    offset = int(rng.integers(0, num_steps))
    order = window_order(_window_count(len(data), num_steps, offset), rng)
    steps = np.arange(num_steps)
    for i in range(0, len(order) // batch_size * batch_size, batch_size):
        idx = offset + num_steps * order[i:i + batch_size, None].astype(np.int64) + steps  # [B, T]
        yield data[idx].astype(np.int64), data[idx + 1].astype(np.int64)


def _streams(data: np.ndarray, batch_size: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """X, Y as B contiguous streams [B, L]; Y is X shifted by one."""
    length = (len(data) - offset - 1) // batch_size
    n = length * batch_size
    xs = data[offset:offset + n].reshape(batch_size, length)
    ys = data[offset + 1:offset + 1 + n].reshape(batch_size, length)
    return xs, ys


def sequential_batches(data: np.ndarray, batch_size: int, num_steps: int, rng: np.random.Generator) -> Iterator[Batch]:
    """B parallel streams cut into consecutive [B, T] chunks; the last incomplete chunk is dropped."""
    offset = int(rng.integers(0, num_steps))
    xs, ys = _streams(data, batch_size, offset)
    for t in range(0, xs.shape[1] // num_steps * num_steps, num_steps):
        yield xs[:, t:t + num_steps].astype(np.int64), ys[:, t:t + num_steps].astype(np.int64)


def eval_batches(data: np.ndarray, batch_size: int, num_steps: int) -> Iterator[Batch]:
    """Sequential streams from offset 0, last chunk kept even if shorter than T; batch_size is
    lowered for a split too short to give every stream at least one character."""
    batch_size = max(1, min(batch_size, len(data) - 1))
    xs, ys = _streams(data, batch_size, 0)
    for t in range(0, xs.shape[1], num_steps):
        yield xs[:, t:t + num_steps].astype(np.int64), ys[:, t:t + num_steps].astype(np.int64)


def batches(partition: str, data: np.ndarray, batch_size: int, num_steps: int, rng: np.random.Generator) -> Iterator[Batch]:
    """Dispatch on `data.partition`."""
    fn = {"random": random_batches, "sequential": sequential_batches}[partition]
    return fn(data, batch_size, num_steps, rng)


def batches_per_epoch(n: int, batch_size: int, num_steps: int, partition: str) -> int:
    """A lower bound on the batches an epoch yields, whatever the offset (used for schedules and
    progress bars): computed for the largest offset, T - 1."""
    worst = num_steps - 1
    if partition == "random":
        return _window_count(n, num_steps, worst) // batch_size
    return max((n - worst - 1) // batch_size, 0) // num_steps


def min_corpus_length(batch_size: int, num_steps: int) -> int:
    """Shortest training split that yields one batch for any offset: B·T + T characters.

    (For random windows the worst offset T-1 leaves n-T characters, which must hold B windows of T
    plus the final target; sequential needs the same.)"""
    return batch_size * num_steps + num_steps
