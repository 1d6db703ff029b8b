"""The bad-input catalogue (docs/bad-inputs.md): rows not covered by the module tests of their
code. Each bad input ends in one clear error naming the file or the key and what was expected,
no traceback from a stage, and nothing half-written."""

from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from pipeline import distributed
from pipeline.checkpoints import export_model, load, load_exported, save
from pipeline.data import ClipDataset, eval_loader, load_frame
from pipeline.datasets import dukev, ilidsvid
from pipeline.datasets.common import screen_frames
from pipeline.datasets.mars import load_mat_key
from pipeline.download import extract
from pipeline.errors import (
    CacheError,
    CheckpointError,
    DatasetError,
    InputError,
    ParamsError,
    UnsafeArchiveError,
)
from pipeline.features import cache_attrs, open_cache, write_cache
from pipeline.files import write_with
from pipeline.model import Backbone, backbone_state_from_file, build_model
from pipeline.params import ModelParams
from pipeline.stages import attention, common, evaluate, finetune, joint, pretrain, summary
from pipeline.stages.common import one_line, run
from pipeline.tables import image_table, load_image_index, load_video_index, save_image_index

ROOT = Path(__file__).resolve().parents[1]
DiskUsage = type(shutil.disk_usage("/"))


def jpeg(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (32, 16, 3), dtype=np.uint8)).save(path)
    return path


def damage(path: Path, how: str) -> Path:
    data = path.read_bytes()
    path.write_bytes({"truncated": data[:len(data) // 2], "zero-byte": b"",
                      "not-an-image": b"hello"}[how])
    return path


# --- frames ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["truncated", "zero-byte", "not-an-image"])
def test_a_bad_frame_names_its_file(tmp_path, how):
    frame = damage(jpeg(tmp_path / "0001C1T0001F001.jpg"), how)
    with pytest.raises(DatasetError, match=r"0001C1T0001F001\.jpg: cannot read the image"):
        load_frame(frame, (32, 16))


def test_a_frame_gone_after_indexing_names_its_file(tmp_path):
    with pytest.raises(DatasetError, match=r"gone\.jpg: cannot read the image"):
        load_frame(tmp_path / "gone.jpg", (32, 16))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_bad_frame_in_a_loader_worker_is_one_line(tmp_path, workers):
    """DataLoader workers re-raise with their traceback in the message; the stage prints only
    the original error."""
    frames = [str(jpeg(tmp_path / f"f{i}.jpg", i)) for i in range(3)]
    damage(Path(frames[1]), "truncated")
    loader = eval_loader(ClipDataset([frames], [0], 3, (32, 16)), 1, workers)
    with pytest.raises(DatasetError) as caught:
        list(loader)
    assert one_line(caught.value).startswith(f"{frames[1]}: cannot read the image")
    assert "\n" not in one_line(caught.value) and "Traceback" not in one_line(caught.value)


def test_a_stage_reports_a_worker_error_in_one_line():
    err = DatasetError("Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback "
                       "(most recent call last):\n  File \"x.py\", line 1, in f\n"
                       "pipeline.datasets.common.DatasetError: /d/f1.jpg: cannot read the image")
    assert one_line(err) == "/d/f1.jpg: cannot read the image"
    assert one_line(DatasetError("plain")) == "plain"


# --- dataset trees and split files ------------------------------------------------------------


def test_ilidsvid_stray_folder_is_named(tmp_path):
    sequences = tmp_path / "i-LIDS-VID" / "sequences"
    for person in ("person001", "person002", "notes"):
        (sequences / "cam1" / person).mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"expected only person<number> folders.*'notes'"):
        ilidsvid.index(tmp_path, 0)


def test_dukev_non_numeric_identity_folder_is_named(tmp_path):
    base = tmp_path / "DukeMTMC-VideoReID"
    for folder in ("train", "query", "gallery"):
        (base / folder).mkdir(parents=True)
    (base / "train" / "backup").mkdir()
    with pytest.raises(DatasetError, match=r"backup: expected identity folders named by number"):
        dukev.index(tmp_path, 0)


@pytest.mark.parametrize("content", [b"", b"MATLAB 5.0 MAT-file" + bytes(200), b"\x00" * 64])
def test_an_unreadable_mat_file_is_named(tmp_path, content):
    path = tmp_path / "tracks_test_info.mat"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=r"tracks_test_info\.mat: not a readable \.mat file"):
        load_mat_key(path, "track_test_info")


