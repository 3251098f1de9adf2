"""Batches by token budget, as in the paper (§5.1).

"Sentence pairs were batched together by approximate sequence length. Each training batch
contained a set of sentence pairs containing approximately 25000 source tokens and 25000 target
tokens." `TokenBudgetBatchSampler` gives a DataLoader such batches, split across DDP ranks;
`TokenBudgetStream` makes them from a stream, a window of pairs at a time.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch.distributed as dist
from torch.utils.data import IterableDataset, Sampler

from ._validation import check_int


def _length(array: np.ndarray, index: int) -> int | tuple[int, int]:
    return int(array[index]) if array.ndim == 1 else (int(array[index, 0]), int(array[index, 1]))


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
            f"Example {shortest} has length {_length(array, shortest)}; every example needs at least one "
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
        check_int("max_tokens", max_tokens, 1, "The paper used 25000.")
        check_int("seed", seed, 0)
        if bucket_size is not None:
            check_int("bucket_size", bucket_size, 1, "None sorts everything.")
        self.source_lengths, self.target_lengths = _lengths_array(lengths)
        longest = int(np.argmax(np.maximum(self.source_lengths, self.target_lengths)))
        if max(self.source_lengths[longest], self.target_lengths[longest]) > max_tokens:
            raise ValueError(
                f"Example {longest} has length {_length(np.asarray(lengths), longest)}, more than "
                f"max_tokens={max_tokens}, so "
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
        self._widths = np.maximum(self.source_lengths, self.target_lengths)
        self._cached: tuple[int, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose permutation the next iteration uses (call it on every rank)."""
        check_int("epoch", epoch, 0)
        self.epoch = epoch

    def _epoch_batches(self) -> tuple[np.ndarray, np.ndarray]:
        """The current epoch's batches before they are split across ranks: the examples in batch order, and where each
        batch starts in it (one more entry than batches)."""
        count = len(self.source_lengths)
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(count) if self.shuffle else np.arange(count)
        bucket = self.bucket_size or count
        starts = []
        for start in range(0, count, bucket):
            chunk = order[start : start + bucket]
            # lexsort is stable, so equal lengths keep the shuffled order: ties mix across epochs.
            order[start : start + bucket] = chunk[np.lexsort((self.target_lengths[chunk], self.source_lengths[chunk]))]
            starts.append(start + pack_by_width(self._widths[order[start : start + bucket]], self.max_tokens)[:-1])
        bounds = np.append(np.concatenate(starts), count)
        if self.shuffle:  # the batches in a random order, each kept whole
            batch_order = rng.permutation(len(bounds) - 1)
            sizes = np.diff(bounds)[batch_order]
            order = np.concatenate([order[bounds[i] : bounds[i + 1]] for i in batch_order])
            bounds = np.append(0, np.cumsum(sizes))
        return order, bounds

    def _rank_batches(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """This rank's batches: the epoch's order and batch starts, and the numbers of the batches it takes."""
        if self._cached is not None and self._cached[0] == self.epoch:
            return self._cached[1]
        order, bounds = self._epoch_batches()
        taken = np.arange(len(bounds) - 1)
        if self.num_replicas > 1:
            remainder = len(taken) % self.num_replicas
            if self.drop_last:
                taken = taken[: len(taken) - remainder]
            elif remainder:
                taken = np.append(taken, np.arange(self.num_replicas - remainder) % len(taken))
            taken = taken[self.rank :: self.num_replicas]
        self._cached = (self.epoch, (order, bounds, taken))
        return order, bounds, taken

    def __iter__(self) -> Iterator[list[int]]:
        order, bounds, taken = self._rank_batches()
        for batch in taken.tolist():
            yield order[bounds[batch] : bounds[batch + 1]].tolist()

    def __len__(self) -> int:
        return len(self._rank_batches()[2])


def pack_by_width(widths: np.ndarray, max_tokens: int) -> np.ndarray:
    """Cut examples of these widths (in this order, sorted by length) into the longest runs whose count times their
    widest member fits `max_tokens`, greedily; returns where each run starts, and the end. Every width must fit."""
    bounds = [0]
    start, count = 0, len(widths)
    while start < count:
        # A run from `start` holds at most max_tokens // widths[start] examples; within that, the running maximum
        # says how many fit.
        limit = min(count - start, max_tokens // int(widths[start]))
        widest = np.maximum.accumulate(widths[start : start + limit])
        fits = widest * np.arange(1, limit + 1) <= max_tokens
        start += limit if fits[-1] else int(np.argmin(fits))
        bounds.append(start)
    return np.asarray(bounds, dtype=np.int64)


@dataclass(frozen=True)
class _Window:
    """One window of a stream as it was batched: where it starts in the stream and which batches it gave."""

    epoch: int
    index: int
    stream_state: dict | None  # the stream's state_dict before the window; None: the start of the epoch
    first_batch: int  # the number of the window's first batch, counted from the start of training
    batch_sizes: tuple[int, ...]
    pairs_before: int  # pairs given out before the window, in all epochs
    pairs_into_epoch: int  # of them, in this epoch


class TokenBudgetStream(IterableDataset):
    """Token-budget batches (§5.1) from a stream of examples, for a DataLoader with `batch_size=None`.

    The stream is read `window_size` pairs at a time, its shuffle buffer: each window is shuffled with `seed`, sorted
    by length and packed as `TokenBudgetBatchSampler` packs a bucket, and its batches come out in a random order,
    without the length columns (they are for batching only). When the stream ends it is read again, the next epoch
    (datasets' `set_epoch`), without end: training stops at its max_steps.

    `position(batches)` is where the stream stood after that many batches: the stream's state before the window and
    how far into the window. `restore(position)` resumes there exactly: the window is read again from that state
    and packed the same way. The stream is a datasets `IterableDataset` (or anything with `set_epoch`, `state_dict`
    and `load_state_dict`); under several processes give each one its own share (`data.stream_share`).
    """

    def __init__(
        self,
        stream,
        max_tokens: int,
        window_size: int = 20_000,
        seed: int = 0,
        length_columns: tuple[str, str] = ("source_length", "target_length"),
    ) -> None:
        for name, value, minimum in (("max_tokens", max_tokens, 1), ("window_size", window_size, 1), ("seed", seed, 0)):
            check_int(name, value, minimum)
        self.stream = stream
        self.max_tokens = max_tokens
        self.window_size = window_size
        self.seed = seed
        self.length_columns = tuple(length_columns)
        self.batches = 0  # batches given out since training began
        self.pairs = 0  # pairs in them
        self.epoch = 0  # the pass over the stream under way
        self.pairs_into_epoch = 0
        self.pairs_per_epoch: int | None = None  # known once a pass is complete
        self._windows: deque[_Window] = deque(maxlen=4)  # the last few: the reader runs ahead of training by little
        self._start = _Window(0, 0, None, 0, (), 0, 0)

    def epochs(self) -> float | None:
        """Passes over the stream so far, with the fraction of the current one once a pass's length is known."""
        if self.pairs_per_epoch is None:
            return None if self.epoch == 0 else float(self.epoch)
        return round(self.epoch + min(1.0, self.pairs_into_epoch / self.pairs_per_epoch), 4)

    def _pack(self, examples: list[dict], epoch: int, window: int) -> list[np.ndarray]:
        lengths = np.array([[example[column] for column in self.length_columns] for example in examples])
        widths = lengths.max(axis=1)
        if widths.max() > self.max_tokens:
            longest = int(widths.argmax())
            raise ValueError(
                f"A pair of the stream has length {tuple(lengths[longest].tolist())}, more than max_tokens="
                f"{self.max_tokens}, so no batch can hold it. Filter long pairs first (preprocess_dataset's max "
                "lengths) or raise max_tokens."
            )
        rng = np.random.default_rng([self.seed, epoch, window])
        order = rng.permutation(len(examples))
        order = order[np.lexsort((lengths[order, 1], lengths[order, 0]))]
        bounds = pack_by_width(widths[order], self.max_tokens)
        return [order[bounds[i] : bounds[i + 1]] for i in rng.permutation(len(bounds) - 1)]

    def __iter__(self) -> Iterator[list[dict]]:
        if self._windows:  # read before: go on after the last batch given out
            self.restore(self.position(self.batches))
        start = self._start
        epoch, window, state = start.epoch, start.index, start.stream_state
        skip = self.batches - start.first_batch
        self.pairs, self.pairs_into_epoch = start.pairs_before, start.pairs_into_epoch
        while True:
            self.epoch = epoch
            self.stream.set_epoch(epoch)
            if state is not None:
                self.stream.load_state_dict(state)
            examples = iter(self.stream)
            while True:
                examples_window = list(itertools.islice(examples, self.window_size))
                if not examples_window:
                    break
                batches = self._pack(examples_window, epoch, window)
                sizes = tuple(len(batch) for batch in batches)
                before = self.pairs - sum(sizes[:skip])
                into_epoch = self.pairs_into_epoch - (self.pairs - before)
                self._windows.append(_Window(epoch, window, state, self.batches - skip, sizes, before, into_epoch))
                for batch in batches[skip:]:
                    self.batches += 1
                    self.pairs += len(batch)
                    self.pairs_into_epoch += len(batch)
                    yield [self._model_inputs(examples_window[i]) for i in batch.tolist()]
                skip, window = 0, window + 1
                state = self.stream.state_dict()
            if window == 0:
                raise ValueError("The stream holds no pairs (after filtering): there is nothing to train on.")
            self.pairs_per_epoch = self.pairs_per_epoch or self.pairs_into_epoch
            epoch, window, state, self.pairs_into_epoch = epoch + 1, 0, None, 0

    def _model_inputs(self, example: dict) -> dict:
        return {key: value for key, value in example.items() if key not in self.length_columns}

    def position(self, batches: int) -> dict:
        """Where the stream stood once `batches` batches were given out (a JSON-able dict for `restore`)."""
        window = next(
            (w for w in reversed(self._windows) if w.first_batch <= batches <= w.first_batch + len(w.batch_sizes)), None
        )
        if window is None:
            if self._windows or batches != self.batches:
                raise ValueError(f"Batch {batches} is not in the windows read last: its place in the stream is lost.")
            window = self._start  # nothing read since the start or the restore
        into = batches - window.first_batch
        done = sum(window.batch_sizes[:into])
        return {
            "epoch": window.epoch,
            "window": window.index,
            "stream_state": window.stream_state,
            "batches": batches,
            "batches_into_window": into,
            "pairs": window.pairs_before + done,
            "pairs_into_epoch": window.pairs_into_epoch + done,
            "pairs_per_epoch": self.pairs_per_epoch,
            "window_size": self.window_size,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
        }

    def restore(self, position: dict) -> None:
        """Resume from `position(...)` of a stream read with the same window, budget and seed."""
        for name in ("window_size", "max_tokens", "seed"):
            if position[name] != getattr(self, name):
                raise ValueError(
                    f"The saved stream position was made with {name}={position[name]}, this run has "
                    f"{getattr(self, name)}: the same batches cannot be made again. Resume with the same value."
                )
        into = position["batches_into_window"]
        self.batches, self.pairs = position["batches"], position["pairs"]
        self.epoch, self.pairs_into_epoch = position["epoch"], position["pairs_into_epoch"]
        self.pairs_per_epoch = position["pairs_per_epoch"]
        self._windows.clear()
        # The start of the window, as far as its first `into` batches are concerned: their pairs are counted already.
        self._start = _Window(
            position["epoch"],
            position["window"],
            position["stream_state"],
            self.batches - into,
            (),
            position["pairs"],
            position["pairs_into_epoch"],
        )
