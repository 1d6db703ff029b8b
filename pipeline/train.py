"""The one training loop.

``fit`` trains with SGD (momentum, weight decay), the learning rate multiplied by ``lr_gamma`` at
``lr_step_epoch`` (paper: 0.1 then 0.01), an identity loss plus the optional diversity term, on a
loader of P x M identity batches. After every epoch it writes a resume checkpoint (model, loss
state including the OIM lookup table, optimizer, scheduler, RNG state, epoch, loss history) to a
scratch file; a stage started again with the same inputs resumes from it and ends with the same
weights as an uninterrupted run. Killed (SIGKILL), a stage loses at most the epoch it was in;
stopped by SIGINT or SIGTERM (``signals.graceful``), it finishes its step, writes the
checkpoint with its place in the epoch, and resumes at the next step.

Its resume checkpoints and the exported models: ``pipeline.checkpoints``; the process's device and
seed: ``pipeline.runtime``; the spatial maps' statistics it records: ``pipeline.curves``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline import distributed, signals
from pipeline.checkpoints import load, save, tensor_bytes
from pipeline.curves import Curves, map_statistics
from pipeline.errors import DivergedError, ParamsError
from pipeline.files import check_room
from pipeline.losses import diversity_penalty
from pipeline.model import HeadOutput
from pipeline.params import TrainParams

log = logging.getLogger(__name__)


# --- the loop ------------------------------------------------------------------------------------


def freeze_batchnorm(model: nn.Module) -> None:
    """Training mode for ``model`` except its BatchNorm layers, which keep normalising with their
    running statistics and do not update them (the joint stage: the heads were trained on the
    features of the backbone in eval mode, with batches of many clips; the small clip batches of
    end-to-end training would shift those statistics). Call it where ``model.train()`` would be."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d | nn.SyncBatchNorm):
            module.eval()


def call_model(model: nn.Module, inputs: Tensor) -> HeadOutput:
    """The default forward pass of a step: ``model(inputs)``."""
    return model(inputs)




def warn_if_diverged(history: list[dict], desc: str) -> bool:
    """Log a warning naming the learning rate's params key when the mean loss of the last epoch
    of ``history`` (``fit``'s, two epochs or more) is above the loss of its first step: the
    training moved away from where it started, though no value became infinite (the joint stage
    at too high a learning rate: the maps turn uniform and the loss settles at a plateau);
    whether it warned."""
    if not history or history[-1]["epoch"] < 2:  # one epoch: its mean holds its first steps
        return False
    first = history[0]["loss"]
    last = float(np.mean([h["loss"] for h in history if h["epoch"] == history[-1]["epoch"]]))
    if last <= first:
        return False
    log.warning("%s: the loss ended higher than it started (%.4f in the last epoch, %.4f at the "
                "first step): the training diverged; look at %s.lr", desc, last, first,
                desc.replace(" ", "."))
    return True


@dataclasses.dataclass
class Step:
    """How one batch becomes a loss: the forward pass and the diversity term's kind, weight,
    scale and warm-up (``loss.diversity*``).

    ``forward(model, inputs)`` is called with the model ``fit`` trains, or with its
    DistributedDataParallel wrapper under torchrun (which must be called for the gradients to be
    averaged), so it calls the module it is given, e.g. ``lambda m, x: m(x, "avg")``.
    """
    forward: Callable[[nn.Module, Tensor], HeadOutput] = call_model
    diversity: str = "none"
    diversity_weight: float = 0.0
    diversity_scale: str = "sum"
    diversity_warmup_epochs: int = 0

    def weight_at(self, epoch: int) -> float:
        """The diversity coefficient in ``epoch`` (from 0): ``diversity_weight`` times
        ``min(1, epoch / diversity_warmup_epochs)``, the full weight without a warm-up."""
        if self.diversity_warmup_epochs <= 0:
            return self.diversity_weight
        return self.diversity_weight * min(1.0, epoch / self.diversity_warmup_epochs)

    @classmethod
    def of(cls, loss: Any, **kwargs: Any) -> Step:
        """The step of the ``loss`` params section (``LossParams``): its diversity settings."""
        return cls(diversity=loss.diversity, diversity_weight=loss.diversity_weight,
                   diversity_scale=loss.diversity_scale,
                   diversity_warmup_epochs=loss.diversity_warmup_epochs, **kwargs)


