"""Stage ``evaluate``: every model of one video set's split on its test protocol(s).

The models come as ``--model NAME=PATH``, in the order of the paper's Table 1: ``baseline`` (the
fine-tuned backbone, frame features averaged), ``spatial`` (SpaAtn+Q), ``temporal``
(SpaAtn+Q+TemAtn, or the configured pooling), ``joint`` (+Ind, end to end). A model runs on the
cached res5c grids when it is a set of heads or when its own backbone made the cache (its head
then sees exactly the grids it would compute), and on the frames otherwise. Test clips are the
first frame of each of the N chunks (paper §4.2). The cache holds the grids of ``model.grid_block``;
the baseline's backbone is whole, so it runs on the cache only where that block is the last.

Writes ``--out``: per model and protocol rank-1/5/10/20, mAP, valid and all queries (fractions;
see ``pipeline.metrics``), rank-1 and mAP with the bounds of their 95 percent bootstrap interval
over the query identities (``rank1_lo``, ``rank1_hi``, ``mAP_lo``, ``mAP_hi``); per model under
``same_camera`` the share of each query's 10 nearest gallery tracklets from its own camera, with
its interval and chance level (``pipeline.metrics.same_camera``); under ``per_query``, for the
official protocol, the query pids once and each model's rank-1 hit (0/1) and AP per query (4
decimals), what a paired comparison of two models or two runs reads (``per_query_record``,
``tools.paired``); for every model
with spatial attention the maps' mean overlap and entropy over the test frames, and where the
cache holds the ground truth of the frames (the synthetic set) where the heads look and how the
temporal weights follow the visibility of each head's part
(``pipeline.attention_stats.attention_ground_truth``); ``--cmc``: the CMC curves; ``--figures``: the
paper's Fig. 3 for the first ``evaluate.attention_figures`` queries, drawn with the last model
given that has attention maps and runs on frames, beside each frame its label map where the set
has them.

    python -m pipeline.stages.evaluate --params params.yaml --dataset <set> --split <k> \
        --index data/index/<set>/split_<k>.json --cache data/cache/<set>-<k>.h5 \
        --backbone data/models/<set>-<k>/finetune.pt \
        --model baseline=data/models/<set>-<k>/finetune.pt ... --model joint=.../joint.pt \
        --out metrics/eval/<set>-<k>.json --cmc metrics/plots/cmc/<set>-<k>.csv \
        --figures metrics/plots/attention/<set>-<k>
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from pipeline import distributed
from pipeline.attention_stats import (
    attention_frame_stats,
    attention_ground_truth,
    attention_summary,
    cached_rows,
    clip_ground_truth,
    head_count,
)
from pipeline.data import CachedClipDataset, ClipDataset, eval_loader, to_pixels
from pipeline.errors import CacheError, DatasetError
from pipeline.features import cache_attrs, embed, open_cache, read_parts
from pipeline.figures import attention_figure, save_figure
from pipeline.files import check_writable, sha256_file, write_csv, write_text
from pipeline.formatting import corr, num, text_table
from pipeline.metrics import RANKS, same_camera, score
from pipeline.model import HeadOutput
from pipeline.params import Params, grid_size, load_params
from pipeline.sampling import restricted_random_sample
from pipeline.stages.common import run
from pipeline.tables import LABELS, load_video_index
from pipeline.train import compiled, load, load_exported, start, use_autocast

log = logging.getLogger("evaluate")


def named_path(text: str) -> tuple[str, Path]:
    """``NAME=PATH`` of a ``--model`` argument."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, Path(path)


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


