"""A tiny copy of the project: the pipeline's code, dvc.yaml and DVC config in a throw-away git
repository, with params small enough that every stage runs in seconds (the end-to-end tests'
fixture and the experiment-overhead benchmark)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from tools.shell import run

ROOT = Path(__file__).resolve().parents[2]

# 64 x 32 frames with last stride 1 give a 4 x 2 res5c grid: room for K = 3 heads (and for the
# K experiments of the tests and benchmarks), which params.py requires (K <= cells)
TINY = {
    "data": {"height": 64, "width": 32, "num_workers": 0},
    "synthetic": {"train_identities": 4, "test_identities": 4, "image_identities": 4,
                  "images_per_identity": 2, "cameras": 2, "tracklets_per_camera": 1,
                  "query_cameras": 1, "min_length": 2, "max_length": 5, "distractor_tracklets": 1,
                  "junk_tracklets": 1, "height": 64, "width": 32},
    # the second generated set, as small (data.video: [synthetic, synthetic2] in a test)
    "synthetic2": {"train_identities": 4, "test_identities": 4, "min_length": 2, "max_length": 5,
                   "distractor_tracklets": 1, "junk_tracklets": 1, "height": 64, "width": 32},
    "model": {"backbone": "resnet18", "init": "scratch", "last_stride": 1, "N": 3, "K": 3,
              "d": 8, "embed_dim": 16, "grid_block": "last"},
    "cache": {"batch_size": 16},
    # one Fig. 3 picture: drawing one takes longer than scoring the tiny test set
    "evaluate": {"batch_size": 8, "attention_figures": 1},
}
TINY_STAGES = ("pretrain", "finetune", "attention.spatial", "attention.temporal", "joint")


def tiny_params(update: dict[str, dict[str, Any]] | None = None) -> dict:
    """The project's params.yaml with TINY applied, one short epoch per training stage, then
    ``update`` (section -> keys) on top."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    for dotted in TINY_STAGES:
        node = params
        for part in dotted.split("."):
            node = node[part]
        node.update({"epochs": 1, "identities_per_batch": 2, "instances_per_identity": 2,
                     "lr_step_epoch": 1})
    for section, values in (update or {}).items():
        params[section].update(values)
    return params


def tiny_repo(work: Path, update: dict[str, dict[str, Any]] | None = None) -> Path:
    """A git repository at ``work`` (created) holding a copy of the pipeline (code, dvc.yaml,
    DVC config) with ``tiny_params(update)``, committed. Returns ``work``."""
    work.mkdir(parents=True)
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, work / name)
    shutil.copytree(ROOT / "pipeline", work / "pipeline",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (work / ".dvc").mkdir()
    for name in ("config", ".gitignore"):
        shutil.copy(ROOT / ".dvc" / name, work / ".dvc" / name)
    shutil.copytree(ROOT / ".dvc" / "plots", work / ".dvc" / "plots")
    (work / "data" / "archives").mkdir(parents=True)
    shutil.copy(ROOT / "data" / ".gitignore", work / "data" / ".gitignore")
    (work / "data" / "archives" / ".gitkeep").touch()
    (work / "params.yaml").write_text(yaml.safe_dump(tiny_params(update), sort_keys=False))
    run(work, "git", "init", "-q")
    run(work, "git", "add", "-A")
    run(work, "git", "commit", "-q", "-m", "tiny pipeline")
    return work
