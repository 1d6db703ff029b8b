"""Frames, clips and batches: what every training and test loader is made of.

Randomness never comes from a global RNG: each training sample carries its own seed, derived from
(seed, epoch, batch, position), which drives restricted random sampling and augmentation. So results
do not depend on the number of DataLoader workers, and a resumed run replays exactly.

Tensor letters: N frames per clip, D channels, H x W pixels (or grid cells for cached features).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from pipeline import distributed
from pipeline.errors import DatasetError
from pipeline.model import IMAGENET_MEAN, IMAGENET_STD
from pipeline.params import TrainParams
from pipeline.sampling import IdentityBatchSampler, restricted_random_sample

_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def load_frame(path: str | Path, size: tuple[int, int]) -> Tensor:
    """An image file as a normalised (3, H, W) float tensor, resized to ``size`` = (H, W)."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB").resize((size[1], size[0]), Image.BILINEAR)
    except (OSError, UnidentifiedImageError, SyntaxError, Image.DecompressionBombError) as err:
        raise DatasetError(f"{path}: cannot read the image ({err})") from err
    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)  # (3, H, W) uint8
    return (pixels.float() / 255.0 - _MEAN) / _STD


def to_pixels(frames: Tensor) -> np.ndarray:
    """Normalised frames (..., 3, H, W), as ``load_frame`` makes them, back to uint8 pixels
    (..., H, W, 3) for drawing."""
    pixels = ((frames * _STD + _MEAN).clamp(0, 1) * 255).round().byte()
    return pixels.movedim(-3, -1).numpy()


def augment_clip(clip: Tensor, rng: np.random.Generator) -> Tensor:
    """The same random horizontal flip and shift (up to 1/16 of the size) for every frame of a
    clip (N, 3, H, W), so the frames stay consistent with each other."""
    if rng.random() < 0.5:
        clip = clip.flip(-1)
    H, W = clip.shape[-2:]
    pad_h, pad_w = max(H // 16, 1), max(W // 16, 1)
    padded = torch.nn.functional.pad(clip, (pad_w, pad_w, pad_h, pad_h), mode="replicate")
    top, left = int(rng.integers(2 * pad_h + 1)), int(rng.integers(2 * pad_w + 1))
    return padded[:, :, top:top + H, left:left + W]


def train_labels(pids: Sequence[int]) -> dict[int, int]:
    """Training identities -> contiguous class labels 0..C-1 (sorted by pid)."""
    return {int(pid): label for label, pid in enumerate(sorted(set(int(p) for p in pids)))}


class SeededBatches:
    """Wraps an identity batch sampler: each index becomes ``(index, seed)`` with the seed
    ``(seed, epoch, batch, 0, position)``, the only source of sampling randomness. The position is
    the item's place in the global batch (under torchrun, past the shares of the lower ranks), so
    an item draws the same frames and augmentation whatever the number of processes. (The 0 is a
    field once used for the rank, kept so that single-process seeds stay as they were.)"""

    def __init__(self, sampler: IdentityBatchSampler, seed: int) -> None:
        self.sampler, self.seed = sampler, seed

        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """The epoch to sample; ``start`` > 0 skips its first batches (a resumed epoch: the
        batches that follow are the ones an uninterrupted epoch would give)."""
        self.sampler.set_epoch(epoch)
        self.start = start

    def __len__(self) -> int:
        return len(self.sampler) - self.start

    def __iter__(self) -> Iterator[list[tuple[int, tuple[int, ...]]]]:
        epoch, rank, start = self.sampler.epoch, self.sampler.rank, self.start
        for b, batch in enumerate(self.sampler):
            if b < start:
                continue
            first = rank * len(batch)  # shares are equal: the global position of this share
            yield [(i, (self.seed, epoch, b, 0, first + j)) for j, i in enumerate(batch)]


def _split(item: int | tuple[int, tuple[int, ...]]) -> tuple[int, np.random.Generator | None]:
    if isinstance(item, tuple):
        index, seed = item
        return index, np.random.default_rng(list(seed))
    return item, None


class ClipDataset(Dataset):
    """Clips of N frames from the tracklets of a video table (or single images: N = 1, one frame
    per row). Item: a row index at test time (each chunk's first frame), ``(index, seed)`` in
    training (one random frame per chunk, augmented). Returns (clip (N, 3, H, W), label, index)."""

    def __init__(self, frames: Sequence[Sequence[str | Path]], labels: Sequence[int],
                 num_frames: int, size: tuple[int, int], augment: bool = False) -> None:
        self.frames, self.labels = list(frames), list(labels)
        self.num_frames, self.size, self.augment = num_frames, size, augment

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, item: int | tuple[int, tuple[int, ...]]) -> tuple[Tensor, int, int]:
        index, rng = _split(item)
        frames = self.frames[index]
        picks = restricted_random_sample(len(frames), self.num_frames, rng is not None, rng)
        clip = torch.stack([load_frame(frames[i], self.size) for i in picks])  # (N, 3, H, W)
        if rng is not None and self.augment:
            clip = augment_clip(clip, rng)
        return clip, self.labels[index], index


