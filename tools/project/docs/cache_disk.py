"""The ``cache-disk`` block: the disk a whole split matrix of res5c feature caches takes for each
real video set, and the time caching it takes, computed from the sets' published frame counts
(named in their readers), the paper's grid and the ``cache_throughput_paper`` row of
``metrics/bench.json`` (ResNet-50 at 256x128 on the CPU the benchmark ran on)."""

from __future__ import annotations

import math
from pathlib import Path

from pipeline.datasets import ilidsvid, mars, prid2011
from pipeline.formatting import markdown_table
from pipeline.params import VIDEO_SPLITS, one_split_joins
from tools.project.docs.common import NotProduced, field_of, read_json

PAPER_GRID = (2048, 8, 4)  # D x h x w of ResNet-50's res5c for a 256x128 frame (paper §3.2)
BYTES_PER_VALUE = 2  # float16


def video_sets() -> list[tuple[str, str, int, str]]:
    """(name, label, frames one cache holds, what is counted) of each real set with a size."""
    return [
        ("prid2011", "PRID2011", prid2011.SHARED_SEQUENCES * prid2011.MEAN_FRAMES,
         f"{prid2011.SHARED_SEQUENCES} sequences of the {prid2011.SHARED_PEOPLE} people seen by "
         f"both cameras x their mean of {prid2011.MEAN_FRAMES} frames (published; the protocol's "
         "178 people hold somewhat fewer)"),
        ("ilidsvid", "iLIDS-VID", ilidsvid.SEQUENCES * ilidsvid.MEAN_FRAMES,
         f"{ilidsvid.SEQUENCES} sequences x their mean of {ilidsvid.MEAN_FRAMES} frames "
         "(the dataset page)"),
        ("mars", "MARS", mars.TRAIN_FRAMES + mars.TEST_FRAMES,
         f"train {mars.TRAIN_FRAMES:,} + test {mars.TEST_FRAMES:,} frames (published)"),
    ]


def caching_rate(root: Path) -> tuple[float, str] | None:
    """(frames/s, where) of the cache stage with ResNet-50 at 256x128 in the last ``make bench``,
    or None when it has not measured it."""
    try:
        bench = read_json(root, "metrics/bench.json", "make bench")
    except NotProduced:
        return None
    row = field_of(bench, "metrics/bench.json", "benchmarks").get("cache_throughput_paper")
    if not row or row.get("skipped"):
        return None
    machine = bench.get("machine", {})
    where = (f"{machine.get('processor') or 'unknown CPU'}, {machine.get('cpus_usable')} usable "
             f"cores, {row.get('device', 'cpu')}")
    return field_of(row, "metrics/bench.json", "figures", "cache_frames_per_s"), where


def cache_disk_block(root: Path) -> str:
    per_frame = math.prod(PAPER_GRID) * BYTES_PER_VALUE
    rate = caching_rate(root)
    rows, joined = [], []
    names = [name for name, *_ in video_sets()]
    most = max(VIDEO_SPLITS[name] for name in names)
    for name, label, frames, counted in video_sets():
        if one_split_joins(name, names, range(most)):  # joins every split index across sets
            joined.append(f"{label} {frames * most * per_frame / 1e12:.2f} TB")
        splits = VIDEO_SPLITS[name]
        time = ("not measured" if rate is None
                else f"{frames * splits / rate[0] / 3600:.1f} h")
        rows.append([label, f"{frames:,}", counted, splits, f"{frames * per_frame / 1e9:.1f} GB",
                     f"{frames * splits * per_frame / 1e9:.1f} GB", time])
    grid = " x ".join(map(str, PAPER_GRID))
    measured = ("the caching time is not measured yet: run `make bench`, then `make docs`"
                if rate is None else
                f"the caching time divides the frames by the {rate[0]:.1f} frames/s of the "
                f"`cache_throughput_paper` row of `metrics/bench.json` ({rate[1]}): a GPU caches "
                "far faster, and is not measured here")
    return (f"Every frame cached (`cache.max_frames_per_tracklet: 0`) on the paper's grid, "
            f"{grid} float16 values ({per_frame // 1024} KiB) per frame; each split caches the "
            f"whole set through its own fine-tuned CNN, so the matrix is the splits times one "
            f"cache (grids only; HDF5 adds about 2%). Frame counts from `pipeline/datasets/`; "
            f"{measured}.\n\n"
            + markdown_table(["set", "frames per cache", "counted", "splits", "one cache",
                     "whole split matrix", "caching the matrix"], rows)
            + f"\n\nAcross sets (`make paper DATASET=\"prid2011 ilidsvid mars\"`) a set of one "
            f"split joins each of the {most} split indexes, one cache per index through that "
            f"index's union CNN: {', '.join(joined)} uncapped; cap the frames or run a few "
            "indexes at a time.")