# --- archives -------------------------------------------------------------------------------------


def test_a_chain_of_links_leaving_the_target_is_refused(tmp_path):
    """Each link stays inside on its own; followed in turn they leave: tarfile's data filter
    refuses it, reported as an unsafe archive (nothing extracted, no temporary folder)."""
    archive = tmp_path / "chain.tar"
    with tarfile.open(archive, "w") as tf:
        for name, target in (("a/b/d", "../.."), ("a/b/d/e", "../x")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
        info = tarfile.TarInfo("a/b/d/e/f.txt")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"hi"))
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match=r"chain\.tar"):
        extract(archive, dest)
    assert not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chain.tar"]


def test_a_damaged_archive_is_an_input_error(tmp_path):
    archive = tmp_path / "cut.tar"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tf:
        info = tarfile.TarInfo("big.bin")
        info.size = 100_000
        tf.addfile(info, io.BytesIO(bytes(100_000)))
    archive.write_bytes(buffer.getvalue()[:30_000])  # cut inside the member
    with pytest.raises(UnsafeArchiveError, match=r"cut\.tar"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- artifacts ------------------------------------------------------------------------------------


def test_a_truncated_cache_is_refused(tmp_path):
    path = tmp_path / "cache.h5"
    with h5py.File(path, "w") as f:
        f.attrs["complete"] = True
        f["test/grids"] = np.zeros((64, 8, 4, 2), dtype=np.float16)
    path.write_bytes(path.read_bytes()[:2048])
    with pytest.raises(CacheError, match=r"cache\.h5: not a readable HDF5 feature cache"):
        open_cache(path, {})


def test_model_init_refuses_a_pickled_object(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state": {"w": torch.zeros(1)}, "hook": Path("/etc/passwd")}, path)
    with pytest.raises(InputError, match=r"model\.init: .*evil\.pt: not a loadable checkpoint"):
        backbone_state_from_file(path)


@pytest.mark.parametrize("payload", [torch.zeros(3), {"kind": "net"}, [1, 2]])
def test_an_export_that_is_not_a_model_is_refused(tmp_path, payload):
    path = tmp_path / "model.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"model\.pt: not a model exported by this"):
        load_exported(path)


# --- index files ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("content", "message"), [
    ("{}", "expected an index written by the index stage"),
    ("[1, 2]", "expected an index written by the index stage"),
    ('{"root": ".", "tracklets": [{"pid": 1}]}', "expected an index written by the index stage"),
    ("{not json", "not JSON"),
])
def test_a_malformed_index_is_named(tmp_path, content, message):
    path = tmp_path / "split_0.json"
    path.write_text(content)
    with pytest.raises(DatasetError, match=re.escape(message)):
        load_video_index(path)


@pytest.mark.parametrize("frame", ["../outside.jpg", "/etc/passwd", "a/../../b.jpg"])
def test_index_entries_stay_under_the_dataset_root(tmp_path, frame):
    root = tmp_path / "root"
    root.mkdir()
    path = tmp_path / "split_0.json"
    path.write_text(json.dumps({"root": str(root), "tracklets": [
        {"pid": 1, "camid": 1, "subset": "train", "is_query": False, "frames": [frame]}]}))
    with pytest.raises(DatasetError, match="leaves the dataset root"):
        load_video_index(path)
    images = tmp_path / "images.json"
    images.write_text(json.dumps({"root": str(root),
                                  "images": [{"pid": 1, "camid": 1, "path": frame}]}))
    with pytest.raises(DatasetError, match="leaves the dataset root"):
        load_image_index(images)


# --- data.bad_frames ------------------------------------------------------------------------------


def bad_tree(tmp_path: Path) -> pd.DataFrame:
    """Three tracklets: one sound, one with a zero-byte and a missing frame among sound ones,
    one whose only frame is not an image."""
    good = [str(jpeg(tmp_path / f"t0/{i}.jpg", i)) for i in range(2)]
    mixed = [str(jpeg(tmp_path / "t1/0.jpg")),
             str(damage(jpeg(tmp_path / "t1/1.jpg"), "zero-byte")),
             str(tmp_path / "t1/2.jpg"), str(jpeg(tmp_path / "t1/3.jpg"))]
    alone = [str(damage(jpeg(tmp_path / "t2/0.jpg"), "not-an-image"))]
    return pd.DataFrame({"pid": [1, 2, 3], "camid": [1, 1, 2], "subset": ["train"] * 3,
                         "is_query": [False] * 3, "frames": [good, mixed, alone]})


