"""Checkpoints and exported models, every file loaded with ``weights_only=True``.

Resume checkpoints (``save``/``load``, written atomically, keyed by a ``fingerprint`` of what the
run depends on) let an interrupted training stage end with an uninterrupted run's weights.
Exported models (the DVC outputs) store their configuration, so later stages rebuild them without
being told: ``export_model`` / ``load_exported``.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pipeline.errors import CheckpointError, InputError
from pipeline.files import nearest_folder, write_with
from pipeline.model import HEADS, Backbone, VideoReIDNet, load_tensors
from pipeline.params import ModelParams, canonical_grid_block, from_dict


def fingerprint(*parts: Any) -> str:
    """A short hash of JSON-able inputs: a resume checkpoint is only used for the same inputs."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save(path: str | Path, payload: dict) -> None:
    """torch.save, atomically: never a half-written checkpoint, nothing left of a failed save.
    A full disk is an OSError (ENOSPC) naming ``path``: torch reports a failed write as a
    RuntimeError without its reason, so the free space is compared with the tensors' size."""
    try:
        write_with(path, lambda tmp: torch.save(payload, tmp))
    except RuntimeError as err:
        if shutil.disk_usage(nearest_folder(Path(path).parent)).free >= tensor_bytes(payload):
            raise
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from err


def tensor_bytes(tree: Any) -> int:
    """Bytes of the tensors in a checkpoint payload (nested dicts, lists and tuples)."""
    if isinstance(tree, Tensor):
        return tree.nbytes
    if isinstance(tree, dict):
        return sum(tensor_bytes(v) for v in tree.values())
    if isinstance(tree, list | tuple):
        return sum(tensor_bytes(v) for v in tree)
    return 0


load = load_tensors  # a checkpoint of plain tensors and containers; anything else is refused


def drop_checkpoint(resume_path: str | Path) -> None:
    """Delete the scratch resume checkpoint, once the stage's outputs are written."""
    Path(resume_path).unlink(missing_ok=True)


# --- exported models -----------------------------------------------------------------------------


def config_of(cfg: ModelParams, *fields: str) -> ModelParams:
    """``cfg`` with only ``fields`` kept, the rest at their defaults: the model params an exported
    model records, limited to the keys its stage depends on in dvc.yaml, so that its bytes do not
    change with params its stage does not read (and does not re-run for)."""
    return ModelParams(**{name: getattr(cfg, name) for name in fields})


# Model params added after models were first exported: recorded only when not at their default,
# so that a model whose params leave them alone keeps its bytes (and DVC its hash); the loader
# fills in the default (``from_dict``).
LATER_FIELDS = ("part_embedding", "grid_block", "scorer", "maps")


def stored_params(cfg: ModelParams) -> dict:
    """The model params an exported model records (``LATER_FIELDS`` only where set)."""
    default = ModelParams()
    return {name: value for name, value in dataclasses.asdict(cfg).items()
            if name not in LATER_FIELDS or value != getattr(default, name)}


def export_model(path: str | Path, model: nn.Module, cfg: ModelParams, head: str,
                 extra: dict | None = None) -> None:
    """Save a ``VideoReIDNet`` or heads alone (``DRSA``/``BaselineHead``) with what rebuilds it."""
    kind = "net" if isinstance(model, VideoReIDNet) else "head"
    in_channels = (model.head if kind == "net" else model).in_channels
    if kind == "net" and model.backbone.grid_block != _grid_block(cfg, head):
        raise ValueError(f"a {head} net whose backbone ends at {model.backbone.grid_block}, but "
                         f"its model params say {_grid_block(cfg, head)}: it would not rebuild")
    save(path, {"kind": kind, "head": head, "model_params": stored_params(cfg),
                "in_channels": in_channels, "state": model.state_dict(), **(extra or {})})


def load_exported(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild a model saved by ``export_model``; returns (model in eval mode, the payload)."""
    payload = load(path)
    try:
        if not isinstance(payload, dict):
            raise TypeError(f"it holds a {type(payload).__name__}, not a dict")
        cfg = from_dict(ModelParams, payload["model_params"], "model.")
        head_cls = HEADS[payload["head"]]
        head = head_cls(cfg, payload["in_channels"])
        if payload["kind"] == "net":
            backbone = Backbone(cfg.backbone, cfg.last_stride, _grid_block(cfg, payload["head"]))
            model: nn.Module = VideoReIDNet(backbone, head)
        else:
            model = head
        model.load_state_dict(payload["state"])
    except (KeyError, RuntimeError, TypeError, IndexError, AttributeError, InputError) as err:
        raise CheckpointError(f"{path}: not a model exported by this pipeline, or its weights do "
                              f"not fit its stored configuration ({err})") from err
    return model.eval(), payload


def _grid_block(cfg: ModelParams, head: str) -> str:
    """Where the backbone of an exported net of ``head`` ends, as ``model.build_model`` builds it:
    at ``cfg.grid_block`` under the DRSA heads, whole under the baseline (the paper's Baseline);
    ``last`` for the backbone's last block."""
    return canonical_grid_block(cfg.backbone, cfg.grid_block) if head == "drsa" else "last"