class Trainer:
    """One ``fit`` call: the model as it is stepped (DistributedDataParallel under torchrun,
    compiled with ``compile``), the optimizer and its schedule, the per-step history, and the
    resume checkpoint that holds them all."""

    def __init__(self, model: nn.Module, criterion: nn.Module, cfg: TrainParams,
                 device: torch.device, desc: str, compile: bool = False, sync_bn: bool = False):
        world = distributed.world()
        if sync_bn and world.distributed:
            if device.type != "cuda":
                raise ParamsError(f"runtime.sync_bn: SyncBatchNorm needs CUDA devices, but {desc} "
                                  f"runs on {device.type}; set runtime.sync_bn to false")
            nn.SyncBatchNorm.convert_sync_batchnorm(model)  # children replaced, same parameters
        self.model, self.criterion, self.cfg, self.device, self.desc = (
            model.to(device), criterion.to(device), cfg, device, desc)
        self.criterion_params = [p for p in criterion.parameters() if p.requires_grad]
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.trainable += self.criterion_params
        self.net: nn.Module = model
        if world.distributed:
            self.net = DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        if compile:  # around DDP, so that it compiles the graph in pieces at its gradient buckets
            log.info("%s: training through torch.compile", desc)
            self.net = torch.compile(self.net)
        self.optimizer = torch.optim.SGD(self.trainable, lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, [cfg.lr_step_epoch],
                                                              cfg.lr_gamma)
        self.history: list[dict] = []

    # --- the resume checkpoint --------------------------------------------------------------

    def resume(self, path: Path, key: str) -> tuple[int, int]:
        """Load the checkpoint at ``path`` when it was made for ``key``; (the epoch to run first,
        the batches of it already done)."""
        if distributed.world().is_main:  # weights, the loss's state, a momentum per parameter
            check_room(path, tensor_bytes([self.model.state_dict(), self.criterion.state_dict(),
                                           self.trainable]), "the resume checkpoint")
        if not path.exists():
            return 0, 0
        state = load(path)
        if state.get("key") != key:
            log.info("%s: ignoring %s (made for other inputs)", self.desc, path)
            return 0, 0
        self.model.load_state_dict(state["model"])
        self.criterion.load_state_dict(state["criterion"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        self.history = state["history"]
        if state.get("stopped_at"):  # written by a stop in the middle of an epoch
            epoch, skip = state["stopped_at"]
            log.info("%s: resuming in epoch %d after step %d from %s", self.desc, epoch + 1, skip,
                     path)
            return epoch, skip
        log.info("%s: resuming after epoch %d from %s", self.desc, state["epoch"] + 1, path)
        return state["epoch"] + 1, 0

    def checkpoint(self, path: Path, key: str, epoch: int,
                   stopped_at: tuple[int, int] | None = None) -> None:
        """Rank 0 writes the resume checkpoint: after ``epoch`` (0-based) is complete, or in the
        middle of the next one (``stopped_at``: that epoch and the batches done in it)."""
        if distributed.world().is_main:
            save(path, {"key": key, "model": self.model.state_dict(),
                        "criterion": self.criterion.state_dict(),
                        "optimizer": self.optimizer.state_dict(),
                        "scheduler": self.scheduler.state_dict(),
                        "torch_rng": torch.get_rng_state(), "epoch": epoch,
                        "stopped_at": list(stopped_at) if stopped_at else None,
                        "history": self.history})
        distributed.barrier()  # no rank runs ahead of the checkpoint a restart resumes from

    def diverged(self, what: str) -> DivergedError:
        """The error of a training that diverged (``what`` became inf or nan), naming the params
        section of this run (``desc`` with dots: ``attention spatial`` -> attention.spatial)
        and its learning rate."""
        key = self.desc.replace(" ", ".")
        return DivergedError(f"{key}: {what}: the training diverged; lower {key}.lr (now "
                             f"{self.cfg.lr:g}), or loss.oim_scalar")

    def check_finite(self, epoch: int) -> None:
        """Raise ``diverged`` when a trained weight is inf or nan after ``epoch`` (0-based): a
        finite loss can hide weights that blew up, which the next stage would inherit."""
        if not all(bool(torch.isfinite(p).all()) for p in self.trainable):
            raise self.diverged(f"the weights became inf or nan in epoch {epoch + 1}")

    # --- one step -----------------------------------------------------------------------------

    def step(self, step: Step, inputs: Tensor, labels: Tensor, epoch: int, i: int,
             autocast: bool) -> dict:
        """One SGD step on a batch; its row of the history (the global batch's losses under
        torchrun). A loss that is not finite raises DivergedError before any update."""
        inputs = inputs.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, torch.bfloat16, enabled=autocast):
            out = step.forward(self.net, inputs)
        id_loss = self.criterion(out.embedding.float(), labels)
        div = torch.zeros((), device=self.device)
        if step.diversity != "none" and out.spatial is not None:
            div = diversity_penalty(out.spatial.float(), step.diversity, step.diversity_scale)
        loss = id_loss + step.weight_at(epoch) * div
        watched = () if out.spatial is None else map_statistics(out.spatial)
        finite = torch.isfinite(loss).float().reshape(1)
        distributed.average_([finite])  # under torchrun every rank stops, rank 0 says why
        if finite.item() < 1:
            value = loss.item() if not torch.isfinite(loss) else "not finite on another process"
            raise self.diverged(f"the loss became {value} at epoch {epoch + 1}, step {i + 1}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_([p.grad for p in self.criterion_params if p.grad is not None])
        self.optimizer.step()
        logged = torch.stack([loss, id_loss, div, *watched]).detach().float()
        distributed.average_([logged])  # the global batch's losses (and maps)
        total, id_part, div_part, *maps = logged.tolist()
        row = {"epoch": epoch + 1, "step": len(self.history) + 1,
               "lr": self.optimizer.param_groups[0]["lr"], "loss": total, "id_loss": id_part,
               "diversity": div_part}
        if maps:  # a model with spatial attention: how its training maps look
            row.update(map_entropy=maps[0], map_saturated=maps[1])
        return row


def fit(
    model: nn.Module,
    criterion: nn.Module,
    loader: DataLoader,
    cfg: TrainParams,
    step: Step,
    device: torch.device,
    resume_path: str | Path,
    key: str,
    desc: str = "train",
    autocast: bool = False,
    frozen_batchnorm: bool = False,
    compile: bool = False,
    sync_bn: bool = False,
    curves: str | Path | None = None,
) -> list[dict]:
    """Train ``model`` (its parameters with ``requires_grad``) and ``criterion``'s parameters.

    Args:
        loader: yields (inputs, labels, indices); its batch sampler is a ``SeededBatches``
            (``set_epoch(epoch, start)``).
        resume_path: scratch checkpoint written after each epoch; used to resume when it holds the
            same ``key`` (a fingerprint of everything the run depends on), deleted at the end.
        frozen_batchnorm: train with every BatchNorm layer in eval mode (``freeze_batchnorm``).
        compile: train through ``torch.compile`` (``runtime.compile``).
        sync_bn: under torchrun, convert ``model``'s BatchNorm layers to SyncBatchNorm in place
            (``runtime.sync_bn``; CUDA only), so they normalise over the global batch.
        curves: the DVCLive folder of the run's curves (``pipeline.curves``; rank 0 writes it);
            a resumed run first logs again the history its checkpoint holds.

    Under torchrun (``distributed.init`` called) ``model`` is trained through
    DistributedDataParallel on this rank's share of each global batch, the identity loss's own
    parameters get the gradient averaged over the ranks too, the history holds the global batch's
    losses (averaged over the ranks), and rank 0 alone writes the resume checkpoint: every rank
    ends with the weights and the OIM lookup table of one process trained on the global batches
    (up to the order of float reductions, and BatchNorm statistics, which are per rank).

    Returns:
        Per-step history: epoch, step, lr, loss, id_loss, diversity; for a model with spatial
        attention also the training maps' ``map_entropy`` and ``map_saturated``
        (``map_statistics``).
    """
    trainer = Trainer(model, criterion, cfg, device, desc, compile, sync_bn)
    resume_path = Path(resume_path)
    first_epoch, skip = trainer.resume(resume_path, key)
    main = distributed.world().is_main
    with signals.graceful(), Curves(curves if main else None) as live:
        live.replay(trainer.history, first_epoch)
        for epoch in range(first_epoch, cfg.epochs):
            first = skip if epoch == first_epoch else 0
            loader.batch_sampler.set_epoch(epoch, first)
            freeze_batchnorm(model) if frozen_batchnorm else model.train()
            criterion.train()
            bar = tqdm(loader, desc=f"{desc} {epoch + 1}/{cfg.epochs}", unit="batch", leave=False,
                       disable=not main)
            for i, (inputs, labels, _) in enumerate(bar, start=first):
                trainer.history.append(trainer.step(step, inputs, labels, epoch, i, autocast))
                live.step(trainer.history[-1])
                bar.set_postfix(loss=f"{trainer.history[-1]['loss']:.3f}")
                signum = distributed.stop_requested()
                if signum and i + 1 < len(loader.batch_sampler.sampler):
                    trainer.checkpoint(resume_path, key, epoch - 1, (epoch, i + 1))
                    raise signals.Stopped(signum, (
                        f"{desc}: stopped in epoch {epoch + 1}/{cfg.epochs} after step {i + 1}; "
                        f"{resume_path} holds the state: run the stage again to resume"))
            trainer.scheduler.step()
            trainer.check_finite(epoch)
            rows = [h for h in trainer.history if h["epoch"] == epoch + 1]
            live.epoch(rows)
            log.info("%s: epoch %d/%d mean loss %.4f", desc, epoch + 1, cfg.epochs,
                     float(np.mean([h["loss"] for h in rows])))
            trainer.checkpoint(resume_path, key, epoch)
            signum = distributed.stop_requested()
            if signum and epoch + 1 < cfg.epochs:
                raise signals.Stopped(signum, (
                    f"{desc}: stopped after epoch {epoch + 1}/{cfg.epochs}; {resume_path} holds "
                    "the state: run the stage again to resume"))
    warn_if_diverged(trainer.history, desc)
    return trainer.history
