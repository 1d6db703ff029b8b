"""Tests of pipeline/train.py: resume after an interruption replays the uninterrupted run
bit for bit, the loss and its diversity term, checkpoints, exported models, devices.

Small and CPU-only: DRSA heads (K = 2, d = 8, E = 16) trained with OIM on random 16-channel 2x2
grids of 12 tracklets of 4 identities, 2 batches of 2 x 2 per epoch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import random
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline import distributed, signals
from pipeline.checkpoints import (
    LATER_FIELDS,
    config_of,
    drop_checkpoint,
    export_model,
    fingerprint,
    load,
    load_exported,
    save,
)
from pipeline.curves import (
    MEAN,
    SATURATED,
    SATURATION_WARNING,
    Curves,
    map_statistics,
    read_means,
    warn_if_saturated,
)
from pipeline.data import train_loader
from pipeline.errors import DivergedError, InputError, ParamsError
from pipeline.losses import OIMLoss
from pipeline.model import DRSA, Backbone, BaselineHead, VideoReIDNet, build_model
from pipeline.params import ModelParams, RuntimeParams, TrainParams
from pipeline.runtime import compiled, fit_options, pick_device, seed_everything, use_autocast
from pipeline.train import Step, Trainer, fit, warn_if_diverged
from tests.seeded_grids import MODEL, PIDS, D, SeededGrids

# lr 0.1, then 0.01 in epoch 3: a resume from epoch 1 needs the scheduler's state to get it right
CFG = TrainParams(epochs=3, identities_per_batch=2, instances_per_identity=2, lr=0.1,
                  lr_step_epoch=2, lr_gamma=0.1)
BATCHES_PER_EPOCH = 2  # 4 identities // 2 per batch


class Interrupt:
    """A forward pass that raises ``error`` on call number ``at`` (1-based)."""

    def __init__(self, forward, at: int, error: BaseException) -> None:
        self.forward, self.at, self.error, self.calls = forward, at, error, 0

    def __call__(self, x):
        self.calls += 1
        if self.calls == self.at:
            raise self.error
        return self.forward(x)


def train(resume_path, cfg=CFG, key="key", seed=0, wrap=None, diversity="hellinger",
          diversity_weight=0.5, head="drsa", curves=None):
    """Seed, build the heads and an OIM loss, and fit them (their DVCLive curves in ``curves``).
    Returns (heads, criterion, history)."""
    seed_everything(seed)
    heads = DRSA(MODEL, D) if head == "drsa" else BaselineHead(MODEL, D)
    criterion = OIMLoss(MODEL.embed_dim, len(set(PIDS)))
    loader = train_loader(SeededGrids(), PIDS, cfg, seed=1, num_workers=0)
    wrapped = wrap(heads) if wrap else heads
    history = fit(heads, criterion, loader, cfg,
                  Step(lambda net, x: wrapped(x), diversity, diversity_weight),
                  torch.device("cpu"), resume_path, key, curves=curves)
    return heads, criterion, history


def assert_same_run(a, b) -> None:
    """Same weights and buffers, same OIM lookup table, same history."""
    (heads_a, criterion_a, history_a), (heads_b, criterion_b, history_b) = a, b
    state_a, state_b = heads_a.state_dict(), heads_b.state_dict()
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        assert torch.equal(state_a[name], state_b[name]), name
    assert torch.equal(criterion_a.lut, criterion_b.lut)
    assert history_a == history_b


@pytest.fixture(scope="module")
def straight_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("straight")


@pytest.fixture(scope="module")
def straight(straight_folder):
    """Three epochs without interruption, their curves in ``straight_folder / "live"``."""
    return train(straight_folder / "resume.pt", curves=straight_folder / "live")


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by its relative path."""
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*"))
            if f.is_file()}


# --- resume -------------------------------------------------------------------------------------


def test_straight_run_history(straight):
    """One row per step; the lr steps down after epoch 1; the LUT and the weights were trained."""
    heads, criterion, history = straight
    assert [(h["epoch"], h["step"]) for h in history] == [(1, 1), (1, 2), (2, 3), (2, 4),
                                                          (3, 5), (3, 6)]
    assert [h["lr"] for h in history] == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.01, 0.01])
    assert all(np.isfinite(h["loss"]) for h in history)
    assert (criterion.lut.norm(dim=1) > 0.99).all()  # every identity's row was written
    assert heads.temporal.weight.abs().sum() > 0  # trained away from its zero initialisation


