"""Row 5: the peak memory of the cache stage must not grow with the dataset. ``write_cache`` runs
in a fresh process per dataset size (``cache_child``, started by ``bench_memory``), so that each
peak is its own."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from pipeline.features import write_cache
from pipeline.model import Backbone
from tools.project.bench.common import Setup, Target, log, row, tracklet_table

ROOT = Path(__file__).resolve().parents[3]  # the project: what the child needs on its sys.path


def _rss_kb(field: str) -> int:
    """A ``/proc/self/status`` memory figure (VmRSS: now, VmHWM: peak), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0: ``clear_refs``
    5), so that it then measures what follows rather than the imports. False where refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def cache_child(spec_path: str) -> dict:
    """Body of the memory benchmark's subprocess: cache the frames that ``spec_path`` (a JSON
    file) lists and report this process's RSS (KiB) when caching starts, its peak during caching
    (VmHWM, reset after the imports; ``ru_maxrss`` is reported beside it, but on Linux it also
    keeps the peak of the process image before ``exec``), and the peak of its loader workers."""
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    backbone = Backbone(spec["backbone"], spec["last_stride"], spec["grid_block"])
    device = spec["device"]
    table = tracklet_table([Path(p) for p in spec["paths"]], spec["frames_per_tracklet"],
                           spec["tracklets_per_identity"], spec["repeat"])
    reset = _reset_peak_rss()
    before = _rss_kb("VmRSS")
    start = time.perf_counter()
    write_cache(spec["out"], backbone, {"train": table}, tuple(spec["size"]),
                {"checkpoint_sha256": "bench"}, batch_size=spec["batch_size"],
                num_workers=spec["num_workers"], device=device,
                autocast=torch.device(device).type == "cuda")
    return {"frames": int(sum(len(f) for f in table["frames"])),
            "seconds": time.perf_counter() - start, "peak_reset": reset, "rss_before_kb": before,
            "peak_rss_kb": _rss_kb("VmHWM"),
            "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "workers_maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}


_CHILD = "import json, sys; from tools.project.bench.memory import cache_child; " \
         "print('BENCH ' + json.dumps(cache_child(sys.argv[1])))"


def bench_memory(setup: Setup, paths: Sequence[Path], workdir: Path) -> dict[str, dict]:
    """Row 5: ``write_cache`` in a fresh process per dataset size (x1, x4 frames; the x4 set lists
    the x1 files four times over as further identities), both processes at once."""
    s = setup.sizes
    paths = list(paths[:s.memory_frames])
    log.info("5. memory flatness: caching %d and %d frames in two processes", len(paths),
             4 * len(paths))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    children, logs = {}, {}
    for repeat in (1, 4):
        spec = workdir / f"memory-x{repeat}.json"
        spec.write_text(json.dumps({
            "paths": [str(p) for p in paths], "repeat": repeat,
            "frames_per_tracklet": s.frames_per_tracklet,
            "tracklets_per_identity": s.tracklets_per_identity, "backbone": setup.backbone,
            "last_stride": setup.last_stride, "grid_block": setup.grid_block,
            "size": list(setup.size),
            "batch_size": s.batch_size, "num_workers": setup.num_workers,
            "threads": torch.get_num_threads(), "device": setup.device,
            "out": str(workdir / f"memory-x{repeat}.h5")}))
        logs[repeat] = workdir / f"memory-x{repeat}.log"  # files, not pipes: nothing can block
        with logs[repeat].open("w") as output:
            children[repeat] = subprocess.Popen(
                [sys.executable, "-c", _CHILD, str(spec)], cwd=workdir, env=env, stdout=output,
                stderr=subprocess.STDOUT, text=True)
    results = {}
    for repeat, child in children.items():
        child.wait()
        output = logs[repeat].read_text()
        if child.returncode:
            raise RuntimeError(f"the x{repeat} memory run failed:\n{output[-3000:]}")
        line = next(x for x in output.splitlines() if x.startswith("BENCH "))
        results[repeat] = json.loads(line.removeprefix("BENCH "))
    mb = {r: results[r]["peak_rss_kb"] / 1024 for r in results}
    return {"cache_memory_flatness": row(
        ("x4_peak_rss_MB", mb[4]), ("x1_peak_rss_MB", mb[1]), Target("<=", 1.1),
        frames_x1=results[1]["frames"], frames_x4=results[4]["frames"],
        growth_MB=mb[4] - mb[1],
        rss_at_start_MB={f"x{r}": results[r]["rss_before_kb"] / 1024 for r in results},
        workers_peak_rss_MB={f"x{r}": results[r]["workers_maxrss_kb"] / 1024 for r in results},
        ru_maxrss_MB={f"x{r}": results[r]["maxrss_kb"] / 1024 for r in results},
        cache_s={f"x{r}": results[r]["seconds"] for r in results},
        method="peak RSS (VmHWM) of a fresh caching process per size, "
               + ("reset after the imports" if all(r["peak_reset"] for r in results.values())
                  else "imports included (the reset was refused)"))}
