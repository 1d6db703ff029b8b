"""How a stage process starts: its world and device (one process, or one per GPU under torchrun),
bf16 autocast and torch.compile as ``runtime`` says, and the seed of its weights."""

from __future__ import annotations

import logging
import random

import torch
from torch import nn

from pipeline import distributed
from pipeline.errors import ParamsError
from pipeline.params import RuntimeParams

log = logging.getLogger(__name__)


def pick_device(cfg: RuntimeParams) -> torch.device:
    """``runtime.device``: auto picks CUDA when present."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ParamsError(distributed.NO_CUDA)
    cuda = torch.cuda.is_available() if cfg.device == "auto" else cfg.device == "cuda"
    if not cuda:
        return torch.device("cpu")
    # fixed input sizes: let cuDNN time its convolution algorithms once and keep the fastest
    torch.backends.cudnn.benchmark = True
    # cuda:<LOCAL_RANK> under torchrun (distributed.init set it current), else the current GPU
    return torch.device("cuda", torch.cuda.current_device())


def start(cfg: RuntimeParams) -> tuple[distributed.World, torch.device]:
    """A training stage's world and device: under torchrun, join the process group and use this
    rank's device (``distributed.init``); otherwise one process on ``pick_device``."""
    world = distributed.init(cfg.device)  # under torchrun: makes cuda:<LOCAL_RANK> current
    return world, pick_device(cfg)


def use_autocast(cfg: RuntimeParams, device: torch.device) -> bool:
    """bf16 autocast only on CUDA (on CPU it is slower and changes results)."""
    return cfg.amp and device.type == "cuda"


def fit_options(cfg: RuntimeParams, device: torch.device, backbone: bool = True) -> dict:
    """``fit``'s keyword arguments from ``runtime``: bf16 autocast (models with a backbone, on
    CUDA), torch.compile, SyncBatchNorm."""
    return {"autocast": backbone and use_autocast(cfg, device), "compile": cfg.compile,
            "sync_bn": cfg.sync_bn}


def compiled(module: nn.Module, enabled: bool) -> nn.Module:
    """``module`` compiled in place by torch.compile (``runtime.compile``); its state_dict keys
    do not change. Compilation happens at the first call."""
    if enabled:
        log.info("torch.compile: %s", type(module).__name__)
        module.compile()
    return module


def seed_everything(seed: int) -> None:
    """Seed python's and torch's global RNGs (weight init). Data sampling has its own seeds."""
    random.seed(seed)
    torch.manual_seed(seed)