def test_the_curves_are_the_history_in_dvclive_files(straight, straight_folder):
    """The DVCLive folder (pipeline.curves): every step's values against the global step, each
    epoch's means at its last step, a summary of the epoch and step reached and the last
    epoch's means (no per-step values), and read_means giving the means back by epoch."""
    _, _, history = straight
    live = straight_folder / "live"
    metrics = live / "plots" / "metrics"
    for name in ("lr", "loss", "id_loss", "diversity", "map_entropy", "map_saturated"):
        table = pd.read_csv(metrics / "batch" / f"{name}.tsv", sep="\t")
        assert list(table.columns) == ["step", name]  # no timestamps: the same run, the same file
        assert list(table["step"]) == [h["step"] for h in history]
        assert list(table[name]) == [h[name] for h in history]
    epochs = {e: [h for h in history if h["epoch"] == e] for e in (1, 2, 3)}
    means = {name: [float(np.mean([h[name] for h in rows])) for rows in epochs.values()]
             for name in MEAN}
    for name in MEAN:
        table = pd.read_csv(metrics / "mean" / f"{name}.tsv", sep="\t")
        assert list(table["step"]) == [2, 4, 6] and list(table[name]) == means[name]
    assert not (metrics / "mean" / "lr.tsv").exists()
    summary = json.loads((live / "metrics.json").read_text())
    assert summary == {"epoch": 3, "step": 6, "mean": {n: means[n][-1] for n in MEAN}}
    table = read_means(live)
    assert list(table.index) == [1, 2, 3] and table.index.name == "epoch"
    assert {n: list(table[n]) for n in MEAN} == means
    assert sorted(p.name for p in live.iterdir()) == ["metrics.json", "plots"]  # no report


def test_curves_without_a_folder_write_nothing_and_a_run_without_steps_an_empty_one(tmp_path):
    """Curves(None) (ranks other than 0, tests) logs nothing; an untrained run's folder holds an
    empty summary and an empty plots folder (the outputs dvc.yaml declares), and no means."""
    with Curves(None) as nothing:
        nothing.step({"epoch": 1, "step": 1, "loss": 1.0})
        nothing.epoch([{"epoch": 1, "step": 1, "loss": 1.0}])
    with Curves(tmp_path / "live"):
        pass
    assert json.loads((tmp_path / "live" / "metrics.json").read_text()) == {}
    assert list((tmp_path / "live" / "plots").iterdir()) == []
    assert read_means(tmp_path / "live").empty


# --- watching the maps ---------------------------------------------------------------------------


def test_map_statistics_of_hand_made_maps():
    """Uniform maps over L = 4 cells: entropy log 4, nothing saturated; one-hot maps: entropy 0,
    3 of 4 entries saturated; a map of 1/2, 1/2 - 1e-7, 1e-7, 0: 2 of 4 below 1e-6."""
    uniform = torch.full((3, 2, 4), 0.25)
    entropy, saturated = map_statistics(uniform)
    assert entropy.item() == pytest.approx(np.log(4)) and saturated.item() == 0.0
    onehot = torch.eye(4)[None, :2].expand(3, 2, 4)
    entropy, saturated = map_statistics(onehot)
    assert entropy.item() == pytest.approx(0.0, abs=1e-12) and saturated.item() == 0.75
    mixed = torch.tensor([[[0.5, 0.5 - 1e-7, 1e-7, 0.0]]], dtype=torch.float64)
    entropy, saturated = map_statistics(mixed)
    expected = -(0.5 * np.log(0.5) + (0.5 - 1e-7) * np.log(0.5 - 1e-7) + 1e-7 * np.log(1e-7))
    assert entropy.item() == pytest.approx(expected, rel=1e-6) and saturated.item() == 0.5
    assert SATURATED == 1e-6


def test_fit_records_the_training_maps_of_a_model_with_spatial_attention(straight, tmp_path):
    """DRSA heads: every step has map_entropy in [0, log L] and map_saturated in [0, 1]; a
    baseline head (no maps) has neither column."""
    _, _, history = straight
    cells = 2 * 2  # the grids of tests/seeded_grids.py
    for h in history:
        assert 0.0 <= h["map_entropy"] <= np.log(cells) + 1e-6
        assert 0.0 <= h["map_saturated"] <= 1.0
    _, _, plain = train(tmp_path / "baseline.pt", head="baseline")
    assert not any("map_entropy" in h or "map_saturated" in h for h in plain)


