"""dvc.yaml lists, for every stage, exactly the project modules its command imports (directly or
through other project modules), so that a code change re-runs the stages it affects and no other.
Read statically from the sources (ast), with no import executed."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def module_file(name: str) -> Path | None:
    """The file of project module ``name`` (pipeline.x.y), or None for another package."""
    if name != "pipeline" and not name.startswith("pipeline."):
        return None
    path = ROOT.joinpath(*name.split("."))
    if path.is_dir():
        return path / "__init__.py"
    return path.with_suffix(".py")


def imported_files(path: Path) -> set[Path]:
    """Project files ``path`` imports at module level or inside functions."""
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from pipeline import distributed`: a submodule, if there is one of that name
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    files = set()
    for name in names:
        file = module_file(name)
        if file is not None and file.exists():
            files.add(file)
        parts = name.split(".")
        for i in range(2, len(parts)):  # importing pipeline.a.b runs pipeline/a/__init__.py
            init = ROOT.joinpath(*parts[:i], "__init__.py")
            if init.exists():
                files.add(init)
    return files


def closure(path: Path) -> set[Path]:
    seen, todo = set(), [path]
    while todo:
        file = todo.pop()
        if file in seen:
            continue
        seen.add(file)
        todo.extend(imported_files(file))
    return seen


def listed(deps: list[str]) -> set[str]:
    """The project code paths among a stage's deps (files, or folders such as pipeline/datasets)."""
    return {d for d in deps if d.startswith("pipeline/")}


def covering(file: Path) -> str:
    """The dep that covers ``file``: its folder for the packages listed as folders, else itself."""
    relative = file.relative_to(ROOT).as_posix()
    if relative.startswith("pipeline/datasets/"):
        return "pipeline/datasets"
    return relative


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_lists_exactly_the_modules_it_imports(stage):
    spec = STAGES[stage]
    # `python -m pipeline.stages.x`, or `python -m pipeline.launch pipeline.stages.x`
    modules = re.findall(r"(?<![\w/.])(pipeline\.(?:launch|stages\.\w+))\b", spec["cmd"])
    assert modules and modules[-1].startswith("pipeline.stages."), spec["cmd"]
    used = {covering(f) for module in modules for f in closure(module_file(module))
            if f.name != "__init__.py" or f.parent.name == "datasets"}
    assert listed(spec["deps"]) == used, (
        f"{stage}: missing {sorted(used - listed(spec['deps']))}, "
        f"not imported {sorted(listed(spec['deps']) - used)}")


# --- what a change to each library module re-runs -------------------------------------------------
# A module many stages import must stay small and stable: an edit to it re-runs every one of them
# (on MARS with a GPU, hours of work). This table is the contract: a new import that makes a stage
# depend on a module changes a row and fails here, so that the coupling is a decision, not an
# accident. The stages downstream of a re-run stage re-run too when its outputs change; the table
# lists only the stages whose own deps name the module.

ALL = {"check", "download", "index", "pretrain", "union_cnn", "finetune", "cache", "baseline",
       "union_heads", "attention", "joint", "evaluate", "references", "summary"}
MODELS = {"pretrain", "union_cnn", "finetune", "cache", "baseline", "union_heads", "attention",
          "joint", "evaluate"}
