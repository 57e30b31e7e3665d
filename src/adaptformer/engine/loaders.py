"""From datasets to the loaders the engine runs on: per-sample seeded augmentation, world-size-independent batch
order for training, and evaluation shards that count every sample exactly once.

Training batches: each epoch is a seeded permutation of the training samples cut into optimizer steps of
``batch_size * accum_steps * world_size`` samples; the step's samples are cut into ``accum_steps * world_size``
micro-batches and process ``r`` runs micro-batches ``r * accum_steps ...``. A single process accumulating over 2
micro-batches therefore sees exactly the same micro-batches as 2 processes without accumulation. Leftover samples
that do not fill a step are dropped for that epoch (a different set each epoch); those that no epoch of the run draws
are read once up front (:func:`read_undrawn`), so an unreadable file among them is not missed.

Evaluation: process ``r`` of ``W`` evaluates samples ``r, r + W, r + 2W, ...``; no padding, so after gathering every
sample appears exactly once. A dataset whose consecutive items are cut from one decoded clip (``views_per_clip`` > 1:
the spatial crops of a test video clip) is sharded and batched in whole groups of them, and a batch is fetched at
once (``__getitems__``), so each clip is decoded once. Every batch is ``(inputs, labels, ids)``: ``ids`` is the
sample index for images; a dataset whose items already carry an id (video clips carry their video's id) keeps it, so
multi-view predictions can be averaged per video after gathering.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, default_collate

from ..data import IMAGE_DATASETS, build_image_dataset
from .rng import derive_seed, seeded

logger = logging.getLogger(__name__)


def load_image_split(
    kind: str,
    root: str | None,
    split: str,
    transform: Callable[[Any], Any] | None = None,
    *,
    options: dict[str, Any] | None = None,
    verify_checksums: bool = True,
    skip_bad_images: bool = False,
) -> Dataset:
    """One split of an image dataset; ``verify_checksums`` is passed to the kinds that have official checksums."""
    options = dict(options or {})
    if kind in IMAGE_DATASETS and "verify_checksums" in IMAGE_DATASETS[kind].options:
        options.setdefault("verify_checksums", verify_checksums)
    return build_image_dataset(kind, root, split, transform, skip_bad_images=skip_bad_images, **options)


def with_transform(dataset: Dataset, transform: Callable[[Any], Any] | None) -> Dataset:
    """A shallow copy of ``dataset`` (sharing its samples) that applies ``transform``."""
    if not hasattr(dataset, "transform"):
        raise TypeError(f"{type(dataset).__name__} has no 'transform' attribute to set")
    out = copy.copy(dataset)
    out.transform = transform
    return out


class SeededSamples(Dataset):
    """Training items keyed by ``(epoch, index)``; augmentation draws are seeded by ``(seed, epoch, index)``.

    Returns ``(inputs, label, index)``.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> tuple[Any, ...]:
        epoch, index = key
        with seeded(derive_seed(self.seed, epoch, index)):
            inputs, label, *_ = self.dataset[index]
        return inputs, label, index


class Indexed(Dataset):
    """Evaluation items as ``(inputs, label, id)``: the sample index, unless the item already carries an id."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[Any, ...]]:
        """A batch of items, fetched together when the dataset can (video test views share their clip's decode)."""
        fetch = getattr(self.dataset, "__getitems__", None)
        items = fetch(indices) if fetch is not None else [self.dataset[i] for i in indices]
        return [(item[0], item[1], item[2] if len(item) > 2 else i) for i, item in zip(indices, items, strict=True)]


class TrainBatchSampler(Sampler[list[tuple[int, int]]]):
    """This process's training micro-batches, as lists of ``(epoch, index)`` keys (see the module docstring).

    Args:
        num_samples: size of the training set.
        batch_size: samples per micro-batch.
        accum_steps: micro-batches per optimizer step on each process.
        world_size: number of processes.
        rank: this process.
        seed: with the epoch, fixes the sample order.
    """

    def __init__(
        self, num_samples: int, batch_size: int, accum_steps: int = 1, world_size: int = 1, rank: int = 0, seed: int = 0
    ) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.accum_steps = accum_steps
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.samples_per_step = batch_size * accum_steps * world_size
        self.steps_per_epoch = num_samples // self.samples_per_step
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"the training split has {num_samples} samples, fewer than one optimizer step of "
                f"{self.samples_per_step} (batch {batch_size} x accumulation {accum_steps} x {world_size} processes); "
                "lower the batch size or the effective batch"
            )
        self.epoch = 0
        self.start_step = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select the epoch's order; skip its first ``start_step`` optimizer steps (already done before a resume)."""
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step must be in [0, {self.steps_per_epoch}], got {start_step}")
        self.epoch = epoch
        self.start_step = start_step

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.accum_steps

    def _order(self, epoch: int) -> torch.Tensor:
        """The epoch's permutation of the samples; its first ``steps_per_epoch * samples_per_step`` are drawn."""
        generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        return torch.randperm(self.num_samples, generator=generator)

    def never_drawn(self, epochs: int) -> list[int]:
        """The samples that no epoch of ``0 .. epochs - 1`` draws, on any process (each epoch drops those that do not
        fill an optimizer step); without a check they would never be read."""
        drawn = torch.zeros(self.num_samples, dtype=torch.bool)
        for epoch in range(epochs):
            drawn[self._order(epoch)[: self.steps_per_epoch * self.samples_per_step]] = True
            if bool(drawn.all()):
                break
        return torch.nonzero(~drawn).flatten().tolist()

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self._order(self.epoch).tolist()
        b = self.batch_size
        for step in range(self.start_step, self.steps_per_epoch):
            chunk = order[step * self.samples_per_step : (step + 1) * self.samples_per_step]
            for micro in range(self.rank * self.accum_steps, (self.rank + 1) * self.accum_steps):
                yield [(self.epoch, i) for i in chunk[micro * b : (micro + 1) * b]]