def history_of(saturated: list[float], entropy: float = 0.1) -> list[dict]:
    return [{"epoch": 1 + i // 2, "step": i + 1, "map_saturated": share, "map_entropy": entropy}
            for i, share in enumerate(saturated)]


def test_the_saturation_warning_fires_on_saturated_maps_only(caplog):
    """Judged on the last epoch's steps: saturated (0.9, 0.8) warns and names the params; broad
    (0.1, 0.2) after a saturated first epoch does not; neither does a history without maps."""
    with caplog.at_level("WARNING"):
        assert warn_if_saturated(history_of([0.1, 0.2, 0.9, 0.8], 0.02), "attention spatial",
                                 "loss.diversity_weight and attention.spatial.lr")
    assert "attention spatial: the spatial attention maps ended saturated: 85% of their entries " \
           "below 1e-06 (mean entropy 0.020 nats)" in caplog.text
    assert "look at loss.diversity_weight and attention.spatial.lr" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert not warn_if_saturated(history_of([0.9, 0.9, 0.1, 0.2]), "joint", "joint.lr")
        assert not warn_if_saturated(history_of([SATURATION_WARNING] * 2), "joint", "joint.lr")
        assert not warn_if_saturated([{"epoch": 1, "step": 1, "loss": 1.0}], "finetune", "x")
        assert not warn_if_saturated([], "finetune", "x")
    assert caplog.text == ""


def test_the_divergence_warning_fires_when_the_loss_ends_above_its_start(caplog):
    """The joint stage at joint.lr 0.01 on the default run: 0.14 at the first step, about 4.2 at
    the end (the maps turned uniform). Warned, naming the stage's lr key; a loss that falls,
    or a last epoch whose mean is at its first step's value, is not."""
    def losses(*epochs):
        return [{"epoch": e + 1, "step": 1, "loss": v} for e, values in enumerate(epochs)
                for v in values]
    with caplog.at_level("WARNING"):
        assert warn_if_diverged(losses([0.14, 9.0], [4.2, 4.3]), "joint")
    assert "joint: the loss ended higher than it started (4.2500 in the last epoch, 0.1400 at " \
           "the first step): the training diverged; look at joint.lr" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert warn_if_diverged(losses([1.0], [0.5, 1.7]), "attention spatial")
    assert "look at attention.spatial.lr" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert not warn_if_diverged(losses([5.0, 6.0], [1.0, 0.8]), "pretrain")
        assert not warn_if_diverged(losses([1.0], [0.5, 1.5]), "finetune")
        assert not warn_if_diverged([], "finetune")
        # one epoch (the benchmarks' short runs): its mean includes its first steps, no verdict
        assert not warn_if_diverged(losses([0.1, 5.0, 6.0]), "joint")
    assert caplog.text == ""


def test_diversity_warm_up_ramps_the_coefficient_over_the_first_epochs(tmp_path):
    """weight_at: 0, 1/2, 1 of the weight in epochs 0, 1, 2 for a warm-up of 2, the full weight
    without one; fit adds exactly weight_at(epoch) x the diversity term to the identity loss."""
    step = Step(diversity="hellinger", diversity_weight=2.0, diversity_warmup_epochs=4)
    assert [step.weight_at(e) for e in range(6)] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]
    assert Step(diversity_weight=2.0).weight_at(0) == 2.0
    seed_everything(0)
    heads = DRSA(MODEL, D)
    criterion = OIMLoss(MODEL.embed_dim, len(set(PIDS)))
    loader = train_loader(SeededGrids(), PIDS, CFG, seed=1, num_workers=0)
    warm = Step(lambda net, x: net(x), "hellinger", 0.5, diversity_warmup_epochs=2)
    history = fit(heads, criterion, loader, CFG, warm, torch.device("cpu"), tmp_path / "r.pt",
                  "key")
    for h in history:
        factor = {1: 0.0, 2: 0.5, 3: 1.0}[h["epoch"]]
        assert h["diversity"] > 0
        assert h["loss"] == pytest.approx(h["id_loss"] + factor * 0.5 * h["diversity"],
                                          rel=1e-6)


def test_resume_after_an_interruption_replays_the_uninterrupted_run(straight, straight_folder,
                                                                     tmp_path):
    """Interrupted on the first batch of epoch 2, then started again with the same inputs (and
    heads initialised from another seed): it resumes after epoch 1 from the checkpoint (weights,
    OIM table, optimizer momentum, lr schedule, history) and ends with the straight run's
    weights, lookup table and history, bit for bit."""
    resume, live = tmp_path / "resume.pt", tmp_path / "live"
    first_of_epoch_2 = BATCHES_PER_EPOCH + 1
    with pytest.raises(KeyboardInterrupt):
        train(resume, wrap=lambda f: Interrupt(f, first_of_epoch_2, KeyboardInterrupt()),
              curves=live)
    state = load(resume)
    assert state["epoch"] == 0 and state["key"] == "key"
    assert [h["epoch"] for h in state["history"]] == [1, 1]

    calls = []
    resumed = train(resume, seed=123, wrap=lambda f: lambda x: calls.append(1) or f(x),
                    curves=live)
    assert len(calls) == 2 * BATCHES_PER_EPOCH  # only epochs 2 and 3 were trained
    assert_same_run(resumed, straight)
    assert load(resume)["epoch"] == 2
    assert folder_bytes(live) == folder_bytes(straight_folder / "live")  # the same curves