UNION = {"union_cnn", "union_heads"}
INVALIDATES = {
    "pipeline/download.py": {"download"},
    "pipeline/datasets": {"check", "download", "index"},  # check: the sets' sources
    "pipeline/tables.py": {"check", "download", "index", "pretrain", "finetune", "cache",
                           "baseline", "attention", "joint", "evaluate", "references"} | UNION,
    "pipeline/errors.py": ALL,
    "pipeline/files.py": ALL,
    "pipeline/params.py": ALL,
    "pipeline/distributed.py": MODELS | UNION,  # (stages.common leaves it to who trains)
    "pipeline/stages/common.py": ALL,
    "pipeline/signals.py": ALL,
    "pipeline/launch.py": MODELS | {"check"},
    "pipeline/train.py": MODELS - {"cache", "baseline", "evaluate"},  # the loop: who trains
    "pipeline/checkpoints.py": MODELS,  # resume checkpoints, exported models
    "pipeline/runtime.py": MODELS,  # device, autocast, compile, seed
    "pipeline/curves.py": MODELS - {"cache", "baseline", "evaluate"} | {"summary"},  # (pictures)
    "pipeline/model.py": MODELS | {"check"},  # check: the ImageNet weights file of init
    "pipeline/weights.py": MODELS | {"check"},  # (MobileNetV2's, found and checked without torch)
    "pipeline/losses.py": MODELS - {"cache", "baseline", "evaluate"},
    "pipeline/data.py": MODELS,
    "pipeline/sampling.py": MODELS | {"references"},  # (the frames each tracklet is seen by)
    "pipeline/features.py": {"cache", "baseline", "attention", "union_heads", "evaluate"},
    # the schedule across sets: the union stages and the per-set stages that take their models
    "pipeline/union.py": {"finetune", "attention", "joint"} | UNION,
    "pipeline/embedding.py": {"baseline", "evaluate"},  # the test set as the models see it
    "pipeline/metrics.py": {"baseline", "evaluate", "references", "summary"},
    "pipeline/attention_stats.py": {"baseline", "evaluate", "references", "summary"},
    "pipeline/figures.py": {"evaluate", "summary"},
    "pipeline/formatting.py": {"index", "evaluate", "references", "summary"},  # their tables
    "pipeline/names.py": {"baseline", "evaluate", "references", "summary"},
    # the floor, the ceilings and the grid's locality of a split: on its index and cache alone
    "pipeline/references.py": {"references"},
    "pipeline/cell_probe.py": {"references"},
    # dvc.yaml read: the resume keys and exports of who trains, the check's models folder, the
    # summary's DVCLive folders
    "pipeline/stage_inputs.py": MODELS - {"cache", "baseline", "evaluate"} | {"check", "summary"},
}


def library_modules() -> set[str]:
    """Every library module (pipeline/*.py, and the datasets package as one), no stage."""
    files = {covering(f) for f in (ROOT / "pipeline").rglob("*.py")
             if "stages" not in f.relative_to(ROOT).parts[:2] and f.name != "__init__.py"}
    return files | {"pipeline/stages/common.py"}


def test_every_library_module_has_a_row():
    assert library_modules() == set(INVALIDATES), (
        "add a row to INVALIDATES for each new module (or remove the row of a deleted one): "
        f"{sorted(library_modules() ^ set(INVALIDATES))}")


@pytest.mark.parametrize("module", sorted(INVALIDATES))
def test_a_change_to_a_library_module_reruns_only_its_stages(module):
    rerun = {name.split("@")[0] for name, spec in STAGES.items() if module in spec["deps"]}
    assert rerun == INVALIDATES[module], (
        f"editing {module} would re-run {sorted(rerun)}, expected {sorted(INVALIDATES[module])}")


# --- the names summary reads are the ones dvc.yaml writes ---------------------------------------


def test_summary_reads_the_outputs_dvc_yaml_names():
    from pipeline.params import run_name
    from pipeline.stages.summary import LIVE_FOLDERS

    run = run_name("${item.dataset}", "${item.split}")

    def declared(kind: str) -> set[str]:
        return {next(iter(o)) if isinstance(o, dict) else o
                for spec in STAGES.values() for o in spec.get(kind, [])}

    evaluate = STAGES["evaluate"]["cmd"]
    assert f"--out metrics/eval/{run}.json" in evaluate
    assert f"--cmc metrics/plots/cmc/{run}.csv" in evaluate
    summary = STAGES["summary"]["cmd"]
    assert "--evals metrics/eval" in summary and "--cmc metrics/plots/cmc" in summary
    assert "--live metrics/live" in summary and "metrics/live" in STAGES["summary"]["deps"]
    # each training run's DVCLive folder: its summary a metrics file, its curves a plots folder
    for folder in LIVE_FOLDERS.values():
        path = "metrics/live/" + folder.format(run=run)
        assert f"{path}/metrics.json" in declared("metrics"), path
        assert f"{path}/plots" in declared("plots"), path
    assert len(declared("metrics")) == len(declared("plots")) == len(LIVE_FOLDERS)
    for stage in ("pretrain", "finetune", "joint"):
        live = "metrics/live/" + LIVE_FOLDERS[stage].format(run=run)
        assert f"--live {live}" in STAGES[stage]["cmd"], stage
    assert f"--live metrics/live/attention/{run}" in STAGES["attention"]["cmd"]


