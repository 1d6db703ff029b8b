"""Stage ``baseline``: the Baseline's embeddings of one video set's split's test clips.

The Baseline (the fine-tuned backbone, its frame features averaged; paper §4.3) does not depend on
the attention heads' params, so it is embedded here once per fine-tuned backbone and the
``evaluate`` stage scores the saved embeddings: an experiment on the heads (``-S model.K=8``) does
not run it again. It runs on the cached grids where its backbone made the cache and ends at the
cache's block, on the frames otherwise (``pipeline.embedding.embed_model``, as ``evaluate`` runs
every model). Under torchrun the ranks share the test batches and rank 0 writes the file.

Writes ``--out``: an .npz of the embeddings and what they were computed on
(``pipeline.embedding.save_embeddings``), checked by ``evaluate`` when it reads them.

    python -m pipeline.stages.baseline --params params.yaml --dataset <set> --split <k> \\
        --index data/index/<set>/split_<k>.json --cache data/cache/<set>-<k>.h5 \\
        --backbone data/models/<set>-<k>/finetune.pt \\
        --out data/embeddings/<set>-<k>/baseline.npz
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import distributed
from pipeline.embedding import add_test_set_args, embed_model, load_test_set, save_embeddings
from pipeline.errors import CheckpointError
from pipeline.files import check_writable
from pipeline.params import load_params
from pipeline.runtime import start, use_autocast
from pipeline.stages.common import run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_test_set_args(parser, "the fine-tuned model: the Baseline, and the maker of the cache")
    parser.add_argument("--out", type=Path, required=True, help="the embeddings (.npz)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_writable(args.out.parent)
    p = load_params(args.params)
    world, device = start(p.runtime)
    test = load_test_set(args, p, device)
    _, payload, features, maps = embed_model(args.backbone, "baseline", test, p, device,
                                             use_autocast(p.runtime, device))
    if payload["kind"] != "net" or maps is not None:
        raise CheckpointError(f"{args.backbone}: a model with attention maps ({payload['kind']}): "
                              "the baseline stage embeds the fine-tuned backbone, whose frame "
                              "features are averaged; evaluate scores models with maps itself")
    if world.is_main:
        save_embeddings(args.out, features, test, p, args.backbone)
        print(f"{args.dataset} split {args.split}: {features.shape[0]} test tracklets embedded "
              f"({features.shape[1]}-d) in {args.out}")
    distributed.barrier()


if __name__ == "__main__":
    run(main)