class Signal:
    """A forward pass that sends ``signum`` to this process before call number ``at``."""

    def __init__(self, forward, at: int, signum: int = signal.SIGTERM) -> None:
        self.forward, self.at, self.signum, self.calls = forward, at, signum, 0

    def __call__(self, x):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), self.signum)
        return self.forward(x)


@pytest.fixture
def stop_handlers():
    """The stages' SIGINT/SIGTERM handlers (``stages.common.run`` installs them), then the
    previous ones back."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signals.install_signal_handlers()
    yield
    signals.install_signal_handlers()  # forgets a stop request left by the test
    for signum, handler in previous.items():
        signal.signal(signum, handler)


@pytest.mark.parametrize(("at", "signum", "where"), [
    (BATCHES_PER_EPOCH + 1, signal.SIGTERM, "in epoch 2/3 after step 1"),  # mid-epoch
    (BATCHES_PER_EPOCH, signal.SIGINT, "after epoch 1/3"),  # on an epoch's last step
])
def test_a_signal_stops_after_the_step_and_the_run_resumes_exactly(straight, straight_folder,
                                                                  tmp_path, stop_handlers, at,
                                                                  signum, where):
    """SIGTERM/SIGINT during training: the step finishes, the checkpoint records the place in the
    epoch, ``Stopped`` says where and how to resume; the next run takes only the remaining steps
    and ends bit for bit as the uninterrupted run."""
    resume, live = tmp_path / "resume.pt", tmp_path / "live"
    with pytest.raises(signals.Stopped, match=re.escape(where)) as stopped:
        train(resume, wrap=lambda f: Signal(f, at, signum), curves=live)
    assert stopped.value.signum == signum
    assert "run the stage again to resume" in str(stopped.value)
    state = load(resume)
    assert len(state["history"]) == at  # the step that was running when the signal came
    # the curves logged up to the stop (a running experiment's `dvc exp show` reads them)
    assert json.loads((live / "metrics.json").read_text())["step"] == at
    signals.install_signal_handlers()  # a new stage process starts without a stop request
    calls = []
    resumed = train(resume, seed=123, wrap=lambda f: lambda x: calls.append(1) or f(x),
                    curves=live)
    assert len(calls) == 3 * BATCHES_PER_EPOCH - at
    assert_same_run(resumed, straight)
    assert folder_bytes(live) == folder_bytes(straight_folder / "live")  # the same curves


def test_a_second_ctrl_c_stops_at_once(tmp_path, stop_handlers):
    def twice(forward):  # two SIGINTs inside the first step
        return Signal(Signal(forward, 1, signal.SIGINT), 1, signal.SIGINT)

    with pytest.raises(signals.Stopped) as stopped:
        train(tmp_path / "resume.pt", wrap=twice)
    assert str(stopped.value) == "stopped by SIGINT"  # raised by the handler, not by fit
    assert not (tmp_path / "resume.pt").exists()  # no step finished: nothing to resume from


def test_a_repeated_sigterm_still_stops_cleanly(tmp_path, stop_handlers):
    """A scheduler and torchrun may both forward the same SIGTERM: the repeat changes nothing."""
    def twice(forward):
        return Signal(Signal(forward, 1), 1)

    with pytest.raises(signals.Stopped, match=r"after step 1; .* run the stage again"):
        train(tmp_path / "resume.pt", wrap=twice)
    assert load(tmp_path / "resume.pt")["stopped_at"] == [0, 1]


def test_a_finished_checkpoint_is_resumed_without_training(straight, tmp_path):
    """Started again after its last epoch (a stage re-run before ``drop_checkpoint``): no step is
    taken, the weights and the history are the straight run's."""
    resume = tmp_path / "resume.pt"
    train(resume)
    calls = []
    again = train(resume, seed=5, wrap=lambda f: lambda x: calls.append(1) or f(x))
    assert calls == []
    assert_same_run(again, straight)


def test_a_checkpoint_for_other_inputs_is_ignored(straight, tmp_path):
    """A resume file with another key (here one epoch at another lr) is not used: the run
    starts from scratch and equals a fresh one; the file is then replaced."""
    resume = tmp_path / "resume.pt"
    train(resume, cfg=dataclasses.replace(CFG, epochs=1, lr=0.05), key="other inputs")
    assert load(resume)["key"] == "other inputs"
    assert_same_run(train(resume), straight)
    assert load(resume)["key"] == "key"


