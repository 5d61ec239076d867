"""Random and sequential partitioning on exact small arrays; truncated BPTT cuts the gradient."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rnn_train.data.batching import (_streams, batches, batches_per_epoch, epoch_rng, eval_batches, min_corpus_length,
                                     random_batches, sequential_batches, window_order)
from rnn_train.model.charrnn import CharRNN, detach_state


class FixedOffset:
    """A stand-in generator: a chosen offset, identity permutation."""

    def __init__(self, offset):
        self.offset = offset

    def integers(self, low, high):
        assert low <= self.offset < high
        return self.offset

    def permutation(self, n):
        return np.arange(n)

    def shuffle(self, x):
        pass  # identity


def test_sequential_rows_continue_across_batches_exactly():
    data = np.arange(25)
    got = list(sequential_batches(data, batch_size=2, num_steps=3, rng=FixedOffset(1)))
    # after offset 1: 24 usable inputs -> 2 streams of 11 (1..11 and 12..22), chunks of 3, last partial dropped
    assert [x.tolist() for x, _ in got] == [[[1, 2, 3], [12, 13, 14]], [[4, 5, 6], [15, 16, 17]],
                                            [[7, 8, 9], [18, 19, 20]]]
    for x, y in got:
        assert (y == x + 1).all()
    for (x0, _), (x1, _) in zip(got, got[1:]):
        assert (x1[:, 0] == x0[:, -1] + 1).all()  # row b of batch i+1 continues row b of batch i


def test_random_windows_are_shuffled_non_overlapping_and_shifted():
    data = np.arange(23)
    rng = np.random.default_rng(0)
    got = list(random_batches(data, batch_size=2, num_steps=4, rng=rng))
    rows = [r for x, _ in got for r in x.tolist()]
    starts = sorted(r[0] for r in rows)
    offset = starts[0] % 4
    assert starts == [offset + 4 * i for i in range(len(starts))]  # windows tile the corpus from the offset
    assert len(rows) == (len(data) - offset - 1) // 4 // 2 * 2  # incomplete last batch dropped
    for x, y in got:
        assert (y == x + 1).all()
        assert ((x[:, 1:] - x[:, :-1]) == 1).all()


def test_random_partition_order_differs_between_epochs_but_is_reproducible():
    data = np.arange(2000)
    first = [x[:, 0].tolist() for x, _ in random_batches(data, 4, 10, epoch_rng(0, 0))]
    again = [x[:, 0].tolist() for x, _ in random_batches(data, 4, 10, epoch_rng(0, 0))]
    other = [x[:, 0].tolist() for x, _ in random_batches(data, 4, 10, epoch_rng(0, 1))]
    assert first == again and first != other


def test_offset_is_drawn_in_zero_to_num_steps():
    offsets = {int(next(sequential_batches(np.arange(500), 2, 5, epoch_rng(0, e)))[0][0, 0]) for e in range(60)}
    assert offsets == set(range(5))


def test_eval_batches_cover_the_split_in_order_with_a_short_last_chunk():
    data = np.arange(22)
    got = list(eval_batches(data, batch_size=3, num_steps=4))
    xs = np.concatenate([x for x, _ in got], axis=1)
    assert xs.tolist() == [list(range(0, 7)), list(range(7, 14)), list(range(14, 21))]
    assert got[-1][0].shape == (3, 3)
    assert len(list(eval_batches(np.arange(3), batch_size=8, num_steps=4))) == 1  # tiny split still evaluated


@pytest.mark.parametrize("partition", ["random", "sequential"])
def test_min_corpus_length_is_exactly_enough_for_one_batch_at_every_offset(partition):
    b, t = 3, 5
    n = min_corpus_length(b, t)
    fn = random_batches if partition == "random" else sequential_batches
    assert all(len(list(fn(np.arange(n), b, t, FixedOffset(o)))) >= 1 for o in range(t))
    assert len(list(fn(np.arange(n - 1), b, t, FixedOffset(t - 1)))) == 0
    assert batches_per_epoch(n, b, t, partition) == 1


def test_sequential_mode_lets_no_gradient_flow_into_the_previous_batch():
    torch.manual_seed(0)
    model = CharRNN(vocab_size=7, cell="gru", hidden_size=8)
    x0, x1 = torch.randint(0, 7, (2, 5)), torch.randint(0, 7, (2, 5))
    _, state = model(x0)
    state.retain_grad()
    logits, _ = model(x1, detach_state(state))
    F.cross_entropy(logits.reshape(-1, 7), x1.reshape(-1)).backward()
    assert state.grad is None  # the detached copy cut the graph: nothing reached batch 0's state
    # ...while without detaching the gradient does flow back (so the test above can fail)
    _, state = model(x0)
    state.retain_grad()
    logits, _ = model(x1, state)
    F.cross_entropy(logits.reshape(-1, 7), x1.reshape(-1)).backward()
    assert state.grad is not None and state.grad.abs().sum() > 0


def test_window_order_is_the_permutation_of_the_same_draws():
    for seed in range(4):
        for n in (0, 1, 2, 9, 10_007):
            a, b = epoch_rng(seed, 1), epoch_rng(seed, 1)
            assert window_order(n, a).tolist() == b.permutation(n).tolist()
            assert a.integers(0, 10**9) == b.integers(0, 10**9)  # and leaves the generator in the same state


@pytest.mark.parametrize("partition", ["random", "sequential"])
def test_batches_from_a_memory_map_equal_those_from_an_array_and_streams_are_views(tmp_path, partition):
    ids = np.random.default_rng(0).integers(0, 60, 5_000).astype(np.uint8)
    ids.tofile(tmp_path / "tokens.bin")
    mapped = np.memmap(tmp_path / "tokens.bin", dtype=np.uint8, mode="r", shape=(len(ids),))[100:4_900]
    for epoch in range(3):
        got = list(batches(partition, mapped, 4, 7, epoch_rng(0, epoch)))
        want = list(batches(partition, ids[100:4_900], 4, 7, epoch_rng(0, epoch)))
        assert len(got) == len(want) > 0
        assert all(np.array_equal(x, y) and x.dtype == np.int64 for (x, _), (y, _) in zip(got, want))
    xs, ys = _streams(mapped, 4, 3)
    assert np.shares_memory(xs, mapped) and np.shares_memory(ys, mapped)  # reshaped views, no copy
    assert sum(x.size for x, _ in eval_batches(mapped, 4, 7)) == (len(mapped) - 1) // 4 * 4
