import itertools
import json
import random

import numpy as np
import pytest
import torch

from hf_vanilla_transformer.batching import TokenBudgetBatchSampler, TokenBudgetStream, pack_by_width


def _pairs(count: int = 500, seed: int = 0) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    return [(rng.randint(1, 60), rng.randint(1, 60)) for _ in range(count)]


def _epoch(sampler: TokenBudgetBatchSampler, epoch: int = 0) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("bucket_size", [None, 64])
def test_every_index_once_per_epoch(shuffle, bucket_size):
    lengths = _pairs()
    sampler = TokenBudgetBatchSampler(lengths, max_tokens=300, shuffle=shuffle, bucket_size=bucket_size)
    for epoch in range(3):
        batches = _epoch(sampler, epoch)
        indices = [index for batch in batches for index in batch]
        assert sorted(indices) == list(range(len(lengths)))
        assert len(sampler) == len(batches)


@pytest.mark.parametrize("lengths", [_pairs(), [length for length, _ in _pairs()]])
def test_batches_stay_within_budget_on_both_sides(lengths):
    sampler = TokenBudgetBatchSampler(lengths, max_tokens=250, bucket_size=100)
    pairs = [length if isinstance(length, tuple) else (length, length) for length in lengths]
    for batch in _epoch(sampler):
        assert len(batch) * max(pairs[i][0] for i in batch) <= 250
        assert len(batch) * max(pairs[i][1] for i in batch) <= 250


def test_batches_group_similar_lengths():
    lengths = list(range(1, 201))
    random.Random(1).shuffle(lengths)
    batches = list(TokenBudgetBatchSampler(lengths, max_tokens=400))
    # Sorting by length leaves little padding: nearly the whole budget holds real tokens.
    real = sum(lengths)
    padded = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)
    assert padded < 1.1 * real


def test_target_side_counts_even_when_source_is_short():
    lengths = [(1, 50)] * 10
    batches = list(TokenBudgetBatchSampler(lengths, max_tokens=100, shuffle=False))
    assert [len(batch) for batch in batches] == [2] * 5


def test_same_seed_same_batches_and_epochs_differ():
    lengths = _pairs()
    first = TokenBudgetBatchSampler(lengths, max_tokens=300, seed=3)
    second = TokenBudgetBatchSampler(lengths, max_tokens=300, seed=3)
    other_seed = TokenBudgetBatchSampler(lengths, max_tokens=300, seed=4)
    assert _epoch(first, 0) == _epoch(second, 0)
    assert _epoch(first, 1) == _epoch(second, 1)
    assert _epoch(first, 0) != _epoch(first, 1)
    assert _epoch(first, 0) != _epoch(other_seed, 0)


def test_unshuffled_batches_follow_length_order():
    lengths = [5, 1, 4, 2, 3]
    batches = list(TokenBudgetBatchSampler(lengths, max_tokens=5, shuffle=False))
    assert [index for batch in batches for index in batch] == [1, 3, 4, 2, 0]


