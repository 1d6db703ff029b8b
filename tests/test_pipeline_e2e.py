"""The whole DVC pipeline on a tiny configuration, in throw-away git repositories: what `dvc repro`
writes; `dvc exp run -S model.K=2`, which must re-run only the stages K affects; a Table 1
experiment through DVC's queue, run in a temporary workspace (where the extracted frames are not
copied), and the report; a fresh clone, which must prepare the data again rather than trust the
lock file; the stages under torchrun; byte-identical re-runs; training stages killed and resumed.

The tiny repository is reproduced once per session (tests/conftest.py); every test works on its
own copy (the ``repo`` fixture), so each passes alone and in any order. The longest come first:
under pytest-xdist (`make test`) an idle worker takes tests from the end of the other's list."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from pipeline.checkpoints import load_exported
from pipeline.figures import DPI, INCHES_PER_COLUMN, LEGEND_INCHES
from pipeline.names import SHORT
from pipeline.params import grid_size
from pipeline.stage_inputs import output
from pipeline.stages.check import WORKSPACE_HINT
from pipeline.stages.summary import LIVE_FOLDERS
from pipeline.tables import load_video_index
from tools.experiments.cells import out_of_date
from tools.experiments.chart import CHART_DPI, CHART_PANEL_HEIGHT, CHART_WIDTH
from tools.project.tinyrepo import TINY
from tools.shell import BIN, clean_env, run

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("git") is None, reason="needs git")]

ROOT = Path(__file__).resolve().parents[1]
PER_SPLIT = ("finetune", "cache", "baseline", "attention", "joint", "evaluate", "references")
MODELS = SHORT  # model -> its short name in the headline
RUN = "synthetic-0"  # the one (set, split) of the tiny params
# the stage every `dvc repro` runs first, before any other (always_changed): the params checked
CHECK = "check"
# what a change to the attention heads (model.K, .d, .temporal_pooling) re-runs: not the backbone
# (and the heads of the union: under per_set it writes its folder's schedule.json, unchanged)
ATTENTION_ON = {CHECK, "union_heads@0", f"attention@{RUN}", f"joint@{RUN}", f"evaluate@{RUN}",
                "summary"}


def ran(output: str) -> set[str]:
    """The stages a `dvc repro` or `dvc exp run` output says it ran."""
    return set(re.findall(r"Running stage '([^']+)'", output))


def up_to_date(repo: Path, *targets: str) -> bool:
    """Whether `dvc status` has nothing to run but the check stage (always changed)."""
    status = json.loads(run(repo, "dvc", "status", "--json", *targets, stdout_only=True) or "{}")
    return out_of_date(status) == []


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def tree_state(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``root``: its md5 and modification time."""
    return {str(path.relative_to(root)): (md5_of(path), path.stat().st_mtime_ns)
            for path in sorted(root.rglob("*")) if path.is_file()}


def lock_md5(repo: Path, stage: str, out: str) -> str:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"][stage]
    return next(o["md5"] for o in lock["outs"] if o["path"] == out)


def with_tools(repo: Path) -> dict[str, str]:
    """The environment to run this project's tools (``python -m tools.<name>``) in ``repo``,
    which holds only the pipeline: ``pipeline`` from ``repo`` (the working directory comes first
    on ``sys.path``), ``tools`` from this checkout."""
    return clean_env(repo.parent, {"PYTHONPATH": str(ROOT)})


# --- experiments: queued (in a temporary workspace) and in the workspace (the longest) -----------


