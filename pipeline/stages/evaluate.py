"""Stage ``evaluate``: every model of one video set's split on its test protocol(s).

Models (rows of the paper's Table 1): ``baseline`` (the fine-tuned backbone, frame features
averaged), ``spatial`` (SpaAtn+Q: spatial heads, average temporal pooling), ``temporal``
(SpaAtn+Q+TemAtn, or the configured pooling), ``joint`` (+Ind, end to end). The first three run on
the cached res5c grids of their common fine-tuned backbone, ``joint`` on the frames. Test clips
are the first frame of each of the N chunks (paper §4.2).

Protocols (``evaluate.protocols``, see ``pipeline.metrics``): ``official`` ranks each query against
every test tracklet; ``torchreid`` against the test tracklets that are neither queries nor junk.
Metrics are fractions in [0, 1]: rank1, rank5, rank10, rank20, mAP, plus num_valid_queries and
num_queries. For the attention models the file also gives, over all test clips' frames, how much
the K spatial maps overlap (mean pairwise Bhattacharyya coefficient: 0 disjoint, 1 identical) and
their mean entropy (nats; log L for uniform maps), so that Q, Q' and no regulariser can be
compared as numbers. ``--figures`` receives the paper's Fig. 3 for the first
``evaluate.attention_figures`` queries: each test frame with the final model's K spatial maps
and temporal weights.

    python -m pipeline.stages.evaluate --params params.yaml \
        --index data/index/<set>/split_<k>.json --cache data/cache/<set>-<k>.h5 \
        --models data/models/<set>-<k> --out metrics/eval/<set>-<k>.json \
        --cmc metrics/plots/cmc/<set>-<k>.csv --figures metrics/plots/attention/<set>-<k>
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline import distributed
from pipeline.data import CachedClipDataset, ClipDataset, eval_loader, load_frame
from pipeline.datasets.common import load_video_index
from pipeline.features import CacheError, cache_attrs, embed, open_cache
from pipeline.figures import attention_figure, save_figure
from pipeline.metrics import attention_entropy, attention_overlap, evaluate_rank, pairwise_distance
from pipeline.model import IMAGENET_MEAN, IMAGENET_STD, HeadOutput, grid_size
from pipeline.params import load_params
from pipeline.sampling import restricted_random_sample
from pipeline.stages.common import format_table, run, write_csv, write_json
from pipeline.train import compiled, load, load_exported, start, use_autocast

log = logging.getLogger("evaluate")
MODELS = ("baseline", "spatial", "temporal", "joint")
RANKS = (1, 5, 10, 20)


def protocol_gallery(protocol: str, pids: np.ndarray, is_query: np.ndarray) -> np.ndarray:
    """Boolean mask of the test tracklets forming the gallery under ``protocol``."""
    if protocol == "official":
        return np.ones(len(pids), dtype=bool)
    return ~is_query & (pids != -1)


def score(features: np.ndarray, test: pd.DataFrame, protocols: list[str],
          max_rank: int) -> tuple[dict, dict]:
    """Metrics and CMC curves of one model's test features under each protocol."""
    pids, camids = test["pid"].to_numpy(), test["camid"].to_numpy()
    is_query = test["is_query"].to_numpy()
    metrics, curves = {}, {}
    for protocol in protocols:
        gallery = protocol_gallery(protocol, pids, is_query)
        distmat = pairwise_distance(features[is_query], features[gallery])
        result = evaluate_rank(distmat, pids[is_query], pids[gallery], camids[is_query],
                               camids[gallery], max_rank=max_rank, protocol=protocol)
        cmc = result["cmc"]
        metrics[protocol] = {f"rank{r}": float(cmc[r - 1]) for r in RANKS if r <= max_rank}
        metrics[protocol].update({"mAP": result["mAP"],
                                  "num_valid_queries": result["num_valid_queries"],
                                  "num_queries": result["num_queries"]})
        curves[protocol] = cmc
    return metrics, curves


class AttentionRecorder:
    """Wraps a model for ``embed``: passes its output on and keeps, per test frame, the overlap and
    the entropy of its K spatial attention maps."""

    def __init__(self, model) -> None:
        self.model = model
        self.overlap: list[np.ndarray] = []
        self.entropy: list[np.ndarray] = []

    def __call__(self, clips: torch.Tensor) -> HeadOutput:
        out = self.model(clips)
        maps = out.spatial.float().cpu().numpy()  # (B, N, K, L)
        self.overlap.append(attention_overlap(maps).ravel())
        self.entropy.append(attention_entropy(maps).ravel())
        return out

    def summary(self) -> dict:
        """Means over every test frame (under torchrun: of all ranks, called on every rank)."""
        overlap = np.concatenate(distributed.gather_batches(self.overlap))
        entropy = np.concatenate(distributed.gather_batches(self.entropy))
        return {"overlap": None if np.isnan(overlap).all() else float(overlap.mean()),
                "entropy": float(entropy.mean())}