def load_label_map(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """The visible labels (H, W) of a label map file (channel L of its "LA" PNG, see
    ``pipeline.tables.LABELS``) at the network's input ``size``, nearest neighbour (as the cache
    pools them into cells)."""
    with Image.open(path) as image:
        visible = image.getchannel(0)
        return np.asarray(visible.resize((size[1], size[0]), Image.NEAREST))


def draw_queries(model: nn.Module | None, queries: pd.DataFrame, N: int, size: tuple[int, int],
                 device: torch.device, out_dir: Path, title: str,
                 part_names: tuple[str, ...] = LABELS) -> None:
    """Fig. 3 for each query tracklet: its N test frames (the first of each chunk), their label
    maps where the tracklet has them (``labels`` column, indices into ``part_names``), the
    model's K spatial maps and temporal weights; the folder's old pictures are replaced."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()
    if queries.empty:
        return
    backbone = model.backbone
    grid = grid_size(*size, backbone.last_stride, backbone.name, backbone.grid_block)
    frames = ClipDataset(queries["frames"].tolist(), [0] * len(queries), N, size)
    for i, row in enumerate(queries.itertuples()):
        clip = frames[i][0]  # (N, 3, H, W), the test-time picks
        picks = restricted_random_sample(len(row.frames), N, train=False, rng=None)
        labels = list(getattr(row, "labels", None) or [])
        parts = np.stack([load_label_map(labels[j], size) for j in picks]) if labels else None
        with torch.no_grad():
            out = model(clip[None].to(device))
        fig = attention_figure(
            to_pixels(clip), out.spatial[0].float().cpu().numpy(), grid,
            out.temporal[0].float().cpu().numpy(),
            title=f"{title}: query {row.Index} (pid {row.pid}, camera {row.camid}, "
                  f"{Path(row.frames[0]).parent.name}); K = {out.spatial.shape[2]}, "
                  f"temporal pooling {model.head.cfg.temporal_pooling}",
            frame_labels=[f"frame {j + 1}/{len(row.frames)}" for j in picks],
            parts=parts, part_names=part_names)
        save_figure(fig, out_dir / f"q{row.Index:04d}_pid{row.pid}_cam{row.camid}.png")


def protocols(p: Params) -> list[str]:
    """The protocols scored: the official one first, always (the summary's headline in
    metrics/results is official, so that `dvc exp show` never compares an experiment's
    torchreid figures with another's official ones), then the others ``evaluate.protocols``
    lists."""
    return list(dict.fromkeys(["official", *p.evaluate.protocols]))


AP_DECIMALS = 4  # per-query APs in the results file: the mean moves by under 5e-5 (0.005 points)


def per_query_record(queries: dict[str, dict[str, np.ndarray]]) -> dict:
    """``{"pid": [...], "hit": {model: [0, 1, ...]}, "ap": {model: [0.8125, ...]}}``: the
    per-query scores (``pipeline.metrics.query_scores``) of each model (``queries``: model ->
    scores) under one protocol, the query pids once (every model ranks the same queries), APs
    rounded to ``AP_DECIMALS``. Lists, not strings: DVC's metrics commands skip lists, so they
    never clutter `dvc metrics show/diff` of the results file."""
    first = next(iter(queries.values()))
    for name, scores in queries.items():  # one test set: the same queries in the same order
        if not np.array_equal(scores["pid"], first["pid"]):
            raise ValueError(f"model {name!r} was scored on other queries than the first model")
    return {"pid": first["pid"].tolist(),
            "hit": {name: scores["hit"].tolist() for name, scores in queries.items()},
            "ap": {name: np.round(scores["ap"], AP_DECIMALS).tolist()
                   for name, scores in queries.items()}}


# a JSON array of numbers that json.dumps(indent=2) spread over lines: no JSON string holds a raw
# newline, so a match holding one is the structure itself, never text inside a string
_NUMBER_ARRAY = re.compile(r"\[[-+0-9.eE,\s]*\]")


def results_json(results: dict) -> str:
    """``results`` as indented JSON with each array of numbers on one line: the per-query
    lists stay a few tens of kB (900 queries, 4 models: about 45 kB) instead of one line each."""
    def one_line(match: re.Match) -> str:
        text = match.group()
        if "\n" not in text:
            return text
        return "[" + ", ".join(item.strip() for item in text[1:-1].split(",")) + "]"

    return _NUMBER_ARRAY.sub(one_line, json.dumps(results, indent=2)) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
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
    return parser.parse_args(argv)


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


def load_test_set(args: argparse.Namespace, p: Params, device: torch.device) -> TestSet:
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


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_writable(args.out.parent, args.cmc.parent, args.figures)
    p = load_params(args.params)
    world, device = start(p.runtime)  # under torchrun: the ranks share the test batches
    autocast = use_autocast(p.runtime, device)
    test = load_test_set(args, p, device)
    ids = (test.table["pid"].to_numpy(), test.table["camid"].to_numpy(),
           test.table["is_query"].to_numpy())
    results, attention, cameras, scored = {}, {}, {}, {}  # scored: per-query scores
    curves = {"rank": np.arange(1, p.evaluate.max_rank + 1)}
    drawn_with = None
    for name, path in args.model:
        model, payload, features, maps = embed_model(path, name, test, p, device, autocast)
        if maps is not None:
            attention[name] = maps
            if payload["kind"] == "net":  # Fig. 3 needs a model that runs on frames
                drawn_with = model
        if world.is_main:  # the other ranks only embed their share of the test batches
            results[name], per_protocol, scored[name] = score(
                features, *ids, protocols(p), p.evaluate.max_rank, args.dataset)
            curves.update({f"{name}_{protocol}": c for protocol, c in per_protocol.items()})
            cameras[name] = same_camera(features, *ids)
    if not world.is_main:
        return
    queries = test.table[test.table["is_query"]].head(
        p.evaluate.attention_figures if drawn_with else 0)
    draw_queries(drawn_with, queries, p.model.N, (p.data.height, p.data.width), device,
                 args.figures, f"{args.dataset} split {args.split}",
                 test.truth[2] if test.truth else LABELS)
    log.info("attention maps of %d queries drawn in %s", len(queries), args.figures)
    headline = protocols(p)[0]  # per query: the headline protocol only (the file stays small)
    per_query = {headline: per_query_record({m: q[headline] for m, q in scored.items()})}
    write_text(args.out, results_json({"dataset": args.dataset, "split": args.split,
                                       "seed": p.seed, "models": results, "same_camera": cameras,
                                       "attention": attention, "per_query": per_query}))
    write_csv(args.cmc, pd.DataFrame(curves).to_dict("records"))
    print_tables(f"{args.dataset} split {args.split}", results, cameras, attention,
                 [r for r in RANKS if r <= p.evaluate.max_rank])


def print_tables(title: str, results: dict, cameras: dict, attention: dict,
                 ranks: list[int]) -> None:
    """The scores (95 percent intervals in brackets), how much each model's ranking follows the
    camera, the attention statistics and, where measured, the ground-truth ones per model and
    per head."""
    rows = [[name, protocol, m["rank1"], _interval(m, "rank1"),
             *(m[f"rank{r}"] for r in ranks[1:]), m["mAP"], _interval(m, "mAP"),
             f"{m['num_valid_queries']}/{m['num_queries']}"]
            for name, per_protocol in results.items() for protocol, m in per_protocol.items()]
    header = ["model", "protocol", "rank1", "95% interval", *(f"rank{r}" for r in ranks[1:]),
              "mAP", "95% interval", "valid queries"]
    print(f"\n{title}\n" + text_table(header, rows))
    print("\nshare of each query's 10 nearest gallery tracklets (every test tracklet, junk "
          "removed) from its own camera, mean over queries; chance: the share of its gallery\n"
          + text_table(["model", "same camera top 10", "95% interval", "chance"],
                         [[m, c["same_camera_top10"], _interval(c, "same_camera_top10"),
                           c["same_camera_chance"]] for m, c in cameras.items()]))
    print("\nspatial attention maps on the test frames (overlap: mean pairwise Bhattacharyya "
          "coefficient, 0 = disjoint, 1 = identical; entropy in nats)\n"
          + text_table(["model", "overlap", "entropy"],
                         [[m, "n/a (K = 1)" if a["overlap"] is None else a["overlap"],
                           a["entropy"]] for m, a in attention.items()]))
    measured = {m: a for m, a in attention.items() if "person" in a}
    if not measured:
        return
    print("\nwhere the heads look (attention mass on the ground truth, mean over heads and "
          "test frames), and temporal weight against the visibility of each head's part "
          "(Pearson r within clips, 95% interval over clips)\n" + text_table(
              ["model", "person", "occluder", "background", "parts covered", "r", "frames"],
              [[m, a["person"], a["occluder"], a["background"], a["parts_covered"],
                _correlation(a, "visibility_corr"),
                f"{a['frames_measured']} ({a['frames_missing']} not cached)"]
               for m, a in measured.items()]))
    rows = [[m, k, a[f"head{k}_person"], a[f"head{k}_occluder"], a[f"head{k}_background"],
             f"{a[f'head{k}_part']} ({num(a[f'head{k}_part_share'], '.2f')})",
             _correlation(a, f"head{k}_visibility_corr")]
            for m, a in measured.items() for k in range(1, head_count(a) + 1)]
    print("\nper head\n" + text_table(
        ["model", "head", "person", "occluder", "background", "part (share of person mass)",
         "r (visibility)"], rows))


def _interval(m: dict, metric: str) -> str:
    """The 95 percent interval of a fraction, as fractions (the table's own unit)."""
    return f"[{num(m[f'{metric}_lo'])}, {num(m[f'{metric}_hi'])}]"


def _correlation(a: dict, key: str) -> str:
    note = " (equal weights)" if a[key] is not None and "visibility_corr_note" in a else ""
    return corr(a[key], a.get(key + "_lo"), a.get(key + "_hi"), digits=2) + note


if __name__ == "__main__":
    run(main)