def test_bad_frames_fail_names_one_and_the_count(tmp_path):
    table = bad_tree(tmp_path)
    with pytest.raises(DatasetError, match=r"mars split 0: 3 frame\(s\) listed in the index "
                                           r"cannot be used, e\.g\. frame .*t1/1\.jpg is empty"):
        screen_frames(table, "fail", "mars split 0")


def test_bad_frames_skip_leaves_them_out_and_counts(tmp_path, caplog):
    table = bad_tree(tmp_path)
    kept, counts = screen_frames(table, "skip", "mars split 0")
    assert counts == {"frames": 3, "tracklets": 1}
    assert kept["pid"].tolist() == [1, 2]
    assert [Path(f).name for f in kept["frames"][1]] == ["0.jpg", "3.jpg"]
    assert "leaving out 3 bad frame(s)" in caplog.text
    images = pd.DataFrame({"pid": [1, 1], "camid": [1, 2], "path": table["frames"][1][:2]})
    kept_images, counts = screen_frames(images, "skip", "market1501", column="path")
    assert len(kept_images) == 1 and counts["frames"] == 1


def test_sound_frames_pass_untouched(tmp_path):
    table = bad_tree(tmp_path).head(1)
    kept, counts = screen_frames(table, "fail", "x")
    assert kept is table and counts == {"frames": 0, "tracklets": 0}


# --- stages: one line on stderr, exit status 1, nothing written -----------------------------------

LOG_LINE = re.compile(r"\d\d:\d\d:\d\d ")  # stages.common.setup_logging's format


@pytest.fixture
def stage(capsys):
    """``stage(main, argv)``: a stage's ``main`` run through ``stages.common.run`` the way its
    command line runs it; checks exit status 1 and no traceback, returns the lines it printed on
    stderr (log lines left out). The signal handlers ``run`` installs are put back after."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def call(main, argv: list) -> list[str]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as caught:
            run(main, [str(a) for a in argv])
        err = capsys.readouterr().err
        assert caught.value.code == 1, err
        assert "Traceback" not in err
        return [line for line in err.splitlines() if not LOG_LINE.match(line)]

    yield call
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def files(folder: Path) -> list[str]:
    """Every file and folder under ``folder``: compared before and after a failed stage."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def params_file(folder: Path, **sections: dict) -> Path:
    """A small CPU configuration (64 x 32 frames, ResNet-18 from scratch, 8 grid cells, K = 2),
    its sections updated by ``sections``."""
    params = {"data": {"image": ["synthetic"], "height": 64, "width": 32, "num_workers": 0},
              "model": {"backbone": "resnet18", "init": "scratch", "last_stride": 1, "K": 2,
                        "d": 8, "embed_dim": 16},
              "pretrain": {"epochs": 1, "identities_per_batch": 2, "instances_per_identity": 2},
              "runtime": {"device": "cpu"}}
    for name, values in sections.items():
        params[name] = {**params.get(name, {}), **values}
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture
def pretrain_args(tmp_path) -> Callable[..., list]:
    """``pretrain_args(**sections)``: the pretrain stage's command line over an image index of 3
    identities x 2 cameras, with ``params_file(**sections)``; outputs under tmp_path/out."""
    root = tmp_path / "raw"
    rows = [{"pid": pid, "camid": cam, "path": jpeg(root / f"{pid}_{cam}.jpg", 2 * pid + cam)}
            for pid in range(3) for cam in (1, 2)]
    save_image_index(image_table(rows, root), root,
                     tmp_path / "index" / "synthetic" / "images.json")
    out = tmp_path / "out"
    return lambda **sections: [
        "--params", params_file(tmp_path, **sections), "--index", tmp_path / "index",
        "--out", out / "pretrain.pt", "--live", out / "live", "--scratch", out / "scratch"]


