"""The plan of the paper's experiments: which Table 1 / Table 2 cells come from the baseline
commit and which are queued, under which names and overrides, in which order; and reading the
finished experiments out of `dvc exp show --json`; running the project's dvc."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from pipeline.params import parse_params
from tools.experiments import cells as experiments
from tools.experiments import show
from tools.experiments.cells import (
    PAPER_TABLE1,
    PAPER_TABLE2,
    SEED_KEY,
    TABLE1,
    TABLE2_K,
    cells_for,
    cnn_seed_cells,
    dvc,
    existing_experiments,
    main,
    schedule_cells,
    seeds_named,
    table1_cells,
    table2_cells,
    to_queue,
)
from tools.shell import BIN


def test_rows_of_the_default_pipeline_are_never_queued_at_its_own_seed():
    cells = table1_cells([0], base_seed=0)
    from_commit = {c.label for c in cells if c.experiment is None}
    assert from_commit == {"Baseline", "SpaAtn+Q", "SpaAtn+Q+TemAtn", "SpaAtn+Q+TemAtn+Ind"}
    assert to_queue(cells) == {
        "t1-s0-width": (("model.maps", "average"),),
        "t1-s0-uniform": (("model.maps", "uniform"),),
        "t1-s0-nodiv": (("loss.diversity", "none"),),
        "t1-s0-sparse": (("loss.diversity", "sparse"),),
        "t1-s0-maxpool": (("model.temporal_pooling", "max"),),
    }
    models = {c.label: c.model for c in cells}
    # the two controls of the heads are read as phase 1, like SpaAtn+Q
    assert models == {"Baseline": "baseline", "Width control": "spatial",
                      "Uniform maps": "spatial", "SpaAtn": "spatial", "SpaAtn+Q'": "spatial",
                      "SpaAtn+Q": "spatial", "SpaAtn+Q+MaxPool": "temporal",
                      "SpaAtn+Q+TemAtn": "temporal", "SpaAtn+Q+TemAtn+Ind": "joint"}


def test_other_seeds_run_their_default_pipeline_first_then_their_rows():
    queue = to_queue(table1_cells([0, 1, 2], base_seed=0))
    assert list(queue) == [
        "t1-s0-width", "t1-s0-uniform", "t1-s0-nodiv", "t1-s0-sparse", "t1-s0-maxpool",
        "t1-s1", "t1-s1-width", "t1-s1-uniform", "t1-s1-nodiv", "t1-s1-sparse", "t1-s1-maxpool",
        "t1-s2", "t1-s2-width", "t1-s2-uniform", "t1-s2-nodiv", "t1-s2-sparse", "t1-s2-maxpool"]
    assert queue["t1-s1"] == (("attention.seed", "1"),)
    assert queue["t1-s2-maxpool"] == (("attention.seed", "2"), ("model.temporal_pooling", "max"))
    assert queue["t1-s1-width"] == (("attention.seed", "1"), ("model.maps", "average"))
    cells = table1_cells([0, 1, 2], base_seed=0)
    assert len(cells) == 3 * len(TABLE1)
    assert {c.experiment for c in cells if c.label == "Baseline"} == {None, "t1-s1", "t1-s2"}


def test_a_base_seed_other_than_zero_is_the_commit():
    queue = to_queue(table1_cells([3, 0], base_seed=3))
    assert "t1-s3" not in queue and queue["t1-s0"] == (("attention.seed", "0"),)
    assert list(queue)[:5] == ["t1-s3-width", "t1-s3-uniform", "t1-s3-nodiv", "t1-s3-sparse",
                               "t1-s3-maxpool"]


def test_table2_queues_every_k_but_the_params_own():
    cells = table2_cells(base_k=6, seed=0)
    assert [c.label for c in cells] == [f"K = {k}" for k in TABLE2_K]
    assert {c.model for c in cells} == {"temporal"}
    assert to_queue(cells) == {f"t2-k{k}": (("model.K", str(k)),) for k in (1, 2, 4, 8)}
    assert to_queue(table2_cells(base_k=2, seed=0)).keys() == {"t2-k1", "t2-k4", "t2-k6",
                                                                "t2-k8"}


def test_cells_follow_the_params_file(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"seed": 5, "model": {"K": 4}, "attention": {"seed": 2}}))
    assert {c.experiment for c in cells_for("table2", str(params), None)} == {
        "t2-k1", "t2-k2", None, "t2-k6", "t2-k8"}
    # Table 1's seeds are the heads' (attention.seed), never the CNN's: no CNN stage re-runs
    assert {c.seed for c in cells_for("table1", str(params), None)} == {2}
    cells = cells_for("table1", str(params), [2, 3])
    assert {k for c in cells for k, _ in c.overrides} == {"attention.seed", "loss.diversity",
                                                          "model.maps", "model.temporal_pooling"}


def test_paper_numbers_cover_every_row():
    # every row of the paper's Table 1 is a row of ours; ours adds the two controls of the
    # heads (model.maps), which the paper does not have
    labels = {row.label for row in TABLE1}
    assert set(PAPER_TABLE1) == labels - {"Width control", "Uniform maps"}
    assert {row.label for row in TABLE1 if "model.maps" in row.overrides} == {
        "Width control", "Uniform maps"}
    assert PAPER_TABLE1["SpaAtn+Q+TemAtn+Ind"] == {"prid2011": 93.2, "ilidsvid": 80.2,
                                                    "mars": 82.3, "mars_mAP": 65.8}
    assert set(PAPER_TABLE2) == set(TABLE2_K)
    assert PAPER_TABLE2[6]["ilidsvid"] == PAPER_TABLE1["SpaAtn+Q+TemAtn"]["ilidsvid"]


def exp_entry(name, error=None):
    return {"revs": [{"rev": "b" * 40, "name": name, "data": {"metrics": {}}, "error": error,
                      "experiments": None}], "executor": None, "name": name}


def test_existing_experiments_are_the_completed_ones_of_the_commit():
    show = [
        {"rev": "workspace", "name": None, "data": {}, "error": None, "experiments": None},
        {"rev": "a" * 40, "name": "main", "data": {}, "error": None,
         "experiments": [exp_entry("t1-s0-nodiv"), exp_entry("t1-s0-sparse", {"msg": "failed"}),
                         exp_entry("t2-k8"), *(dict(exp_entry(f"t2-k{k}"),
                                                    executor={"state": state})
                                               for k, state in ((1, "queued"), (2, "running"),
                                                                (4, "failed")))]},
    ]
    # queued or running: not queued again; failed (an error, or its run's state): run again
    assert existing_experiments(show) == {"t1-s0-nodiv", "t2-k8", "t2-k1", "t2-k2"}
    assert existing_experiments(show[:1]) == set()


def test_list_prints_every_cell_with_its_source(capsys, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"seed": 0}))
    main(["list", "table1", "--params", str(params), "--seeds", "0", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 * len(TABLE1)
    assert any("SpaAtn+Q+MaxPool" in line and "t1-s1-maxpool" in line
               and "-S attention.seed=1 -S model.temporal_pooling=max" in line for line in lines)
    assert any(line.startswith("Baseline") and "(baseline commit)" in line for line in lines)


def test_dvc_runs_the_projects_dvc_here_in_the_users_environment(monkeypatch, capsys, tmp_path):
    """The dvc beside this Python, in the current directory, with the user's environment (HOME,
    remotes' credentials) and this Python's bin first on PATH (the stages run its `python`)."""
    calls = []

    def fake_run(cwd, *cmd, env=None, stdout_only=False, capture=True):
        calls.append((cwd, cmd, env, stdout_only, capture))
        return "logs of the queue\n" if capture else ""

    monkeypatch.setattr(show, "run", fake_run)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", "/home/someone")
    assert dvc("exp", "show", "--json") == "logs of the queue\n"
    cwd, cmd, env, stdout_only, capture = calls[0]
    assert Path(cwd) == tmp_path and stdout_only and capture  # stdout only: what callers parse
    assert cmd[1:] == ("exp", "show", "--json")
    assert cmd[0] == (str(BIN / "dvc") if (BIN / "dvc").exists() else "dvc")
    assert env["HOME"] == "/home/someone" and env["PATH"].split(os.pathsep)[0] == str(BIN)
    assert capsys.readouterr().out == ""
    # the queue's logs go to the terminal as they come, not captured
    assert dvc("exp", "run", "--run-all", echo=True) == ""
    assert calls[1][4] is False


def test_only_the_always_changed_check_stage_counts_as_up_to_date():
    assert experiments.out_of_date({}) == []
    assert experiments.out_of_date({"check": ["always changed"]}) == []
    status = {"check": ["always changed"],
              "evaluate@synthetic-0": [{"changed deps": {"pipeline/metrics.py": "modified"}}]}
    assert experiments.out_of_date(status) == ["evaluate@synthetic-0"]


def test_the_noise_line_reads_the_headline_intervals(tmp_path):
    from tools.experiments.noise import noise_lines

    (tmp_path / "synthetic.json").write_text(json.dumps(
        {"R1": {"base": 30.0}, "mAP": {"base": 28.0}, "ci": {"R1": 3.4, "mAP": 2.9}}))
    (tmp_path / "old.json").write_text(json.dumps({"R1": {"base": 30.0}}))  # no interval yet
    assert noise_lines(tmp_path) == [
        f"old: the test-set noise is undefined: {tmp_path / 'old.json'} has no 95 percent "
        "interval (results scored before the intervals; `make repro` scores them again)",
        "synthetic: differences below 3.4 rank-1 points or 2.9 mAP points are test-set noise "
        "(the workspace's largest 95 percent half-width over the models)"]


def test_a_noise_of_width_zero_or_none_is_undefined_not_below_zero_points(tmp_path):
    """One test identity (or every query scored alike) gives intervals of width 0: no line may
    say that differences below 0.0 points are noise."""
    from tools.experiments.noise import noise_lines

    (tmp_path / "a.json").write_text(json.dumps({"ci": {"R1": 0.0, "mAP": 0.0}}))
    (tmp_path / "b.json").write_text(json.dumps({"ci": {"R1": 2.5}}))
    lines = noise_lines(tmp_path)
    assert lines == [
        f"a: the test-set noise is undefined: in {tmp_path / 'a.json'} the 95 percent half-width "
        "of rank-1 is 0.0 and of mAP is 0.0 (a width of 0: every query scored alike, or one test "
        "identity), so no difference between two rows can be read against it",
        f"b: the test-set noise is undefined: in {tmp_path / 'b.json'} the 95 percent half-width "
        "of mAP is missing (a width of 0: every query scored alike, or one test identity), so no "
        "difference between two rows can be read against it"]
    assert not any("below 0.0" in line for line in lines)


@pytest.mark.parametrize(("content", "expected"), [
    (b'{"R1": {"base": 3', "not JSON (Expecting "),  # truncated
    (b"[1, 2]", "expected the summary stage's JSON object (R1, mAP, ci), got a list"),
    (b"\xff\xfe", "not JSON ('utf-8' codec can't decode"),  # not text
])
def test_a_corrupt_headline_file_is_one_line_naming_it(tmp_path, capsys, content, expected):
    """`make exp` with a truncated metrics/results/<set>.json: one line naming the file and how
    to restore it, status 1, no JSONDecodeError traceback."""
    from tools.experiments.noise import main as noise_main

    path = tmp_path / "synthetic.json"
    path.write_bytes(content)
    with pytest.raises(SystemExit) as exit_:
        noise_main([str(tmp_path)])
    message = str(exit_.value.code)
    assert message.startswith(f"error: {path}: {expected}"), message
    assert message.endswith(f"; `git checkout -- {path}` restores the committed file, "
                            "`make repro` writes it again")
    assert "\n" not in message and capsys.readouterr().out == ""


@pytest.mark.parametrize(("table", "seeds", "expected"), [
    ("table1", ["-1"], "SEEDS (--seeds): expected values of attention.seed, integers >= 0 and "
                       "<= 18446744073709551615, got '-1'"),
    ("table1", ["1.5"], "SEEDS (--seeds): expected values of attention.seed, integers >= 0 and "
                        "<= 18446744073709551615, got '1.5'"),
    ("table1", ["0", "0"], "SEEDS (--seeds): expected each seed once, got 0 0 (repeats 0)"),
    ("cnnseeds", ["2", "1", "2"], "CNN_SEEDS (--seeds): expected each seed once, got 2 1 2 "
                                  "(repeats 2)"),
    # seed + attention.seed seeds the heads: the other seed narrows the range
    ("cnnseeds", [str(2**64 - 1)], "CNN_SEEDS (--seeds): expected values of seed, integers >= 0 "
                                   "and <= 18446744073709551612 (attention.seed is 3, and seed + "
                                   "attention.seed must stay <= 2**64 - 1), got "
                                   "'18446744073709551615'"),
])
def test_bad_seeds_are_refused_in_one_line_before_anything_is_queued(
        tmp_path, monkeypatch, table, seeds, expected):
    """SEEDS=-1 would queue experiments that each fail at the check stage; SEEDS="0 0" would
    count seed 0 twice. Both are one line naming the make variable and the range, before dvc
    runs at all."""
    def no_dvc(*args, **kwargs):
        raise AssertionError("dvc ran")

    monkeypatch.setattr(experiments, "dvc", no_dvc)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"seed": 0, "attention": {"seed": 3}}))
    for action in ("run", "list"):
        with pytest.raises(SystemExit) as exit_:
            main([action, table, "--params", str(params), "--seeds", *seeds])
        assert exit_.value.code == f"error: {expected}"


def test_seeds_in_range_pass_as_integers(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"seed": 0}))
    cells = cells_for("table1", str(params), ["2", " 07"])
    assert sorted({c.seed for c in cells}) == [2, 7]
    assert {c.seed for c in cells_for("table1", str(params), [str(2**64 - 1)])} == {2**64 - 1}


def test_table1_seeds_re_run_no_cnn_stage():
    """SEED_KEY reaches the heads' stages only (dvc.yaml): a seed of Table 1 re-runs attention
    and joint (then evaluate and summary, on their outputs), and the heads of the union (which
    train them under schedule across_sets), never pretrain, finetune or cache."""
    stages = yaml.safe_load(Path("dvc.yaml").read_text())["stages"]
    section = SEED_KEY.split(".")[0]
    reading = {name for name, stage in stages.items()
               if any(key in (SEED_KEY, section) for key in stage.get("params", []))}
    assert reading == {"union_heads", "attention", "joint"}


def test_cnn_seeds_queue_the_whole_default_pipeline_at_every_other_seed():
    """CNN seeds vary the top-level seed (every training stage re-runs); the params' own seed is
    the baseline commit; every cell keeps the heads' seed its results record."""
    cells = cnn_seed_cells([0, 1, 2], base_seed=0, heads_seed=0)
    assert to_queue(cells) == {"cs-s1": (("seed", "1"),), "cs-s2": (("seed", "2"),)}
    assert {c.label for c in cells} == {"Baseline", "SpaAtn+Q", "SpaAtn+Q+TemAtn",
                                        "SpaAtn+Q+TemAtn+Ind"}
    assert {c.seed for c in cells} == {0}
    assert {c.experiment for c in cells if c.label == "Baseline"} == {None, "cs-s1", "cs-s2"}


