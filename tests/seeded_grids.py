"""A tiny training set shared by the training-loop tests (test_train.py, test_distributed.py):
DRSA heads (K = 2, d = 8, E = 16) on random 16-channel 2x2 grids of 12 tracklets of 4 identities."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.data import train_labels
from pipeline.params import ModelParams

MODEL = ModelParams(backbone="resnet18", init="scratch", last_stride=2, K=2, d=8, embed_dim=16,
                    N=3)
D = 16  # channels of the fabricated grids
PIDS = [7, 7, 7, 3, 3, 3, 5, 5, 5, 9, 9, 9]  # 12 tracklets of 4 identities


class SeededGrids(Dataset):
    """Training items ``(index, seed)`` like CachedClipDataset's, in memory: a fixed random clip
    (N, D, 2, 2) per tracklet plus noise drawn from the item's seed."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.grids = torch.randn(len(PIDS), MODEL.N, D, 2, 2, generator=generator).relu()
        labels = train_labels(PIDS)
        self.labels = [labels[p] for p in PIDS]

    def __len__(self) -> int:
        return len(PIDS)

    def __getitem__(self, item: tuple[int, tuple[int, ...]]) -> tuple[torch.Tensor, int, int]:
        index, seed = item
        noise = np.random.default_rng(list(seed)).normal(0.0, 0.1, self.grids.shape[1:])
        return self.grids[index] + torch.from_numpy(noise).float(), self.labels[index], index
