"""Data-parallel training across processes: one process per GPU, started by ``torchrun``.

``torchrun --nproc_per_node=G -m pipeline.stages.<stage> ...`` sets ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE`` in every process; ``init`` reads them, joins the process group (NCCL on CUDA, gloo
on CPU) and gives each process its device (``cuda:<LOCAL_RANK>``). Started without torchrun
(``WORLD_SIZE`` unset or 1) everything here is a no-op and the code runs single-process.

How training is split (``train.fit``, ``sampling.IdentityBatchSampler``, ``losses.OIMLoss``):
every rank builds the same global P x M batch and keeps its contiguous share of it, so the global
batch size is the one in params whatever the number of processes; the model is wrapped in
``DistributedDataParallel``, which averages the gradients over the ranks (the gradient of the
global batch's mean loss, since the shares are equal); the gradients of the identity loss's own
parameters (the softmax classifier) are averaged the same way; the OIM lookup table is updated
from the features and labels of all ranks gathered in rank order, which with contiguous shares is
the single-process batch order, so every rank keeps the single-process LUT. BatchNorm layers in
training mode normalise with their own rank's share (DDP's usual behaviour; rank 0's running
statistics are broadcast at every forward pass; ``runtime.sync_bn`` makes them normalise over
the global batch instead, on CUDA). Rank 0 alone writes checkpoints and outputs.

How inference is split (the cache and evaluate stages): the items are cut into the batches of one
process (``batches``); rank r computes global batches r, r + W, r + 2W, ... (``my_batches``), so
each batch holds the same items, computed the same way, as in one process; the results come back
to rank 0 in round-robin order (``interleave``), which is the single-process order.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from pipeline.errors import InputError, ParamsError
from pipeline.signals import requested

log = logging.getLogger(__name__)
NO_CUDA = ("runtime.device: cuda, but torch sees no CUDA device (no GPU, no driver, or a CPU "
           "build of torch); set runtime.device to auto or cpu")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0  # 0 .. size - 1, over all nodes
    local_rank: int = 0  # on this node: the index of its GPU
    size: int = 1  # number of processes

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def _env_int(name: str, default: int, lowest: int = 0) -> int:
    """An integer torchrun put in the environment (``default`` when unset)."""
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or number < lowest:
        raise InputError(f"environment variable {name}={value!r}: expected an integer >= {lowest} "
                         "(torchrun sets it: start the stage through pipeline.launch or torchrun, "
                         f"or unset {name})")
    return number


def _env_world() -> World:
    """The world torchrun describes in ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``, checked."""
    size = _env_int("WORLD_SIZE", 1, lowest=1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if rank >= size:
        raise InputError(f"environment variable RANK={rank}: expected less than "
                         f"WORLD_SIZE={size} (torchrun sets both)")
    return World(rank, local_rank, size)


def world() -> World:
    """The current process group's world, or a single process when there is none."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), _env_int("LOCAL_RANK", 0), dist.get_world_size())
    return World()


def init(device: str = "auto") -> World:
    """Join the process group torchrun describes in the environment and return this process's
    world (a single process without torchrun).

    ``device`` is ``runtime.device``: ``auto`` and ``cuda`` make ``cuda:<LOCAL_RANK>`` the current
    device and use NCCL when CUDA is present, ``cpu`` (or no CUDA) uses gloo;
    ``runtime.pick_device`` then returns the current device.
    """
    env = _env_world()
    if not env.distributed:
        return World()
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={env.size} but this torch build has no torch.distributed")
    rank, local_rank, size = env.rank, env.local_rank, env.size
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if device == "cuda" and not use_cuda:
        raise ParamsError(NO_CUDA)
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise InputError(f"environment variable LOCAL_RANK={local_rank}: only "
                             f"{torch.cuda.device_count()} CUDA devices are visible: start at "
                             "most that many processes per node (torchrun --nproc_per_node)")
        torch.cuda.set_device(local_rank)
        chosen = torch.device("cuda", local_rank)
    else:
        chosen = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    log.info("rank %d of %d (local rank %d) on %s", rank, size, local_rank, chosen)
    return World(rank, local_rank, size)


def shutdown(failed: bool = False) -> None:
    """Leave the process group: after a last barrier, so no rank exits while the others still
    talk; without it when this rank ``failed`` (torchrun then stops the others)."""
    if dist.is_available() and dist.is_initialized():
        if not failed:
            dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def average_(tensors: list[Tensor]) -> None:
    """Replace each tensor by its mean over the ranks (in place; one flat all-reduce)."""
    w = world()
    if not w.distributed or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= w.size
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


# --- sharded inference ---------------------------------------------------------------------------


def batches(num_items: int, batch_size: int) -> list[range]:
    """The batches one process makes of ``num_items`` items in order (the last may be short)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return [range(start, min(start + batch_size, num_items))
            for start in range(0, num_items, batch_size)]


def num_rounds(num_batches: int, w: World) -> int:
    """Rounds of one batch per rank that cover ``num_batches`` (the last round may leave ranks
    without a batch)."""
    return -(-num_batches // w.size)


def my_batches(all_batches: list[range], w: World) -> list[range]:
    """This rank's batches: global batch ``round * size + rank`` in round ``round``."""
    return all_batches[w.rank::w.size]


def interleave(per_rank: list[list]) -> list:
    """The per-rank result lists of ``my_batches`` put back in global batch order."""
    merged = []
    for position in range(max((len(r) for r in per_rank), default=0)):
        merged.extend(r[position] for r in per_rank if position < len(r))
    return merged


def gather_batches(results: list) -> list:
    """Every rank's per-batch results (in ``my_batches`` order) in global batch order, on every
    rank; the list itself in a single process. Results are pickled (numpy arrays, floats)."""
    w = world()
    if not w.distributed:
        return results
    per_rank: list = [None] * w.size
    dist.all_gather_object(per_rank, results)
    return interleave(per_rank)


def all_gather_(tensor: Tensor) -> list[Tensor]:
    """``tensor`` from every rank, in rank order, on every rank. The ranks' tensors share dtype
    and trailing dimensions; their first dimension may differ (even be 0)."""
    w = world()
    if not w.distributed:
        return [tensor]
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(w.size)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))  # all_gather wants equal shapes
    padded[: tensor.shape[0]] = tensor
    out = [torch.empty_like(padded) for _ in range(w.size)]
    dist.all_gather(out, padded)
    return [block[: int(s.item())] for block, s in zip(out, sizes, strict=True)]


# --- stopping on a signal (pipeline.signals); stop_requested syncs it across the ranks ----------


def stop_requested() -> int | None:
    """The signal that asked to stop, or None; under torchrun every rank gets the same answer
    (a signal seen by any rank stops them all at the same step)."""
    w = world()
    if not w.distributed:
        return requested()
    flag = torch.tensor([requested() or 0], dtype=torch.int64,
                        device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item()) or None

