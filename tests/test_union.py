"""The schedule across sets (pipeline.union): the union's labels keep the sets' people apart,
each set's rows of the union's identity loss, the union stages' folders under each schedule and
the per-set stages taking their models byte for byte; the union dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from pipeline.data import UnionDataset
from pipeline.errors import CheckpointError
from pipeline.params import DataParams, Params
from pipeline.tables import pool_sets
from pipeline.union import (
    LIVE,
    MARKER,
    pass_through,
    set_rows,
    union_classes,
    union_models,
    write_union,
)

TWO = DataParams(video=["synthetic", "synthetic2"])
ACROSS = Params(schedule="across_sets", data=TWO)
PER_SET = Params(schedule="per_set", data=TWO)


def tracklets(pids: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"pid": pids, "camid": [1] * len(pids),
                         "frames": [[f"{p}.jpg"] for p in pids]})


def test_the_union_s_labels_keep_the_sets_apart_and_each_set_s_rows_are_its_own():
    """Two sets whose pids are the same numbers: 5 classes, the second set's after the first's;
    a set's rows of a lookup table of the union are its classes in its own label order (the
    joint stage's train_labels: sorted pids), and a tensor of another length is left alone."""
    pooled = pool_sets({"synthetic": tracklets([3, 1, 3, 7]), "synthetic2": tracklets([1, 2])})
    assert list(pooled["pid"]) == [1, 0, 1, 2, 3, 4]
    classes = union_classes(pooled)
    assert classes == {"synthetic": [0, 3], "synthetic2": [3, 2]}
    lut = torch.arange(5 * 2, dtype=torch.float32).reshape(5, 2)
    state = {"lut": lut, "scalar": torch.tensor(10.0), "other": torch.zeros(3)}
    mine = set_rows(state, classes, "synthetic2", 2, Path("temporal.pt"))
    assert torch.equal(mine["lut"], lut[3:5])
    assert torch.equal(mine["other"], state["other"]) and mine["scalar"] == 10.0
    assert torch.equal(set_rows(state, classes, "synthetic", 3, Path("t.pt"))["lut"], lut[:3])
    with pytest.raises(CheckpointError, match=r"^temporal\.pt: trained on the union of "
                                              r"\['synthetic', 'synthetic2'\], whose classes "
                                              r"of 'mars' are 0, but this set has 2 training "
                                              r"identities: re-run the union stages$"):
        set_rows(state, classes, "mars", 2, Path("temporal.pt"))


def test_the_union_folder_under_each_schedule_and_the_per_set_stages_reading_it(tmp_path):
    """per_set: the folder holds schedule.json alone, whatever else the params say (so that the
    per-set stages depending on it do not re-run), and the per-set stages train (None);
    across_sets: the models and curves, taken byte for byte; a folder of the other schedule or
    other sets is refused naming the stage to re-run."""
    folder = tmp_path / "union-0" / "heads"

    def build(out: Path) -> None:
        (out / "spatial.pt").write_bytes(b"spatial")
        (out / LIVE / "spatial").mkdir(parents=True)
        (out / LIVE / "spatial" / "metrics.json").write_text("{}")

    write_union(folder, PER_SET, 0, build)
    assert [p.name for p in folder.iterdir()] == [MARKER]
    assert json.loads((folder / MARKER).read_text()) == {"schedule": "per_set"}
    assert union_models(folder, PER_SET, ("spatial.pt",), "union_heads") is None
    with pytest.raises(CheckpointError, match=r"heads: not the union_heads stage's models of "
                                              r"the union of \['synthetic', 'synthetic2'\] "
                                              r"\(its schedule\.json: \{'schedule': "
                                              r"'per_set'\}\): re-run the union_heads stage"):
        union_models(folder, ACROSS, ("spatial.pt",), "union_heads")

    write_union(folder, ACROSS, 0, build, {"classes": {"synthetic": [0, 3]}})
    assert sorted(p.name for p in folder.iterdir()) == [LIVE, MARKER, "spatial.pt"]
    assert union_models(folder, ACROSS, ("spatial.pt",), "union_heads") == folder
    other = Params(schedule="across_sets", data=DataParams(video=["synthetic", "mars"]))
    with pytest.raises(CheckpointError, match="re-run the union_heads stage"):
        union_models(folder, other, ("spatial.pt",), "union_heads")
    with pytest.raises(CheckpointError, match="re-run the union_heads stage"):
        union_models(folder, ACROSS, ("spatial.pt", "temporal.pt"), "union_heads")

    live = tmp_path / "live"
    (live / "stale").mkdir(parents=True)
    pass_through(folder, {"spatial.pt": tmp_path / "set" / "spatial.pt"}, live)
    assert (tmp_path / "set" / "spatial.pt").read_bytes() == b"spatial"
    assert sorted(p.relative_to(live).as_posix() for p in live.rglob("*")) == [
        "spatial", "spatial/metrics.json"]  # the union's curves, the old folder replaced


