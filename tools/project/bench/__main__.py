"""Speed and memory figures of the pipeline's hot paths: run every benchmark row (see
``tools.project.bench``), print a table and write ``metrics/bench.json``.

    python -m tools.project.bench --out metrics/bench.json [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from pipeline.files import write_json
from pipeline.formatting import text_table
from pipeline.model import Backbone
from pipeline.params import GRID_BLOCKS
from pipeline.stages.common import setup_logging
from tools.project.bench.attention import bench_attention
from tools.project.bench.cache import bench_cache
from tools.project.bench.common import (
    FRAME_SIZE,
    FULL,
    QUICK,
    Setup,
    log,
    machine,
    table_rows,
    tracklet_table,
    write_frames,
)
from tools.project.bench.evaluation import bench_evaluation
from tools.project.bench.experiment import bench_experiment
from tools.project.bench.memory import bench_memory
from tools.project.bench.paper_backbone import bench_paper_backbone


def run_all(setup: Setup, workdir: Path, quick: bool = False) -> dict:
    """Every benchmark in order; the JSON-able result."""
    s = setup.sizes
    start = time.perf_counter()
    frames = s.identities * s.tracklets_per_identity * s.frames_per_tracklet
    paths = write_frames(workdir / "frames", max(frames, s.memory_frames), setup.seed)
    table = tracklet_table(paths[:frames], s.frames_per_tracklet, s.tracklets_per_identity)
    torch.manual_seed(setup.seed)
    backbone = Backbone(setup.backbone, setup.last_stride, setup.grid_block).eval()
    cache_path = workdir / "cache.h5"

    benchmarks: dict[str, dict] = {}
    benchmarks.update(bench_cache(setup, backbone, table, cache_path))
    benchmarks.update(bench_paper_backbone(setup, paths, workdir))
    benchmarks.update(bench_evaluation(setup))
    benchmarks.update(bench_attention(setup, backbone, table, cache_path, workdir / "scratch"))
    benchmarks.update(bench_memory(setup, paths, workdir))
    benchmarks.update(bench_experiment(setup, workdir))
    return {"quick": quick, "machine": machine(setup.device),
            "setup": {"backbone": setup.backbone, "last_stride": setup.last_stride,
                      "grid_block": setup.grid_block,
                      "input": list(setup.size), "num_workers": setup.num_workers,
                      "seed": setup.seed, "frame_files": list(FRAME_SIZE),
                      "device": setup.device},
            "sizes": dataclasses.asdict(s), "benchmarks": benchmarks,
            "total_s": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m tools.project.bench",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("metrics/bench.json"))
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes: a smoke test of every benchmark")
    parser.add_argument("--backbone", default="mobilenet_v2",
                        help="mobilenet_v2 (default run), resnet18, resnet34, resnet50 (paper)")
    parser.add_argument("--last-stride", type=int, default=1, choices=(1, 2))
    parser.add_argument("--grid-block", default="last",
                        help="the backbone's block whose grids are cached and trained on "
                             "(model.grid_block: last, layer3, features.16, ...)")
    parser.add_argument("--height", type=int, default=128, help="input height (paper: 256)")
    parser.add_argument("--width", type=int, default=64, help="input width (paper: 128)")
    parser.add_argument("--batch-size", type=int, help="frames per backbone pass (default 64)")
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-paper", action="store_true",
                        help="skip rows 1-2 with the paper's ResNet-50 at 256x128")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu",
                        help="where models run: cpu (default), cuda or cuda:<i> (rows 1, 2, 4, 5; "
                             "the backbone under bf16 autocast on CUDA, as in the pipeline)")
    parser.add_argument("--workdir", type=Path,
                        help="keep the frames, caches and repository here (default: a temporary "
                             "folder, deleted at the end)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else FULL
    if args.batch_size:
        sizes = dataclasses.replace(sizes, batch_size=args.batch_size)
    if args.no_paper:
        sizes = dataclasses.replace(sizes, paper_frames=0)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        parser.error(f"--device {args.device}: expected cpu, cuda or cuda:<index>")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device is available here")
    if args.grid_block != "last" and args.grid_block not in GRID_BLOCKS.get(args.backbone, ()):
        parser.error(f"--grid-block {args.grid_block}: expected last or a block of "
                     f"{args.backbone}: {', '.join(GRID_BLOCKS.get(args.backbone, ()))}")
    setup = Setup(sizes, args.backbone, args.last_stride, (args.height, args.width),
                  args.num_workers, args.seed, str(device), args.grid_block)

    with contextlib.ExitStack() as stack:
        if args.workdir:
            workdir = args.workdir.resolve()
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        result = run_all(setup, workdir, args.quick)
    write_json(args.out, result)
    print(text_table(["benchmark", "figures", "ratio", "target", "met"],
                       list(table_rows(result["benchmarks"]))))
    log.info("wrote %s (%.0f s in all)", args.out, result["total_s"])
    return result


if __name__ == "__main__":
    setup_logging()
    main()
