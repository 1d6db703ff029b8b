"""Data-parallel training (pipeline/distributed.py, train.fit under torchrun's environment):
two processes with the gloo backend on CPU train on their shares of each global batch and end
with the weights, the OIM lookup table, the softmax classifier and the loss history of one
process trained on the whole global batches.

Small: DRSA heads (K = 2, d = 8, E = 16) on random 16-channel 2x2 grids of 12 tracklets of 4
identities, one epoch of 2 global batches of 2 identities x 2 tracklets (2 items per rank).

Sharded inference (the cache and evaluate stages): two ranks write the feature cache of
tests/test_features.py's frames with its tiny backbone and embed its test clips; rank 0's file
and every rank's embeddings equal one process's.
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pipeline import distributed
from pipeline.data import CachedClipDataset, eval_loader, train_loader
from pipeline.errors import DivergedError, InputError, ParamsError
from pipeline.features import embed, write_cache
from pipeline.losses import OIMLoss, SoftmaxLoss
from pipeline.model import DRSA
from pipeline.params import ModelParams, TrainParams
from pipeline.runtime import seed_everything
from pipeline.train import Step, fit
from tests.seeded_grids import MODEL, PIDS, D, SeededGrids
from tests.test_features import ATTRS, SIZE, TRACKLETS, TinyBackbone, split, write_frames

CFG = TrainParams(epochs=1, identities_per_batch=2, instances_per_identity=2, lr=0.1,
                  lr_step_epoch=1)
WORLD = 2


def train(kind: str, resume: Path, curves: Path | None = None) -> dict:
    """Seeded heads and identity loss, fitted with the Hellinger term; BatchNorm kept in eval mode
    (its batch statistics are per rank under DDP, the one thing that is not the global batch's);
    the curves into ``curves``."""
    seed_everything(0)
    heads = DRSA(MODEL, D)
    n = len(set(PIDS))
    criterion = OIMLoss(MODEL.embed_dim, n) if kind == "oim" else SoftmaxLoss(MODEL.embed_dim, n)

    loader = train_loader(SeededGrids(), PIDS, CFG, seed=1, num_workers=0)
    history = fit(heads, criterion, loader, CFG, Step(diversity="hellinger", diversity_weight=0.5),
                  torch.device("cpu"), resume, key=kind, frozen_batchnorm=True, curves=curves)
    return {"heads": heads.state_dict(), "criterion": criterion.state_dict(),
            "loss": torch.tensor([h["loss"] for h in history]), "steps": len(history)}


def diverge_on_rank_1(resume: Path) -> str:
    """The heads fitted while rank 1 alone sees a nan loss at the second step (its share of the
    batch); what each rank raised."""
    calls: list[int] = []

    def forward(net, x):
        out = net(x)
        calls.append(1)
        if distributed.world().rank == 1 and len(calls) == 2:
            out = out._replace(embedding=out.embedding * float("nan"))
        return out

    seed_everything(0)
    loader = train_loader(SeededGrids(), PIDS, CFG, seed=1, num_workers=0)
    try:
        fit(DRSA(MODEL, D), OIMLoss(MODEL.embed_dim, len(set(PIDS))), loader, CFG, Step(forward),
            torch.device("cpu"), resume, key="nan", frozen_batchnorm=True)
    except DivergedError as err:
        return str(err)
    return "no error"


def _worker(rank: int, port: int, tmp: str) -> None:
    torch.set_num_threads(1)
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    world = distributed.init("cpu")
    assert (world.rank, world.size) == (rank, WORLD)
    try:
        for kind in ("oim", "softmax"):  # both ranks name the same curves folder
            result = train(kind, Path(tmp) / f"resume-{kind}.pt", Path(tmp) / f"live-{kind}")
            torch.save(result, f"{tmp}/{kind}-rank{rank}.pt")
        message = diverge_on_rank_1(Path(tmp) / "resume-nan.pt")
        (Path(tmp) / f"diverged-rank{rank}.txt").write_text(message)
    finally:
        distributed.shutdown()


CACHE_BATCH = 3  # train: 22 frames, 8 batches (the last short); test: 15 frames, 5 batches (odd)


def infer(frames: Path, out: Path) -> np.ndarray:
    """The cache of tests/test_features.py's frames and the DRSA embeddings of its test clips."""
    table = write_frames(frames)
    write_cache(out, TinyBackbone(), split(table), SIZE, ATTRS, batch_size=CACHE_BATCH)
    seed_everything(0)
    heads = DRSA(ModelParams(N=3, K=2, d=4, embed_dim=8), 4).eval()
    loader = eval_loader(CachedClipDataset(out, "test", 3), batch_size=1, num_workers=0)
    return embed(heads, loader, torch.device("cpu"))[0]


def _infer_worker(rank: int, port: int, tmp: str) -> None:
    torch.set_num_threads(1)
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    distributed.init("cpu")
    try:
        # every rank reads its own copy of the same frames; all name the same output file
        features = infer(Path(tmp) / f"frames-rank{rank}", Path(tmp) / "cache.h5")
        np.save(Path(tmp) / f"features-rank{rank}.npy", features)
    finally:
        distributed.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(free_port(), str(tmp)), nprocs=WORLD, join=True)
    return tmp


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("sharded")
    mp.spawn(_infer_worker, args=(free_port(), str(tmp)), nprocs=WORLD, join=True)
    return tmp


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["oim", "softmax"])
def test_two_ranks_train_like_one_process_on_the_global_batch(ranks, kind, tmp_path):
    single = train(kind, tmp_path / "resume.pt")
    assert single["steps"] == 2
    for rank in range(WORLD):
        out = load(ranks / f"{kind}-rank{rank}.pt")
        assert out["steps"] == single["steps"]
        for part in ("heads", "criterion"):
            assert out[part].keys() == single[part].keys()
            for name, value in single[part].items():
                # float reductions in another order: equal to float32 rounding, not bit for bit
                torch.testing.assert_close(out[part][name], value, rtol=1e-5, atol=1e-6,
                                           msg=f"rank {rank}: {part}.{name}")
        # the history is the global batch's loss, not this rank's share's
        torch.testing.assert_close(out["loss"], single["loss"], rtol=1e-5, atol=1e-6)
    # the weights moved, so the comparison above means something
    seed_everything(0)
    initial = DRSA(MODEL, D).state_dict()
    assert any(not torch.allclose(initial[k], single["heads"][k]) for k in initial
               if initial[k].is_floating_point())


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["oim", "softmax"])
def test_ranks_end_identical(ranks, kind):
    """DDP keeps the replicas equal: the same weights and the same LUT on every rank, exactly."""
    outs = [load(ranks / f"{kind}-rank{rank}.pt") for rank in range(WORLD)]
    for part in ("heads", "criterion"):
        for name, value in outs[0][part].items():
            assert torch.equal(outs[1][part][name], value), f"{part}.{name}"