def test_cuda_without_cuda_names_runtime_device(stage, pretrain_args, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = pretrain_args(runtime={"device": "cuda"})
    before = files(tmp_path)
    assert stage(pretrain.main, args) == [
        "error: runtime.device: cuda, but torch sees no CUDA device (no GPU, no driver, or a CPU "
        "build of torch); set runtime.device to auto or cpu"]
    assert files(tmp_path) == before


def test_a_diverged_training_is_one_line_naming_its_section_and_exports_nothing(
        stage, pretrain_args, tmp_path):
    """A learning rate that makes the loss nan (the attention stage's spatial phase at
    `-S attention.spatial.lr=1.0e+12` alike): one line naming the stage's params section and its
    learning rate, no traceback, no model written."""
    args = pretrain_args(pretrain={"lr": 1.0e30, "epochs": 2})
    printed = [line for line in stage(pretrain.main, args)  # tqdm: batch/s, or s/batch when slow
               if not re.search(r"batch/s|s/batch", line) and line.strip()]
    assert len(printed) == 1, printed  # (the progress bars aside)
    assert re.fullmatch(r"error: pretrain: the (loss became nan at epoch \d, step \d|weights "
                        r"became inf or nan in epoch \d): the training diverged; lower "
                        r"pretrain\.lr \(now 1e\+30\), or loss\.oim_scalar", printed[0]), printed
    assert not (tmp_path / "out" / "pretrain.pt").exists()


def test_more_identities_per_batch_than_identities_names_the_key(stage, pretrain_args, tmp_path):
    args = pretrain_args(pretrain={"identities_per_batch": 4})
    before = files(tmp_path)
    assert stage(pretrain.main, args) == [
        "error: pretrain.identities_per_batch=4: expected at most 3, the number of identities in "
        "the training set (a batch holds P different identities)"]
    assert files(tmp_path) == before


def test_a_global_batch_that_does_not_split_over_the_processes_names_the_keys(
        stage, pretrain_args, tmp_path, monkeypatch):
    """Under torchrun with 3 processes (their world, as the training loader sees it), 2 x 2
    samples per batch cannot be shared out: the keys and WORLD_SIZE are named."""
    monkeypatch.setattr(distributed, "world", lambda: distributed.World(0, 0, 3))
    args = pretrain_args()
    before = files(tmp_path)
    assert stage(pretrain.main, args) == [
        "error: pretrain.identities_per_batch x pretrain.instances_per_identity = 2 x 2 = 4 "
        "samples per global batch: expected a multiple of WORLD_SIZE=3, the number of torchrun "
        "processes, so that each gets an equal share; change them or the number of processes"]
    assert files(tmp_path) == before


@pytest.mark.parametrize(("env", "error", "printed"), [
    ({"RANK": "0"}, ParamsError("pretrain.identities_per_batch: ..."), True),
    ({"RANK": "2"}, ParamsError("pretrain.identities_per_batch: ..."), False),
    ({"RANK": "2"}, InputError("out: cannot write there, ..."), False),
    ({"RANK": "1"}, DatasetError("f.jpg: cannot read the image"), True),  # read by rank 1 alone
    ({"RANK": "x"}, InputError("environment variable RANK='x': ..."), True),
    ({"RANK": "3"}, InputError("environment variable RANK=3: ..."), True),  # not below WORLD_SIZE
])
def test_under_torchrun_rank_0_alone_reports_what_every_rank_meets(stage, monkeypatch, env,
                                                                     error, printed):
    """The other ranks exit with status 1 silently, except for a DatasetError (a frame only that
    rank read) and a torchrun environment that does not say which rank this is."""
    monkeypatch.setenv("WORLD_SIZE", "3")
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    def main(argv):
        raise error

    assert stage(main, []) == ([f"error: {error}"] if printed else [])


def test_a_model_init_of_another_backbone_names_the_key_and_the_file(stage, pretrain_args,
                                                                      tmp_path):
    weights = tmp_path / "resnet18.pth"
    torch.save(Backbone("resnet18").state_dict(), weights)
    args = pretrain_args(model={"backbone": "resnet34", "init": str(weights)})
    before = files(tmp_path)
    assert stage(pretrain.main, args) == [
        f"error: model.init: {weights} holds the weights of a resnet18, but model.backbone is "
        "resnet34; expected a resnet34 checkpoint (or set model.backbone to resnet18)"]
    assert files(tmp_path) == before


@pytest.mark.parametrize(("variables", "line"), [
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two': expected an integer >= 1 (torchrun sets it: start "
                            "the stage through pipeline.launch or torchrun, or unset WORLD_SIZE)"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE='0': expected an integer >= 1"),
    ({"WORLD_SIZE": "2", "RANK": "one"}, "RANK='one': expected an integer >= 0"),
    ({"WORLD_SIZE": "2", "RANK": "-1"}, "RANK='-1': expected an integer >= 0"),
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0.5"}, "LOCAL_RANK='0.5': expected an "
                                                            "integer >= 0"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2: expected less than WORLD_SIZE=2 (torchrun sets "
                                       "both)"),
])
def test_a_malformed_torchrun_environment_names_the_variable(stage, pretrain_args, tmp_path,
                                                             monkeypatch, variables, line):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    args = pretrain_args()
    before = files(tmp_path)
    printed = stage(pretrain.main, args)
    assert len(printed) == 1 and printed[0].startswith(f"error: environment variable {line}")
    assert files(tmp_path) == before


# --- read-only folders, full disks ----------------------------------------------------------------


@pytest.fixture
def read_only(tmp_path, monkeypatch) -> Path:
    """A folder where no file can be created, as on a read-only mount: creating one in it (or
    below) raises EROFS. (Simulated: the tests may run as root, whom chmod does not stop.)"""
    folder = tmp_path / "ro"
    folder.mkdir()
    real = tempfile.TemporaryFile

    def refuse(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).is_relative_to(folder):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    return folder


# Each stage that checks its output folders first, with its command line's path arguments (an
# output's folder or a folder; inputs need not exist, the check comes first).
STAGE_OUTPUTS = {
    pretrain: {"--index": "index", "--out": "models/pretrain.pt", "--live": "live",
               "--scratch": "scratch"},
    finetune: {"--index": "split_0.json", "--init": "pretrain.pt", "--out": "models/f.pt",
               "--live": "live", "--scratch": "scratch"},
    attention: {"--cache": "c.h5", "--backbone": "f.pt", "--spatial": "models/s.pt",
                "--temporal": "models/t.pt", "--live": "live", "--scratch": "scratch"},
    joint: {"--index": "split_0.json", "--backbone": "f.pt", "--heads": "t.pt",
            "--out": "models/j.pt", "--live": "live", "--scratch": "scratch"},
    evaluate: {"--dataset": "synthetic", "--split": "0", "--index": "split_0.json",
               "--cache": "c.h5", "--backbone": "f.pt", "--model": "joint=j.pt",
               "--out": "eval/s.json", "--cmc": "cmc/s.csv", "--figures": "figures"},
}
OUTPUTS = {"--out", "--live", "--scratch", "--spatial", "--temporal", "--cmc", "--figures"}


@pytest.mark.parametrize(("module", "option"), [(m, o) for m, paths in STAGE_OUTPUTS.items()
                                                for o in paths if o in OUTPUTS])
def test_a_read_only_output_folder_fails_before_anything_runs(stage, tmp_path, read_only, module,
                                                              option):
    """Every training stage and evaluate: the folder of each output, and the scratch folder, is
    checked writable first (before the params are read: here there are none)."""
    argv = []
    for name, value in STAGE_OUTPUTS[module].items():
        place = read_only if name == option else tmp_path
        argv += [name, value if name in ("--dataset", "--split", "--model") else place / value]
    target = read_only / STAGE_OUTPUTS[module][option]
    folder = target if option in ("--scratch", "--live", "--figures") else target.parent
    where = f"{folder}" if folder == read_only else f"{folder} (to be created in {read_only})"
    before = files(tmp_path)
    assert stage(module.main, argv) == [
        f"error: {where}: cannot write there, read-only file system: make it writable or point "
        "the output elsewhere, then run the stage again"]
    assert files(tmp_path) == before


def test_a_full_disk_fails_before_anything_runs(stage, pretrain_args, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: DiskUsage(100 << 30, 100 << 30, 0))
    args = pretrain_args()
    before = files(tmp_path)
    assert stage(pretrain.main, args) == [
        f"error: {tmp_path / 'out'} (to be created in {tmp_path}): cannot write there, no space "
        "left on device: free some space, then run the stage again"]
    assert files(tmp_path) == before


class Probe(torch.nn.Module):
    """A backbone that records that it ran."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return torch.zeros(len(x), 4, 2, 1)


def test_the_cache_checks_its_folder_before_running_the_backbone(tmp_path, read_only):
    table = pd.DataFrame({"pid": [1], "camid": [1], "subset": ["train"], "is_query": [False],
                          "frames": [[jpeg(tmp_path / "f.jpg")]]})
    probe = Probe()
    with pytest.raises(InputError, match=rf"{re.escape(str(read_only))}: cannot write there, "
                                         "read-only file system"):
        write_cache(read_only / "c.h5", probe, {"train": table}, (32, 16), {})
    assert probe.calls == 0 and files(read_only) == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES])
def test_a_write_that_fails_for_lack_of_space_or_rights_is_one_line(stage, tmp_path, code):
    """A write refused halfway (the file holds some bytes, the OSError names no file, as from
    ``write()``): one line naming the output and the reason; no temporary file is left."""
    out = tmp_path / "metrics" / "eval.json"

    def writer(tmp: Path) -> None:
        tmp.write_text("{\"models\": ")
        raise OSError(code, os.strerror(code))

    def main(argv):
        write_with(out, writer)

    reason = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
              errno.EROFS: "read-only file system", errno.EACCES: "permission denied"}[code]
    advice = {errno.ENOSPC: "free some space, then run the stage again",
              errno.EDQUOT: "free some space, then run the stage again",
              errno.EROFS: "make it writable or point the output elsewhere, then run the stage "
                           "again",
              errno.EACCES: "check the permissions of the file and its folder, then run the "
                            "stage again"}[code]
    assert stage(main, []) == [f"error: {out}: {reason}: {advice}"]
    assert files(tmp_path) == ["metrics"]


def test_a_checkpoint_save_on_a_full_disk_is_one_line(stage, tmp_path, monkeypatch):
    """torch.save reports a failed write as a RuntimeError without the reason: with less space
    free than the checkpoint's tensors, it is reported as a full disk naming the checkpoint."""
    path = tmp_path / "scratch" / "last.pt"

    def failing_save(payload, tmp):
        Path(tmp).write_bytes(b"PK\x03\x04")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", failing_save)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: DiskUsage(1 << 30, (1 << 30) - 100, 100))
    assert stage(lambda argv: save(path, {"w": torch.zeros(1000)}), []) == [
        f"error: {path}: no space left on device: free some space, then run the stage again"]
    assert files(tmp_path) == ["scratch"]


@pytest.mark.parametrize(("code", "reason"), [(errno.EROFS, "read-only file system"),
                                              (errno.EACCES, "permission denied")])
def test_a_timings_record_that_cannot_be_written_is_one_warning_line(tmp_path, monkeypatch,
                                                                    capsys, code, reason):
    """A read-only metrics/ under a stage that DVC runs and that wrote its outputs elsewhere:
    the record of its time (metrics/timings/pretrain.json) fails after the stage's work is done. One
    line, a warning: the stage ends well (exit status 0), its outputs are complete."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_STAGE", "pretrain")
    monkeypatch.delenv("RANK", raising=False)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def refused(path, obj, indent=2):  # as on a read-only mount (chmod does not stop root)
        raise OSError(code, os.strerror(code), str(tmp_path / "metrics/timings/.pretrain.json.tmp"))

    monkeypatch.setattr(common, "write_json", refused)
    try:
        run(lambda argv: None, [])  # no SystemExit: exit status 0
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    assert capsys.readouterr().err.splitlines() == [
        f"warning: metrics/timings/pretrain.json: pretrain's time not recorded ({reason}); the "
        "stage's "
        "outputs are complete"]
    assert files(tmp_path) == []


# --- results files --------------------------------------------------------------------------------


@pytest.mark.parametrize(("content", "reason"), [
    ('{"dataset": "synthetic", "models": {"baseline": ', "not a JSON results file of the "
                                                          "evaluate stage (Expecting value"),
    ("\x89PNG\r\n", "not a JSON results file of the evaluate stage"),
    ("[1, 2]", "holds a JSON list, expected the object the evaluate stage writes"),
])
def test_a_truncated_or_non_json_metrics_file_names_it(stage, tmp_path, content, reason):
    evals, out = tmp_path / "eval", tmp_path / "results"
    evals.mkdir()
    (evals / "synthetic-0.json").write_text(content)
    out.mkdir()
    (out / "synthetic.json").write_text("{}")  # the last run's: kept
    params = params_file(tmp_path, data={"video": ["synthetic"], "splits": [0]})
    before = files(tmp_path)
    printed = stage(summary.main, ["--params", params, "--evals", evals, "--cmc", tmp_path / "cmc",
                                   "--live", tmp_path / "live", "--out", out, "--figures",
                                   tmp_path / "figures"])
    assert len(printed) == 1
    assert printed[0].startswith(f"error: {evals / 'synthetic-0.json'}: {reason}")
    assert printed[0].endswith("run the evaluate stage again")
    assert files(tmp_path) == before


def test_a_complete_cache_with_missing_datasets_is_one_line(stage, tmp_path):
    """A cache whose attributes say complete and fit the backbone, but whose test subset and
    train pids are gone: the attention stage names the file and what is missing."""
    cfg = ModelParams(backbone="resnet18", init="scratch", last_stride=1, embed_dim=16)
    backbone = tmp_path / "finetune.pt"
    export_model(backbone, build_model(cfg, head="baseline"), cfg, "baseline")
    cache = tmp_path / "cache.h5"
    with h5py.File(cache, "w") as f:
        f.attrs.update({**cache_attrs(backbone, load(backbone)), "height": 64, "width": 32,
                        "complete": True})
        f["train/grids"] = np.zeros((2, 512, 4, 2), dtype=np.float16)
    params = params_file(tmp_path)
    out = tmp_path / "out"
    before = files(tmp_path)
    assert stage(attention.main, [
        "--params", params, "--cache", cache, "--backbone", backbone, "--spatial",
        out / "spatial.pt", "--temporal", out / "temporal.pt", "--live", out / "live",
        "--scratch", out / "scratch"]) == [
        f"error: {cache}: train/offsets, train/frame_index, train/pids, train/camids, "
        "train/is_query missing, though its attributes say complete; re-run the cache stage"]
    assert files(tmp_path) == before


@pytest.mark.slow
def test_under_torchrun_a_batch_that_does_not_split_is_one_line_from_rank_0(pretrain_args,
                                                                            tmp_path):
    """Two CPU processes started by pipeline.launch through torchrun, 3 x 1 samples per batch:
    every rank meets the error, rank 0 alone prints it, torchrun adds no traceback of its own;
    exit status 1, nothing written."""
    args = pretrain_args(pretrain={"identities_per_batch": 3, "instances_per_identity": 1},
                         runtime={"launcher": "torchrun --standalone --nproc_per_node=2"})
    before = files(tmp_path)
    result = subprocess.run([sys.executable, "-m", "pipeline.launch", "pipeline.stages.pretrain",
                             *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        "error: pretrain.identities_per_batch x pretrain.instances_per_identity = 3 x 1 = 3 "
        "samples per global batch: expected a multiple of WORLD_SIZE=2, the number of torchrun "
        "processes, so that each gets an equal share; change them or the number of processes"]
    assert files(tmp_path) == before


# --- tools (make locality) ------------------------------------------------------------------------


def test_the_imagenet_candidate_of_the_locality_offline_is_one_line(stage, tmp_path, monkeypatch):
    """`make locality` with a ResNet backbone on a machine offline without the cached ImageNet
    weights: tools.probes.locality names the candidate, the file it expected and what to do, before
    it measures any candidate (the fine-tuned one given first is not run), and writes nothing."""
    from tools.probes import locality

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(url, dst, progress=True):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    measured = []
    monkeypatch.setattr(locality, "candidate_locality", lambda *a, **k: measured.append(a))
    index = tmp_path / "split_0.json"
    index.write_text(json.dumps({"root": str(tmp_path), "tracklets": [
        {"pid": 1, "camid": 0, "subset": "test", "is_query": True, "frames": ["f.jpg"],
         "labels": ["f.png"]}]}))
    cfg = ModelParams(backbone="resnet18", init="scratch", last_stride=1, embed_dim=16)
    export_model(tmp_path / "finetune.pt", build_model(cfg, head="baseline"), cfg, "baseline")
    weights = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    url = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    params = params_file(tmp_path)
    before = files(tmp_path)
    assert stage(locality.main, [
        "--params", params, "--index", index, "--out", tmp_path / "locality.json",
        "--candidate", f"fine-tuned, layer4={tmp_path / 'finetune.pt'}:layer4",
        "--candidate", "ImageNet, layer4=imagenet:layer4"]) == [
        f"error: candidate 'ImageNet, layer4' of tools.probes.locality: the ImageNet weights of "
        f"resnet18 "
        f"are not cached at {weights} and could not be downloaded (OSError: <urlopen error "
        f"[Errno -3] Temporary failure in name resolution>). Download {url} on a machine with "
        f"internet and copy it to {weights} (set TORCH_HOME to use another cache folder); or "
        "measure the other grids alone: --candidate NAME=SOURCE:MODULE for each"]
    assert measured == []
    assert set(files(tmp_path)) - set(before) == {"hub", "hub/checkpoints"}  # the cache folder