def test_a_checkpoint_that_would_not_fit_on_the_disk_fails_before_training(tmp_path,
                                                                             monkeypatch):
    """Less free space than the resume checkpoint needs (weights, loss state, a momentum per
    parameter): an error naming the checkpoint and both sizes, before the first step."""
    usage = type(shutil.disk_usage("/"))
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 30, (1 << 30) - 1000, 1000))
    calls = []
    with pytest.raises(InputError) as caught:
        train(tmp_path / "scratch" / "resume.pt", wrap=lambda f: lambda x: calls.append(1) or f(x))
    assert re.fullmatch(rf"{re.escape(str(tmp_path / 'scratch' / 'resume.pt'))}: the resume "
                        r"checkpoint needs about \d+ MB but .* has 0 MB free, no space left on "
                        r"device: free some space, then run the stage again", str(caught.value))
    assert calls == [] and sorted(tmp_path.iterdir()) == []


def test_drop_checkpoint_removes_the_scratch_checkpoint(tmp_path):
    """fit leaves its resume file (for a re-run before the outputs are written);
    drop_checkpoint deletes it, and dropping it twice is harmless."""
    resume = tmp_path / "scratch" / "resume.pt"
    train(resume, cfg=dataclasses.replace(CFG, epochs=1))
    assert resume.is_file()
    drop_checkpoint(resume)
    assert not resume.exists()
    drop_checkpoint(resume)


@pytest.mark.parametrize(("call", "where"), [(2, "epoch 1, step 2"), (3, "epoch 2, step 1")])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_loss_stops_training(tmp_path, call, where, bad):
    """A NaN or infinite loss raises DivergedError (bad input: one line from a stage) naming the
    run's params section, the epoch and the step, and the learning rate to lower."""

    def wrap(forward):
        def broken(x):
            out = forward(x)
            if len(calls) == call - 1:
                out = out._replace(embedding=out.embedding * bad)
            calls.append(1)
            return out
        return broken

    calls: list[int] = []
    with pytest.raises(DivergedError) as err:
        train(tmp_path / "resume.pt", wrap=wrap)
    assert re.fullmatch(rf"train: the loss became (nan|inf) at {where}: the training diverged; "
                        r"lower train\.lr \(now 0\.1\), or loss\.oim_scalar", str(err.value))


def test_weights_that_blew_up_behind_a_finite_loss_stop_training():
    """After each epoch the trained weights must be finite: a phase whose weights became inf
    raises naming its own params section (attention spatial -> attention.spatial), so that it
    exports nothing and the next phase is not blamed."""
    heads = DRSA(MODEL, D)
    trainer = Trainer(heads, OIMLoss(MODEL.embed_dim, len(set(PIDS))), CFG, torch.device("cpu"),
                      "attention spatial")
    trainer.check_finite(0)
    with torch.no_grad():
        heads.temporal.weight.fill_(float("inf"))
    with pytest.raises(DivergedError) as err:
        trainer.check_finite(2)
    assert str(err.value) == ("attention.spatial: the weights became inf or nan in epoch 3: the "
                              "training diverged; lower attention.spatial.lr (now 0.1), or "
                              "loss.oim_scalar")


@pytest.mark.parametrize(("head", "diversity", "weight", "active"), [
    ("drsa", "hellinger", 0.5, True),
    ("drsa", "sparse", 2.0, True),
    ("drsa", "none", 0.5, False),
    ("drsa", "hellinger", 0.0, True),
    ("baseline", "hellinger", 0.5, False),  # no attention maps, no term
])
def test_loss_is_the_identity_loss_plus_the_weighted_diversity(tmp_path, head, diversity, weight,
                                                               active):
    """loss = id_loss + w * diversity at every step; the term is > 0 (and at most K(K-1) = 2)
    when computed, 0 when off or without attention maps."""
    cfg = dataclasses.replace(CFG, epochs=1)
    _, _, history = train(tmp_path / "resume.pt", cfg=cfg, diversity=diversity,
                          diversity_weight=weight, head=head)
    assert len(history) == BATCHES_PER_EPOCH
    for h in history:
        assert h["id_loss"] > 0
        if active:
            assert 0 < h["diversity"] <= 2
        else:
            assert h["diversity"] == 0
        assert h["loss"] == pytest.approx(h["id_loss"] + weight * h["diversity"], rel=1e-6)


# --- checkpoints ---------------------------------------------------------------------------------


class Opaque:
    """An arbitrary object: pickled by torch.save, refused by a weights-only load."""

    def __init__(self) -> None:
        self.value = 42


