"""The download and index stages, run as their command lines, and through DVC on a tiny config."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import yaml
from PIL import Image

from pipeline.datasets import sources
from pipeline.errors import DatasetError, DownloadError
from pipeline.files import content_fingerprint, md5_file
from pipeline.stages import download, index
from pipeline.tables import load_image_index, load_video_index
from tools.experiments.cells import out_of_date
from tools.project.tinyrepo import tiny_repo
from tools.shell import run

ROOT = Path(__file__).resolve().parents[1]
TINY_SYNTHETIC = {
    "train_identities": 4, "test_identities": 4, "image_identities": 3, "images_per_identity": 2,
    "cameras": 2, "tracklets_per_camera": 1, "query_cameras": 1, "min_length": 2, "max_length": 6,
    "distractor_tracklets": 1, "junk_tracklets": 1, "height": 32, "width": 16,
}


SMALL_BATCH = {"identities_per_batch": 2}  # the tiny sets have 3 and 4 identities to train on


def write_params(folder: Path, video=("synthetic",), image=("synthetic",), **synthetic) -> Path:
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"video": list(video), "image": list(image)},
        "synthetic": {**TINY_SYNTHETIC, **synthetic},
        "pretrain": SMALL_BATCH, "finetune": SMALL_BATCH, "joint": SMALL_BATCH,
        "attention": {"spatial": SMALL_BATCH, "temporal": SMALL_BATCH},
    }))
    return path


def run_stages(tmp_path: Path, params: Path) -> dict:
    download.main(["--params", str(params), "--raw", str(tmp_path / "raw"), "--archives",
                   str(tmp_path / "archives"), "--manifest", str(tmp_path / "download.json")])
    index.main(["--params", str(params), "--raw", str(tmp_path / "raw"), "--out",
                str(tmp_path / "index"), "--images", str(tmp_path / "image_index"), "--stats",
                str(tmp_path / "stats.json")])
    return json.loads((tmp_path / "stats.json").read_text())


def test_synthetic_download_and_index(tmp_path, capsys):
    stats = run_stages(tmp_path, write_params(tmp_path))
    table = load_video_index(tmp_path / "index" / "synthetic" / "split_0.json")
    images = load_image_index(tmp_path / "image_index" / "synthetic" / "images.json")
    # the tables on disk point at real files under the dataset root, label maps included
    assert all(Path(f).is_file() for frames in table["frames"] for f in frames)
    assert table["labels"].map(len).equals(table["frames"].map(len))
    assert all(Path(f).is_file() for labels in table["labels"] for f in labels)
    assert all(Path(p).is_file() for p in images["path"])
    video = stats["video"]["synthetic"]["split_0"]
    assert video["train"]["ids"] == 4 and video["test"]["ids"] == 4
    assert video["train"]["tracklets"] == 4 * 2
    assert video["test"]["tracklets"] == 4 * 2 + 1 + 1  # + a distractor and a junk tracklet
    assert video["test"]["queries"] == 4
    assert video["test"]["junk_tracklets"] == 1 and video["test"]["distractor_tracklets"] == 1
    assert stats["image"]["synthetic"] == {"ids": 3, "images": 6, "cameras": 2, "skipped": 0}
    assert video["skipped"] == {"frames": 0, "tracklets": 0}
    assert video["frames_per_tracklet"]["min"] >= 2 and video["frames_per_tracklet"]["max"] <= 6
    printed = capsys.readouterr().out
    assert "train tracklets" in printed and "synthetic" in printed


def test_synthetic_regenerates_only_when_its_params_change(tmp_path):
    params = write_params(tmp_path)
    run_stages(tmp_path, params)
    manifest = json.loads((tmp_path / "download.json").read_text())
    stamp = tmp_path / "raw" / "synthetic" / "identities.json"
    before = stamp.stat().st_mtime_ns
    run_stages(tmp_path, params)
    assert stamp.stat().st_mtime_ns == before  # same params: left alone
    assert json.loads((tmp_path / "download.json").read_text()) == manifest
    # a set made by another version of the generator is stale
    made = json.loads(stamp.read_text())
    stamp.write_text(json.dumps({**made, "generator": "older"}))
    run_stages(tmp_path, params)
    assert json.loads(stamp.read_text())["generator"] == made["generator"]
    run_stages(tmp_path, write_params(tmp_path, seed=1))
    changed = json.loads((tmp_path / "download.json").read_text())
    assert changed["synthetic"]["sha256"] != manifest["synthetic"]["sha256"]


def fabricate_ilidsvid(base: Path, people: int = 4) -> None:
    """A miniature iLIDS-VID in the layout of iLIDS-VID.tar."""
    for cam in (1, 2):
        for p in range(1, people + 1):
            folder = base / "i-LIDS-VID" / "sequences" / f"cam{cam}" / f"person{p:03d}"
            folder.mkdir(parents=True)
            for frame in (5, 40, 300):
                Image.new("RGB", (4, 8)).save(folder / f"cam{cam}_person{p:03d}_{frame:05d}.png")
    splits = base / "train-test people splits"
    splits.mkdir()
    ls_set = np.array([[1, 2, 3, 4], [3, 4, 1, 2]] * 5, dtype=np.float64)
    scipy.io.savemat(splits / "train_test_splits_ilidsvid.mat", {"ls_set": ls_set})


def test_real_set_from_a_user_archive(tmp_path):
    tree = tmp_path / "tree"
    fabricate_ilidsvid(tree)
    archives = tmp_path / "archives" / "ilidsvid"
    archives.mkdir(parents=True)
    with tarfile.open(archives / "iLIDS-VID.tar", "w") as tar:
        for entry in sorted(tree.iterdir()):
            tar.add(entry, arcname=entry.name)
    # the published md5 belongs to the real archive: a fabricated one must be refused...
    params = write_params(tmp_path, video=["ilidsvid"], image=["synthetic"])
    with pytest.raises(DatasetError, match="does not match the published"):
        run_stages(tmp_path, params)
    assert not (tmp_path / "raw" / "ilidsvid" / "i-LIDS-VID").exists()


def test_real_set_extracted_from_an_archive_without_published_md5(tmp_path):
    archives = tmp_path / "archives" / "prid2011"
    archives.mkdir(parents=True)
    with zipfile.ZipFile(archives / "prid_2011.zip", "w") as zf:
        for cam in ("cam_a", "cam_b"):
            for person in range(1, 5):
                for frame in range(1, 28):
                    zf.writestr(f"prid_2011/multi_shot/{cam}/person_{person:04d}/{frame:04d}.png",
                                png_bytes())
    stats = run_stages(tmp_path, write_params(tmp_path, video=["prid2011"], image=["synthetic"]))
    manifest = json.loads((tmp_path / "download.json").read_text())
    assert manifest["prid2011"]["source"] == "archives"
    assert list(manifest["prid2011"]["md5"]) == ["prid_2011.zip"]
    assert manifest["prid2011"]["files"] == 2 * 4 * 27
    split = stats["video"]["prid2011"]["split_3"]
    assert split["train"]["ids"] == 2 and split["test"]["ids"] == 2
    assert split["test"]["queries"] == 2 and split["frames_per_tracklet"]["min"] == 27


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_real_set_already_extracted(tmp_path):
    fabricate_ilidsvid(tmp_path / "raw" / "ilidsvid")
    stats = run_stages(tmp_path, write_params(tmp_path, video=["ilidsvid"], image=["synthetic"]))
    manifest = json.loads((tmp_path / "download.json").read_text())
    assert manifest["ilidsvid"]["source"] == "extracted"
    assert manifest["ilidsvid"]["files"] == 2 * 4 * 3 + 1
    assert sorted(stats["video"]["ilidsvid"]) == [f"split_{k}" for k in range(10)]
    split0 = stats["video"]["ilidsvid"]["split_0"]
    assert split0["test"]["queries"] == 2 and split0["train"]["ids"] == 2
    table = load_video_index(tmp_path / "index" / "ilidsvid" / "split_1.json")
    assert sorted(table.loc[table["subset"] == "test", "pid"].unique()) == [3, 4]


@pytest.mark.slow
def test_missing_real_set_says_where_to_get_it(tmp_path):
    params = write_params(tmp_path, video=["mars"], image=["synthetic"])
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.stages.download", "--params", str(params), "--raw",
         str(tmp_path / "raw"), "--archives", str(tmp_path / "archives"), "--manifest",
         str(tmp_path / "download.json")],
        cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert "bbox_train.zip, bbox_test.zip" in result.stderr
    assert str(tmp_path / "archives" / "mars") in result.stderr
    assert "info/" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "download.json").exists()


def test_index_refuses_a_vanished_frame(tmp_path):
    params = write_params(tmp_path)
    run_stages(tmp_path, params)
    victim = next((tmp_path / "raw" / "synthetic" / "video" / "bbox_test").rglob("*.jpg"))
    victim.unlink()
    before = sorted(p.name for p in (tmp_path / "index").iterdir())
    with pytest.raises(DatasetError, match="does not exist"):
        index.main(["--params", str(params), "--raw", str(tmp_path / "raw"), "--out",
                    str(tmp_path / "index"), "--images", str(tmp_path / "image_index"),
                    "--stats", str(tmp_path / "stats.json")])
    # the previous index is untouched and no temporary folder is left beside it
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_dvc_pipeline_and_what_model_params_rerun(tmp_path):
    """`dvc repro index` runs download and index; changing model.K leaves both up to date,
    changing the synthetic seed does not."""
    work = tiny_repo(tmp_path / "repo", update={"synthetic": TINY_SYNTHETIC})
    output = run(work, "dvc", "repro", "index")
    assert set(re.findall(r"Running stage '([^']+)'", output)) == {"check", "download", "index"}
    assert (work / "metrics" / "datasets.json").is_file()
    assert (work / "data" / "index" / "synthetic" / "split_0.json").is_file()
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["model"]["K"] = 8
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = json.loads(run(work, "dvc", "status", "index", "--with-deps", "--json",
                            stdout_only=True))
    assert out_of_date(status) == []  # (the check stage, always changed, changes nothing)
    params["synthetic"]["seed"] = 3
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = run(work, "dvc", "status", "index", "--with-deps")
    assert "download:" in status and "modified:           synthetic" in status
    assert "index:" not in status  # the index stage reads no synthetic key: only download


@pytest.fixture
def http_root(tmp_path):
    """A folder served over HTTP on 127.0.0.1 (a random port) for the test's duration."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_real_set_downloaded_from_its_url(tmp_path, http_root, monkeypatch):
    """A set with a public URL is fetched into the archives folder, md5-checked, extracted."""
    served, base = http_root
    tree = tmp_path / "tree"
    fabricate_ilidsvid(tree)
    with tarfile.open(served / "iLIDS-VID.tar", "w") as tar:
        for entry in sorted(tree.iterdir()):
            tar.add(entry, arcname=entry.name)
    archive = sources.Archive("iLIDS-VID.tar", md5_file(served / "iLIDS-VID.tar"),
                              f"{base}/iLIDS-VID.tar")
    monkeypatch.setitem(sources.SOURCES, "ilidsvid",
                        dataclasses.replace(sources.SOURCES["ilidsvid"], archives=(archive,)))
    stats = run_stages(tmp_path, write_params(tmp_path, video=["ilidsvid"], image=["synthetic"]))
    assert (tmp_path / "archives" / "ilidsvid" / "iLIDS-VID.tar").is_file()
    manifest = json.loads((tmp_path / "download.json").read_text())
    assert manifest["ilidsvid"]["md5"] == {"iLIDS-VID.tar": archive.md5}
    assert stats["video"]["ilidsvid"]["split_0"]["test"]["queries"] == 2