def draw_attention(model, test: pd.DataFrame, count: int, N: int, size: tuple[int, int],
                   device: torch.device, out_dir: Path, dataset: str) -> list[Path]:
    """Fig. 3 for the first ``count`` queries: the N test frames of each (the first of each
    chunk), the model's K spatial maps over them and the temporal weights. Replaces the folder."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    cfg = model.head.cfg
    grid = grid_size(*size, cfg.last_stride)
    written = []
    for old in out_dir.glob("*.png") if out_dir.exists() else []:
        old.unlink()
    queries = test[test["is_query"]].head(count)
    for row in queries.itertuples():
        picks = restricted_random_sample(len(row.frames), N, train=False, rng=None)
        clip = torch.stack([load_frame(row.frames[i], size) for i in picks])  # (N, 3, H, W)
        with torch.no_grad():
            out = model(clip[None].to(device))
        pixels = ((clip * std + mean).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1)
        tracklet = Path(row.frames[0]).parent.name
        name = f"q{row.Index:04d}_pid{row.pid}_cam{row.camid}"
        fig = attention_figure(
            pixels.numpy(), out.spatial[0].float().cpu().numpy(), grid,
            out.temporal[0].float().cpu().numpy(),
            title=f"{dataset}: query {row.Index} (pid {row.pid}, camera {row.camid}, "
                  f"{tracklet}); K = {out.spatial.shape[2]}, "
                  f"temporal pooling {cfg.temporal_pooling}",
            frame_labels=[f"frame {i + 1}/{len(row.frames)}" for i in picks])
        path = out_dir / f"{name}.png"
        save_figure(fig, path)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--index", type=Path, required=True, help="a split_<k>.json")
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--models", type=Path, required=True,
                        help="folder with finetune.pt, spatial.pt, temporal.pt, joint.pt")
    parser.add_argument("--out", type=Path, required=True, help="metrics JSON")
    parser.add_argument("--cmc", type=Path, required=True, help="CMC curves CSV")
    parser.add_argument("--figures", type=Path, required=True,
                        help="folder for the attention map PNGs (Fig. 3)")
    args = parser.parse_args(argv)
    p = load_params(args.params)
    world, device = start(p.runtime)  # under torchrun: the ranks share the test batches
    autocast = use_autocast(p.runtime, device)

    table = load_video_index(args.index)
    test = table[table["subset"] == "test"].reset_index(drop=True)
    expect = {**cache_attrs(args.models / "finetune.pt", load(args.models / "finetune.pt")),
              "height": p.data.height, "width": p.data.width}
    open_cache(args.cache, expect).close()
    cached_test = CachedClipDataset(args.cache, "test", p.model.N)
    if not np.array_equal(cached_test.pids, test["pid"].to_numpy()):
        raise CacheError(f"{args.cache}: its test tracklets are not those of {args.index}: "
                         "re-run the cache stage")
    pin = device.type == "cuda"
    cached = eval_loader(cached_test, p.evaluate.batch_size, p.data.num_workers, pin)
    frames = eval_loader(ClipDataset(test["frames"].tolist(), [0] * len(test), p.model.N,
                                     (p.data.height, p.data.width)),
                         p.evaluate.batch_size, p.data.num_workers, pin)

    dataset, split = args.index.parent.name, int(args.index.stem.removeprefix("split_"))
    results, attention, cmc_rows = {}, {}, {"rank": np.arange(1, p.evaluate.max_rank + 1)}
    for name in MODELS:
        model, _ = load_exported(args.models / f"{'finetune' if name == 'baseline' else name}.pt")
        model.to(device)
        if name == "joint":  # the one model that runs the backbone on frames here
            compiled(model.backbone, p.runtime.compile)
        if name == "baseline":
            features = embed(model.head, cached, device, False, desc=name)
        else:
            recorder = AttentionRecorder(model)
            features = embed(recorder, frames if name == "joint" else cached, device,
                             autocast and name == "joint", desc=name)
            attention[name] = recorder.summary()
        if not world.is_main:  # the other ranks only embed their share of the test batches
            continue
        results[name], curves = score(features, test, p.evaluate.protocols, p.evaluate.max_rank)
        for protocol, cmc in curves.items():
            cmc_rows[f"{name}_{protocol}"] = cmc
        if name == "joint":
            drawn = draw_attention(model, test, p.evaluate.attention_figures, p.model.N,
                                   (p.data.height, p.data.width), device, args.figures,
                                   f"{dataset} split {split}")
            log.info("attention maps of %d queries drawn in %s", len(drawn), args.figures)

    if not world.is_main:
        return
    write_json(args.out, {"dataset": dataset, "split": split, "seed": p.seed, "models": results,
                          "attention": attention})
    write_csv(args.cmc, pd.DataFrame(cmc_rows).to_dict("records"))
    rows = [[name, protocol, *(m[f"rank{r}"] for r in RANKS if f"rank{r}" in m), m["mAP"],
             f"{m['num_valid_queries']}/{m['num_queries']}"]
            for name, per_protocol in results.items() for protocol, m in per_protocol.items()]
    header = ["model", "protocol", *(f"rank{r}" for r in RANKS if r <= p.evaluate.max_rank),
              "mAP", "valid queries"]
    print(f"\n{args.out.stem}\n" + format_table(header, rows))
    print("\nspatial attention maps on the test frames (overlap: mean pairwise Bhattacharyya "
          "coefficient, 0 = disjoint, 1 = identical; entropy in nats)\n"
          + format_table(["model", "overlap", "entropy"],
                         [[m, "n/a (K = 1)" if a["overlap"] is None else a["overlap"],
                           a["entropy"]] for m, a in attention.items()]))


if __name__ == "__main__":
    run(main)