def test_save_is_atomic_and_loads_back(tmp_path):
    """Parents created, no temporary file left, tensors and containers load back equal."""
    path = tmp_path / "a" / "b" / "ckpt.pt"
    payload = {"w": torch.arange(6.0).view(2, 3), "history": [{"epoch": 1, "loss": 0.5}],
               "name": "x", "rng": torch.get_rng_state()}
    save(path, payload)
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt.pt"]
    loaded = load(path)
    assert torch.equal(loaded["w"], payload["w"]) and torch.equal(loaded["rng"], payload["rng"])
    assert loaded["history"] == payload["history"] and loaded["name"] == "x"


def test_a_failed_save_keeps_the_previous_checkpoint_and_leaves_no_temporary(tmp_path):
    """torch.save failing half way (an unpicklable object) leaves the previous file as it was
    and no ``.ckpt.pt.tmp`` behind."""
    path = tmp_path / "ckpt.pt"
    save(path, {"w": torch.ones(3)})
    with pytest.raises((pickle.PicklingError, AttributeError), match="pickle"):
        save(path, {"w": torch.zeros(3), "f": lambda: 0})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]
    assert torch.equal(load(path)["w"], torch.ones(3))


def test_load_refuses_arbitrary_objects(tmp_path):
    """A pickled object of a class is refused (weights_only), as a ValueError."""
    path = tmp_path / "evil.pt"
    torch.save({"state": {"w": torch.ones(1)}, "extra": Opaque()}, path)
    with pytest.raises(ValueError, match="plain tensors"):
        load(path)


@pytest.mark.parametrize("damage", ["truncate", "text", "empty"])
def test_load_refuses_broken_files(tmp_path, damage):
    """A truncated checkpoint, a text file or an empty file: ValueError naming the file."""
    path = tmp_path / "ckpt.pt"
    save(path, {"w": torch.randn(1000)})
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    else:
        path.write_text("" if damage == "empty" else "not a checkpoint\n")
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}: not a loadable checkpoint"):
        load(path)


def test_load_of_a_missing_file_says_so(tmp_path):
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "nothing.pt")


# --- exported models ----------------------------------------------------------------------------


def make_model(kind: str, head: str):
    """A model whose every parameter and BatchNorm buffer is away from its initial value (so a
    rebuilt model that missed any would differ), in eval mode."""
    seed_everything(0)
    model = build_model(MODEL, head) if kind == "net" else (
        DRSA(MODEL, D) if head == "drsa" else BaselineHead(MODEL, D))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        inputs = torch.randn(4, MODEL.N, 3, 32, 16) if kind == "net" else torch.rand(
            4, MODEL.N, D, 2, 2)
        model.train()(inputs)  # BatchNorm running statistics move
    return model.eval(), inputs


@pytest.mark.parametrize(("kind", "head"), [
    ("net", "baseline"), ("net", "drsa"), ("head", "drsa"), ("head", "baseline"),
])
def test_exported_models_rebuild_identically(tmp_path, kind, head):
    """load_exported rebuilds the same class from the stored configuration, in eval mode, with
    identical outputs; extra payload keys are kept."""
    model, inputs = make_model(kind, head)
    path = tmp_path / "model.pt"
    extra = {"stage": "test", "criterion": {"lut": torch.eye(3)}}
    export_model(path, model, MODEL, head, extra)
    rebuilt, payload = load_exported(path)
    assert type(rebuilt) is type(model)
    assert not rebuilt.training
    if kind == "net":
        assert isinstance(rebuilt, VideoReIDNet)
        assert type(rebuilt.head) is type(model.head)
    assert payload["kind"] == kind and payload["head"] == head
    # the params added later (part_embedding, grid_block) are recorded only where set, so that
    # the models of a run that leaves them alone keep their bytes
    stored = {k: v for k, v in dataclasses.asdict(MODEL).items() if k not in LATER_FIELDS}
    assert payload["model_params"] == stored
    assert payload["stage"] == "test" and torch.equal(payload["criterion"]["lut"], torch.eye(3))
    with torch.no_grad():
        expected, got = model(inputs), rebuilt(inputs)
    for a, b in zip(expected, got, strict=True):
        assert (a is None and b is None) or torch.equal(a, b)


def _edit(payload: dict, change: str) -> None:
    if change == "K":
        payload["model_params"]["K"] = 3
    elif change == "embed_dim":
        payload["model_params"]["embed_dim"] = 8
    elif change == "in_channels":
        payload["in_channels"] = D + 1
    elif change == "head":
        payload["head"] = "transformer"
    elif change == "state":
        del payload["state"]
    elif change == "unknown_param":
        payload["model_params"]["colour"] = "red"


@pytest.mark.parametrize("change", ["K", "embed_dim", "in_channels", "head", "state",
                                    "unknown_param"])