# A cache subset up to this size is read into memory when the dataset is made (before the loader
# forks its workers, which share the pages): a training step then costs no HDF5 read (reading
# frame by frame took as long as the heads' forward and backward pass). Larger subsets (MARS at
# the paper's size: about 150 GB) are read tracklet by tracklet, one contiguous slab each.
PRELOAD_BYTES = 4 << 30


class CachedClipDataset(Dataset):
    """Clips of N cached res5c grids (N, D, h, w) of one subset ("train" or "test") of a feature
    cache: restricted random sampling over the cached frames of each tracklet. Items and returns
    as ``ClipDataset``. A subset up to ``preload_bytes`` is held in memory; a larger one is read
    from the file, opened lazily once per worker process."""

    def __init__(self, cache_path: str | Path, subset: str, num_frames: int,
                 labels: dict[int, int] | None = None,
                 preload_bytes: int = PRELOAD_BYTES) -> None:
        self.path, self.subset, self.num_frames = Path(cache_path), subset, num_frames
        with h5py.File(self.path, "r") as f:
            group = f[subset]
            self.offsets = group["offsets"][:]
            self.pids = group["pids"][:]
            grids = group["grids"]
            fits = grids.size * grids.dtype.itemsize <= preload_bytes
            self._memory = grids[:] if fits else None  # (F, D, h, w) fp16
        self.labels = [labels[int(p)] for p in self.pids] if labels else [-1] * len(self.pids)
        self._grids = None

    @property
    def in_memory(self) -> bool:
        """Whether the subset's grids are held in memory (then an item costs an index, not a
        read, and loader worker processes would only add their start and the copies between
        processes: ``workers_for`` gives such a dataset none)."""
        return self._memory is not None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, item: int | tuple[int, tuple[int, ...]]) -> tuple[Tensor, int, int]:
        index, rng = _split(item)
        start, stop = int(self.offsets[index]), int(self.offsets[index + 1])
        picks = np.asarray(restricted_random_sample(stop - start, self.num_frames,
                                                    rng is not None, rng))
        if self._memory is not None:
            grids = self._memory[start + picks]  # (N, D, h, w) fp16
        else:
            if self._grids is None:
                self._grids = h5py.File(self.path, "r")[self.subset]["grids"]
            first, last = int(picks.min()), int(picks.max())
            grids = self._grids[start + first:start + last + 1][picks - first]  # one slab
        return torch.from_numpy(grids).float(), self.labels[index], index


def workers_for(dataset: Dataset, num_workers: int) -> int:
    """The loader worker processes for ``dataset``: ``num_workers`` (``data.num_workers``),
    none for a dataset held in memory (a preloaded cache subset: measured on the default run's
    attention stage, 1.09x the heads' compute per epoch without workers, 1.12x with 2, whose
    start is not amortised over short epochs)."""
    return 0 if getattr(dataset, "in_memory", False) else num_workers


def train_loader(dataset: Dataset, pids: Sequence[int], cfg: TrainParams, seed: int,
                 num_workers: int, pin_memory: bool = False, section: str = "",
                 sets: Sequence[str] | None = None, balance: str = "identity") -> DataLoader:
    """P x M identity batches of seeded samples; under torchrun, this rank's share of each.
    ``section`` names ``cfg``'s params section (``finetune``, ``attention.spatial``, ...) in
    errors. A dataset held in memory gets no worker processes (``workers_for``). The union of
    several sets: ``sets`` (each sample's set) and ``balance`` (``IdentityBatchSampler``)."""
    num_workers = workers_for(dataset, num_workers)
    w = distributed.world()
    sampler = IdentityBatchSampler(pids, cfg.identities_per_batch, cfg.instances_per_identity,
                                   seed=seed, rank=w.rank, world_size=w.size, section=section,
                                   sets=sets, balance=balance)
    return DataLoader(dataset, batch_sampler=SeededBatches(sampler, seed), num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=num_workers > 0)


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int,
                pin_memory: bool = False) -> DataLoader:
    """Every item once, in order, in batches of ``batch_size``; under torchrun, this rank's share
    of those batches (``distributed.my_batches``: global batches rank, rank + W, ...). A dataset
    held in memory gets no worker processes (``workers_for``)."""
    num_workers = workers_for(dataset, num_workers)
    mine = distributed.my_batches(distributed.batches(len(dataset), batch_size),
                                  distributed.world())
    return DataLoader(dataset, batch_sampler=[list(b) for b in mine], num_workers=num_workers,
                      pin_memory=pin_memory)


class UnionDataset(Dataset):
    """The datasets of several sets one after the other (the schedule across sets): item ``i``
    of the union is item ``i - start`` of the dataset it falls in, a training item's seed passed
    through. Held in memory when every part is."""

    def __init__(self, parts: Sequence[Dataset]) -> None:
        self.parts = list(parts)
        self.starts = np.cumsum([0] + [len(d) for d in self.parts])

    @property
    def in_memory(self) -> bool:
        return all(getattr(d, "in_memory", False) for d in self.parts)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, item: int | tuple[int, tuple[int, ...]]) -> tuple[Tensor, int, int]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} of a union of {len(self)}")
        part = int(np.searchsorted(self.starts, index, side="right")) - 1
        local = index - int(self.starts[part])
        clip, label, _ = self.parts[part][(local, seed) if seed is not None else local]
        return clip, label, index
