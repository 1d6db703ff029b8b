"""A split's test set as the models see it, and a model's embeddings of its test clips.

Test clips are the first frame of each of the N chunks of a tracklet (paper §4.2). A model runs
on the cached grids when it is a set of heads or when its own backbone made the cache and ends at
the cache's block (its head then sees exactly the grids it would compute), on the frames
otherwise. Embeddings that do not depend on the heads (the Baseline's) are computed once by their
own stage and saved (``save_embeddings``): `evaluate` reads them (``load_embeddings``) instead of
running that model again in every experiment on the heads.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from pipeline import distributed
from pipeline.attention_stats import (
    attention_frame_stats,
    attention_ground_truth,
    attention_summary,
    cached_rows,
    clip_ground_truth,
    read_parts,
)
from pipeline.checkpoints import load, load_exported
from pipeline.data import CachedClipDataset, ClipDataset, eval_loader
from pipeline.errors import CacheError, DatasetError
from pipeline.features import cache_attrs, embed, open_cache
from pipeline.files import sha256_file, write_with
from pipeline.model import HeadOutput
from pipeline.params import Params
from pipeline.runtime import compiled
from pipeline.sampling import restricted_random_sample
from pipeline.tables import load_video_index

log = logging.getLogger("embedding")


def record_maps(out: HeadOutput, keep_maps: bool = False) -> dict | None:
    """What ``embed`` keeps of each test batch: the statistics of its spatial attention maps, and
    with ``keep_maps`` the maps (B, N, K, L) and temporal weights (B, N, K) themselves (for the
    ground truth: small, float32)."""
    if out.spatial is None:
        return None
    maps = out.spatial.float().cpu().numpy()
    record = attention_frame_stats(maps)
    if keep_maps:
        record.update(spatial=maps, temporal=out.temporal.float().cpu().numpy())
    return record


def clip_rows(offsets: np.ndarray, frame_index: np.ndarray, frame_counts: list[int], N: int,
              on_cache: bool) -> np.ndarray:
    """Cache rows (T, N) of the frames of the test clips (each chunk's first frame, paper §4.2):
    chunks of the cached frames for a model on the cache, of all the frames for a model on
    frames (-1 where such a frame was not cached)."""
    if on_cache:
        picks = [restricted_random_sample(int(n), N, train=False) for n in np.diff(offsets)]
        return offsets[:-1, None] + np.array(picks, dtype=np.int64)
    positions = [restricted_random_sample(n, N, train=False) for n in frame_counts]
    return cached_rows(offsets, frame_index, np.array(positions, dtype=np.int64))


@dataclasses.dataclass
class TestSet:
    """One split's test tracklets as the models see them: the index's rows, the cache's
    attributes the models are checked against (``expect``), where each tracklet's frames lie in
    the cache, the cache's ground truth of the frames (None for a real set), and a loader of test
    clips from the cache and one from the frames."""

    table: pd.DataFrame
    expect: dict
    offsets: np.ndarray
    frame_index: np.ndarray
    truth: tuple | None
    loaders: dict[str, DataLoader]


def add_test_set_args(parser: argparse.ArgumentParser, backbone_help: str) -> None:
    """The arguments ``load_test_set`` reads: ``--params``, ``--dataset``, ``--split``,
    ``--index``, ``--cache`` and ``--backbone`` (the fine-tuned model that made the cache)."""
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--dataset", required=True, help="the video set's name")
    parser.add_argument("--split", type=int, required=True, help="the split id")
    parser.add_argument("--index", type=Path, required=True, help="a split_<k>.json")
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--backbone", type=Path, required=True, help=backbone_help)


def load_test_set(args: argparse.Namespace, p: Params, device: torch.device) -> TestSet:
    """The test set of ``args.dataset``'s split ``args.split`` (``args``: a stage's ``--index``,
    ``--cache``, ``--backbone``, ``--dataset`` and ``--split``), the cache checked against the
    backbone that made it and the params."""
    size = (p.data.height, p.data.width)
    table = load_video_index(args.index)
    for key, given in (("dataset", args.dataset), ("split", args.split)):
        if key in table.attrs and table.attrs[key] != given:  # what the results file records
            raise DatasetError(f"{args.index}: indexes {key} {table.attrs[key]!r}, but --{key} "
                               f"is {given!r}: pass the {key} the index file was made for, or "
                               "its own index file")
    test = table[table["subset"] == "test"].reset_index(drop=True)
    expect = {**cache_attrs(args.backbone, load(args.backbone), p.model.grid_block),
              "height": size[0], "width": size[1]}
    with open_cache(args.cache, expect) as cache:
        truth = read_parts(cache, "test")  # (parts, visibility, names); None for a real set
        offsets, frame_index = cache["test/offsets"][()], cache["test/frame_index"][()]
    cached = CachedClipDataset(args.cache, "test", p.model.N)
    if not np.array_equal(cached.pids, test["pid"].to_numpy()):
        raise CacheError(f"{args.cache}: its test tracklets are not those of {args.index}: "
                         "re-run the cache stage")
    pin = device.type == "cuda"
    frames = ClipDataset(test["frames"].tolist(), [0] * len(test), p.model.N, size)
    loaders = {"cache": eval_loader(cached, p.evaluate.batch_size, p.data.num_workers, pin),
               "frames": eval_loader(frames, p.evaluate.batch_size, p.data.num_workers, pin)}
    return TestSet(test, expect, offsets, frame_index, truth, loaders)


def embed_model(path: Path, name: str, test: TestSet, p: Params, device: torch.device,
                autocast: bool) -> tuple[nn.Module, dict, np.ndarray, dict | None]:
    """One exported model over the test clips: (the model, its payload, the embeddings, its
    attention statistics or None). It runs on the cached grids when it is a set of heads or when
    its own backbone made the cache and ends at the cache's block (the baseline's whole backbone
    does not run on the grids of an earlier ``model.grid_block``), on the frames otherwise."""
    model, payload = load_exported(path)
    model.to(device)
    on_cache = payload["kind"] == "head" or (
        sha256_file(path) == test.expect["checkpoint_sha256"]
        and model.backbone.grid_block == test.expect["grid_block"])
    if on_cache and payload["kind"] == "net":
        net: nn.Module = model.head  # the cache holds this model's own backbone's grids
    else:
        net = model
        if payload["kind"] == "net":
            compiled(model.backbone, p.runtime.compile)
    features, records = embed(net, test.loaders["cache" if on_cache else "frames"], device,
                              autocast and not on_cache, desc=name,
                              record=functools.partial(record_maps,
                                                       keep_maps=test.truth is not None))
    if not records or records[0] is None:
        return model, payload, features, None
    attention = attention_summary(records)
    if test.truth is not None and distributed.world().is_main:
        rows = clip_rows(test.offsets, test.frame_index, test.table["frames"].map(len).tolist(),
                         p.model.N, on_cache)
        attention.update(attention_ground_truth(
            np.concatenate([r["spatial"] for r in records]),
            np.concatenate([r["temporal"] for r in records]),
            *clip_ground_truth(test.truth[0], test.truth[1], rows), list(test.truth[2])))
        if attention["frames_missing"]:
            log.info("%s: %d frames of the test clips are not cached: left out of the "
                     "ground-truth measures", name, attention["frames_missing"])
    return model, payload, features, attention


# --- embeddings saved by one stage, read by another ----------------------------------------------
# An .npz of plain arrays (np.load without pickles): "embedding" (T, E) float32, and what they
# were computed on, checked when read: the test tracklets' pids, cameras and frame counts, the
# clip length N, the input size; the sha256 of the model file is recorded, not checked (the
# reader does not know which model file stands behind it).

def tracklets_fingerprint(test: TestSet, p: Params) -> dict[str, np.ndarray]:
    """What a saved embedding must have been computed on to stand for a model on ``test``."""
    return {"pid": test.table["pid"].to_numpy(np.int64),
            "camid": test.table["camid"].to_numpy(np.int64),
            "frames": test.table["frames"].map(len).to_numpy(np.int64),
            "N": np.int64(p.model.N), "size": np.array([p.data.height, p.data.width], np.int64)}


def save_embeddings(path: Path, features: np.ndarray, test: TestSet, p: Params,
                    model_path: Path) -> None:
    """Write a model's test embeddings with what they were computed on, atomically."""
    arrays = {"embedding": features.astype(np.float32, copy=False),
              **tracklets_fingerprint(test, p), "model_sha256": np.array(sha256_file(model_path))}

    def writer(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    write_with(path, writer)


def load_embeddings(path: Path, test: TestSet, p: Params) -> np.ndarray:
    """The embeddings (T, E) saved at ``path`` (``save_embeddings``), checked to be of ``test``'s
    tracklets under ``p``'s clip length and input size."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            arrays = {key: saved[key] for key in saved.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as err:
        raise CacheError(f"{path}: not a saved embedding file ({err}): re-run the stage that "
                         "writes it") from None
    expected = tracklets_fingerprint(test, p)
    missing = sorted({"embedding", *expected} - set(arrays))
    if missing:
        raise CacheError(f"{path}: lacks {', '.join(missing)}: re-run the stage that writes it")
    for key, value in expected.items():
        if not np.array_equal(arrays[key], value):
            what = {"N": "model.N", "size": "data.height/data.width"}.get(key, "test tracklets")
            raise CacheError(f"{path}: computed with other {what} than this evaluation's: "
                             "re-run the stage that writes it")
    features = arrays["embedding"]
    if features.ndim != 2 or len(features) != len(test.table):
        raise CacheError(f"{path}: embedding of shape {features.shape}, expected "
                         f"({len(test.table)}, E): re-run the stage that writes it")
    return features