@pytest.mark.parametrize("drop_last", [False, True])
def test_replicas_split_the_batches(drop_last):
    lengths = [(10, 7)] * 130  # 13 batches of 10 under a budget of 100: one left over for 3 ranks
    single = _epoch(TokenBudgetBatchSampler(lengths, max_tokens=100, seed=1))
    ranks = [
        _epoch(
            TokenBudgetBatchSampler(
                lengths, max_tokens=100, seed=1, num_replicas=3, rank=rank, drop_last=drop_last
            )
        )
        for rank in range(3)
    ]
    assert len({len(batches) for batches in ranks}) == 1  # ranks take the same number of steps
    shares = [{index for batch in batches for index in batch} for batches in ranks]
    covered = set().union(*shares)
    remainder = len(single) % 3
    assert remainder == 1
    if drop_last:
        assert len(ranks[0]) == len(single) // 3
        assert sum(len(share) for share in shares) == len(covered)  # disjoint
        dropped = {index for batch in single[len(single) - remainder :] for index in batch}
        assert covered == set(range(len(lengths))) - dropped
    else:
        assert len(ranks[0]) == len(single) // 3 + 1
        assert covered == set(range(len(lengths)))
        interleaved = [ranks[step % 3][step // 3] for step in range(3 * len(ranks[0]))]
        assert interleaved == single + single[: 3 - remainder]  # the first batches fill the gap


def test_replicas_disjoint_when_batches_divide_evenly():
    lengths = [10] * 120  # 12 batches of 10 under a budget of 100
    ranks = [
        _epoch(TokenBudgetBatchSampler(lengths, max_tokens=100, num_replicas=4, rank=rank), epoch=2)
        for rank in range(4)
    ]
    flat = [index for batches in ranks for batch in batches for index in batch]
    assert sorted(flat) == list(range(120))


def test_replicas_default_to_a_single_process_without_torch_distributed():
    assert not torch.distributed.is_initialized()
    sampler = TokenBudgetBatchSampler([3, 4, 5], max_tokens=20)
    assert (sampler.num_replicas, sampler.rank) == (1, 0)


def test_too_long_example_names_index_and_length():
    with pytest.raises(ValueError, match=r"Example 2 has length \(3, 70\).*max_tokens=64"):
        TokenBudgetBatchSampler([(3, 4), (5, 6), (3, 70)], max_tokens=64)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"lengths": []}, ValueError, "lengths is empty"),
        ({"lengths": [1.5, 2.0]}, TypeError, "must hold ints"),
        ({"lengths": [[1, 2, 3]]}, ValueError, r"shape \(1, 3\)"),
        ({"lengths": [3, 0]}, ValueError, "Example 1 has length 0"),
        ({"max_tokens": 0}, ValueError, "max_tokens must be at least 1"),
        ({"max_tokens": 10.0}, TypeError, "max_tokens must be an int"),
        ({"num_replicas": 2, "rank": 2}, ValueError, r"rank must lie in \[0, num_replicas\)"),
        ({"bucket_size": 0}, ValueError, "bucket_size must be at least 1"),
    ],
)
def test_invalid_arguments(kwargs, error, pattern):
    arguments = {"lengths": [3, 4], "max_tokens": 10, **kwargs}
    with pytest.raises(error, match=pattern):
        TokenBudgetBatchSampler(**arguments)


def test_works_as_a_dataloader_batch_sampler():
    data = torch.arange(50)
    sampler = TokenBudgetBatchSampler([4] * 50, max_tokens=40, shuffle=False)
    loader = torch.utils.data.DataLoader(data, batch_sampler=sampler)
    assert len(loader) == 5
    assert torch.equal(torch.cat(list(loader)), data)


def test_lengths_can_come_as_an_array_and_errors_still_name_the_pair():
    lengths = np.array([(3, 4), (5, 6), (3, 70)])
    with pytest.raises(ValueError, match=r"Example 2 has length \(3, 70\).*max_tokens=64"):
        TokenBudgetBatchSampler(lengths, max_tokens=64)
    with pytest.raises(ValueError, match=r"Example 1 has length \(0, 6\)"):
        TokenBudgetBatchSampler(np.array([(3, 4), (0, 6)]), max_tokens=64)
    assert list(TokenBudgetBatchSampler(np.array(_pairs(50)), max_tokens=300, seed=2)) == list(
        TokenBudgetBatchSampler(_pairs(50), max_tokens=300, seed=2)
    )


def greedy_reference(widths: list[int], max_tokens: int) -> list[int]:
    """Where each batch starts, added example by example: the packing the paper describes."""
    starts, widest = [0], 0
    for index, width in enumerate(widths):
        if index > starts[-1] and (index - starts[-1] + 1) * max(widest, width) > max_tokens:
            starts.append(index)
            widest = 0
        widest = max(widest, width)
    return starts + [len(widths)]


@pytest.mark.parametrize("seed", range(5))
def test_packing_by_width_is_the_greedy_packing(seed):
    rng = random.Random(seed)
    widths = sorted(rng.randint(1, 60) for _ in range(rng.randint(1, 300)))
    widths = [w + rng.choice((0, 0, 5)) for w in widths]  # mostly sorted, as the target side makes them
    for max_tokens in (65, 120, 1000):
        assert pack_by_width(np.array(widths), max_tokens).tolist() == greedy_reference(widths, max_tokens)


