"""Batches by token budget, as in the paper (§5.1).

"Sentence pairs were batched together by approximate sequence length. Each training batch
contained a set of sentence pairs containing approximately 25000 source tokens and 25000 target
tokens." `TokenBudgetBatchSampler` gives a DataLoader such batches, split across DDP ranks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler


def _lengths_array(lengths: Sequence[int] | Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Return source and target lengths; one length per example counts for both sides."""
    array = np.asarray(lengths)
    if array.size == 0:
        raise ValueError("lengths is empty: there is nothing to batch. Pass one length per example.")
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(
            f"lengths must hold ints (token counts), got values of dtype {array.dtype}. Pass e.g. "
            "dataset['source_length'] or zip(dataset['source_length'], dataset['target_length'])."
        )
    if array.ndim == 1:
        source = target = array
    elif array.ndim == 2 and array.shape[1] == 2:
        source, target = array[:, 0], array[:, 1]
    else:
        raise ValueError(
            "lengths must be one int or one (source, target) pair per example, got an array of "
            f"shape {array.shape}."
        )
    shortest = int(np.argmin(np.minimum(source, target)))
    if min(source[shortest], target[shortest]) < 1:
        raise ValueError(
            f"Example {shortest} has length {lengths[shortest]}; every example needs at least one "
            "token. Drop empty pairs first (preprocess_dataset does)."
        )
    return source.astype(np.int64), target.astype(np.int64)


class TokenBudgetBatchSampler(Sampler[list[int]]):
    """Yield lists of example indices whose padded source and target sizes each fit `max_tokens`.

    A batch of n examples costs n * (longest source) source tokens and n * (longest target) target
    tokens. With `shuffle`, each epoch (see `set_epoch`) draws a new permutation from `seed`,
    sorts each `bucket_size` slice of it by length (None: the whole dataset), packs the batches
    greedily and shuffles their order; without it, batches follow the length order.

    With several replicas every rank gets every `num_replicas`-th batch. Ranks must take the same
    number of steps, so a remainder is filled by repeating the first batches (or, with
    `drop_last`, cut off); a single process never repeats nor drops anything.
    """

    def __init__(
        self,
        lengths: Sequence[int] | Sequence[tuple[int, int]],
        max_tokens: int,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
        bucket_size: int | None = None,
    ) -> None:
        for name, value in (("max_tokens", max_tokens), ("seed", seed), ("bucket_size", bucket_size)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise TypeError(f"{name} must be an int, got {value!r} of type {type(value).__name__}.")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be positive, got {max_tokens}; the paper used 25000.")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}.")
        if bucket_size is not None and bucket_size < 1:
            raise ValueError(f"bucket_size must be positive or None (sort everything), got {bucket_size}.")
        self.source_lengths, self.target_lengths = _lengths_array(lengths)
        longest = int(np.argmax(np.maximum(self.source_lengths, self.target_lengths)))
        if max(self.source_lengths[longest], self.target_lengths[longest]) > max_tokens:
            raise ValueError(
                f"Example {longest} has length {lengths[longest]}, more than max_tokens={max_tokens}, so "
                "no batch can hold it. Filter long pairs first (preprocess_dataset's max lengths) or "
                "raise max_tokens."
            )

        distributed = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if distributed else 1
        if rank is None:
            rank = dist.get_rank() if distributed else 0
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"Got num_replicas={num_replicas} and rank={rank}; rank must lie in [0, num_replicas)."
            )
        self.max_tokens = max_tokens
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.bucket_size = bucket_size
        self.epoch = 0
        self._cached: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose permutation the next iteration uses (call it on every rank)."""
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}.")
        self.epoch = epoch

    def _pack(self, order: np.ndarray) -> list[list[int]]:
        """Cut `order` (already sorted by length) into the longest batches the budget allows."""
        batches: list[list[int]] = []
        batch: list[int] = []
        widest = 0
        sources, targets = self.source_lengths[order].tolist(), self.target_lengths[order].tolist()
        for index, source, target in zip(order.tolist(), sources, targets, strict=True):
            width = max(widest, source, target)
            if batch and (len(batch) + 1) * width > self.max_tokens:
                batches.append(batch)
                batch, width = [], max(source, target)
            batch.append(index)
            widest = width
        if batch:
            batches.append(batch)
        return batches

    def _epoch_batches(self) -> list[list[int]]:
        """All batches of the current epoch, before they are split across ranks."""
        count = len(self.source_lengths)
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(count) if self.shuffle else np.arange(count)
        bucket = self.bucket_size or count
        batches = []
        for start in range(0, count, bucket):
            chunk = order[start : start + bucket]
            # lexsort is stable, so equal lengths keep the shuffled order: ties mix across epochs.
            chunk = chunk[np.lexsort((self.target_lengths[chunk], self.source_lengths[chunk]))]
            batches += self._pack(chunk)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def _rank_batches(self) -> list[list[int]]:
        if self._cached is not None and self._cached[0] == self.epoch:
            return self._cached[1]
        batches = self._epoch_batches()
        if self.num_replicas > 1:
            remainder = len(batches) % self.num_replicas
            if self.drop_last:
                batches = batches[: len(batches) - remainder]
            elif remainder:
                padding = self.num_replicas - remainder
                batches += [batches[i % len(batches)] for i in range(padding)]
            batches = batches[self.rank :: self.num_replicas]
        self._cached = (self.epoch, batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._rank_batches()

    def __len__(self) -> int:
        return len(self._rank_batches())