def test_exported_payload_that_does_not_fit_is_refused(tmp_path, change):
    """A stored configuration the weights do not fit, or a payload not made by export_model:
    a ValueError naming the file."""
    model, _ = make_model("head", "drsa")
    path = tmp_path / "model.pt"
    export_model(path, model, MODEL, "drsa")
    payload = load(path)
    _edit(payload, change)
    save(path, payload)
    with pytest.raises(ValueError, match=re.escape(str(path)) if change != "unknown_param"
                       else "unknown key model.colour"):
        load_exported(path)


def test_an_exported_drsa_net_rebuilds_with_its_backbone_cut_at_the_grid_block(tmp_path):
    """The joint model (DRSA heads on the backbone up to model.grid_block) records the block and
    rebuilds with that backbone, its outputs identical; a baseline net is whole whatever
    model.grid_block says (the paper's Baseline); a net whose params say another block than its
    backbone's is refused at export (it would not rebuild)."""
    cfg = dataclasses.replace(MODEL, grid_block="layer3")
    seed_everything(0)
    model = build_model(cfg).eval()
    path = tmp_path / "joint.pt"
    export_model(path, model, cfg, "drsa")
    rebuilt, payload = load_exported(path)
    assert payload["model_params"]["grid_block"] == "layer3"
    assert rebuilt.backbone.grid_block == "layer3" and not hasattr(rebuilt.backbone, "layer4")
    inputs = torch.randn(2, MODEL.N, 3, 32, 16)
    with torch.no_grad():
        expected, got = model(inputs), rebuilt(inputs)
    assert torch.equal(expected.embedding, got.embedding)
    assert torch.equal(expected.spatial, got.spatial)
    export_model(tmp_path / "finetune.pt", build_model(cfg, "baseline"), cfg, "baseline")
    assert load_exported(tmp_path / "finetune.pt")[0].backbone.grid_block == "last"
    with pytest.raises(ValueError, match="backbone ends at layer3, but its model params say "
                                         "last: it would not rebuild"):
        export_model(tmp_path / "other.pt", model, MODEL, "drsa")


# --- devices, seeds, fingerprints ----------------------------------------------------------------


@pytest.mark.parametrize(("device", "cuda", "expected"), [
    ("cpu", False, "cpu"), ("auto", False, "cpu"), ("cpu", True, "cpu"), ("auto", True, "cuda:1"),
    ("cuda", True, "cuda:1"),
])
def test_pick_device(monkeypatch, device, cuda, expected):
    """auto: CUDA when there is one, else CPU; an explicit choice is kept; the GPU is the current
    one (under torchrun, cuda:<LOCAL_RANK>)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert pick_device(RuntimeParams(device=device)) == torch.device(expected)


def test_pick_device_cuda_without_cuda(monkeypatch):
    """A ParamsError naming runtime.device and the way out."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ParamsError) as caught:
        pick_device(RuntimeParams(device="cuda"))
    assert str(caught.value) == ("runtime.device: cuda, but torch sees no CUDA device (no GPU, no "
                                 "driver, or a CPU build of torch); set runtime.device to auto or "
                                 "cpu")


@pytest.mark.parametrize(("amp", "device", "expected"), [
    (True, "cpu", False), (False, "cpu", False), (True, "cuda", True), (False, "cuda", False),
])
def test_use_autocast_only_on_cuda(amp, device, expected):
    assert use_autocast(RuntimeParams(amp=amp), torch.device(device)) is expected


def test_seed_everything_repeats_pythons_and_torchs_draws():
    seed_everything(3)
    first = (random.random(), torch.rand(4))
    seed_everything(3)
    second = (random.random(), torch.rand(4))
    seed_everything(4)
    other = torch.rand(4)
    assert first[0] == second[0] and torch.equal(first[1], second[1])
    assert not torch.equal(first[1], other)


def test_fingerprint_is_stable_and_tells_inputs_apart(tmp_path):
    """Equal inputs (dict order aside) give the same short hex hash; any change another one."""
    a = fingerprint("attention", 0, {"K": 6, "d": 256}, tmp_path / "x.h5")
    assert a == fingerprint("attention", 0, {"d": 256, "K": 6}, tmp_path / "x.h5")
    assert re.fullmatch(r"[0-9a-f]{16}", a)
    others = [fingerprint("attention", 1, {"K": 6, "d": 256}, tmp_path / "x.h5"),
              fingerprint("attention", 0, {"K": 4, "d": 256}, tmp_path / "x.h5"),
              fingerprint("joint", 0, {"K": 6, "d": 256}, tmp_path / "x.h5"),
              fingerprint("attention", 0, {"K": 6, "d": 256}, tmp_path / "y.h5"),
              fingerprint("attention", 0, {"K": 6, "d": 256})]
    assert len({a, *others}) == 1 + len(others)