@pytest.mark.slow
def test_only_rank_0_writes_the_curves(ranks):
    """Both ranks were given the same DVCLive folder: it holds one run's curves (the global
    batches' losses, 2 steps), not two ranks' appended rows."""
    for kind in ("oim", "softmax"):
        live = ranks / f"live-{kind}"
        loss = (live / "plots" / "metrics" / "batch" / "loss.tsv").read_text().splitlines()
        out = load(ranks / f"{kind}-rank0.pt")
        rows = [f"{i + 1}\t{v}" for i, v in enumerate(out["loss"].tolist())]
        assert loss == ["step\tloss", *rows]
        assert json.loads((live / "metrics.json").read_text())["step"] == 2


@pytest.mark.slow
def test_a_loss_that_is_not_finite_on_one_rank_stops_every_rank(ranks):
    """Rank 1's share of the second batch gives a nan loss: every rank raises DivergedError
    before the backward pass (none waits in DDP's all-reduce for the other), and rank 0, the
    rank that reports, says that another process saw it."""
    said = {rank: (ranks / f"diverged-rank{rank}.txt").read_text() for rank in range(WORLD)}
    tail = "at epoch 1, step 2: the training diverged; lower train.lr (now 0.1), or loss.oim_scalar"
    assert said == {0: f"train: the loss became not finite on another process {tail}",
                    1: f"train: the loss became nan {tail}"}