def test_index_skips_bad_frames_when_asked_and_counts_them(tmp_path):
    """data.bad_frames: skip: a zero-byte frame is left out of the index, counted in the stats
    (metrics/datasets.json); the default (fail) stops, naming it."""
    params = write_params(tmp_path)
    run_stages(tmp_path, params)
    victim = sorted((tmp_path / "raw" / "synthetic" / "video" / "bbox_train").rglob("*.jpg"))[0]
    victim.write_bytes(b"")
    index_args = ["--params", str(params), "--raw", str(tmp_path / "raw"), "--out",
                  str(tmp_path / "index"), "--images", str(tmp_path / "image_index"),
                  "--stats", str(tmp_path / "stats.json")]
    expected = rf"{victim.name} is empty \(0 bytes\).*data\.bad_frames"
    with pytest.raises(DatasetError, match=expected):
        index.main(index_args)
    content = yaml.safe_load(params.read_text())
    content["data"]["bad_frames"] = "skip"
    params.write_text(yaml.safe_dump(content))
    index.main(index_args)
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["video"]["synthetic"]["split_0"]["skipped"]["frames"] == 1
    table = load_video_index(tmp_path / "index" / "synthetic" / "split_0.json")
    assert victim not in {Path(f) for frames in table["frames"] for f in frames}
    # its label map left with it: the maps stay parallel to the frames
    assert all([Path(f).stem for f in frames] == [Path(m).stem for m in labels]
               for frames, labels in zip(table["frames"], table["labels"], strict=True))
    assert victim.stem not in {Path(m).stem for labels in table["labels"] for m in labels}


