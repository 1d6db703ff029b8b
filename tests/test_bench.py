"""Tests of tools/project/bench: its reference evaluators score exactly like evaluate_rank, its FLOP
count matches a hand count, a row's ratio and verdict follow its figures, and a --quick run writes
every figure."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess

import numpy as np
import pytest
import torch
import yaml

from pipeline.metrics import evaluate_rank
from pipeline.params import PROTOCOLS
from tools.project.bench.__main__ import main
from tools.project.bench.common import QUICK, Setup, Target, row, table_rows
from tools.project.bench.evaluation import mars_like_problem, sort_bound, usual_evaluator
from tools.project.bench.experiment import bench_experiment
from tools.project.tinyrepo import TINY, tiny_repo

PAPER_ROWS = {"cache_throughput_paper", "attention_cached_epoch_paper",
              "cached_step_overhead_paper"}
BENCHMARKS = {
    "cache_throughput", *PAPER_ROWS,
    *(f"eval_{p}_{kind}" for p in PROTOCOLS for kind in
      ("speedup", "vs_sort", "memory")),
    "attention_cached_epoch", "cached_step_overhead", "cache_memory_flatness",
    "experiment_overhead",
}


def tied_problem() -> tuple[np.ndarray, ...]:
    """12 queries x 60 gallery items with integer distances (many ties), junk (-1), distractors
    (0), same-camera matches, and one query whose identity only its own camera saw."""
    rng = np.random.default_rng(3)
    g_pids = rng.integers(1, 7, 60)
    g_pids[:5], g_pids[5:10] = -1, 0
    g_camids = rng.integers(1, 4, 60)
    g_pids[10:13], g_camids[10:13] = 9, 2  # pid 9: camera 2 only
    q_pids = np.array([9, *rng.integers(1, 7, 11)])
    q_camids = np.array([2, *rng.integers(1, 4, 11)])
    distmat = rng.integers(0, 8, (12, 60)).astype(np.float32)
    return distmat, q_pids, g_pids, q_camids, g_camids


@pytest.mark.parametrize("protocol", ["official", "torchreid"])
@pytest.mark.parametrize("problem", ["tied", "mars_like"])
def test_usual_evaluator_scores_like_evaluate_rank(protocol, problem):
    """Exact CMC, mAP within 1e-9, for the protocol each implements (ties ranked alike)."""
    args = tied_problem() if problem == "tied" else mars_like_problem(40, 400, 30, seed=1)
    ours = evaluate_rank(*args, max_rank=10, protocol=protocol)
    usual = usual_evaluator(*args, max_rank=10, protocol=protocol)
    if problem == "tied":  # the query of pid 9 has no true match in another camera
        assert ours["num_valid_queries"] < ours["num_queries"]
    assert np.array_equal(ours["cmc"], usual["cmc"])
    assert abs(ours["mAP"] - usual["mAP"]) <= 1e-9
    assert 0.0 < ours["mAP"] <= 1.0


def test_sort_bound_ranks_like_a_stable_sort():
    """Each row's nearest gallery item, the first of tied ones."""
    distmat = tied_problem()[0]
    assert np.array_equal(sort_bound(distmat), distmat.argmin(axis=1))


def test_mars_like_problem_has_matches_in_other_cameras():
    distmat, q_pids, g_pids, q_camids, g_camids = mars_like_problem(50, 600, 40)
    assert distmat.shape == (50, 600) and distmat.dtype == np.float32
    assert (q_pids > 0).all() and {-1, 0} <= set(g_pids.tolist())
    other_camera = [((g_pids == p) & (g_camids != c)).any() for p, c in zip(q_pids, q_camids,
                                                                              strict=True)]
    assert np.mean(other_camera) > 0.9
    assert np.allclose(distmat.min(axis=1), 0.0, atol=1e-5)  # each query is a gallery item


def met_by_hand(bench: dict) -> bool | None:
    """Whether a row's ratio meets its target, read from the target's text ("op value")."""
    if bench["target"] is None:
        return None
    op, value = bench["target"].split()
    assert op in (">=", "<="), bench["target"]
    return bench["ratio"] >= float(value) if op == ">=" else bench["ratio"] <= float(value)