class ListStream:
    """The part of datasets' IterableDataset that TokenBudgetStream uses: epochs, iteration and its state."""

    def __init__(self, rows):
        self.rows, self.epoch, self.start, self.position = rows, 0, 0, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def state_dict(self):
        return {"position": self.position, "epoch": self.epoch}

    def load_state_dict(self, state):
        self.start = state["position"]

    def __iter__(self):
        self.position, self.start = self.start, 0
        order = list(range(len(self.rows)))
        random.Random(self.epoch).shuffle(order)  # each epoch its own order, as datasets shuffles shards
        while self.position < len(order):
            self.position += 1
            yield self.rows[order[self.position - 1]]


def stream_rows(count=230, seed=0):
    rng = random.Random(seed)
    return [
        {"id": i, "source_length": s, "target_length": t, "input_ids": [7] * s}
        for i, (s, t) in enumerate((rng.randint(1, 40), rng.randint(1, 40)) for _ in range(count))
    ]


def test_a_stream_is_packed_a_window_at_a_time_within_the_budget_each_pair_once_an_epoch():
    rows = stream_rows()
    batches = TokenBudgetStream(ListStream(rows), max_tokens=120, window_size=50, seed=1)
    seen, epochs, padded = [], [], 0
    for batch in itertools.islice(batches, 200):
        padded += len(batch) * max(rows[e["id"]]["source_length"] for e in batch)
        widest = max(max(rows[e["id"]]["source_length"], rows[e["id"]]["target_length"]) for e in batch)
        assert len(batch) * widest <= 120
        assert "source_length" not in batch[0] and "input_ids" in batch[0]  # lengths are for batching only
        seen += [(batches.epoch, example["id"]) for example in batch]
        epochs.append(batches.epochs())
    first, second = ([i for e, i in seen if e == epoch] for epoch in (0, 1))
    assert sorted(first) == list(range(230)) and sorted(second) == list(range(230))
    assert first != second  # another order in each epoch
    # Sorted within a window of 50, the batches group similar lengths: little padding.
    assert padded < 1.2 * sum(rows[i]["source_length"] for _, i in seen)
    assert epochs[0] is None and 1 < epochs[-1] < 3 and batches.pairs_per_epoch == 230


def test_a_stream_resumes_exactly_from_any_position():
    rows = stream_rows()
    whole = TokenBudgetStream(ListStream(rows), max_tokens=120, window_size=50, seed=3)
    expected = [[example["id"] for example in batch] for batch in itertools.islice(whole, 150)]
    for stop in (0, 1, 17, 38, 120):
        reader = TokenBudgetStream(ListStream(rows), max_tokens=120, window_size=50, seed=3)
        list(itertools.islice(reader, stop + 3))  # read ahead of what is trained, as a loader may
        position = json.loads(json.dumps(reader.position(stop)))
        resumed = TokenBudgetStream(ListStream(rows), max_tokens=120, window_size=50, seed=3)
        resumed.restore(position)
        assert resumed.pairs == sum(map(len, expected[:stop]))
        assert [[e["id"] for e in batch] for batch in itertools.islice(resumed, 150 - stop)] == expected[stop:], stop
    other = TokenBudgetStream(ListStream(rows), max_tokens=100, window_size=50, seed=3)
    with pytest.raises(ValueError, match="made with max_tokens=120, this run has 100"):
        other.restore(position)


def test_a_stream_names_a_pair_too_long_for_the_budget_and_an_empty_stream():
    rows = stream_rows(10)
    rows[4]["target_length"] = 90
    with pytest.raises(ValueError, match=r"length \(\d+, 90\), more than max_tokens=64"):
        next(iter(TokenBudgetStream(ListStream(rows), max_tokens=64)))
    with pytest.raises(ValueError, match="The stream holds no pairs"):
        next(iter(TokenBudgetStream(ListStream([]), max_tokens=64)))
    with pytest.raises(ValueError, match="window_size must be at least 1"):
        TokenBudgetStream(ListStream(rows), max_tokens=64, window_size=0)