class ShardSampler(Sampler[int]):
    """Samples ``rank, rank + world_size, ...``: disjoint shards that together cover every sample once.

    With ``group`` > 1 the unit is a group of ``group`` consecutive samples: groups ``rank, rank + world_size, ...``,
    each whole, in order.
    """

    def __init__(self, num_samples: int, world_size: int = 1, rank: int = 0, group: int = 1) -> None:
        if group < 1 or num_samples % group:
            raise ValueError(f"{num_samples} samples cannot be cut into groups of {group}")
        starts = range(rank * group, num_samples, world_size * group)
        self.indices = [start + k for start in starts for k in range(group)]

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


AUTO_WORKERS_MAX = 4


def resolve_num_workers(requested: int | None, local_processes: int = 1) -> int:
    """Data loading workers per process: ``requested``, or (None) min(4, the CPUs this process may run on shared by
    the ``local_processes`` on this machine), so that the default never oversubscribes a small machine."""
    if requested is not None:
        return requested
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(AUTO_WORKERS_MAX, cpus // max(1, local_processes))


def read_undrawn(dataset: Dataset, indices: list[int], seed: int) -> None:
    """Read the training samples at ``indices``, which the batch order never draws, so that an unreadable file among
    them fails the run now (:class:`~adaptformer.data.ImageDecodeError` / ``VideoDecodeError`` naming it) instead of
    passing unnoticed. The reads are seeded per sample (:class:`SeededSamples`): the run's random state is untouched."""
    if not indices:
        return
    logger.info(
        "reading the %d training sample(s) that no epoch's batches draw (each epoch drops those that do not fill a "
        "step), so that an unreadable file among them is not missed", len(indices),
    )  # fmt: skip
    samples = SeededSamples(dataset, seed)
    for index in indices:
        samples[(0, index)]


def _loader_kwargs(num_workers: int, device: torch.device) -> dict[str, Any]:
    # A private generator: creating an iterator then draws its worker seed from it, not from the global RNG that
    # dropout uses, so iterators created at different points (e.g. after a resume) do not shift dropout draws.
    return {
        "num_workers": num_workers,
        "pin_memory": device.type == "cuda",
        "generator": torch.Generator().manual_seed(0),
    }


def train_loader(
    dataset: Dataset, sampler: TrainBatchSampler, seed: int, num_workers: int, device: torch.device
) -> DataLoader:
    """The training loader: ``sampler``'s micro-batches of ``(inputs, labels, indices)``, seeded per sample."""
    kwargs = _loader_kwargs(num_workers, device)
    return DataLoader(SeededSamples(dataset, seed), batch_sampler=sampler, persistent_workers=num_workers > 0, **kwargs)


def eval_loader(
    dataset: Dataset, batch_size: int, num_workers: int, device: torch.device, world_size: int = 1, rank: int = 0
) -> DataLoader:
    """An evaluation loader over this process's shard: batches of ``(inputs, labels, ids)``.

    Batches hold whole groups of the dataset's ``views_per_clip`` items (see the module docstring): ``batch_size``
    rounded down to a multiple of it, and at least one group.
    """
    group = int(getattr(dataset, "views_per_clip", 1))
    sampler = ShardSampler(len(dataset), world_size, rank, group)  # type: ignore[arg-type]
    batches = BatchSampler(sampler, max(group, batch_size - batch_size % group), drop_last=False)
    return DataLoader(
        Indexed(dataset), batch_sampler=batches, collate_fn=collate_eval, **_loader_kwargs(num_workers, device)
    )


def collate_eval(batch: list[tuple[Any, ...]]) -> Any:
    """Evaluation items ``(inputs, label, id)`` stacked as usual, except segmentation pairs of several sizes (their
    label a (H, W) mask kept at full resolution): then images and masks come as lists, ids as a tensor."""
    first_label = batch[0][1]
    if isinstance(first_label, torch.Tensor) and first_label.ndim == 2:
        sizes = {(tuple(item[0].shape), tuple(item[1].shape)) for item in batch}
        if len(sizes) > 1:
            return (
                [item[0] for item in batch],
                [item[1] for item in batch],
                torch.as_tensor([item[2] for item in batch]),
            )
    return default_collate(batch)