@pytest.mark.parametrize(("target", "met"), [
    (Target(">=", 1.5), True), (Target(">=", 1.6), False),
    (Target("<=", 1.5), True), (Target("<=", 1.4), False), (None, None),
])
def test_row_is_the_ratio_of_its_figures_and_meets_its_target(target, met):
    """3 / 2 = 1.5: a bound of 1.5 is met either way; no target, no verdict."""
    bench = row(("a_s", 3.0), ("b_s", 2.0), target, frames=7)
    assert bench == {"numerator": "a_s", "denominator": "b_s",
                     "figures": {"a_s": 3.0, "b_s": 2.0}, "ratio": 1.5,
                     "target": None if target is None else str(target), "met": met, "frames": 7}
    assert met_by_hand(bench) is met
    verdict = {True: "yes", False: "no", None: "-"}[met]
    assert list(table_rows({"r": bench})) == [["r", "a_s 3, b_s 2", "1.5",
                                               bench["target"] or "report", verdict]]


def test_experiment_row_is_skipped_by_quick(tmp_path):
    assert bench_experiment(Setup(QUICK), tmp_path) == {
        "experiment_overhead": {"skipped": True, "reason": "--quick"}}
    assert list(tmp_path.iterdir()) == []  # no repository made


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_tiny_repo_is_a_committed_pipeline_with_tiny_params(tmp_path):
    """The experiment-overhead benchmark's repository (its dvc runs are not part of --quick)."""
    repo = tmp_path / "exp" / "repo"
    tiny_repo(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["model"]["K"] == 3 and params["data"]["height"] == TINY["data"]["height"]
    assert params["attention"]["temporal"]["epochs"] == 1
    for path in ("dvc.yaml", ".dvc/config", "pipeline/params.py", "data/archives/.gitkeep"):
        assert (repo / path).is_file(), path
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True,
                            text=True, check=True)
    assert status.stdout == ""  # everything committed


@pytest.mark.slow
def test_quick_run_writes_every_figure(tmp_path, capsys):
    out = tmp_path / "metrics" / "bench.json"
    main(["--quick", "--out", str(out), "--workdir", str(tmp_path / "work")])
    result = json.loads(out.read_text())
    assert result["quick"] is True
    assert result["sizes"] == dataclasses.asdict(QUICK)
    assert {"cpu_count", "torch", "torch_threads"} <= set(result["machine"])
    assert result["machine"]["gpu"] is None and result["setup"]["device"] == "cpu"
    assert result["benchmarks"]["cache_throughput"]["precision"] == "float32"  # no CPU autocast
    assert set(result["benchmarks"]) == BENCHMARKS
    for name, bench in result["benchmarks"].items():
        if name == "experiment_overhead":
            assert bench == {"skipped": True, "reason": "--quick"}
            continue
        if name in PAPER_ROWS:
            assert bench == {"skipped": True, "reason": "--quick or --no-paper"}
            continue
        figures = bench["figures"]
        assert list(figures) == [bench["numerator"], bench["denominator"]], name
        assert all(math.isfinite(v) and v > 0 for v in figures.values()), (name, figures)
        assert bench["ratio"] == pytest.approx(
            figures[bench["numerator"]] / figures[bench["denominator"]], rel=1e-12), name
        assert bench["met"] is met_by_hand(bench), name
    speedup = result["benchmarks"]["eval_torchreid_speedup"]
    assert speedup["max_abs_diff_cmc"] == 0.0 and speedup["abs_diff_mAP"] <= 1e-9
    printed = capsys.readouterr().out
    assert "benchmark" in printed and "cache_throughput" in printed and "skipped" in printed


@pytest.mark.parametrize(("device", "message"), [
    ("tpu", "--device tpu: expected cpu, cuda or cuda:<index>"),
    ("nonsense:3", "--device nonsense:3: expected cpu, cuda or cuda:<index>"),
    ("cuda", "--device cuda: no CUDA device is available here"),
])
def test_bad_device_is_named(device, message, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_:
        main(["--quick", "--device", device])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_setup_uses_autocast_on_cuda_only():
    assert not Setup(QUICK).autocast
    assert Setup(QUICK, device="cuda:1").autocast
