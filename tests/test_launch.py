"""pipeline/launch.py: how dvc.yaml starts the stages that run models. runtime.launcher is read
from params.yaml and turned into an argument list (no shell), so no params value can run a
command of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed.run
import yaml
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from pipeline import launch
from pipeline.params import ParamsError

ROOT = Path(__file__).resolve().parents[1]


def params_with(tmp_path: Path, launcher: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"runtime": {"launcher": launcher}}))
    return path


def test_torchrun_options_become_arguments_with_variables_from_the_environment():
    argv = launch.torchrun_argv("torchrun --nnodes=2 --nproc_per_node=$NPROC "
                                "--rdzv_endpoint=${HOST}:29500", "pipeline.stages.joint",
                                ["--params", "p.yaml"], {"NPROC": "4", "HOST": "node1"})
    assert argv == [sys.executable, "-m", "torch.distributed.run", "--nnodes=2",
                    "--nproc_per_node=4", "--rdzv_endpoint=node1:29500", "-m",
                    "pipeline.stages.joint", "--params", "p.yaml"]


def test_an_unset_variable_is_named():
    with pytest.raises(ParamsError, match=r"reads \$NPROC, which is not set"):
        launch.torchrun_argv("torchrun --nproc_per_node=$NPROC", "pipeline.stages.cache", [], {})


def test_torchrun_runs_in_this_process(tmp_path, monkeypatch):
    """torchrun's own main gets what `python -m torch.distributed.run` would get."""
    params = params_with(tmp_path, "torchrun --standalone --nproc_per_node=$NPROC")
    monkeypatch.setenv("NPROC", "2")
    calls = []
    monkeypatch.setattr(torch.distributed.run, "main", calls.append)
    launch.main(["pipeline.stages.cache", "--params", str(params), "--out", "x.h5"])
    assert calls == [["--standalone", "--nproc_per_node=2", "-m", "pipeline.stages.cache",
                      "--params", str(params), "--out", "x.h5"]]


OPTIONS = launch.EXPECTED_OPTIONS


@pytest.mark.parametrize(("launcher", "problem"), [
    # torchrun: an AssertionError traceback, a ValueError traceback, its usage text
    ("torchrun --nproc_per_node=0", "--nproc_per_node=0: expected a number of processes per node "
                                    ">= 1, or one of auto, cpu, gpu, xpu"),
    ("torchrun --nproc_per_node=abc", "--nproc_per_node=abc: expected a number of processes per "
                                      "node >= 1, or one of auto, cpu, gpu, xpu"),
    ("torchrun --max_restarts=abc", "argument --max-restarts/--max_restarts: invalid int value: "
                                    f"'abc'; {OPTIONS}"),
    ("torchrun --max_restarts=-1", "--max_restarts=-1: expected a number >= 0"),
    ("torchrun --nnodes=0", "--nnodes=0: expected a number of nodes >= 1, or MIN:MAX (elastic) "
                            "with 1 <= MIN <= MAX"),
    ("torchrun --nnodes=4:2", "--nnodes=4:2: expected a number of nodes >= 1, or MIN:MAX "
                              "(elastic) with 1 <= MIN <= MAX"),
    ("torchrun --nnodes=two", "--nnodes=two: expected a number of nodes >= 1, or MIN:MAX "
                              "(elastic) with 1 <= MIN <= MAX"),
    ("torchrun --nnodes=2 --node_rank=2", "--node_rank=2: expected a rank from 0 to 1 "
                                          "(--nnodes - 1)"),
    ("torchrun --node_rank=x", f"argument --node-rank/--node_rank: invalid int value: 'x'; "
                               f"{OPTIONS}"),
    ("torchrun --master_port=70000", "--master_port=70000: expected a port from 0 to 65535"),
    ("torchrun --master_port=port", "argument --master-port/--master_port: invalid int value: "
                                    f"'port'; {OPTIONS}"),
    ("torchrun --monitor_interval=0", "--monitor_interval=0.0: expected a number of seconds > 0"),
    ("torchrun --nproc_per_node=2 --frobnicate=1", f"unrecognized arguments: --frobnicate=1; "
                                                   f"{OPTIONS}"),
    ("torchrun --nproc=2", "ambiguous option: --nproc=2 could match --nproc-per-node, "
                           f"--nproc_per_node; {OPTIONS}"),
    ("torchrun --no-python", "--no_python: expected neither --no_python nor --run_path, since "
                             "pipeline.launch starts the stage as a module (-m)"),
    ("torchrun --help", "--help and --print-completion print text and exit instead of starting "
                        "the stage"),
    ("torchrun --redirects=9", "torchrun would stop on it as it starts (ValueError: 9 does not "
                               "match: <^[0123]$> or <^(\\d:[0123],)*(\\d:[0123])$>)"),
])
def test_options_torchrun_would_refuse_or_fail_on_are_one_params_error(launcher, problem,
                                                                         capsys):
    """torchrun's own parser reads the options (and its configuration step checks them): what
    it would refuse with its usage text, or fail on with a traceback once started, is one
    ParamsError naming runtime.launcher, the launcher and the option; nothing printed."""
    with pytest.raises(ParamsError) as caught:
        launch.torchrun_args(launcher)
    assert str(caught.value) == f"runtime.launcher: {launcher!r}: {problem}"
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize(("launcher", "count"), [
    ("python", 1),
    ("torchrun --standalone --nproc_per_node=2 --max_restarts=3 --master_port=29500", 2),
    ("torchrun --nproc-per-node=4 --nnodes=2 --node_rank=1", 8),
    ("torchrun --nproc_per_node=$NPROC --nnodes=2:2", 6),
    ("torchrun --nproc_per_node=auto", None),
    ("torchrun --nproc_per_node=cpu", None),
    ("torchrun --nproc_per_node=2 --nnodes=1:4 --rdzv_backend=c10d", None),
])
def test_options_torchrun_takes_pass_and_give_the_process_count(monkeypatch, launcher, count):
    """The number of processes where the options fix it (None: torchrun decides at run time);
    the check leaves OMP_NUM_THREADS, which torchrun's configuration step sets, as it was."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert launch.processes(launcher, {"NPROC": "3"}) == count
    assert "OMP_NUM_THREADS" not in os.environ


def test_a_launcher_torchrun_would_refuse_starts_nothing(tmp_path, monkeypatch, capsys):
    """pipeline.launch checks the options too (the check stage asks first): one line, exit
    status 1, torchrun never started."""
    started = []
    monkeypatch.setattr(launch, "run_torchrun", started.append)
    params = params_with(tmp_path, "torchrun --nproc_per_node=0")
    with pytest.raises(SystemExit) as caught:
        launch.main(["pipeline.stages.cache", "--params", str(params)])
    assert caught.value.code == 1 and started == []
    assert capsys.readouterr().err == (
        "error: runtime.launcher: 'torchrun --nproc_per_node=0': --nproc_per_node=0: expected a "
        "number of processes per node >= 1, or one of auto, cpu, gpu, xpu\n")


@pytest.mark.parametrize(("exitcode", "status", "line"), [
    (1, 1, ""),  # the rank printed its own `error: ...` line
    (143, 143, ""),  # stopped by SIGTERM: the rank printed `stopped: ...`
    (-9, 137, "error: pipeline.stages.joint: rank 1 was killed by signal 9\n"),
])
def test_a_failed_rank_ends_torchrun_without_its_traceback(monkeypatch, capsys, exitcode,
                                                          status, line):
    """torchrun raises ChildFailedError, which Python would print with a traceback of torchrun:
    the launcher exits with the rank's status instead, and names a signal that killed it."""
    failure = ProcessFailure(local_rank=1, pid=4321, exitcode=exitcode, error_file="")

    def fail(args):
        raise ChildFailedError("pipeline.stages.joint", {1: failure})

    monkeypatch.setattr(torch.distributed.run, "main", fail)
    with pytest.raises(SystemExit) as caught:
        launch.run_torchrun(["--nproc_per_node=2", "-m", "pipeline.stages.joint"])
    assert caught.value.code == status
    assert capsys.readouterr().err == line


