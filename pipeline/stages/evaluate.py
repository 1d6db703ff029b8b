"""Stage ``evaluate``: every model of one video set's split on its test protocol(s).

The models come as ``--model NAME=PATH``, in the order of the paper's Table 1: ``baseline`` (the
fine-tuned backbone, frame features averaged), ``spatial`` (SpaAtn+Q), ``temporal``
(SpaAtn+Q+TemAtn, or the configured pooling), ``joint`` (+Ind, end to end). A model runs on the
cached res5c grids when it is a set of heads or when its own backbone made the cache (its head
then sees exactly the grids it would compute), and on the frames otherwise. Test clips are the
first frame of each of the N chunks (paper §4.2).

Writes ``--out``: per model and protocol rank-1/5/10/20, mAP, valid and all queries (fractions;
see ``pipeline.metrics``), and for every model with spatial attention the maps' mean overlap and
entropy over the test frames; ``--cmc``: the CMC curves; ``--figures``: the paper's Fig. 3 for
the first ``evaluate.attention_figures`` queries, drawn with the last model given that has
attention maps and runs on frames.

    python -m pipeline.stages.evaluate --params params.yaml --dataset <set> --split <k> \
        --index data/index/<set>/split_<k>.json --cache data/cache/<set>-<k>.h5 \
        --backbone data/models/<set>-<k>/finetune.pt \
        --model baseline=data/models/<set>-<k>/finetune.pt ... --model joint=.../joint.pt \
        --out metrics/eval/<set>-<k>.json --cmc metrics/plots/cmc/<set>-<k>.csv \
        --figures metrics/plots/attention/<set>-<k>
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from pipeline.data import CachedClipDataset, ClipDataset, eval_loader, to_pixels
from pipeline.errors import CacheError
from pipeline.features import cache_attrs, embed, open_cache
from pipeline.figures import attention_figure, save_figure
from pipeline.files import check_writable, format_table, sha256_file, write_csv, write_json
from pipeline.metrics import RANKS, attention_frame_stats, attention_summary, score
from pipeline.model import HeadOutput
from pipeline.params import grid_size, load_params
from pipeline.sampling import restricted_random_sample
from pipeline.stages.common import run
from pipeline.tables import load_video_index
from pipeline.train import compiled, load, load_exported, start, use_autocast

log = logging.getLogger("evaluate")


def named_path(text: str) -> tuple[str, Path]:
    """``NAME=PATH`` of a ``--model`` argument."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, Path(path)


def record_maps(out: HeadOutput) -> dict | None:
    """What ``embed`` keeps of each test batch: the statistics of its spatial attention maps."""
    return None if out.spatial is None else attention_frame_stats(out.spatial.float().cpu().numpy())