# --- runtime.compile, runtime.sync_bn ------------------------------------------------------------


@pytest.fixture
def quick_compile(monkeypatch):
    """torch.compile with the aot_eager backend (the graph capture and AOT autograd of the real
    thing, without inductor's C++ build, which takes about 40 s per model on these CPUs); records
    what it compiled."""
    real, calls = torch.compile, []

    def compile_(model, *args, **kwargs):
        calls.append(model)
        return real(model, backend="aot_eager")

    monkeypatch.setattr(torch, "compile", compile_)
    return calls


@pytest.mark.slow
def test_fit_through_torch_compile_trains_like_eager(straight, tmp_path, quick_compile):
    seed_everything(0)
    heads = DRSA(MODEL, D)
    criterion = OIMLoss(MODEL.embed_dim, len(set(PIDS)))
    loader = train_loader(SeededGrids(), PIDS, CFG, seed=1, num_workers=0)
    history = fit(heads, criterion, loader, CFG, Step(diversity="hellinger", diversity_weight=0.5),
                  torch.device("cpu"), tmp_path / "resume.pt", "key", compile=True)
    assert quick_compile == [heads]  # the model was trained through its compiled form
    eager_heads, eager_criterion, eager_history = straight
    for name, value in eager_heads.state_dict().items():
        torch.testing.assert_close(heads.state_dict()[name], value, rtol=1e-5, atol=1e-6,
                                   msg=name)
    torch.testing.assert_close(criterion.lut, eager_criterion.lut, rtol=1e-5, atol=1e-6)
    assert [h["loss"] for h in history] == pytest.approx([h["loss"] for h in eager_history],
                                                         rel=1e-5)


@pytest.mark.slow
def test_compiled_backbone_keeps_its_weights_names_and_outputs(quick_compile):
    backbone = Backbone("resnet18", last_stride=1).eval()
    keys = list(backbone.state_dict())
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        expected = backbone(x)
        assert compiled(backbone, False) is backbone and quick_compile == []
        assert compiled(backbone, True) is backbone
        out = backbone(x)
    assert len(quick_compile) == 1  # nn.Module.compile goes through torch.compile
    assert list(backbone.state_dict()) == keys  # exported checkpoints stay loadable
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_sync_bn_needs_cuda_under_torchrun(monkeypatch, tmp_path):
    monkeypatch.setattr("pipeline.distributed.world", lambda: distributed.World(0, 0, 2))
    with pytest.raises(ValueError, match=r"runtime\.sync_bn: SyncBatchNorm needs CUDA"):
        train_with(tmp_path, sync_bn=True)


def test_sync_bn_is_a_no_op_in_one_process(tmp_path):
    heads = train_with(tmp_path, sync_bn=True)
    kinds = {type(m) for m in heads.modules()
             if isinstance(m, torch.nn.BatchNorm1d | torch.nn.SyncBatchNorm)}
    assert kinds == {torch.nn.BatchNorm1d}


def train_with(tmp_path, **options):
    seed_everything(0)
    heads = DRSA(MODEL, D)
    loader = train_loader(SeededGrids(), PIDS, CFG, seed=1, num_workers=0)
    fit(heads, OIMLoss(MODEL.embed_dim, len(set(PIDS))), loader, CFG, Step(),
        torch.device("cpu"), tmp_path / "resume.pt", "key", **options)
    return heads


@pytest.mark.parametrize(("amp", "compile_", "sync_bn", "backbone"),
                         [(True, False, False, True), (True, True, True, False),
                          (False, True, False, True)])
def test_fit_options_from_runtime(amp, compile_, sync_bn, backbone):
    cfg = RuntimeParams(amp=amp, compile=compile_, sync_bn=sync_bn)
    # bf16 autocast is for the backbone on CUDA only; compile and sync_bn pass through
    assert fit_options(cfg, torch.device("cpu"), backbone) == {
        "autocast": False, "compile": compile_, "sync_bn": sync_bn}
    assert fit_options(cfg, torch.device("cuda", 0), backbone)["autocast"] == (amp and backbone)


def test_config_of_keeps_only_the_named_fields():
    """What pretrain exports: its own keys, the rest at the defaults, so that its bytes do not
    depend on K, d or N (which its stage does not read)."""
    cfg = ModelParams(backbone="resnet18", init="scratch", last_stride=1, N=4, K=8, d=64,
                      embed_dim=32)
    kept = config_of(cfg, "backbone", "init", "last_stride", "embed_dim")
    assert kept == ModelParams(backbone="resnet18", init="scratch", last_stride=1, embed_dim=32)
    assert config_of(dataclasses.replace(cfg, K=2), "backbone", "init", "last_stride",
                     "embed_dim") == kept
