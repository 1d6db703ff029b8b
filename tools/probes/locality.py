"""The locality of candidate grids: whether the person's cells of a grid carry more identity than
the others, the condition for spatial attention to find parts.

A candidate is a backbone (a checkpoint of this pipeline, or ``imagenet``: the ImageNet weights
``model.init`` names) and the submodule whose output is the grid (``features.18``, MobileNetV2's
last block; ``features.13``, an earlier one; ``layer4`` of a ResNet). For each test tracklet its
N test frames (each chunk's first) go through the backbone, and the grid is pooled three ways,
each frame weighted by its ground-truth label map resized to the grid (the synthetic set): on
every cell alike, by each cell's person share, by its background share. Each pooled descriptor
is scored like the cell probe's (``pipeline.cell_probe.scores``: rank-1 and mAP with intervals,
the same-camera share of the nearest 10). Person above background: heads have a reason to move onto
the person; person at or below background: every cell already sees the person.

    python -m tools.probes.locality --out metrics/locality.json   # the default candidates
    python -m tools.probes.locality --subset train \
        --out metrics/locality_train.json   # choosing a grid on training identities
    python -m tools.probes.locality \
        --candidate "mine=data/models/synthetic-0/finetune.pt:features.14"
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.attention_stats import BACKGROUND, person_labels
from pipeline.cell_probe import scores
from pipeline.checkpoints import load_exported
from pipeline.data import ClipDataset
from pipeline.errors import MissingWeightsError
from pipeline.features import read_label_map
from pipeline.files import write_json
from pipeline.formatting import pct_of, text_table
from pipeline.model import Backbone, build_backbone, grid_backbone
from pipeline.params import GRID_BLOCKS, load_params, run_name
from pipeline.sampling import restricted_random_sample
from pipeline.stage_inputs import output, split_file
from pipeline.stages.common import run
from pipeline.tables import LABELS, load_video_index

MAPS = ("uniform", "person", "background")  # the pooling maps, in the order they are printed
# the grids measured without --candidate, per backbone: the last block (the cache's), then
# earlier ones (smaller receptive fields), of the fine-tuned model and of the ImageNet weights.
# MobileNetV2: 18 is the last 1x1 conv (17's receptive field), 16 and 14 the last blocks at the
# 8x4 grid (last_stride 1), 13 the last block before block 14's stride.
BLOCKS = {"mobilenet_v2": ("features.18", "features.16", "features.14", "features.13"),
          "resnet18": ("layer4", "layer3"), "resnet34": ("layer4", "layer3"),
          "resnet50": ("layer4", "layer3")}


def default_candidates(params_path: Path) -> list[tuple[str, str, str]]:
    """The fine-tuned model of the params' first video set and split at each of ``BLOCKS``, and
    the ImageNet weights at the last one."""
    p = load_params(params_path)
    model = output("finetune", "data/models/").format(run=run_name(p.data.video[0],
                                                                   p.data.splits[0]))
    blocks = BLOCKS[p.model.backbone]
    return [*((f"fine-tuned, {b}", model, b) for b in blocks),
            (f"ImageNet, {blocks[0]}", "imagenet", blocks[0])]


def parse_candidate(text: str) -> tuple[str, str, str]:
    """``NAME=SOURCE:MODULE`` -> (name, source, module)."""
    name, sep, rest = text.partition("=")
    source, sep2, module = rest.rpartition(":")
    if not (sep and sep2 and name and source and module):
        raise argparse.ArgumentTypeError(f"expected NAME=SOURCE:MODULE, got {text!r}")
    return name, source, module


def load_backbone(name: str, source: str, params_path: Path) -> nn.Module:
    """The backbone of candidate ``name``: of an exported model, or ``imagenet``: the ImageNet
    weights of the params' ``model.backbone`` and ``model.last_stride``."""
    if source != "imagenet":
        model, _ = load_exported(source)
        return model.backbone
    p = load_params(params_path)
    try:
        return build_backbone(p.model.backbone, "imagenet", p.model.last_stride)
    except (MissingWeightsError, FileNotFoundError) as err:  # offline, not cached, not installed
        # the model's advice ends "or set model.init=scratch", which does not drop a candidate
        reason = re.sub(r",? or set model\.init=scratch\.?$", "",
                        str(err).removeprefix("model.init=imagenet: "))
        raise MissingWeightsError(f"candidate {name!r} of tools.probes.locality: {reason}; or "
                                  "measure the other grids alone: --candidate "
                                  "NAME=SOURCE:MODULE for each") from err


