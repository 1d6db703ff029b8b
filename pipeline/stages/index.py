"""Stage ``index``: rewrite every dataset into the canonical tables, check the invariants the
protocols rely on, and record the statistics.

Writes ``<out>/<name>/split_<k>.json`` for each video set and each of its standard splits (a set
of one split run beside sets of more, MARS beside PRID2011 under the paper's schedule: that split
again as every split index of ``data.splits``, ``pipeline.params.one_split_joins``),
``<images>/<name>/images.json`` for each image set (a folder of its own, which pretraining reads
alone: a video set added or changed re-runs no pretraining), and ``--stats`` (a DVC metrics
file): identities, tracklets and frames per subset, queries, junk and distractors. Prints the
same as a table.

    python -m pipeline.stages.index --params params.yaml --raw data/raw --out data/index \
        --images data/image_index --stats metrics/datasets.json
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from pipeline.datasets import index_images, index_video, num_splits
from pipeline.datasets.common import check_video_invariants, screen_frames
from pipeline.files import atomic_dir, content_fingerprint, write_json
from pipeline.formatting import text_table
from pipeline.params import load_params, one_split_joins
from pipeline.stages.common import run
from pipeline.tables import resolve_data_path, save_image_index, save_video_index

log = logging.getLogger("index")


def video_stats(table: pd.DataFrame) -> dict:
    """Statistics of one split of a video set, the way dataset papers report them."""
    lengths = table["frames"].map(len)
    stats = {}
    for subset in ("train", "test"):
        part = table[table["subset"] == subset]
        stats[subset] = {
            "ids": int(part.loc[part["pid"] > 0, "pid"].nunique()),
            "tracklets": len(part),
            "frames": int(lengths[part.index].sum()),
            "cameras": int(part["camid"].nunique()),
        }
    test = table[table["subset"] == "test"]
    stats["test"].update({
        "queries": int(test["is_query"].sum()),
        "query_ids": int(test.loc[test["is_query"], "pid"].nunique()),
        "junk_tracklets": int((test["pid"] == -1).sum()),
        "distractor_tracklets": int((test["pid"] == 0).sum()),
    })
    stats["frames_per_tracklet"] = {"min": int(lengths.min()), "mean": float(lengths.mean()),
                                    "max": int(lengths.max())}
    return stats


def image_stats(table: pd.DataFrame) -> dict:
    return {"ids": int(table["pid"].nunique()), "images": len(table),
            "cameras": int(table["camid"].nunique())}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--raw", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="the video sets' index folder")
    parser.add_argument("--images", type=Path, required=True,
                        help="the image sets' index folder (what pretraining reads)")
    parser.add_argument("--stats", type=Path, required=True)
    args = parser.parse_args(argv)
    params = load_params(args.params)

    stats: dict = {"video": {}, "image": {}}
    rows = []
    # the whole index, both folders swapped in only when complete
    with atomic_dir(args.out) as tmp, atomic_dir(args.images) as images:
        for name in params.data.video:
            stats["video"][name] = {}
            root = resolve_data_path(args.raw / name)  # see download.dataset_root
            checked: dict = {}  # frame verdicts, shared by the splits of this set
            digests: dict = {}  # and their md5s
            for split in range(num_splits(name)):
                log.info("%s: indexing split %d", name, split)
                table = index_video(name, root, split)
                table, skipped = screen_frames(table, params.data.bad_frames,
                                               f"{name} split {split}", checked=checked)
                check_video_invariants(table, f"{name} split {split}")
                content = content_fingerprint(
                    [*table["frames"].explode().dropna(), *table["labels"].explode().dropna()],
                    root, digests)
                joins = [k for k in params.data.splits if k != split] if one_split_joins(
                    name, params.data.video, params.data.splits) else []
                if joins:
                    log.info("%s: its one split written as split index %s too", name,
                             ", ".join(map(str, joins)))
                for k in (split, *joins):
                    save_video_index(table, root, tmp / name / f"split_{k}.json",
                                     recorded_root=args.raw / name,
                                     meta={"dataset": name, "split": k, "content": content})
                s = stats["video"][name][f"split_{split}"] = video_stats(table)
                s["skipped"] = skipped
                rows.append([name, split, s["train"]["ids"], s["train"]["tracklets"],
                             s["test"]["ids"], s["test"]["tracklets"], s["test"]["queries"],
                             s["train"]["frames"] + s["test"]["frames"]])
        for name in params.data.image:
            log.info("%s: indexing images", name)
            root = resolve_data_path(args.raw / name)
            table = index_images(name, root)
            table, skipped = screen_frames(table, params.data.bad_frames, name, column="path")
            save_image_index(table, root, images / name / "images.json",
                             recorded_root=args.raw / name,
                             meta={"dataset": name,
                                   "content": content_fingerprint(list(table["path"]), root)})
            stats["image"][name] = {**image_stats(table), "skipped": skipped["frames"]}
    write_json(args.stats, stats)

    print(text_table(["video set", "split", "train ids", "train tracklets", "test ids",
                        "test tracklets", "queries", "frames"], rows))
    print(text_table(["image set", "ids", "images", "cameras"],
                       [[n, s["ids"], s["images"], s["cameras"]]
                        for n, s in stats["image"].items()]))


if __name__ == "__main__":
    run(main)