def test_queued_ablation_and_report(repo):
    """One Table 1 experiment (`tools.experiments run --only`, one job: `dvc exp run --temp`): it
    runs in a temporary workspace, which holds no data/raw (the joint and evaluate stages read
    the project's frames), and re-runs only the stages its param affects. Then the report: that
    row has the experiment's numbers, the rows not run are shown as missing, the baseline row
    comes from the baseline commit."""
    env = with_tools(repo)
    output = run(repo, sys.executable, "-m", "tools.experiments", "run", "table1", "--only",
                 "t1-s0-maxpool", env=env)
    assert "running t1-s0-maxpool (1 of 1): model.temporal_pooling=max" in output
    assert ran(output) == ATTENTION_ON
    shown = json.loads(run(repo, "dvc", "exp", "show", "--json", stdout_only=True))
    head = run(repo, "git", "rev-parse", "HEAD").strip()
    names = {exp["name"]: exp for rev in shown if rev["rev"] == head
             for experiment in rev["experiments"] or [] for exp in experiment["revs"]}
    assert "t1-s0-maxpool" in names and names["t1-s0-maxpool"]["error"] is None
    data = names["t1-s0-maxpool"]["data"]
    assert data["params"]["params.yaml"]["data"]["model"]["temporal_pooling"] == "max"
    headline = data["metrics"]["metrics/results/synthetic.json"]["data"]
    assert set(headline) == {"R1", "mAP", "ci"} and set(headline["R1"]) == set(MODELS.values())
    assert set(headline["ci"]) == {"R1", "mAP"}  # the widest 95% half-width of the models
    assert up_to_date(repo)  # the workspace as it was

    run(repo, sys.executable, "-m", "tools.experiments.report", "--params", "params.yaml", "--out",
        "metrics/report.md", "--chart", "metrics/plots/table1.png", env=env)
    report = (repo / "metrics" / "report.md").read_text()
    table1 = report.split("## synthetic, official protocol")[1].split("### Table 1 beside")[0]
    rows = {cells[0]: cells for line in table1.splitlines() if line.startswith("| ")
            for cells in [line.strip("| ").split(" | ")]}
    assert rows["row"][1:3] == ["rank-1 (%)", "mAP (%)"]
    # one seed, one split: the headline's numbers, with a standard deviation of 0, then the
    # 95% interval of the split's evaluation
    maxpool = rows["SpaAtn+Q+MaxPool"]
    assert [cell.split(" [")[0] for cell in maxpool[1:3]] == [
        f"{headline['R1']['tem']:.1f} ± 0.0", f"{headline['mAP']['tem']:.1f} ± 0.0"]
    assert all(re.fullmatch(r"[\d.]+ ± 0\.0 \[[\d.]+, [\d.]+\]", c) for c in maxpool[1:3])
    assert maxpool[-3:-1] == ["t1-s0-maxpool", "1/1"]  # experiments, seeds found
    assert rows["SpaAtn"][1:3] == ["missing", "missing"]  # never run: not 0
    baseline = json.loads((repo / "metrics" / "results" / "synthetic.json").read_text())
    assert [cell.split(" [")[0] for cell in rows["Baseline"][1:3]] == [
        f"{baseline['R1']['base']:.1f} ± 0.0", f"{baseline['mAP']['base']:.1f} ± 0.0"]
    assert rows["Baseline"][-3] == "baseline commit"
    with Image.open(repo / "metrics" / "plots" / "table1.png") as image:  # one dataset panel
        assert image.size == (round(CHART_WIDTH * CHART_DPI), round(CHART_PANEL_HEIGHT * CHART_DPI))


def test_the_paper_s_schedule_across_two_sets_in_a_temporary_workspace(repo):
    """`dvc exp run --temp -S schedule=across_sets -S data.video=[synthetic,synthetic2]`: a
    temporary workspace generates the second set's frames in its own data/raw (the project's stays
    byte for byte and time for time as it was, the workspace up to date) and runs every stage that
    reads them; the CNN and the heads trained once, on the union (whose labels keep the sets'
    people apart: 4 + 4 classes), every set's finetune and attention stages taking them byte for
    byte, +Ind (joint) trained per set from that set's rows of the union's lookup table, every set
    evaluated on its own test set; the pretrained CNN is not trained again. `dvc exp apply` brings
    its outputs. Under per_set (the repository as reproduced) the union stages' folders hold their
    schedule.json alone."""
    union = repo / "data" / "models" / "union-0"
    for part in ("cnn", "heads"):
        assert [p.name for p in (union / part).iterdir()] == ["schedule.json"]
    raw = repo / "data" / "raw"
    before = tree_state(raw)
    per_set_headline = (repo / "metrics" / "results" / "synthetic.json").read_text()
    output = run(repo, "dvc", "exp", "run", "--temp", "-n", "across", "-S",
                 "schedule=across_sets", "-S", "data.video=[synthetic,synthetic2]")
    per_set = {f"{stage}@{name}-0" for stage in PER_SPLIT for name in ("synthetic", "synthetic2")}
    # no pretraining again: it reads the image sets' index alone, which a video set leaves as is
    assert ran(output) == {CHECK, "download", "index", "union_cnn@0", "union_heads@0",
                           "summary", *per_set}, output
    assert tree_state(raw) == before
    assert up_to_date(repo)  # the workspace as it was
    run(repo, "dvc", "exp", "apply", "across")
    models = repo / "data" / "models"
    for name, files in (("cnn", ["finetune.pt"]), ("heads", ["spatial.pt", "temporal.pt"])):
        for file in files:
            assert {md5_of(models / f"{s}-0" / file) for s in ("synthetic", "synthetic2")} == {
                md5_of(union / name / file)}, file
    _, heads = load_exported(union / "heads" / "temporal.pt")
    assert heads["union_classes"] == {"synthetic": [0, 4], "synthetic2": [4, 4]}
    lut = heads["criterion"]["lut"]
    assert lut.shape[0] == 8
    joints = [load_exported(models / f"{s}-0" / "joint.pt")[1] for s in ("synthetic", "synthetic2")]
    assert [j["criterion"]["lut"].shape[0] for j in joints] == [4, 4]
    assert md5_of(models / "synthetic-0" / "joint.pt") != md5_of(models / "synthetic2-0" /
                                                               "joint.pt")
    for name in ("synthetic", "synthetic2"):
        evaluation = json.loads((repo / "metrics" / "eval" / f"{name}-0.json").read_text())
        assert evaluation["dataset"] == name and list(evaluation["models"]) == list(MODELS)
        assert (repo / "metrics" / "results" / f"{name}.json").is_file()
    # the figures are the experiment's own: another CNN, other results on the same test set
    assert (repo / "metrics" / "results" / "synthetic.json").read_text() != per_set_headline