# --- an extracted tree that does not read is the error: nothing is extracted or fetched over it ---


def fabricate_prid(multi_shot_parent: Path, people: int = 4) -> None:
    """A miniature PRID2011 multi_shot/ folder (27 frames per person and camera) under
    ``multi_shot_parent``."""
    for cam in ("cam_a", "cam_b"):
        for person in range(1, people + 1):
            folder = multi_shot_parent / "multi_shot" / cam / f"person_{person:04d}"
            folder.mkdir(parents=True)
            for frame in range(1, 28):
                (folder / f"{frame:04d}.png").write_bytes(png_bytes())


def prid_zip(archives: Path) -> Path:
    """A prid_2011.zip in ``archives``/prid2011 holding the miniature set."""
    path = archives / "prid2011" / "prid_2011.zip"
    path.parent.mkdir(parents=True)
    with zipfile.ZipFile(path, "w") as zf:
        for cam in ("cam_a", "cam_b"):
            for person in range(1, 5):
                for frame in range(1, 28):
                    zf.writestr(f"prid_2011/multi_shot/{cam}/person_{person:04d}/{frame:04d}.png",
                                png_bytes())
    return path


@pytest.fixture
def no_fetch(monkeypatch):
    """Fail the test if the stage tries to download anything."""
    def fetch(url, *args, **kwargs):
        pytest.fail(f"the download stage tried to fetch {url}")
    monkeypatch.setattr("pipeline.download.fetch", fetch)


