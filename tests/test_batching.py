import random

import pytest
import torch

from hf_vanilla_transformer.batching import TokenBudgetBatchSampler


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
        ({"max_tokens": 0}, ValueError, "max_tokens must be positive"),
        ({"max_tokens": 10.0}, TypeError, "max_tokens must be an int"),
        ({"num_replicas": 2, "rank": 2}, ValueError, r"rank must lie in \[0, num_replicas\)"),
        ({"bucket_size": 0}, ValueError, "bucket_size must be positive"),
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
