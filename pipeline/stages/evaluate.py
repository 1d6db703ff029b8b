"""Stage ``evaluate``: every model of one video set's split on its test protocol(s).

The models come as ``--model NAME=PATH``, in the order of the paper's Table 1: ``baseline`` (the
fine-tuned backbone, frame features averaged), ``spatial`` (SpaAtn+Q), ``temporal``
(SpaAtn+Q+TemAtn, or the configured pooling), ``joint`` (+Ind, end to end). PATH is an exported
model, run on the test clips as ``pipeline.embedding`` says (the cached grids or the frames), or
a model's test embeddings saved by the ``baseline`` stage (``.npz``): the Baseline does not change
with the heads' params, so an experiment on the heads does not embed it again.

Writes ``--out``: per model and protocol rank-1/5/10/20, mAP, valid and all queries (fractions;
see ``pipeline.metrics``), rank-1 and mAP with the bounds of their 95 percent bootstrap interval
over the query identities (``rank1_lo``, ``rank1_hi``, ``mAP_lo``, ``mAP_hi``); per model under
``same_camera`` the share of each query's 10 nearest gallery tracklets from its own camera, with
its interval and chance level (``pipeline.metrics.same_camera``); under ``per_query``, for the
official protocol, the query pids once and each model's rank-1 hit (0/1) and AP per query (4
decimals), what a paired comparison of two models or two runs reads (``per_query_record``,
``tools.experiments.paired``); for every model
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
        --model baseline=data/embeddings/<set>-<k>/baseline.npz ... --model joint=.../joint.pt \
        --out metrics/eval/<set>-<k>.json --cmc metrics/plots/cmc/<set>-<k>.csv \
        --figures metrics/plots/attention/<set>-<k>
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from pipeline.attention_stats import head_count
from pipeline.data import ClipDataset, to_pixels
from pipeline.embedding import add_test_set_args, embed_model, load_embeddings, load_test_set
from pipeline.features import at_input_size, label_channels
from pipeline.figures import attention_figure, save_figure
from pipeline.files import check_writable, write_csv, write_text
from pipeline.formatting import corr, num, text_table
from pipeline.metrics import RANKS, same_camera, score
from pipeline.params import Params, grid_size, load_params
from pipeline.runtime import start, use_autocast
from pipeline.sampling import restricted_random_sample
from pipeline.stages.common import run
from pipeline.tables import LABELS

log = logging.getLogger("evaluate")

SAVED = ".npz"  # --model NAME=PATH: a model's saved test embeddings (pipeline.embedding)


def named_path(text: str) -> tuple[str, Path]:
    """``NAME=PATH`` of a ``--model`` argument."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, Path(path)


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
        parts = np.stack([at_input_size(label_channels(labels[j])[0], size) for j in picks]) \
            if labels else None
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
    add_test_set_args(parser, "the fine-tuned model the cache was made with (checked)")
    parser.add_argument("--model", type=named_path, action="append", required=True,
                        metavar="NAME=PATH", help="a model to score (repeat, in table order): an "
                        f"exported model, or its test embeddings saved by the baseline stage "
                        f"({SAVED})")
    parser.add_argument("--out", type=Path, required=True, help="metrics JSON")
    parser.add_argument("--cmc", type=Path, required=True, help="CMC curves CSV")
    parser.add_argument("--figures", type=Path, required=True,
                        help="folder for the attention map PNGs (Fig. 3)")
    return parser.parse_args(argv)


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
        if path.suffix == SAVED:  # a model the heads do not change: embedded by its own stage
            features = load_embeddings(path, test, p)
            model = payload = maps = None
        else:
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