def download_only(tmp_path: Path, video: str) -> None:
    params = write_params(tmp_path, video=[video], image=[])
    download.main(["--params", str(params), "--raw", str(tmp_path / "raw"), "--archives",
                   str(tmp_path / "archives"), "--manifest", str(tmp_path / "download.json")])


def test_a_stray_folder_in_an_extracted_tree_is_named_and_nothing_is_fetched(tmp_path, no_fetch):
    """One stray folder in an extracted iLIDS-VID (a set with a public URL, no archive present):
    the reader's error, and the two ways out; never a download of iLIDS-VID.tar."""
    root = tmp_path / "raw" / "ilidsvid"
    fabricate_ilidsvid(root)
    (root / "i-LIDS-VID" / "sequences" / "cam1" / "notes").mkdir()
    with pytest.raises(DatasetError) as err:
        download_only(tmp_path, "ilidsvid")
    message = str(err.value)
    assert f"{root} holds an extracted tree that does not read" in message
    assert "expected only person<number> folders" in message and "'notes'" in message
    assert f"remove everything in {root} so that the stage extracts iLIDS-VID.tar" in message
    assert not (tmp_path / "archives").exists() and not (tmp_path / "download.json").exists()


@pytest.mark.parametrize(("where", "found", "move"), [
    # extracted one level too deep, into a folder of the archive's own name
    ("prid_2011/prid_2011", "prid_2011/prid_2011/multi_shot",
     "move the contents of {root}/prid_2011/prid_2011 up into {root}/prid_2011"),
    # the archive's top folder missing
    ("", "multi_shot", "move {root}/multi_shot to {root}/prid_2011/multi_shot"),
    # extracted into a folder of another name
    ("PRID/prid_2011", "PRID/prid_2011/multi_shot",
     "move {root}/PRID/prid_2011 to {root}/prid_2011"),
])
def test_a_tree_one_level_off_says_where_the_folder_was_found(tmp_path, no_fetch, where, found,
                                                               move):
    """The archive is there too: it is not extracted over the user's tree."""
    root = tmp_path / "raw" / "prid2011"
    fabricate_prid(root / where)
    archive = prid_zip(tmp_path / "archives")
    before = sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))
    with pytest.raises(DatasetError) as err:
        download_only(tmp_path, "prid2011")
    message = str(err.value)
    assert f"expected the PRID2011 folder prid_2011/multi_shot (from prid_2011.zip) at {root}/" \
           "prid_2011/multi_shot, which does not exist" in message
    assert f"was found at {root}/{found} instead: {move.format(root=root)}." in message
    assert "is not available" not in message and str(archive.parent) in message
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == before