def test_schedules_queue_both_schedules_on_the_generated_sets_at_every_seed():
    """Table 1 under both schedules: per seed the per-set experiment first (its first set's
    stages have the baseline commit's inputs), then the one across sets; none is the baseline commit
    (it trains one set); each sets the generated sets, its schedule and the heads' seed, which
    the params check accepts."""
    cells = schedule_cells([0, 1])
    sets = "[synthetic,synthetic2]"
    assert to_queue(cells) == {
        f"sc-{short}-s{seed}": (("schedule", schedule), ("data.video", sets), (SEED_KEY, str(seed)))
        for seed in (0, 1) for short, schedule in (("per", "per_set"), ("across", "across_sets"))}
    assert list(to_queue(cells)) == ["sc-per-s0", "sc-across-s0", "sc-per-s1", "sc-across-s1"]
    assert {c.label for c in cells} == {"Baseline", "SpaAtn+Q", "SpaAtn+Q+TemAtn",
                                        "SpaAtn+Q+TemAtn+Ind"}
    assert all(c.experiment for c in cells)
    for name, overrides in to_queue(cells).items():
        params = yaml.safe_load(Path("params.yaml").read_text())
        for key, value in overrides:
            *sections, leaf = key.split(".")
            target = params
            for section in sections:
                target = target[section]
            target[leaf] = yaml.safe_load(value)
        p = parse_params(yaml.safe_dump(params), name)
        assert (p.schedule, p.data.video) == (dict(overrides)["schedule"],
                                              ["synthetic", "synthetic2"])