def test_only_the_download_manifest_is_kept_from_the_run_cache():
    """The download stage's real output, the frames under data/raw, is no DVC output: were its
    manifest restorable from DVC's run-cache, an experiment repeating another's synthetic setting
    would get the manifest (and, from it, an index of the new frames' content) without the frames
    being made, and its later stages would read the project's other frames. `persist` turns the
    run-cache off for that stage; nothing else is persist."""
    persistent = {stage: [next(iter(out)) for out in spec.get("outs", [])
                          if isinstance(out, dict) and next(iter(out.values())).get("persist")]
                  for stage, spec in STAGES.items()}
    assert {stage: outs for stage, outs in persistent.items() if outs} == {
        "download": ["data/download.json"]}


def test_every_stage_but_check_declares_its_time_record_as_its_first_uncached_output():
    """Each stage's time record (pipeline.stages.common.timing_path) is one of its own outputs,
    not cached by DVC (git keeps it), so the README's time table shows the time of the run that
    made the outputs dvc.lock records."""
    from pipeline.stages.common import timing_path

    for stage, spec in STAGES.items():
        if spec.get("always_changed"):  # check: runs every time, its record is always current
            assert all("metrics/timings" not in str(out) for out in spec["outs"]), stage
            continue
        first = spec["outs"][0]
        path, options = next(iter(first.items()))
        item = "-".join(f"${{item.{key}}}" for key in spec.get("matrix", {}))  # DVC's name
        expected = timing_path(f"{stage}@{item}" if item else stage).as_posix()
        assert (path, options) == (expected, {"cache": False}), stage


def test_the_matrix_for_two_sets_and_two_splits_has_the_stages_and_deps_of_the_design(tmp_path):
    """dvc.yaml as DVC resolves it for data.video [synthetic, synthetic2] x data.splits [0, 1]:
    the union stages once per split index, the per-set stages once per (set, split); each
    per-set finetune and attention stage reads its index's union folder, union_heads reads its
    index's union CNN, and pretrain reads the image sets' index alone."""
    import shutil
    import subprocess
    import sys

    from dvc.repo import Repo

    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(video=["synthetic", "synthetic2"], splits=[0, 1])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    dvc = Path(sys.executable).with_name("dvc")
    subprocess.run([str(dvc) if dvc.exists() else "dvc", "init", "--no-scm", "-q"],
                   cwd=tmp_path, check=True)
    stages = {stage.name: stage for stage in Repo(str(tmp_path)).index.stages}
    runs = [f"{s}-{k}" for s in ("synthetic", "synthetic2") for k in (0, 1)]
    per_set = ("finetune", "cache", "baseline", "attention", "joint", "evaluate", "references")
    assert set(stages) == {"check", "download", "index", "pretrain", "summary",
                           *(f"{u}@{k}" for u in ("union_cnn", "union_heads") for k in (0, 1)),
                           *(f"{stage}@{run}" for stage in per_set for run in runs)}

    def deps(name: str) -> set[str]:
        return {str(d.def_path) for d in stages[name].deps}

    def outs(name: str) -> set[str]:
        return {str(o.def_path) for o in stages[name].outs}

    assert "data/image_index" in deps("pretrain") and "data/index" not in deps("pretrain")
    for k in (0, 1):
        assert f"data/models/union-{k}/cnn" in outs(f"union_cnn@{k}")
        assert f"data/models/union-{k}/heads" in outs(f"union_heads@{k}")
        assert f"data/models/union-{k}/cnn" in deps(f"union_heads@{k}")
        for s in ("synthetic", "synthetic2"):
            assert f"data/models/union-{k}/cnn" in deps(f"finetune@{s}-{k}")
            assert f"data/models/union-{k}/heads" in deps(f"attention@{s}-{k}")
            assert f"data/index/{s}/split_{k}.json" in deps(f"joint@{s}-{k}")
            assert f"data/models/{s}-{k}/temporal.pt" in deps(f"joint@{s}-{k}")
            other = 1 - k
            assert not any(f"union-{other}" in d for d in deps(f"finetune@{s}-{k}")
                           | deps(f"attention@{s}-{k}"))