def test_a_bad_prid_split_file_is_the_error_not_a_missing_set(tmp_path, no_fetch):
    root = tmp_path / "raw" / "prid2011"
    fabricate_prid(root / "prid_2011")
    (root / "splits_prid2011.json").write_text("{not json")
    with pytest.raises(DatasetError) as err:
        download_only(tmp_path, "prid2011")
    message = str(err.value)
    assert message.startswith(f"prid2011: {root / 'splits_prid2011.json'}: expected a list of")
    assert "Fix or remove that file" in message and "not available" not in message


def test_only_an_absent_or_empty_folder_leads_to_the_archives(tmp_path, no_fetch):
    """A folder holding only what the user places by hand (splits_prid2011.json) counts as
    empty: the archive is extracted beside it and the split file is used."""
    root = tmp_path / "raw" / "prid2011"
    root.mkdir(parents=True)
    (root / "splits_prid2011.json").write_text(json.dumps([{"train": [1, 2], "test": [3, 4]}]))
    prid_zip(tmp_path / "archives")
    download_only(tmp_path, "prid2011")
    manifest = json.loads((tmp_path / "download.json").read_text())
    assert manifest["prid2011"]["source"] == "archives"
    assert (root / "prid_2011" / "multi_shot" / "cam_a").is_dir()


def test_an_empty_folder_of_a_set_with_a_url_is_downloaded(tmp_path, monkeypatch):
    fetched = []

    def fetch(url, dest, md5=None):
        fetched.append(url)
        raise DownloadError(f"downloading {url} failed (offline)")

    monkeypatch.setattr("pipeline.download.fetch", fetch)
    (tmp_path / "raw" / "ilidsvid").mkdir(parents=True)
    with pytest.raises(DownloadError, match="offline"):
        download_only(tmp_path, "ilidsvid")
    assert fetched == [sources.SOURCES["ilidsvid"].archives[0].url]


def test_a_dangling_symlink_is_named(tmp_path, no_fetch):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "ilidsvid").symlink_to(tmp_path / "gone")
    with pytest.raises(DatasetError, match=rf"is a symlink to {tmp_path / 'gone'}, which does "
                                           "not exist"):
        download_only(tmp_path, "ilidsvid")