def test_one_job_runs_each_experiment_in_a_temporary_workspace_without_the_queue(monkeypatch):
    """JOBS=1 never uses DVC's celery queue (it can hang with no worker left): each experiment
    runs with `dvc exp run --temp`, in order, and one that fails does not stop the next."""
    calls = []

    def fake_dvc(*args, echo=False):
        calls.append(args)
        if "t2-k2" in args and "--temp" in args:
            raise RuntimeError("exit 1")
        return ""

    monkeypatch.setattr(experiments, "dvc", fake_dvc)
    queue = {"t2-k1": (("model.K", "1"),), "t2-k2": (("model.K", "2"),),
             "t1-s1-sparse": (("attention.seed", "1"), ("loss.diversity", "sparse"))}
    experiments.run_experiments(queue, jobs=1)
    assert calls == [
        ("exp", "run", "--temp", "-n", "t2-k1", "-S", "model.K=1"),
        ("exp", "run", "--temp", "-n", "t2-k2", "-S", "model.K=2"),
        ("exp", "run", "--temp", "-n", "t1-s1-sparse", "-S", "attention.seed=1", "-S",
         "loss.diversity=sparse")]
    calls.clear()
    experiments.run_experiments(queue, jobs=2)
    assert [c[:4] for c in calls] == [("exp", "run", "--queue", "-n")] * 3 + [
        ("exp", "run", "--run-all", "--jobs")]
    assert calls[-1][-1] == "2"


def test_the_report_finds_the_seeds_of_the_names_the_runner_gives():
    """One format per kind of experiment (cells.NAMES): the names table1_cells, cnn_seed_cells
    and schedule_cells write give back their seeds, and no kind takes another's."""
    names = {
        "table1": [c.experiment for c in table1_cells([0, 4, 12], 0) if c.experiment],
        "cnn": [c.experiment for c in cnn_seed_cells([0, 3, 7], 0, 0) if c.experiment],
        "schedule": [c.experiment for c in schedule_cells([2, 9])]}
    every = [name for found in names.values() for name in found]
    assert {kind: seeds_named(every, kind) for kind in names} == {
        "table1": {0, 4, 12}, "cnn": {3, 7}, "schedule": {2, 9}}  # t1-s0-<row> too
    assert seeds_named(["t1-sx", "t1-s5x", "cs-s3-extra", "sc-per-s"], "table1") == set()