def pool_grids(grids: np.ndarray, shares: np.ndarray) -> dict[str, np.ndarray]:
    """One tracklet's N grids (N, D, h, w) pooled with each frame's label shares (N, 2, h, w:
    person, background): the mean over frames of each frame's cells averaged alike, weighted by
    the person share, by the background share (each frame's weights normalised to sum to 1; a
    frame without any such cell counts with zero weight). {map: (D,)}."""
    out = {"uniform": grids.mean(axis=(0, 2, 3))}
    for i, name in enumerate(MAPS[1:]):
        w = shares[:, i]  # (N, h, w)
        w = w / np.maximum(w.sum(axis=(1, 2), keepdims=True), 1e-12)
        out[name] = np.einsum("ndhw,nhw->d", grids, w) / len(grids)
    return out


@torch.no_grad()
def candidate_locality(backbone: nn.Module, module: str, test, size: tuple[int, int], N: int,
                       batch_size: int = 16) -> dict:
    """The three pooled descriptors of every test tracklet through ``backbone`` up to
    ``module``, scored; with the grid's shape. A pipeline backbone runs only up to ``module`` when
    that is one of its blocks (``model.grid_block``'s names)."""
    if isinstance(backbone, Backbone) and module in GRID_BLOCKS[backbone.name]:
        backbone = grid_backbone(backbone, module)  # the later blocks are not run
    layers = dict(backbone.named_modules())
    if module not in layers:
        raise SystemExit(f"error: the backbone has no module {module!r} (e.g. features.18, "
                         "layer4)")
    captured = []
    hook = layers[module].register_forward_hook(lambda m, i, o: captured.append(o))
    person, background = person_labels(LABELS), LABELS.index(BACKGROUND)
    backbone.eval()
    loader = DataLoader(ClipDataset(test["frames"].tolist(), [0] * len(test), N, size),
                        batch_size=batch_size, num_workers=2)
    pooled: dict[str, list[np.ndarray]] = {name: [] for name in MAPS}
    grid = None
    try:
        for clips, _, index in tqdm(loader, desc=module, leave=False):
            captured.clear()
            backbone(clips.flatten(0, 1))  # (B*N, 3, H, W)
            out = captured[0].float()
            grid = tuple(out.shape[1:])
            grids = out.view(len(clips), N, *grid).numpy()  # (B, N, D, h, w)
            for b, t in enumerate(index.tolist()):
                labels = test["labels"].iloc[t]
                picks = restricted_random_sample(len(labels), N, train=False)
                fractions = np.stack([read_label_map(labels[j], size, grid[1:], len(LABELS))[0]
                                      for j in picks])  # (N, P, h, w)
                shares = np.stack([fractions[:, person].sum(axis=1),
                                   fractions[:, background]], axis=1)  # (N, 2, h, w)
                for name, x in pool_grids(grids[b], shares).items():
                    pooled[name].append(x)
    finally:
        hook.remove()
    ids = (test["pid"].to_numpy(), test["camid"].to_numpy(), test["is_query"].to_numpy(bool))
    return {"grid": list(grid), "pooled": {name: scores(np.stack(rows), *ids)
                                           for name, rows in pooled.items()}}