def test_pretrain_without_image_sets_exports_the_initial_backbone(tmp_path):
    """data.image: [] skips pretraining: the stage exports the model.init backbone untouched (a
    seeded init: twice the same weights) and a loss curve of the header alone."""
    from pipeline.checkpoints import load_exported
    from pipeline.model import build_model
    from pipeline.params import load_params
    from pipeline.runtime import seed_everything
    from pipeline.stages import pretrain

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "data": {"video": ["synthetic"], "image": [], "height": 128, "width": 64},
        "model": {"backbone": "resnet18", "init": "scratch", "last_stride": 1, "embed_dim": 16}}))
    out, live = tmp_path / "models" / "pretrain.pt", tmp_path / "live"
    pretrain.main(["--params", str(params), "--index", str(tmp_path / "no-index"), "--out",
                   str(out), "--live", str(live), "--scratch", str(tmp_path / "scratch")])
    # the outputs dvc.yaml declares: an empty summary, a plots folder without curves
    assert (live / "metrics.json").read_text().strip() == "{}"
    assert list((live / "plots").iterdir()) == []
    net, payload = load_exported(out)
    assert payload["stage"] == "pretrain" and payload["pretrained"] is False
    p = load_params(params)
    seed_everything(p.seed)
    fresh = build_model(p.model, head="baseline").state_dict()
    assert all(torch.equal(fresh[k], v) for k, v in net.state_dict().items())