def draw_queries(model: nn.Module | None, queries: pd.DataFrame, N: int, size: tuple[int, int],
                 device: torch.device, out_dir: Path, title: str) -> None:
    """Fig. 3 for each query tracklet: its N test frames (the first of each chunk) with the
    model's K spatial maps and temporal weights; the folder's old pictures are replaced."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()
    if queries.empty:
        return
    grid = grid_size(*size, model.head.cfg.last_stride)
    frames = ClipDataset(queries["frames"].tolist(), [0] * len(queries), N, size)
    for i, row in enumerate(queries.itertuples()):
        clip = frames[i][0]  # (N, 3, H, W), the test-time picks
        picks = restricted_random_sample(len(row.frames), N, train=False, rng=None)
        with torch.no_grad():
            out = model(clip[None].to(device))
        fig = attention_figure(
            to_pixels(clip), out.spatial[0].float().cpu().numpy(), grid,
            out.temporal[0].float().cpu().numpy(),
            title=f"{title}: query {row.Index} (pid {row.pid}, camera {row.camid}, "
                  f"{Path(row.frames[0]).parent.name}); K = {out.spatial.shape[2]}, "
                  f"temporal pooling {model.head.cfg.temporal_pooling}",
            frame_labels=[f"frame {j + 1}/{len(row.frames)}" for j in picks])
        save_figure(fig, out_dir / f"q{row.Index:04d}_pid{row.pid}_cam{row.camid}.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--dataset", required=True, help="the video set's name")
    parser.add_argument("--split", type=int, required=True, help="the split id")
    parser.add_argument("--index", type=Path, required=True, help="a split_<k>.json")
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--backbone", type=Path, required=True,
                        help="the fine-tuned model the cache was made with (checked)")
    parser.add_argument("--model", type=named_path, action="append", required=True,
                        metavar="NAME=PATH", help="a model to score (repeat, in table order)")
    parser.add_argument("--out", type=Path, required=True, help="metrics JSON")
    parser.add_argument("--cmc", type=Path, required=True, help="CMC curves CSV")
    parser.add_argument("--figures", type=Path, required=True,
                        help="folder for the attention map PNGs (Fig. 3)")
    args = parser.parse_args(argv)
    check_writable(args.out.parent, args.cmc.parent, args.figures)
    p = load_params(args.params)
    world, device = start(p.runtime)  # under torchrun: the ranks share the test batches
    autocast = use_autocast(p.runtime, device)
    size = (p.data.height, p.data.width)

    table = load_video_index(args.index)
    test = table[table["subset"] == "test"].reset_index(drop=True)
    expect = {**cache_attrs(args.backbone, load(args.backbone)), "height": size[0],
              "width": size[1]}
    open_cache(args.cache, expect).close()
    cached_test = CachedClipDataset(args.cache, "test", p.model.N)
    if not np.array_equal(cached_test.pids, test["pid"].to_numpy()):
        raise CacheError(f"{args.cache}: its test tracklets are not those of {args.index}: "
                         "re-run the cache stage")
    pin = device.type == "cuda"
    loaders = {"cache": eval_loader(cached_test, p.evaluate.batch_size, p.data.num_workers, pin),
               "frames": eval_loader(ClipDataset(test["frames"].tolist(), [0] * len(test),
                                                 p.model.N, size),
                                     p.evaluate.batch_size, p.data.num_workers, pin)}

    results, attention, curves = {}, {}, {"rank": np.arange(1, p.evaluate.max_rank + 1)}
    drawn_with = None
    for name, path in args.model:
        model, payload = load_exported(path)
        model.to(device)
        on_cache = payload["kind"] == "head" or sha256_file(path) == expect["checkpoint_sha256"]
        if on_cache and payload["kind"] == "net":
            net: nn.Module = model.head  # the cache holds this model's own backbone's grids
        else:
            net = model
            if payload["kind"] == "net":
                compiled(model.backbone, p.runtime.compile)
        features, records = embed(net, loaders["cache" if on_cache else "frames"], device,
                                  autocast and not on_cache, desc=name, record=record_maps)
        if records and records[0] is not None:
            attention[name] = attention_summary(records)
            if payload["kind"] == "net":  # Fig. 3 needs a model that runs on frames
                drawn_with = model
        if world.is_main:  # the other ranks only embed their share of the test batches
            results[name], per_protocol = score(
                features, test["pid"].to_numpy(), test["camid"].to_numpy(),
                test["is_query"].to_numpy(), p.evaluate.protocols, p.evaluate.max_rank)
            curves.update({f"{name}_{protocol}": c for protocol, c in per_protocol.items()})

    if not world.is_main:
        return
    queries = test[test["is_query"]].head(p.evaluate.attention_figures if drawn_with else 0)
    draw_queries(drawn_with, queries, p.model.N, size, device, args.figures,
                 f"{args.dataset} split {args.split}")
    log.info("attention maps of %d queries drawn in %s", len(queries), args.figures)
    write_json(args.out, {"dataset": args.dataset, "split": args.split, "seed": p.seed,
                          "models": results, "attention": attention})
    write_csv(args.cmc, pd.DataFrame(curves).to_dict("records"))
    rows = [[name, protocol, *(m[f"rank{r}"] for r in RANKS if f"rank{r}" in m), m["mAP"],
             f"{m['num_valid_queries']}/{m['num_queries']}"]
            for name, per_protocol in results.items() for protocol, m in per_protocol.items()]
    header = ["model", "protocol", *(f"rank{r}" for r in RANKS if r <= p.evaluate.max_rank),
              "mAP", "valid queries"]
    print(f"\n{args.dataset} split {args.split}\n" + format_table(header, rows))
    print("\nspatial attention maps on the test frames (overlap: mean pairwise Bhattacharyya "
          "coefficient, 0 = disjoint, 1 = identical; entropy in nats)\n"
          + format_table(["model", "overlap", "entropy"],
                         [[m, "n/a (K = 1)" if a["overlap"] is None else a["overlap"],
                           a["entropy"]] for m, a in attention.items()]))


if __name__ == "__main__":
    run(main)