def test_write_union_leaves_nothing_half_written(tmp_path):
    folder = tmp_path / "cnn"
    write_union(folder, PER_SET, 0)

    def broken(out: Path) -> None:
        (out / "finetune.pt").write_bytes(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        write_union(folder, ACROSS, 0, broken)
    assert [p.name for p in folder.iterdir()] == [MARKER]  # the previous folder, whole
    assert [p.name for p in tmp_path.iterdir()] == ["cnn"]


class Items(torch.utils.data.Dataset):
    """Item i: (its value, its label, i), the seed passed through recorded in the label."""

    def __init__(self, values: list[int]) -> None:
        self.values = values

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        return torch.tensor(self.values[index]), seed, index


def test_the_union_dataset_maps_each_item_to_its_part_with_its_seed():
    union = UnionDataset([Items([10, 11]), Items([20, 21, 22])])
    assert len(union) == 5 and not union.in_memory
    assert [int(union[i][0]) for i in range(5)] == [10, 11, 20, 21, 22]
    clip, seed, index = union[(3, (7, 1))]
    assert (int(clip), seed, index) == (21, (7, 1), 3)  # the union's index, the part's item
    with pytest.raises(IndexError):
        union[5]


def test_under_per_set_the_union_stages_and_the_check_import_no_torch(tmp_path):
    """A stage that trains nothing starts in a fraction of a second: under per_set both union
    stages write their schedule.json through stages.common.run (signals, timing record) without
    importing torch, and so does the check stage's record of the default MobileNetV2 init (the
    weights file found and hashed by pipeline.weights); a stage that trains imports it."""
    import subprocess
    import sys

    import yaml

    root = Path(__file__).resolve().parents[1]
    params = root / "params.yaml"  # the default run's: per_set, MobileNetV2 from ImageNet
    assert yaml.safe_load(params.read_text())["schedule"] == "per_set"
    script = f"""
import sys
from pathlib import Path
from pipeline.params import load_params
from pipeline.stages import check, union_cnn, union_heads
from pipeline.stages.common import run
out = Path({str(tmp_path)!r})
common = ["--params", {str(params)!r}, "--split", "0", "--index", str(out / "index")]
run(union_cnn.main, [*common, "--init", "x.pt", "--out", str(out / "cnn"), "--scratch",
                     str(out / "s1")])
run(union_heads.main, [*common, "--cache", "c", "--cnn", str(out / "cnn"), "--out",
                       str(out / "heads"), "--scratch", str(out / "s2")])
record = check.init_record(load_params({str(params)!r}))
print(sorted(record), "torch" in sys.modules)
import pipeline.distributed
print("torch" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True,
                            text=True, check=True)
    assert result.stdout.splitlines() == ["['backbone', 'init', 'sha256'] False", "True"]
    for part in ("cnn", "heads"):
        assert json.loads((tmp_path / part / MARKER).read_text()) == {"schedule": "per_set"}