# --- make paper ---------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_paper_stops_on_a_bad_dataset_and_appends_args(tmp_path):
    """`make paper DATASET=<typo>` ends with the params command's one-line error and runs
    nothing; ARGS come after the paper's overrides, so that they win. (A stand-in `dvc` records
    its arguments; a fresh STAMP keeps `setup` from installing anything.)"""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "python").symlink_to(sys.executable)
    (bin_ / "dvc").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path / "dvc-args"}\n')
    (bin_ / "dvc").chmod(0o755)
    (tmp_path / "stamp").touch()
    make = ["make", "-s", "--no-print-directory", f"BIN={bin_}", f"STAMP={tmp_path / 'stamp'}",
            "paper"]
    bad = subprocess.run([*make, "DATASET=nope"], cwd=ROOT, capture_output=True, text=True,
                         check=False)
    assert bad.returncode != 0 and not (tmp_path / "dvc-args").exists()
    assert bad.stderr.startswith("error: unknown video dataset 'nope'; expected one of: ")
    good = subprocess.run([*make, "DATASET=prid2011", "ARGS=-S 'data.image=[]'"], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    assert good.returncode == 0, good.stderr
    args = (tmp_path / "dvc-args").read_text().splitlines()
    assert args[:2] == ["exp", "run"] and args[-2:] == ["-S", "data.image=[]"]
    assert "data.video=[prid2011]" in args and "data.splits=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]" in args
    three = subprocess.run([*make, "DATASET=prid2011 ilidsvid mars"], cwd=ROOT,
                           capture_output=True, text=True, check=False)
    assert three.returncode == 0, three.stderr
    args = (tmp_path / "dvc-args").read_text().splitlines()
    assert "data.video=[prid2011, ilidsvid, mars]" in args and "schedule=across_sets" in args
    assert "data.splits=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]" in args


# --- what the index records of the frames' content (no stale results) ----------------------------


def test_the_index_records_its_set_split_and_the_content_of_its_frames(tmp_path):
    """Each index file names its set and split, and fingerprints the bytes of every frame and
    label map it lists: frames written over at the same paths (same size, same time) change the
    index, so every stage that reads them re-runs; the same frames generated again do not."""
    params = write_params(tmp_path)
    run_stages(tmp_path, params)
    split = tmp_path / "index" / "synthetic" / "split_0.json"
    images = tmp_path / "image_index" / "synthetic" / "images.json"
    content = json.loads(split.read_text())
    table = load_video_index(split)
    listed = [*table["frames"].explode(), *table["labels"].explode()]
    assert content["dataset"] == "synthetic" and content["split"] == 0
    assert content["content"]["files"] == len(listed)
    assert table.attrs == {"dataset": "synthetic", "split": 0, "content": content["content"]}
    assert load_image_index(images).attrs["content"]["files"] == 3 * 2
    before = {path: path.read_bytes() for path in (split, images)}

    shutil.rmtree(tmp_path / "raw")  # generated again: other times, the same bytes
    run_stages(tmp_path, params)
    assert {path: path.read_bytes() for path in before} == before

    frame, other = Path(listed[0]), Path(listed[1])
    stat = frame.stat()
    frame.write_bytes(other.read_bytes()[:stat.st_size].ljust(stat.st_size, b"\0"))
    os.utime(frame, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same time
    index.main(["--params", str(params), "--raw", str(tmp_path / "raw"), "--out",
                str(tmp_path / "index"), "--images", str(tmp_path / "image_index"), "--stats",
                str(tmp_path / "stats.json")])
    changed = json.loads(split.read_text())
    assert changed["content"]["sha256"] != content["content"]["sha256"]
    assert changed["tracklets"] == content["tracklets"]  # the paths and ids alone did not change
    assert images.read_bytes() == before[images]  # the image set's frames are others


def test_an_experiment_generates_the_synthetic_set_in_its_own_workspace(tmp_path, monkeypatch):
    """In a DVC experiment's copy of the project, a real set missing from the copy is read from
    the project (a million frames are not copied), but the synthetic set is made in the copy:
    an experiment never writes the frames the project reads."""
    project = tmp_path / "project"
    for name in ("synthetic", "mars"):
        (project / "data" / "raw" / name).mkdir(parents=True)
    workspace = project / ".dvc" / "tmp" / "exps" / "tmpab12"
    workspace.mkdir(parents=True)
    monkeypatch.chdir(workspace)
    raw = Path("data/raw")
    assert download.dataset_root(raw, "synthetic") == raw / "synthetic"
    assert download.dataset_root(raw, "mars") == project.resolve() / "data" / "raw" / "mars"
    params = write_params(workspace)
    download.main(["--params", str(params), "--raw", "data/raw", "--archives", "data/archives",
                   "--manifest", "download.json"])
    assert (workspace / "data" / "raw" / "synthetic" / "identities.json").is_file()
    assert list((project / "data" / "raw" / "synthetic").iterdir()) == []  # left as it was
    index.main(["--params", str(params), "--raw", "data/raw", "--out", "index",
                "--images", "image_index", "--stats", "stats.json"])
    table = load_video_index(workspace / "index" / "synthetic" / "split_0.json")
    assert Path(table["frames"][0][0]).resolve().is_relative_to(workspace.resolve())


def test_content_fingerprint_hashes_relative_paths_and_md5s_in_order(tmp_path):
    (tmp_path / "sub").mkdir()
    a, b = tmp_path / "a.png", tmp_path / "sub" / "b.png"
    a.write_bytes(b"first")
    b.write_bytes(b"second")
    md5 = {p: hashlib.md5(p.read_bytes()).hexdigest() for p in (a, b)}
    expected = hashlib.sha256(f"a.png\0{md5[a]}\nsub/b.png\0{md5[b]}\n".encode()).hexdigest()
    known: dict = {}
    assert content_fingerprint([a, b], tmp_path, known) == {"files": 2, "sha256": expected}
    assert known == {str(a): md5[a], str(b): md5[b]}
    assert content_fingerprint([b, a], tmp_path)["sha256"] != expected  # the order is read
    # each file is read once across calls: a known md5 is taken as it is
    assert content_fingerprint([a, b], tmp_path, {**known, str(a): "0" * 32}) != {
        "files": 2, "sha256": expected}


# --- the paper's schedule on the three real sets (make paper DATASET="prid2011 ilidsvid mars") ---


def fabricate_mars(root: Path) -> None:
    """A miniature MARS in its real layout (bbox_train/, bbox_test/, info/): people 1 and 2 to
    train on, 3 and 4 to test, each seen by cameras 1 and 2 (two frames a tracklet), the
    camera 1 tracklet of each test person a query."""
    from tests.test_datasets import mars_name, save_mat, touch

    for subset, people in (("train", (1, 2)), ("test", (3, 4))):
        names, info = [], []
        for t, (pid, cam) in enumerate([(p, c) for p in people for c in (1, 2)], start=1):
            track = [mars_name(pid, cam, t, f) for f in (1, 2)]
            info.append([len(names) + 1, len(names) + len(track), pid, cam])
            names += track
            for name in track:
                touch(root / f"bbox_{subset}" / name[:4] / name)
        (root / "info").mkdir(parents=True, exist_ok=True)
        (root / "info" / f"{subset}_name.txt").write_text("\n".join(names) + "\n")
        save_mat(root / "info" / f"tracks_{subset}_info.mat", f"track_{subset}_info", info)
    save_mat(root / "info" / "query_IDX.mat", "query_IDX", [[1, 3]])


def three_sets(tmp_path: Path, missing: str | None = None) -> Path:
    """Miniature extracted PRID2011, iLIDS-VID and MARS trees under raw/ (but ``missing``), and
    the params `make paper DATASET="prid2011 ilidsvid mars" ARGS="-S data.image=[]"` sets on
    the tiny params (no image set fabricated here)."""
    from pipeline.params import load_params, paper_overrides

    makers = {"prid2011": lambda root: fabricate_prid(root / "prid_2011"),
              "ilidsvid": fabricate_ilidsvid, "mars": fabricate_mars}
    for name, make in makers.items():
        if name != missing:
            make(tmp_path / "raw" / name)
    params = write_params(tmp_path)
    overrides = [*paper_overrides(load_params(params), ["prid2011", "ilidsvid", "mars"]),
                 "data.image=[]"]
    data = yaml.safe_load(params.read_text())
    for override in overrides:
        key, _, value = override.partition("=")
        *sections, leaf = key.split(".")
        node = data
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = yaml.safe_load(value)
    params.write_text(yaml.safe_dump(data))
    return params


def test_the_paper_s_three_sets_index_with_mars_s_one_split_at_every_split_index(tmp_path,
                                                                                  no_fetch):
    """The three sets across sets on fabricated trees in their real layouts, offline: PRID2011
    and iLIDS-VID indexed at their ten standard splits, MARS's one split written as each of the
    ten split indexes (same tracklets, each file naming its index), so the union of split k
    holds the three sets' training people, kept apart."""
    from pipeline.params import load_params
    from pipeline.union import index_files, pooled_training, union_classes

    params = three_sets(tmp_path)
    p = load_params(params)
    assert (p.schedule, p.data.video, p.data.splits) == (
        "across_sets", ["prid2011", "ilidsvid", "mars"], list(range(10)))
    stats = run_stages(tmp_path, params)
    index_dir = tmp_path / "index"
    mars = [load_video_index(index_dir / "mars" / f"split_{k}.json") for k in range(10)]
    assert [t.attrs["split"] for t in mars] == list(range(10))
    assert all(t.equals(mars[0]) for t in mars[1:])
    assert len({json.dumps(t.attrs["content"]) for t in mars}) == 1
    assert sorted(stats["video"]["mars"]) == ["split_0"]  # counted once
    ilids = [load_video_index(index_dir / "ilidsvid" / f"split_{k}.json") for k in (0, 1)]
    assert not ilids[0]["subset"].equals(ilids[1]["subset"])  # the sets of ten: their own splits
    pooled = pooled_training(index_files(index_dir, p, 3))
    classes = union_classes(pooled)
    assert set(classes) == {"prid2011", "ilidsvid", "mars"}
    assert classes["mars"][1] == 2 and pooled["pid"].nunique() == sum(n for _, n in
                                                                       classes.values())


def test_a_set_missing_from_the_union_is_one_line_naming_it_and_nothing_is_deleted(tmp_path,
                                                                                    no_fetch):
    """MARS absent beside extracted PRID2011 and iLIDS-VID: the download stage names MARS, its
    archives and where they go; the other trees are left as they were, no manifest written."""
    params = three_sets(tmp_path, missing="mars")
    before = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "raw").rglob("*"))
    with pytest.raises(DatasetError) as err:
        download.main(["--params", str(params), "--raw", str(tmp_path / "raw"), "--archives",
                       str(tmp_path / "archives"), "--manifest", str(tmp_path / "download.json")])
    message = str(err.value)
    assert "mars" in message and "bbox_train.zip, bbox_test.zip" in message
    assert str(tmp_path / "archives" / "mars") in message and "\n" not in message
    assert sorted(p.relative_to(tmp_path).as_posix()
                  for p in (tmp_path / "raw").rglob("*")) == before
    assert not (tmp_path / "download.json").exists()