def local(candidate: dict) -> bool:
    """The grid rule's test of one candidate: its person's cells rank above the 95 percent
    interval of all its cells alike (rank-1), i.e. attending the person gains identity that
    averaging the grid does not have."""
    p = candidate["pooled"]
    return p["person"]["rank1"] > p["uniform"].get("rank1_hi", p["uniform"]["rank1"])


def chosen_block(result: dict) -> str | None:
    """The grid rule (docs/method.md, "Grid block"), read on the training tracklets only: of the
    fine-tuned backbone's candidates, the deepest block (the first in BLOCKS' order, the order
    measured) that is ``local``; None when none is, or when the result is not of the training
    tracklets (a grid is never chosen on the test set)."""
    if result.get("subset") != "train":
        return None
    return next((c["module"] for c in result["candidates"].values()
                 if str(c.get("source", "")).endswith("finetune.pt") and local(c)), None)


def rows(result: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows (one per candidate) of the locality table: rank-1 of each pooling, the
    person map's gain over the background map and over every cell alike (where attention can
    gain), and whether the grid rule counts it local."""
    body = []
    for name, c in result["candidates"].items():
        p = c["pooled"]
        gain = 100 * (p["person"]["rank1"] - p["background"]["rank1"])
        headroom = 100 * (p["person"]["rank1"] - p["uniform"]["rank1"])
        body.append([name, f"{c['module']} ({' x '.join(map(str, c['grid']))})",
                     *(pct_of(p[m], "rank1") for m in MAPS), f"{gain:+.1f}", f"{headroom:+.1f}",
                     "yes" if local(c) else "no"])
    return (["candidate", "grid (D x h x w)", "every cell", "person cells (oracle)",
             "background cells (oracle)", "person - background", "person - every cell",
             "local"], body)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--index", type=Path,
                        default=Path(split_file().format(dataset="synthetic", split=0)))
    parser.add_argument("--candidate", type=parse_candidate, action="append",
                        metavar="NAME=SOURCE:MODULE",
                        help="a grid to measure (repeat); default: default_candidates")
    parser.add_argument("--subset", choices=("test", "train"), default="test",
                        help="the tracklets measured: the test set's queries against its "
                             "gallery, or the training tracklets, each a query against the "
                             "others (what a choice of grid may be read from: never the test set)")
    parser.add_argument("--out", type=Path, default=Path("metrics/locality.json"))
    args = parser.parse_args(argv)
    if not args.index.exists():
        sys.exit(f"error: {args.index}: no such index; run `make repro` first")
    p = load_params(args.params)
    table = load_video_index(args.index)
    test = table[table["subset"] == args.subset].reset_index(drop=True)
    if args.subset == "train":  # every tracklet a query, ranked against the others (official)
        test = test.assign(is_query=True)
    if not len(test) or not all(len(x) for x in test["labels"]):
        sys.exit(f"error: {args.index}: its {args.subset} tracklets have no label maps; the "
                 "locality needs the synthetic set's ground truth")
    size = (p.data.height, p.data.width)
    result: dict = {"index": str(args.index), "subset": args.subset, "input": list(size),
                    "frames_per_tracklet": p.model.N, "candidates": {}}
    candidates = args.candidate or default_candidates(args.params)
    # every backbone loaded before the first is measured: weights that are not there stop the
    # run at once, not after the other candidates' minutes
    backbones = [load_backbone(name, source, args.params) for name, source, _ in candidates]
    for (name, source, module), backbone in zip(candidates, backbones, strict=True):
        result["candidates"][name] = {"source": source, "module": module,
                                      **candidate_locality(backbone, module, test, size,
                                                           p.model.N)}
    result["chosen"] = chosen_block(result)
    write_json(args.out, result)
    print(text_table(*rows(result)))
    if args.subset == "train":
        print(f"\nthe grid rule (the deepest fine-tuned block whose person cells rank above the "
              f"interval of every cell alike): {result['chosen'] or 'no block'}")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    run(main)  # bad input (a missing file, weights not there): one line, exit status 1