def test_a_misspelt_stage_is_named_with_the_stages_there_are(monkeypatch, capsys, tmp_path):
    """One line naming it, the closest stage and every stage; nothing read or started."""
    started = []
    monkeypatch.setattr(launch, "load_params", started.append)
    monkeypatch.setattr(launch.runpy, "run_module", lambda *a, **k: started.append(a))
    monkeypatch.setattr(launch, "run_torchrun", started.append)
    with pytest.raises(SystemExit) as caught:
        launch.main(["pipeline.stages.evalute", "--params", str(tmp_path / "params.yaml")])
    assert caught.value.code == 1
    stages = sorted(p.stem for p in (ROOT / "pipeline" / "stages").glob("*.py")
                    if p.stem not in ("__init__", "common"))
    assert "evaluate" in stages and "train" not in stages
    assert capsys.readouterr().err == (
        "error: pipeline.stages.evalute: no such stage (did you mean pipeline.stages.evaluate?); "
        f"expected pipeline.stages.<stage> with <stage> one of: {', '.join(stages)}\n")
    assert started == []


@pytest.mark.slow
def test_python_runs_the_stage_in_this_process(tmp_path):
    """With `python`, the stage itself runs: here the cache stage meets a checkpoint that is not
    one and reports it in one line naming the file (exit status 1, no traceback, no output)."""
    params = params_with(tmp_path, "python")
    bad = tmp_path / "finetune.pt"
    bad.write_bytes(b"not a checkpoint")
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.launch", "pipeline.stages.cache", "--params",
         str(params), "--index", str(tmp_path / "split_0.json"), "--model", str(bad), "--out",
         str(tmp_path / "c.h5")], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {bad}: not a loadable checkpoint of plain tensors")
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["finetune.pt", "params.yaml"]


@pytest.mark.parametrize("launcher", ["python; touch {marker}", "torchrun $(touch {marker})",
                                      "torchrun --nproc_per_node=2 && touch {marker}"])
def test_a_launcher_that_would_run_a_command_is_refused_and_runs_nothing(tmp_path, launcher):
    marker = tmp_path / "ran"
    params = params_with(tmp_path, launcher.format(marker=marker))
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.launch", "pipeline.stages.cache", "--params",
         str(params)], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "runtime.launcher" in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize("argv", [[], ["os"], ["pipeline.stages.cache;ls"], ["--params", "x"]])
def test_only_a_stage_module_can_be_launched(argv):
    with pytest.raises(SystemExit, match=r"usage: python -m pipeline\.launch"):
        launch.main(argv)


def test_dvc_yaml_never_puts_a_param_in_a_shell_command():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        assert "${runtime" not in stage["cmd"], name
        assert not any(c in stage["cmd"] for c in ";|&`"), name
