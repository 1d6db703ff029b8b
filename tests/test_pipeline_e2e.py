"""The whole DVC pipeline on a tiny configuration, in a throw-away git repository: `dvc repro`,
then `dvc exp run -S model.K=2` (which must re-run only the stages K affects), then
`dvc metrics diff`; an experiment in a temporary workspace (where the extracted frames are not
copied); and a fresh clone, which must prepare the data again rather than trust the lock file."""

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

from pipeline.bench import tiny_repo
from pipeline.datasets.common import load_video_index
from pipeline.train import load_exported

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

PER_SPLIT = ("finetune", "cache", "attention", "joint", "evaluate")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A copy of the project's pipeline (code, dvc.yaml, DVC config) with tiny params, committed
    (the same throw-away repository the benchmark's experiment-overhead row uses)."""
    work = tmp_path_factory.mktemp("e2e") / "repo"
    tiny_repo(work)
    return work


def sh(work: Path, *cmd: str, stdout_only: bool = False, extra_env: dict | None = None) -> str:
    env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": str(work.parent),
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PYTHONDONTWRITEBYTECODE": "1",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), **(extra_env or {})}
    result = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, check=False)
    if result.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-3000:]}")
    return result.stdout if stdout_only else result.stdout + result.stderr


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_repro_then_k_experiment(repo):
    output = sh(repo, "dvc", "repro")
    assert ran(output) == {"download", "index", "pretrain", "summary",
                           *(f"{s}@synthetic-0" for s in PER_SPLIT)}
    assert "Results (percent" in output  # the summary table is printed

    evaluation = json.loads((repo / "metrics" / "eval" / "synthetic-0.json").read_text())
    assert (evaluation["dataset"], evaluation["split"], evaluation["seed"]) == ("synthetic", 0, 0)
    for model in ("baseline", "spatial", "temporal", "joint"):
        for protocol in ("official", "torchreid"):
            m = evaluation["models"][model][protocol]
            assert set(m) == {"rank1", "rank5", "rank10", "rank20", "mAP", "num_valid_queries",
                              "num_queries"}
            assert 0.0 <= m["rank1"] <= m["rank5"] <= m["rank20"] <= 1.0
            assert m["num_queries"] == 4
    for model in ("spatial", "temporal", "joint"):
        stats = evaluation["attention"][model]
        assert 0.0 <= stats["overlap"] <= 1.0 and 0.0 <= stats["entropy"] <= np.log(4 * 2) + 1e-9
    figures = sorted((repo / "metrics" / "plots" / "attention" / "synthetic-0").glob("*.png"))
    assert len(figures) == 3  # evaluate.attention_figures of the 4 queries
    with Image.open(figures[0]) as image:  # 1 + K = 4 columns x N = 3 rows of 32x16 frames,
        assert image.size == (520, 830)  # 1.3 in per column, 100 dpi, plus the title
    summary_pngs = {p.name for p in (repo / "metrics" / "plots" / "summary").iterdir()}
    assert summary_pngs == {"cmc_synthetic.png", "loss_synthetic-0.png"}
    results = json.loads((repo / "metrics" / "results.json").read_text())["results"]
    assert results["synthetic"]["joint"]["official"]["rank1"]["mean"] == \
        evaluation["models"]["joint"]["official"]["rank1"]
    cmc = (repo / "metrics" / "plots" / "cmc" / "synthetic-0.csv").read_text().splitlines()
    assert cmc[0].startswith("rank,baseline_official") and len(cmc) == 1 + 20
    for curve in ("pretrain.csv", "finetune/synthetic-0.csv", "attention/synthetic-0/spatial.csv",
                  "attention/synthetic-0/temporal.csv", "joint/synthetic-0.csv"):
        lines = (repo / "metrics" / "plots" / "loss" / curve).read_text().splitlines()
        assert lines[0] == "epoch,step,lr,loss,id_loss,diversity" and len(lines) >= 2
    plots = json.loads(sh(repo, "dvc", "plots", "show", "--json", stdout_only=True))
    assert any("cmc" in key for key in plots["data"])
    assert {item["type"] for key, items in plots["data"].items() if key.endswith(".png")
            for item in items} == {"image"}
    sh(repo, "dvc", "plots", "show", "-o", "plots-html")  # the offline page template
    page = (repo / "plots-html" / "index.html").read_text()
    assert "cdn.jsdelivr" not in page and "vegaEmbed" in page and "vega-lite 5.2.0" in page
    shutil.rmtree(repo / "plots-html")
    assert not (repo / "scratch" / "pretrain" / "last.pt").exists()  # resume file dropped

    # the K experiment re-runs only what K affects
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-q", "-m", "baseline run")
    output = sh(repo, "dvc", "exp", "run", "-S", "model.K=2")
    assert ran(output) == {"attention@synthetic-0", "joint@synthetic-0", "evaluate@synthetic-0",
                           "summary"}
    heads = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert heads["attention@synthetic-0"]["params"]["params.yaml"]["model.K"] == 2
    assert heads["cache@synthetic-0"]["params"]["params.yaml"]["cache"]["batch_size"] == 16
    diff = sh(repo, "dvc", "metrics", "diff", "--all")
    assert "metrics/eval/synthetic-0.json" in diff and "models.temporal.official.rank1" in diff

    # a temporary workspace (as for queued experiments) holds no data/raw: the joint and evaluate
    # stages read the project's frames
    output = sh(repo, "dvc", "exp", "run", "--temp", "-n", "tiny-d4", "-S", "model.d=4")
    assert ran(output) == {"attention@synthetic-0", "joint@synthetic-0", "evaluate@synthetic-0",
                           "summary"}
    shown = json.loads(sh(repo, "dvc", "exp", "show", "--json", stdout_only=True))
    assert "tiny-d4" in json.dumps(shown)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_fresh_clone_prepares_the_data_again(repo, tmp_path, monkeypatch):
    """A clone has dvc.lock but neither the DVC cache nor data/raw: `dvc repro` must run the
    download stage (its manifest is DVC-cached, not in git) instead of failing in index."""
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-q", "--allow-empty", "-m", "state to clone")
    clone = tmp_path / "clone"
    sh(repo, "git", "clone", "-q", str(repo), str(clone))
    assert not (clone / "data" / "download.json").exists()
    output = sh(clone, "dvc", "repro", "index")
    assert ran(output) == {"download", "index"}
    assert (clone / "data" / "raw" / "synthetic").is_dir()
    monkeypatch.chdir(clone)  # the index names data/raw/synthetic, relative to the project
    table = load_video_index(Path("data/index/synthetic/split_0.json"))
    assert table.shape[0] > 0 and table["frames"][0][0].is_file()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_queued_ablation_and_report(repo):
    """One Table 1 experiment through DVC's queue (`pipeline.experiments run --only`), then the
    report: that row has our numbers, the rows not run are shown as missing."""
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-q", "--allow-empty", "-m", "baseline for the ablations")
    output = sh(repo, sys.executable, "-m", "pipeline.experiments", "run", "table1", "--only",
                "t1-s0-maxpool")
    assert "queueing t1-s0-maxpool: model.temporal_pooling=max" in output
    shown = json.loads(sh(repo, "dvc", "exp", "show", "--json", stdout_only=True))
    head = sh(repo, "git", "rev-parse", "HEAD").strip()
    names = {run["name"]: run for rev in shown if rev["rev"] == head
             for exp in rev["experiments"] or [] for run in exp["revs"]}
    assert "t1-s0-maxpool" in names and names["t1-s0-maxpool"]["error"] is None
    params = names["t1-s0-maxpool"]["data"]["params"]["params.yaml"]["data"]
    assert params["model"]["temporal_pooling"] == "max"

    sh(repo, sys.executable, "-m", "pipeline.report", "--params", "params.yaml", "--out",
       "metrics/report.md", "--chart", "metrics/plots/table1.png")
    report = (repo / "metrics" / "report.md").read_text()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in report.splitlines()
            if line.startswith("| SpaAtn") or line.startswith("| Baseline")}
    metrics = names["t1-s0-maxpool"]["data"]["metrics"]["metrics/results.json"]["data"]
    rank1 = metrics["results"]["synthetic"]["temporal"]["official"]["rank1"]["mean"]
    assert f"{100 * rank1:.1f}" in rows["SpaAtn+Q+MaxPool"]
    assert "t1-s0-maxpool" in rows["SpaAtn+Q+MaxPool"]
    assert "missing" in rows["SpaAtn"] and "0.0" not in rows["SpaAtn"].split(" | ")[1]
    assert "baseline commit" in rows["Baseline"]
    with Image.open(repo / "metrics" / "plots" / "table1.png") as image:
        assert image.size == (900, 400)  # one dataset panel


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_attention_stage_under_torchrun(repo, tmp_path):
    """The attention stage started by torchrun with 2 CPU processes (gloo), as
    `runtime.launcher: torchrun --nproc_per_node=2` starts it: rank 0 alone writes the models
    and the loss curves, whose steps are the global batches (not twice as many), and the models
    are usable. (Equality with one process is tests/test_distributed.py's, with frozen
    BatchNorm; here the embedding's BatchNorm normalises each rank's half batch.)"""
    out = tmp_path / "ddp"
    sh(repo, str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m",
       "pipeline.stages.attention", "--params", "params.yaml",
       "--cache", "data/cache/synthetic-0.h5",
       "--backbone", "data/models/synthetic-0/finetune.pt",
       "--spatial", str(out / "spatial.pt"), "--temporal", str(out / "temporal.pt"),
       "--plots", str(out / "plots"), "--scratch", str(out / "scratch"))
    assert sorted(p.name for p in out.iterdir()) == ["plots", "scratch", "spatial.pt",
                                                     "temporal.pt"]
    assert list((out / "scratch").iterdir()) == []  # resume checkpoints dropped at the end
    for phase in ("spatial", "temporal"):
        ours = pd.read_csv(out / "plots" / f"{phase}.csv")
        single = pd.read_csv(repo / "metrics" / "plots" / "loss" / "attention" / "synthetic-0"
                             / f"{phase}.csv")
        assert list(ours["step"]) == list(single["step"])  # one row per global batch
        assert ours["loss"].notna().all() and (ours["loss"] > 0).all()
        model, payload = load_exported(out / f"{phase}.pt")
        assert payload["stage"] == f"attention.{phase}"
        with torch.no_grad():
            grids = torch.randn(2, model.cfg.N, model.in_channels, 8, 4)
            embedding = model(grids).embedding
        assert embedding.shape == (2, model.cfg.embed_dim)
        assert torch.allclose(embedding.norm(dim=1), torch.ones(2), atol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_cache_and_evaluate_sharded_under_torchrun(repo, tmp_path):
    """The cache and evaluate stages started as dvc.yaml starts them (pipeline.launch) with
    `runtime.launcher: torchrun --standalone --nproc_per_node=$NPROC`, NPROC=2 CPU processes: the
    ranks share the frames (and the test clips), rank 0 writes, and the outputs are those of the
    workspace's single-process run: the same grids in the same order, the same metrics."""
    assert "Data and pipelines are up to date" in sh(repo, "dvc", "status")  # the reference
    index = "data/index/synthetic/split_0.json"
    models = Path("data/models/synthetic-0")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["runtime"]["launcher"] = "torchrun --standalone --nproc_per_node=$NPROC"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    launch = [str(VENV_BIN / "python"), "-m", "pipeline.launch"]
    common = ["--params", str(tmp_path / "params.yaml"), "--index", index]
    out = tmp_path / "ddp"
    logs = sh(repo, *launch, "pipeline.stages.cache", *common,
              "--model", str(models / "finetune.pt"), "--out", str(out / "cache.h5"),
              extra_env={"NPROC": "2"})
    logs += sh(repo, *launch, "pipeline.stages.evaluate", *common,
               "--cache", str(out / "cache.h5"), "--models", str(models),
               "--out", str(out / "eval.json"), "--cmc", str(out / "cmc.csv"),
               "--figures", str(out / "figures"), extra_env={"NPROC": "2"})
    assert logs.count("rank 1 of 2") == 2, logs[-2000:]  # both stages ran as 2 ranks
    assert sorted(p.name for p in out.iterdir()) == ["cache.h5", "cmc.csv", "eval.json",
                                                     "figures"]  # no rank's leftovers
    with h5py.File(repo / "data/cache/synthetic-0.h5") as a, h5py.File(out / "cache.h5") as b:
        assert dict(a.attrs) == dict(b.attrs)
        for subset in ("train", "test"):
            for key in ("offsets", "frame_index", "pids", "camids", "is_query"):
                np.testing.assert_array_equal(a[subset][key][:], b[subset][key][:])
            # the same batches, one process each: equal up to thread-count float effects
            np.testing.assert_allclose(a[subset]["grids"][:].astype(np.float32),
                                       b[subset]["grids"][:].astype(np.float32),
                                       rtol=2e-3, atol=2e-3)
            assert np.abs(b[subset]["grids"][:]).sum(axis=(1, 2, 3)).min() > 0  # none left 0
    ours = json.loads((out / "eval.json").read_text())
    theirs = json.loads((repo / "metrics/eval/synthetic-0.json").read_text())
    for model, per_protocol in theirs["models"].items():
        for protocol, metrics in per_protocol.items():
            assert ours["models"][model][protocol] == pytest.approx(metrics, abs=1e-6), model
    assert ours["attention"].keys() == theirs["attention"].keys()
    for model, summary in theirs["attention"].items():
        assert ours["attention"][model] == pytest.approx(summary, rel=1e-3, abs=1e-12), model
    assert (sorted(p.name for p in (out / "figures").iterdir())
            == sorted(p.name for p in (repo / "metrics/plots/attention/synthetic-0").iterdir()))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_reruns_give_byte_identical_outputs_whatever_the_loader_workers(repo, tmp_path):
    """Same params and seed, run again: the same metrics files byte for byte; and the attention
    stage trained with 2 loader workers instead of none gives the same heads. (A training stage
    run again gives the same model byte for byte: the SIGKILL test below.)"""
    files = [repo / "metrics/eval/synthetic-0.json", repo / "metrics/plots/cmc/synthetic-0.csv"]
    first = [md5_of(f) for f in files]
    output = sh(repo, "dvc", "repro", "-f", "-s", "evaluate@synthetic-0")
    assert ran(output) == {"evaluate@synthetic-0"}
    assert [md5_of(f) for f in files] == first
    evaluation = json.loads(files[0].read_text())
    assert (evaluation["seed"], evaluation["split"]) == (0, 0)  # recorded beside the metrics

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["num_workers"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    models = repo / "data" / "models" / "synthetic-0"
    sh(repo, str(VENV_BIN / "python"), "-m", "pipeline.stages.attention",
       "--params", str(tmp_path / "params.yaml"), "--cache", "data/cache/synthetic-0.h5",
       "--backbone", str(models / "finetune.pt"), "--spatial", str(tmp_path / "spatial.pt"),
       "--temporal", str(tmp_path / "temporal.pt"), "--plots", str(tmp_path / "plots"),
       "--scratch", str(tmp_path / "scratch"))
    for phase in ("spatial", "temporal"):
        ours, _ = load_exported(tmp_path / f"{phase}.pt")
        theirs, _ = load_exported(models / f"{phase}.pt")
        for name, value in theirs.state_dict().items():
            assert torch.equal(ours.state_dict()[name], value), f"{phase}: {name}"


# --- interruption (these run last: they change the repository's params) -------------------------


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def lock_md5(repo: Path, stage: str, out: str) -> str:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"][stage]
    return next(o["md5"] for o in lock["outs"] if o["path"] == out)


def start(repo: Path, *cmd: str) -> subprocess.Popen:
    """``cmd`` in its own process group (so that a kill reaches DVC and the stage it runs)."""
    env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": str(repo.parent),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    return subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE,
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


@pytest.fixture(scope="module")
def longer_joint(repo) -> dict[str, str]:
    """The joint stage made 3 epochs long (so that it can be killed after its first), reproduced
    uninterrupted: the reference md5s."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["joint"].update({"epochs": 3, "lr_step_epoch": 2})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    output = sh(repo, "dvc", "repro", "joint@synthetic-0")
    assert ran(output) == {"joint@synthetic-0"}
    return {"joint": lock_md5(repo, "joint@synthetic-0", "data/models/synthetic-0/joint.pt")}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_sigkill_then_dvc_repro_resumes_to_the_uninterrupted_result(repo, longer_joint):
    """SIGKILL to `dvc repro` (and the joint stage it runs) after the stage's first epoch;
    `dvc repro` again re-runs only that stage, which resumes from its checkpoint and writes the
    uninterrupted run's model byte for byte, so nothing downstream of it would run again and the
    metrics are the uninterrupted run's. (A killed cache stage: tests/test_features.py.)"""
    stage, partial = "joint@synthetic-0", repo / "scratch" / "joint" / "synthetic-0" / "last.pt"
    process = start(repo, "dvc", "repro", "-f", "-s", stage)
    wait_for(lambda: [p for p in [partial] if p.exists() and p.stat().st_size], process)
    os.killpg(process.pid, signal.SIGSTOP)  # frozen at once, then killed
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    output = sh(repo, "dvc", "repro", stage)
    assert ran(output) == {stage}
    assert "resuming after epoch 1" in output
    assert not partial.exists()  # dropped once the model is written
    assert lock_md5(repo, stage, "data/models/synthetic-0/joint.pt") == longer_joint["joint"]
    assert "Data and pipelines are up to date" in sh(repo, "dvc", "status", stage)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_sigterm_stops_a_training_stage_with_a_checkpoint(repo, longer_joint, tmp_path):
    """SIGTERM to the joint stage: it finishes its step, writes the resume checkpoint, says so and
    exits with 128 + 15; run again, it resumes and writes the uninterrupted run's model."""
    out, scratch = tmp_path / "joint.pt", tmp_path / "scratch"
    cmd = [str(VENV_BIN / "python"), "-m", "pipeline.stages.joint", "--params", "params.yaml",
           "--index", "data/index/synthetic/split_0.json",
           "--backbone", "data/models/synthetic-0/finetune.pt",
           "--heads", "data/models/synthetic-0/temporal.pt", "--out", str(out),
           "--plot", str(tmp_path / "joint.csv"), "--scratch", str(scratch)]
    process = start(repo, *cmd)
    wait_for(lambda: list(scratch.glob("last.pt")), process)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 128 + signal.SIGTERM, output
    assert re.search(r"stopped: joint: stopped (in|after) epoch \d/3", output), output
    assert "Traceback" not in output
    assert not out.exists() and (scratch / "last.pt").exists()
    output = sh(repo, *cmd)
    assert "resuming" in output
    assert md5_of(out) == longer_joint["joint"]