@pytest.mark.slow
def test_resume_checkpoint_holds_the_global_history(ranks):
    """Rank 0 writes the scratch checkpoint: the history of both global batches, no temporary file
    left."""
    for kind in ("oim", "softmax"):
        state = torch.load(ranks / f"resume-{kind}.pt", weights_only=True)
        assert len(state["history"]) == 2
    assert sorted(p.name for p in ranks.glob("*.tmp")) == []


def test_single_process_world_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    world = distributed.init("auto")
    assert (world.rank, world.size, world.is_main, world.distributed) == (0, 1, True, False)
    assert distributed.world() == distributed.World()


@pytest.mark.parametrize(("variables", "message"), [
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two': expected an integer >= 1"),
    ({"WORLD_SIZE": "-2"}, "WORLD_SIZE='-2': expected an integer >= 1"),
    ({"WORLD_SIZE": "2", "RANK": "first"}, "RANK='first': expected an integer >= 0"),
    ({"WORLD_SIZE": "2", "LOCAL_RANK": "-1"}, "LOCAL_RANK='-1': expected an integer >= 0"),
    ({"WORLD_SIZE": "2", "RANK": "5"}, "RANK=5: expected less than WORLD_SIZE=2"),
    ({"RANK": "1"}, "RANK=1: expected less than WORLD_SIZE=1"),
])
def test_bad_torchrun_environment_is_named(monkeypatch, variables, message):
    """An InputError naming the variable, before any process group is joined."""
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(InputError, match=f"^environment variable {re.escape(message)}"):
        distributed.init("cpu")
    assert not dist.is_initialized()


def test_cuda_without_cuda_under_torchrun_names_runtime_device(monkeypatch):
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ParamsError, match=r"^runtime\.device: cuda, but torch sees no CUDA"):
        distributed.init("cuda")
    assert not dist.is_initialized()


def test_average_is_a_no_op_in_one_process():
    t = torch.tensor([1.0, 2.0])
    distributed.average_([t])
    assert t.tolist() == [1.0, 2.0]


@pytest.mark.slow
def test_two_ranks_write_the_cache_of_one_process(sharded, tmp_path):
    torch.set_num_threads(1)
    single = infer(tmp_path / "frames", tmp_path / "cache.h5")
    assert sorted(p.name for p in sharded.iterdir() if p.is_file()) == [
        "cache.h5", "features-rank0.npy", "features-rank1.npy"]  # no temporary file left
    with h5py.File(tmp_path / "cache.h5") as a, h5py.File(sharded / "cache.h5") as b:
        assert dict(a.attrs) == dict(b.attrs)
        for subset in ("train", "test"):
            assert a[subset].keys() == b[subset].keys()
            for key in a[subset]:
                np.testing.assert_array_equal(b[subset][key][:], a[subset][key][:],
                                              err_msg=f"{subset}/{key}")
            assert np.abs(a[subset]["grids"][:]).sum(axis=(1, 2, 3)).min() > 0
    for rank in range(WORLD):  # every rank has all the embeddings, in order
        np.testing.assert_array_equal(np.load(sharded / f"features-rank{rank}.npy"), single)
    assert single.shape == (len(TRACKLETS["test"]), 8)


@pytest.mark.parametrize(("items", "batch", "size"),
                         [(22, 3, 2), (15, 3, 2), (5, 2, 3), (1, 4, 2), (0, 3, 2), (7, 7, 4)])
def test_round_robin_batches_cover_every_item_once_in_order(items, batch, size):
    chunks = distributed.batches(items, batch)
    assert [i for b in chunks for i in b] == list(range(items))
    assert all(len(b) == batch for b in chunks[:-1])
    shares = [distributed.my_batches(chunks, distributed.World(r, r, size)) for r in range(size)]
    assert sorted(len(s) for s in shares) == sorted(
        len(chunks) // size + (r < len(chunks) % size) for r in range(size))
    assert max(len(s) for s in shares) == distributed.num_rounds(len(chunks),
                                                                 distributed.World(0, 0, size))
    assert distributed.interleave(shares) == chunks


def test_batches_rejects_a_zero_batch_size():
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        distributed.batches(4, 0)


def test_gathers_are_the_identity_in_one_process():
    t = torch.tensor([1.0, 2.0])
    assert distributed.all_gather_(t)[0] is t
    assert distributed.gather_batches([1, 2]) == [1, 2]
