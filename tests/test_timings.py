"""The wall time every stage records when DVC runs it (pipeline/stages/common.py), the source of the
README's time table."""

from __future__ import annotations

import json
import time

import pytest

from pipeline.stages import common


def quick(argv):
    time.sleep(0.01)


def failing(argv):
    raise common.InputError("bad input")


@pytest.fixture
def dvc_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a stage's working directory: the project or an experiment's copy
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "elsewhere"))  # the user's project: not written
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    return tmp_path


def test_a_stage_run_by_dvc_records_its_wall_time_in_its_own_file(dvc_env, monkeypatch):
    monkeypatch.setenv("DVC_STAGE", "attention@synthetic-0")
    common.run(quick, [])
    monkeypatch.setenv("DVC_STAGE", "check")
    common.run(quick, [])
    matrix = json.loads((dvc_env / "metrics/timings/attention/synthetic-0.json").read_text())
    entry = json.loads((dvc_env / "metrics/timings/check.json").read_text())
    assert matrix["stage"] == "attention@synthetic-0" and entry["stage"] == "check"
    # from the start of this process (pytest's), imports included: at least the sleep
    assert entry["seconds"] >= 0.01 and entry["finished"].startswith(time.strftime("%Y-"))
    assert entry["machine"]["cores"] >= 1 and entry["machine"]["cpu"]
    assert not (dvc_env / "elsewhere").exists()  # a queued experiment leaves the project alone


def test_each_record_is_where_dvc_yaml_declares_that_stage_s_output():
    assert common.timing_path("check").as_posix() == "metrics/timings/check.json"
    assert (common.timing_path("evaluate@mars-3").as_posix()
            == "metrics/timings/evaluate/mars-3.json")


def test_nothing_is_recorded_outside_dvc_or_for_a_failed_stage(dvc_env, monkeypatch):
    monkeypatch.delenv("DVC_STAGE", raising=False)
    common.run(quick, [])
    monkeypatch.setenv("DVC_STAGE", "evaluate@synthetic-0")
    with pytest.raises(SystemExit):
        common.run(failing, [])
    assert not (dvc_env / "metrics").exists()


def test_only_rank_0_records(dvc_env, monkeypatch):
    monkeypatch.setenv("DVC_STAGE", "cache@synthetic-0")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr("pipeline.distributed.shutdown", lambda failed=False: None)
    common.run(quick, [])
    assert not (dvc_env / "metrics").exists()


def test_a_damaged_record_is_replaced(dvc_env, monkeypatch):
    (dvc_env / "metrics/timings").mkdir(parents=True)
    (dvc_env / "metrics/timings/summary.json").write_text('{"stage": ')
    monkeypatch.setenv("DVC_STAGE", "summary")
    common.run(quick, [])
    assert json.loads((dvc_env / "metrics/timings/summary.json").read_text())["stage"] == "summary"


def test_the_process_age_is_that_of_this_process():
    age = common.process_age()
    assert 0.0 < age < 24 * 3600  # pytest started a moment ago, not at boot