def test_k_experiment_reruns_only_what_k_affects(repo):
    """`dvc exp run -S model.K=2` in the workspace re-runs attention, joint, evaluate and summary
    (not the backbone's stages), and `dvc metrics diff` shows the headline and, asked, the
    per-split detail."""
    output = run(repo, "dvc", "exp", "run", "-S", "model.K=2")
    assert ran(output) == ATTENTION_ON
    heads = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert heads[f"attention@{RUN}"]["params"]["params.yaml"]["model.K"] == 2
    assert heads[f"cache@{RUN}"]["params"]["params.yaml"]["cache"]["batch_size"] == \
        TINY["cache"]["batch_size"]
    diff = run(repo, "dvc", "metrics", "diff", "--all")
    assert "metrics/results/synthetic.json" in diff
    assert all(f"R1.{short}" in diff and f"mAP.{short}" in diff for short in MODELS.values())
    assert "metrics/eval" not in diff  # the detail only when asked for:
    detail = run(repo, "dvc", "metrics", "diff", "--all", "--targets", f"metrics/eval/{RUN}.json")
    assert "models.temporal.official.rank1" in detail


# --- interruption: a 3-epoch joint stage, killed and resumed ------------------------------------


def start(repo: Path, *cmd: str) -> subprocess.Popen:
    """``cmd`` in its own process group (so that a kill reaches DVC and the stage it runs)."""
    return subprocess.Popen(cmd, cwd=repo, env=clean_env(repo.parent), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for(path_glob: Callable[[], list[Path]], process: subprocess.Popen,
             timeout: float = 120.0) -> list[Path]:
    """Poll until ``path_glob`` finds something; fails if the process ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := path_glob():
            return found
        if process.poll() is not None:
            raise AssertionError(f"finished before the files appeared:\n{process.stdout.read()}")
        time.sleep(0.005)
    raise AssertionError("timed out")


def test_sigkill_then_dvc_repro_resumes_to_the_uninterrupted_result(joint_3_epochs):
    """SIGKILL to `dvc repro` (and the joint stage it runs) after the stage's first epoch;
    the stage run again resumes from its checkpoint and writes the uninterrupted run's model byte
    for byte, so nothing downstream of it would run again and the metrics are the uninterrupted
    run's. (A killed cache stage: tests/test_features.py.)"""
    repo = joint_3_epochs
    stage, partial = f"joint@{RUN}", repo / "scratch" / "joint" / RUN / "last.pt"
    outputs = [f"data/models/{RUN}/joint.pt", f"metrics/live/joint/{RUN}/metrics.json",
               f"metrics/live/joint/{RUN}/plots"]
    uninterrupted = [lock_md5(repo, stage, out) for out in outputs]
    process = start(repo, "dvc", "repro", "-f", "-s", stage)
    wait_for(lambda: [p for p in [partial] if p.exists() and p.stat().st_size], process)
    os.killpg(process.pid, signal.SIGSTOP)  # frozen at once, then killed
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    # -f: run the stage (a plain `dvc repro` restores the outputs of the run dvc.lock records,
    # which DVC's cache holds, curves included, without running it)
    output = run(repo, "dvc", "repro", "-f", "-s", stage)
    assert ran(output) == {stage}
    assert "resuming after epoch 1" in output
    assert not partial.exists()  # dropped once the model is written
    assert [lock_md5(repo, stage, out) for out in outputs] == uninterrupted  # curves too
    assert "Data and pipelines are up to date" in run(repo, "dvc", "status", stage)


def test_sigterm_stops_a_training_stage_with_a_checkpoint(joint_3_epochs, tmp_path):
    """SIGTERM to the joint stage: it finishes its step, writes the resume checkpoint, says so and
    exits with 128 + 15; run again, it resumes and writes the uninterrupted run's model."""
    repo = joint_3_epochs
    uninterrupted = lock_md5(repo, f"joint@{RUN}", f"data/models/{RUN}/joint.pt")
    out, scratch = tmp_path / "joint.pt", tmp_path / "scratch"
    cmd = [sys.executable, "-m", "pipeline.stages.joint", "--params", "params.yaml",
           "--index", "data/index/synthetic/split_0.json",
           "--backbone", f"data/models/{RUN}/finetune.pt",
           "--heads", f"data/models/{RUN}/temporal.pt", "--out", str(out),
           "--live", str(tmp_path / "live"), "--scratch", str(scratch)]
    process = start(repo, *cmd)
    wait_for(lambda: list(scratch.glob("last.pt")), process)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 128 + signal.SIGTERM, output
    assert re.search(r"stopped: joint: stopped (in|after) epoch \d/3", output), output
    assert "Traceback" not in output
    assert not out.exists() and (scratch / "last.pt").exists()
    output = run(repo, *cmd)
    assert "resuming" in output
    assert md5_of(out) == uninterrupted


# --- the stages under torchrun, and determinism ---------------------------------------------------


def test_cache_baseline_and_evaluate_sharded_under_torchrun(repo, tmp_path):
    """The cache, baseline and evaluate stages started as dvc.yaml starts them (pipeline.launch)
    with `runtime.launcher: torchrun --standalone --nproc_per_node=$NPROC`, NPROC=2 CPU
    processes: the ranks share the frames (and the test clips), rank 0 writes, and the outputs are
    those of the workspace's single-process run: the same grids in the same order, the same
    metrics."""
    index = "data/index/synthetic/split_0.json"
    models = Path(f"data/models/{RUN}")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["runtime"]["launcher"] = "torchrun --standalone --nproc_per_node=$NPROC"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    launch = [sys.executable, "-m", "pipeline.launch"]
    common = ["--params", str(tmp_path / "params.yaml"), "--index", index]
    env = clean_env(repo.parent, {"NPROC": "2"})
    out = tmp_path / "ddp"
    logs = run(repo, *launch, "pipeline.stages.cache", *common,
               "--model", str(models / "finetune.pt"), "--out", str(out / "cache.h5"), env=env)
    on_cache = ["--dataset", "synthetic", "--split", "0", "--cache", str(out / "cache.h5"),
                "--backbone", str(models / "finetune.pt")]
    logs += run(repo, *launch, "pipeline.stages.baseline", *common, *on_cache,
                "--out", str(out / "baseline.npz"), env=env)
    logs += run(repo, *launch, "pipeline.stages.evaluate", *common, *on_cache,
                "--model", f"baseline={out}/baseline.npz",
                *(a for name in ("spatial", "temporal", "joint")
                  for a in ("--model", f"{name}={models}/{name}.pt")),
                "--out", str(out / "eval.json"), "--cmc", str(out / "cmc.csv"),
                "--figures", str(out / "figures"), env=env)
    assert logs.count("rank 1 of 2") == 3, logs[-2000:]  # the three stages ran as 2 ranks
    assert sorted(p.name for p in out.iterdir()) == ["baseline.npz", "cache.h5", "cmc.csv",
                                                     "eval.json", "figures"]  # no leftovers
    with h5py.File(repo / f"data/cache/{RUN}.h5") as a, h5py.File(out / "cache.h5") as b:
        assert a.attrs.keys() == b.attrs.keys()
        for key, value in a.attrs.items():  # part_names is an array
            assert np.array_equal(value, b.attrs[key]), key
        for subset in ("train", "test"):
            for key in ("offsets", "frame_index", "pids", "camids", "is_query"):
                np.testing.assert_array_equal(a[subset][key][:], b[subset][key][:])
            # the same batches, one process each: equal up to thread-count float effects
            np.testing.assert_allclose(a[subset]["grids"][:].astype(np.float32),
                                       b[subset]["grids"][:].astype(np.float32),
                                       rtol=2e-3, atol=2e-3)
            assert np.abs(b[subset]["grids"][:]).sum(axis=(1, 2, 3)).min() > 0  # none left 0
    ours = json.loads((out / "eval.json").read_text())
    theirs = json.loads((repo / f"metrics/eval/{RUN}.json").read_text())
    assert list(ours["models"]) == list(MODELS)  # every model, in the order dvc.yaml gives
    assert (ours["dataset"], ours["split"], ours["seed"]) == ("synthetic", 0, 0)
    for model, per_protocol in theirs["models"].items():
        for protocol, metrics in per_protocol.items():
            assert ours["models"][model][protocol] == pytest.approx(metrics, abs=1e-6), model
    assert ours["attention"].keys() == theirs["attention"].keys()
    for model, summary in theirs["attention"].items():
        numbers = {k: v for k, v in summary.items() if isinstance(v, float | int)}
        assert ours["attention"][model].keys() == summary.keys(), model
        assert {k: ours["attention"][model][k] for k in numbers} == pytest.approx(
            numbers, rel=1e-3, abs=1e-12), model
        assert {k: v for k, v in ours["attention"][model].items() if k not in numbers} == {
            k: v for k, v in summary.items() if k not in numbers}, model  # names, notes, None
    assert (sorted(p.name for p in (out / "figures").iterdir())
            == sorted(p.name for p in (repo / f"metrics/plots/attention/{RUN}").iterdir()))


def test_reruns_give_byte_identical_outputs_whatever_the_loader_workers(repo, tmp_path):
    """Same params and seed, run again: the same metrics files byte for byte; and the attention
    stage trained with 2 loader workers instead of none gives the same heads. (A training stage
    run again gives the same model byte for byte: the SIGKILL test.)"""
    files = [repo / f"metrics/eval/{RUN}.json", repo / f"metrics/plots/cmc/{RUN}.csv"]
    first = [md5_of(f) for f in files]
    output = run(repo, "dvc", "repro", "-f", "-s", f"evaluate@{RUN}")
    assert ran(output) == {f"evaluate@{RUN}"}
    assert [md5_of(f) for f in files] == first
    evaluation = json.loads(files[0].read_text())
    assert (evaluation["seed"], evaluation["split"]) == (0, 0)  # recorded beside the metrics

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["num_workers"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    models = repo / "data" / "models" / RUN
    run(repo, sys.executable, "-m", "pipeline.stages.attention",
        "--params", str(tmp_path / "params.yaml"), "--cache", f"data/cache/{RUN}.h5",
        "--backbone", str(models / "finetune.pt"), "--spatial", str(tmp_path / "spatial.pt"),
        "--temporal", str(tmp_path / "temporal.pt"), "--live", str(tmp_path / "live"),
        "--scratch", str(tmp_path / "scratch"))
    for phase in ("spatial", "temporal"):
        ours, _ = load_exported(tmp_path / f"{phase}.pt")
        theirs, _ = load_exported(models / f"{phase}.pt")
        for name, value in theirs.state_dict().items():
            assert torch.equal(ours.state_dict()[name], value), f"{phase}: {name}"
    # and the same DVCLive curves, byte for byte (no timestamps in them)
    live = repo / "metrics" / "live" / "attention" / RUN
    assert {str(f.relative_to(live)): f.read_bytes() for f in live.rglob("*") if f.is_file()} == {
        str(f.relative_to(tmp_path / "live")): f.read_bytes()
        for f in (tmp_path / "live").rglob("*") if f.is_file()}


def test_attention_stage_under_torchrun(repo, tmp_path):
    """The attention stage started by torchrun with 2 CPU processes (gloo), as
    `runtime.launcher: torchrun --nproc_per_node=2` starts it: rank 0 alone writes the models
    and the loss curves, whose steps are the global batches (not twice as many), and the models
    are usable. (Equality with one process is tests/test_distributed.py's, with frozen
    BatchNorm; here the embedding's BatchNorm normalises each rank's half batch.)"""
    out = tmp_path / "ddp"
    run(repo, str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m",
        "pipeline.stages.attention", "--params", "params.yaml",
        "--cache", f"data/cache/{RUN}.h5", "--backbone", f"data/models/{RUN}/finetune.pt",
        "--spatial", str(out / "spatial.pt"), "--temporal", str(out / "temporal.pt"),
        "--live", str(out / "live"), "--scratch", str(out / "scratch"))
    assert sorted(p.name for p in out.iterdir()) == ["live", "scratch", "spatial.pt",
                                                     "temporal.pt"]
    assert list((out / "scratch").iterdir()) == []  # resume checkpoints dropped at the end
    for phase in ("spatial", "temporal"):
        curve = Path("plots", "metrics", "batch", "loss.tsv")
        ours = pd.read_csv(out / "live" / phase / curve, sep="\t")
        single = pd.read_csv(repo / "metrics" / "live" / "attention" / RUN / phase / curve,
                             sep="\t")
        assert list(ours["step"]) == list(single["step"])  # one row per global batch
        assert ours["loss"].notna().all() and (ours["loss"] > 0).all()
        model, payload = load_exported(out / f"{phase}.pt")
        assert payload["stage"] == f"attention.{phase}"
        with torch.no_grad():
            grids = torch.randn(2, model.cfg.N, model.in_channels, 8, 4)
            embedding = model(grids).embedding
        assert embedding.shape == (2, model.cfg.embedding_size)
        assert torch.allclose(embedding.norm(dim=1), torch.ones(2), atol=1e-5)


# --- what `dvc repro` wrote, a fresh clone, the copies themselves -------------------------------


def test_fresh_clone_prepares_the_data_again(repo, tmp_path, monkeypatch):
    """A clone has dvc.lock but neither the DVC cache nor data/raw: `dvc repro` must run the
    download stage (its manifest is DVC-cached, not in git) instead of failing in index."""
    clone = tmp_path / "clone"
    run(repo, "git", "clone", "-q", str(repo), str(clone))
    assert not (clone / "data" / "download.json").exists()
    output = run(clone, "dvc", "repro", "index")
    assert ran(output) == {CHECK, "download", "index"}
    assert (clone / "data" / "raw" / "synthetic").is_dir()
    monkeypatch.chdir(clone)  # the index names data/raw/synthetic, relative to the project
    table = load_video_index(Path("data/index/synthetic/split_0.json"))
    assert table.shape[0] > 0 and table["frames"][0][0].is_file()
    assert str(table["frames"][0][0]).startswith("data/raw/synthetic/")  # not the original's


def test_repro_runs_every_stage_and_writes_the_outputs(reproduced, repo, tmp_path):
    """`dvc repro` of the tiny pipeline: every stage runs once; the per-split results, the
    headline (`dvc metrics show`), the Fig. 3 pictures, the CMC and loss curves and the summary
    pictures are where dvc.yaml says, and `dvc plots show` renders them offline."""
    assert ran(reproduced.output) == {CHECK, "download", "index", "pretrain", "union_cnn@0",
                                      "union_heads@0", "summary",
                                      *(f"{s}@{RUN}" for s in PER_SPLIT)}
    assert "Results (percent" in reproduced.output  # the summary table is printed
    data, model, synthetic = TINY["data"], TINY["model"], TINY["synthetic"]

    evaluation = json.loads((repo / "metrics" / "eval" / f"{RUN}.json").read_text())
    assert (evaluation["dataset"], evaluation["split"], evaluation["seed"]) == ("synthetic", 0, 0)
    assert list(evaluation["models"]) == list(MODELS)
    for name in MODELS:
        for protocol in ("official", "torchreid"):
            m = evaluation["models"][name][protocol]
            assert set(m) == {"rank1", "rank5", "rank10", "rank20", "mAP", "num_valid_queries",
                              "num_queries", "rank1_lo", "rank1_hi", "mAP_lo", "mAP_hi"}
            assert m["rank1_lo"] <= m["rank1"] <= m["rank1_hi"]
            assert m["mAP_lo"] <= m["mAP"] <= m["mAP_hi"]
            assert 0.0 <= m["rank1"] <= m["rank5"] <= m["rank10"] <= m["rank20"] <= 1.0
            assert 0.0 < m["mAP"] <= 1.0
            assert m["num_queries"] == synthetic["test_identities"] * synthetic["query_cameras"]
    cells = np.prod(grid_size(data["height"], data["width"], model["last_stride"]))
    assert set(evaluation["attention"]) == {"spatial", "temporal", "joint"}
    for stats in evaluation["attention"].values():
        assert 0.0 <= stats["overlap"] <= 1.0 and 0.0 <= stats["entropy"] <= np.log(cells) + 1e-9
        # the ground truth of the synthetic frames: where the heads look
        assert stats["person"] + stats["occluder"] + stats["background"] == pytest.approx(1.0)
        # a part counts only under a head with 0.2 of its mass on the person: a tiny run may have
        # none (what the heads learn is the benchmark's business, not this test's)
        assert 0 <= stats["parts_covered"] <= model["K"]
        assert 0.0 < stats["person_uniform"] < 1.0  # the person fills part of every frame
        assert stats["frames_measured"] > 0 and stats["frames_missing"] == 0

    # the floor, the ceilings and the cell probe of the same test set, on model.N frames and the
    # cache's grid
    measured = json.loads((repo / "metrics" / "references" / f"{RUN}.json").read_text())
    assert measured["references"]["frames_per_tracklet"] == model["N"]
    assert set(measured["references"]) >= {"chance", "histogram_frame",
                                           "histogram_person_greyworld"}
    assert np.shape(measured["cell_probe"]["cell_rank1"]) == tuple(
        grid_size(data["height"], data["width"], model["last_stride"]))

    headline = json.loads((repo / "metrics" / "results" / "synthetic.json").read_text())
    assert sorted(p.name for p in (repo / "metrics" / "results").iterdir()) == ["synthetic.json"]
    official = {name: evaluation["models"][name]["official"] for name in MODELS}
    assert headline == {
        **{metric: {short: round(100 * official[name][key], 1) for name, short in MODELS.items()}
           for metric, key in (("R1", "rank1"), ("mAP", "mAP"))},
        "ci": {metric: round(100 * max((m[f"{key}_hi"] - m[f"{key}_lo"]) / 2
                                       for m in official.values()), 1)
               for metric, key in (("R1", "rank1"), ("mAP", "mAP"))}}
    shown = next(iter(json.loads(run(repo, "dvc", "metrics", "show", "--json",
                                     stdout_only=True)).values()))["data"]
    assert shown["metrics/results/synthetic.json"] == {"data": headline}
    live = {path for path in shown if path.startswith("metrics/live/")}  # the DVCLive summaries
    assert live == {f"metrics/live/{folder.format(run=RUN)}/metrics.json"
                    for folder in LIVE_FOLDERS.values()}
    assert set(shown) == {"metrics/results/synthetic.json", *live}

    figures = sorted((repo / "metrics" / "plots" / "attention" / RUN).glob("*.png"))
    assert len(figures) == TINY["evaluate"]["attention_figures"]  # of the 4 queries
    K, N, H, W = model["K"], model["N"], data["height"], data["width"]
    with Image.open(figures[0]) as image:  # frame, parts and K heads x N rows, title, legend
        assert image.mode == "P"  # a palette PNG
        assert image.size == (round((K + 2) * INCHES_PER_COLUMN * DPI),
                              round((N * H * INCHES_PER_COLUMN / W + 0.5 + LEGEND_INCHES) * DPI))
    summary_pngs = {p.name for p in (repo / "metrics" / "plots" / "summary").iterdir()}
    assert summary_pngs == {"cmc_synthetic.png", f"loss_{RUN}.png"}
    cmc = (repo / "metrics" / "plots" / "cmc" / f"{RUN}.csv").read_text().splitlines()
    assert cmc[0].startswith("rank,baseline_official") and len(cmc) == 1 + 20
    for name, folder in LIVE_FOLDERS.items():  # the DVCLive folders (pipeline.curves)
        live = repo / "metrics" / "live" / folder.format(run=RUN)
        spatial = name.startswith(("attention", "joint"))
        maps = {"map_entropy", "map_saturated"} if spatial else set()
        assert {f.stem for f in (live / "plots" / "metrics" / "batch").glob("*.tsv")} == {
            "lr", "loss", "id_loss", "diversity", *maps}, name
        assert {f.stem for f in (live / "plots" / "metrics" / "mean").glob("*.tsv")} == {
            "loss", "id_loss", "diversity", *maps}, name
        summary = json.loads((live / "metrics.json").read_text())
        steps = pd.read_csv(live / "plots" / "metrics" / "batch" / "loss.tsv", sep="\t")
        assert summary["step"] == steps["step"].iloc[-1] == len(steps), name
        assert summary["epoch"] >= 1 and set(summary["mean"]) == {
            "loss", "id_loss", "diversity", *maps}, name
    assert not (repo / "scratch" / "pretrain" / "last.pt").exists()  # resume file dropped

    plots = json.loads(run(repo, "dvc", "plots", "show", "--json", stdout_only=True))
    assert any("cmc" in key for key in plots["data"])
    assert {item["type"] for key, items in plots["data"].items() if key.endswith(".png")
            for item in items} == {"image"}
    run(repo, "dvc", "plots", "show", "-o", str(tmp_path / "plots-html"))  # the offline template
    page = (tmp_path / "plots-html" / "index.html").read_text()
    assert "cdn.jsdelivr" not in page and "vegaEmbed" in page and "vega-lite 5.2.0" in page


def test_a_copy_of_the_reproduced_repository_is_clean_and_its_own(reproduced, repo):
    """What every test here starts from: the copy is up to date for DVC and git, and no file of
    it is the shared repository's (a hard link or a symbolic link into it would let one test
    change another's outputs or DVC cache)."""
    assert up_to_date(repo)
    assert run(repo, "git", "status", "--porcelain", stdout_only=True) == ""
    shared = {(s.st_dev, s.st_ino) for p in reproduced.path.rglob("*")
              if p.is_file() and not p.is_symlink() for s in [p.stat()]}
    ours = [p for p in repo.rglob("*") if p.is_file() or p.is_symlink()]
    assert ours and not [p for p in ours if not p.is_symlink()
                         and (p.stat().st_dev, p.stat().st_ino) in shared]
    assert not [p for p in ours if p.is_symlink()
                and not p.resolve().is_relative_to(repo.resolve())]
    # DVC's outputs are still hard links to the copy's own cache, as dvc checkout left them
    model = repo / "data" / "models" / RUN / "joint.pt"
    cached = repo / ".dvc" / "cache" / "files" / "md5" / (digest := md5_of(model))[:2] / digest[2:]
    assert model.stat().st_ino == cached.stat().st_ino


# --- a refused value costs no result; inputs DVC cannot see ---------------------------------------


def committed_results_untouched(repo: Path) -> None:
    """Nothing git keeps of the last run (metrics, plots, dvc.lock) was deleted or changed."""
    assert run(repo, "git", "status", "--porcelain", "--", "metrics", "dvc.lock",
               stdout_only=True) == ""
    assert (repo / "metrics" / "eval" / f"{RUN}.json").is_file()
    assert list((repo / "metrics" / "plots" / "attention" / RUN).glob("*.png"))


def test_a_refused_value_fails_in_one_line_before_any_output_is_removed(repo):
    """`dvc exp run -S evaluate.max_rank=0`: the check stage refuses it before DVC removes the
    evaluate stage's outputs (metrics and plots kept by git, not in DVC's cache); a misspelt key
    on an up-to-date pipeline fails `dvc repro` too, and nothing runs."""
    result = subprocess.run(["dvc", "exp", "run", "-S", "evaluate.max_rank=0"], cwd=repo,
                            env=clean_env(repo.parent), capture_output=True, text=True,
                            check=False)
    assert result.returncode != 0
    errors = [line for line in result.stdout.splitlines() + result.stderr.splitlines()
              if line.startswith("error: ")]
    # (-S wrote the value into the workspace's params.yaml, where it stays: the refusal says so)
    assert errors == ["error: params.yaml: evaluate.max_rank: expected a value >= 1, got 0 "
                      f"({WORKSPACE_HINT})"]
    assert "Traceback" not in result.stderr and ran(result.stdout) == {CHECK}
    committed_results_untouched(repo)

    run(repo, "git", "checkout", "--", "params.yaml")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["augmnet"] = True
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = subprocess.run(["dvc", "repro"], cwd=repo, env=clean_env(repo.parent),
                            capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "unknown key data.augmnet" in result.stderr
    assert ran(result.stdout) == {CHECK}
    committed_results_untouched(repo)


def exp_run_refused(repo: Path, override: str) -> str:
    """`dvc exp run -S <override>` in ``repo``: refused by the check stage alone; its one line."""
    result = subprocess.run(["dvc", "exp", "run", "-S", override], cwd=repo,
                            env=clean_env(repo.parent), capture_output=True, text=True,
                            check=False)
    errors = [line for line in result.stdout.splitlines() + result.stderr.splitlines()
              if line.startswith("error: ")]
    assert result.returncode != 0 and len(errors) == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and ran(result.stdout) == {CHECK}
    return errors[0]


def test_an_init_from_the_pipeline_or_a_set_without_sources_costs_nothing(repo):
    """Each refused by the check stage before DVC deletes pretrain.pt or data/download.json; the
    value stays in the workspace's params.yaml, so the next `dvc exp run -S` of another key is
    refused for it again, and both refusals say where it lives and how to restore the file."""
    for override, expected in (
            ("data.video=[mars]", "error: dataset 'mars' is not available: get bbox_train.zip"),
            ("model.init=data/models/pretrain.pt",
             "error: model.init: data/models/pretrain.pt is an output of this pipeline")):
        first = exp_run_refused(repo, override)
        assert first.startswith(expected) and first.endswith(f"({WORKSPACE_HINT})"), first
        assert (repo / "data" / "models" / "pretrain.pt").is_file()
        assert (repo / "data" / "download.json").is_file()
        committed_results_untouched(repo)
        assert exp_run_refused(repo, "model.K=2") == first  # the lingering value, named again
        run(repo, "git", "checkout", "--", "params.yaml")
    assert ran(run(repo, "dvc", "repro")) == {CHECK}  # nothing to make again


def test_frames_added_to_data_raw_rerun_download_and_index_only(repo):
    """data/raw is not a DVC dependency (too many files); the check stage's fingerprint of it
    is, so a file added there re-runs download and index, and nothing after them when the index
    does not change (this file is not listed in the set's name lists, so no stage reads it)."""
    extra = repo / "data" / "raw" / "synthetic" / "video" / "bbox_test" / "stray.jpg"
    extra.write_bytes(b"not listed anywhere")
    assert ran(run(repo, "dvc", "repro")) == {CHECK, "download", "index"}
    assert up_to_date(repo)


def test_frames_written_over_at_the_same_paths_rerun_every_stage_that_reads_them(repo,
                                                                                monkeypatch):
    """A video frame replaced in data/raw (same path; the index's paths and ids unchanged): the
    index records the frames' content, so once download and index have run, every stage that
    reads the set's frames is out of date, not only download and index; the attention stage,
    which reads the cache, follows only if the cache changes. Pretrain reads the image sets'
    index alone (data/image_index), whose frames did not change: it stays up to date."""
    monkeypatch.chdir(repo)  # the index records the root relative to the project
    table = load_video_index(Path("data/index/synthetic/split_0.json"))
    frames = [Path(f) for f in table["frames"].explode()]
    shutil.copy(frames[1], frames[0])
    assert ran(run(repo, "dvc", "repro", "index")) == {CHECK, "download", "index"}
    status = json.loads(run(repo, "dvc", "status", "--json", stdout_only=True) or "{}")
    assert set(out_of_date(status)) == {"union_cnn@0", f"finetune@{RUN}",
                                        f"cache@{RUN}", f"baseline@{RUN}", "union_heads@0",
                                        f"joint@{RUN}", f"evaluate@{RUN}", f"references@{RUN}"}


def test_evaluate_refuses_the_index_of_another_split(repo):
    """The results file records the split it is given: an index file of another split (or set)
    is refused in one line, before anything is scored."""
    stage = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]["evaluate"]
    command = stage["cmd"].replace("${item.dataset}", "synthetic").replace("${item.split}", "0")
    command = command.replace("--split 0", "--split 5").replace("metrics/", "other/")
    result = subprocess.run([sys.executable, *command.split()[1:]], cwd=repo,
                            env=clean_env(repo.parent), capture_output=True, text=True,
                            check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: data/index/synthetic/split_0.json: indexes split 0, but --split is 5: pass the "
        "split the index file was made for, or its own index file")
    assert not (repo / "other").exists()


INIT_RECORD = output("check", "data/inputs/init")  # its record of the file behind model.init


def test_another_file_behind_the_same_model_init_reruns_pretraining(repo):
    """model.init names a file; DVC sees the params value, not the file: the check stage records
    its sha256, on which pretrain depends. (The lock is made to record the first file with
    `dvc commit`, without training: what DVC decides depends on the records, not on the model.)"""
    weights = repo / "weights" / "init.pt"
    weights.parent.mkdir()
    shutil.copy(repo / "data" / "models" / "pretrain.pt", weights)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["model"]["init"] = "weights/init.pt"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran(run(repo, "dvc", "repro", "check")) == {CHECK}
    assert not up_to_date(repo, "pretrain")  # a new value
    run(repo, "dvc", "commit", "-f", "pretrain")
    assert up_to_date(repo, "pretrain")
    shutil.copy(repo / "data" / "models" / RUN / "finetune.pt", weights)  # same path, new file
    assert up_to_date(repo, "pretrain")  # the record is the check stage's, made when it runs
    assert ran(run(repo, "dvc", "repro", "check")) == {CHECK}
    status = json.loads(run(repo, "dvc", "status", "--json", "pretrain", stdout_only=True))
    assert out_of_date(status) == ["pretrain"]
    [changed] = [entry["changed deps"] for entry in status["pretrain"]
                 if isinstance(entry, dict) and "changed deps" in entry]
    assert changed == {INIT_RECORD: "modified"}  # the check stage's record alone
