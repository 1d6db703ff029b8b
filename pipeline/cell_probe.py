"""How much identity each cell of the cached grid carries, against how much of it is
person: the test for whether attention on the person should pay on this CNN's features. The cells
are those of the cache's grid: res5c, or the block ``model.grid_block`` names.

For every cell of the grid, the test tracklets are described by that cell's feature alone (the
mean over the tracklet's cached frames, L2-normalised) and ranked under the official protocol:
rank-1 per cell, beside the cell's person share (label maps of the test frames). Then three fixed
pooled descriptors: every cell alike (a uniform map), each frame's cells weighted by their person
share (an oracle person map), and by their background share (an oracle background map), each
scored in full (rank-1 and mAP with intervals, the same-camera share of the nearest 10): the
grid's locality, and its ceiling under perfect spatial attention. If the
background map ranks as well as the person map, the identity loss gives heads no reason to look
at the person; a cell away from the person that ranks like one on it sees the person through its
receptive field (at res5c that field spans the whole frame).

Needs a cache with ground truth (the synthetic set); the ``references`` stage runs it on every
(set, split) whose cache has it.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from pipeline.attention_stats import BACKGROUND, person_labels, read_parts
from pipeline.formatting import pct_of, text_table
from pipeline.metrics import (
    evaluate_rank,
    pairwise_distance,
    protocol_gallery,
    same_camera,
    score,
)


def tracklet_pools(grids: h5py.Dataset, offsets: np.ndarray,
                   weights: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One pass over the tracklets' cached grids: the mean over each tracklet's frames of its
    grids (T, D, h, w), and for each map of ``weights`` (F, h, w) the mean over its frames of each
    frame's cells weighted by the map, normalised per frame, (T, D)."""
    means, pooled = [], {name: [] for name in weights}
    for i in tqdm(range(len(offsets) - 1), desc="tracklets", leave=False):
        frames = slice(offsets[i], offsets[i + 1])
        x = grids[frames].astype(np.float32)  # (n, D, h, w)
        means.append(x.mean(axis=0))
        for name, weight in weights.items():
            w = weight[frames]  # (n, h, w)
            w = w / np.maximum(w.sum(axis=(1, 2), keepdims=True), 1e-12)
            pooled[name].append(np.einsum("ndhw,nhw->d", x, w) / len(x))
    return np.stack(means), {name: np.stack(rows) for name, rows in pooled.items()}


def _normalised(features: np.ndarray) -> np.ndarray:
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def scores(features: np.ndarray, pids, camids, is_query, dataset: str | None = None) -> dict:
    """Official rank-1 and mAP with their 95 percent intervals (under ``dataset``'s protocol,
    ``pipeline.metrics.score``), and the same-camera share of the nearest 10
    (``pipeline.metrics.same_camera``), of L2-normalised ``features``."""
    features = _normalised(features)
    official = score(features, pids, camids, is_query, ["official"], 1, dataset)[0]["official"]
    return {**official, **same_camera(features, pids, camids, is_query)}


def rank1(features: np.ndarray, pids, camids, is_query, dataset: str | None = None) -> float:
    """Official rank-1 alone (one per cell: ranked once, without the bootstrap interval and the
    same-camera share the table of cells never shows)."""
    features, is_query = _normalised(features), np.asarray(is_query, dtype=bool)
    gallery = protocol_gallery("official", pids, is_query, dataset)
    result = evaluate_rank(pairwise_distance(features[is_query], features[gallery]),
                           pids[is_query], pids[gallery], camids[is_query], camids[gallery],
                           max_rank=1)
    return float(result["cmc"][0])


def probe(cache: Path, dataset: str | None = None) -> dict | None:
    """Every cell's rank-1 beside its person share, and the grid pooled on the fixed maps, of the
    test set of ``cache``, under ``dataset``'s official protocol; None for a cache without ground
    truth (no label maps)."""
    truth = read_parts(cache, "test")
    if truth is None:
        return None
    parts, _, names = truth  # (F, P, h, w)
    person = parts[:, person_labels(names)].sum(axis=1)  # (F, h, w)
    maps = {"person share map": person, "background share map": parts[:, names.index(BACKGROUND)]}
    with h5py.File(cache, "r") as f:
        group = f["test"]
        ids = (group["pids"][()], group["camids"][()], group["is_query"][()].astype(bool))
        means, weighted = tracklet_pools(group["grids"], group["offsets"][()], maps)
    pooled = {"uniform map": means.mean(axis=(2, 3)), **weighted}
    h, w = means.shape[2:]
    cells = [[rank1(means[:, :, y, x], *ids, dataset) for x in range(w)] for y in range(h)]
    share = person.mean(axis=0)
    corr = float(np.corrcoef(np.ravel(cells), share.ravel())[0, 1])
    return {"cache": str(cache), "cell_rank1": cells, "cell_person_share": share.tolist(),
            "rank1_person_share_corr": corr,
            "pooled": {name: scores(x, *ids, dataset) for name, x in pooled.items()}}


def grid_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-cell table: rank-1 in percent (person share), one row per grid
    row, top to bottom."""
    cells, share = np.array(result["cell_rank1"]), np.array(result["cell_person_share"])
    rows = [[f"row {y + 1}", *(f"{100 * r:.1f} ({s:.2f})" for r, s in zip(rr, ss, strict=True))]
            for y, (rr, ss) in enumerate(zip(cells, share, strict=True))]
    return ["", *(f"column {x + 1}" for x in range(cells.shape[1]))], rows


def pooled_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the fixed-map pooling table."""
    return (["pooling", "rank-1 (%)", "mAP (%)", "same camera top 10"],
            [[k, pct_of(v, "rank1"), pct_of(v, "mAP"),
              f"{v['same_camera_top10']:.2f}"] for k, v in result["pooled"].items()])


def render(result: dict) -> str:
    return "\n\n".join([
        "Official rank-1 (%) of each grid cell's feature alone, (its person share):",
        text_table(*grid_rows(result)),
        f"Correlation of a cell's rank-1 with its person share: "
        f"{result['rank1_person_share_corr']:+.2f}",
        text_table(*pooled_rows(result))])
