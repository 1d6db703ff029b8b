"""dvc.yaml is the one record of each stage's inputs and outputs (pipeline.stage_inputs): the
resume keys, the exports, the summary's, report's and docs' paths come from it, no module writes
one of its paths by hand, and no stage reads a params key its entry does not list."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from pipeline import stage_inputs
from pipeline.params import Params, dotted, load_params, to_dict
from pipeline.stage_inputs import (
    live_folders,
    model_fields,
    models_folder,
    output,
    params_of,
    rerun_by,
    settings,
    split_file,
    stages,
)

ROOT = Path(__file__).resolve().parents[1]
ABSENT = object()


def test_every_params_key_of_dvc_yaml_exists():
    """A misspelt key would hash nothing into a resume key and re-run nothing when changed."""
    for name in stages():
        for key in params_of(name):
            assert dotted(to_dict(Params()), key, ABSENT) is not ABSENT, (name, key)


def test_settings_are_the_listed_keys_values():
    p = load_params(ROOT / "params.yaml", {"model.K": 4, "joint.lr": 0.001})
    joint = settings(p, "joint")
    assert list(joint) == [k for k in params_of("joint")
                           if k not in ("runtime", "data.num_workers")]
    assert joint["joint"]["lr"] == 0.001 and joint["model.N"] == p.model.N
    assert settings(p, "attention")["model.K"] == 4
    assert "model.K" not in joint  # the joint stage does not list it: its resume key ignores it


def test_a_resume_key_follows_exactly_its_stage_s_keys():
    from pipeline.checkpoints import fingerprint

    def key(stage: str, overrides: dict) -> str:
        return fingerprint(stage, settings(load_params(ROOT / "params.yaml", overrides), stage))

    for stage, changed, unlisted in (("finetune", {"finetune.lr": 0.001}, {"model.K": 4}),
                                     ("joint", {"attention.seed": 3}, {"attention.spatial.lr": .5}),
                                     ("pretrain", {"data.augment": False}, {"model.N": 4})):
        assert key(stage, changed) != key(stage, {}) == key(stage, unlisted)
    # how it runs is no part of it: a run interrupted under python resumes under torchrun
    for stage in ("finetune", "attention", "joint"):
        assert key(stage, {"runtime.launcher": "torchrun --nproc_per_node=2",
                           "data.num_workers": 0}) == key(stage, {})


def test_other_dvc_yaml_shapes_are_read_or_refused(monkeypatch):
    monkeypatch.setattr(stage_inputs, "stages", lambda: {
        "a": {"foreach": [1, 2], "do": {"params": ["seed", {"params.yaml": ["model.K"]}],
                                        "outs": ["out/${item}/${item.dataset}.json"]}},
        "b": {"params": [{"other.yaml": ["x"]}], "outs": ["x/${key}.json"]}})
    assert params_of("a") == ("seed", "model.K")
    with pytest.raises(ValueError, match="stage b: params entry"):
        params_of("b")
    with pytest.raises(ValueError, match=r"stage b: x/\$\{key\}\.json: only"):
        output("b", "x/")


def test_exports_record_their_stage_s_model_keys():
    assert model_fields("pretrain") == ("backbone", "init", "last_stride", "embed_dim")
    assert model_fields("finetune") == ("backbone", "init", "last_stride", "N", "embed_dim")
    assert model_fields("union_cnn") == model_fields("finetune")
    assert model_fields("summary") == ()


@pytest.mark.parametrize(("key", "expected"), [
    ("model.K", ["check", "union_heads", "attention", "joint", "evaluate", "summary"]),
    ("evaluate.batch_size", ["check", "baseline", "evaluate", "summary"]),
    ("joint.lr", ["check", "joint", "evaluate", "summary"]),
    ("data.bad_frames", ["check", "index", "pretrain", "union_cnn", "finetune", "cache",
                         "baseline", "union_heads", "attention", "joint", "evaluate",
                         "references", "summary"]),
])
def test_rerun_by_follows_the_listed_keys_and_the_files_downstream(key, expected):
    assert rerun_by(key) == expected


def test_paths_read_from_dvc_yaml():
    assert output("evaluate", "metrics/eval/").format(run="synthetic-0") == \
        "metrics/eval/synthetic-0.json"
    assert split_file().format(dataset="prid2011", split=3) == "data/index/prid2011/split_3.json"
    assert models_folder() == Path("data/models")
    assert live_folders()["attention temporal"] == "attention/{run}/temporal"
    with pytest.raises(KeyError, match="stage attention has 2 metrics under metrics/live"):
        output("attention", "metrics/live/", "metrics")
    with pytest.raises(KeyError, match="no stage 'nope'"):
        params_of("nope")


# --- no second record --------------------------------------------------------------------------


def declared_prefixes() -> set[str]:
    """Every path dvc.yaml declares a stage writes, up to its first ``${...}``."""
    return {path.split("${")[0].rstrip("/-_") for name in stages()
            for kind in ("outs", "metrics", "plots") for path in stage_inputs.paths(name, kind)}


def handwritten_paths(source: str) -> list[tuple[int, str]]:
    """String constants of ``source`` that are a path (not prose, not a docstring, not the key
    of an ``output``/``paths`` look-up)."""
    tree = ast.parse(source)
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef) and node.body \
                and isinstance(node.body[0], ast.Expr):
            skip.add(id(node.body[0].value))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in {"output", "paths"}:
            skip.update(id(arg) for arg in node.args)
    prefixes = declared_prefixes()
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in skip and any(node.value.startswith(p) for p in prefixes)]


def test_no_module_writes_by_hand_a_path_dvc_yaml_declares():
    found = [f"{path.relative_to(ROOT)}:{line}: {value!r}"
             for folder in ("pipeline", "tools")
             for path in sorted((ROOT / folder).rglob("*.py")) if path.name != "stage_inputs.py"
             for line, value in handwritten_paths(path.read_text())]
    assert not found, "read these from dvc.yaml (pipeline.stage_inputs):\n" + "\n".join(found)


def test_the_path_scan_finds_a_handwritten_path():
    source = ('"""Writes metrics/eval/x.json."""\nA = "metrics/eval/{run}.json"\n'
              'B = output("evaluate", "metrics/eval/")\n')
    assert handwritten_paths(source) == [(2, "metrics/eval/{run}.json")]


# Params read through a property, as the keys the property reads
PROPERTIES = {"heads_seed": ("seed", "attention.seed"),
              "model.embedding_size": ("model.K", "model.embed_dim", "model.part_embedding")}
# (stage, key) read by a stage's module but not listed, and why that is right
UNLISTED = {
    # the heads' and CNN's training serve the union stages too, which list it: read only there
    ("attention", "data.union_sampling"), ("finetune", "data.union_sampling"),
    # sizes the disk check of every cache still to write (dvc.yaml says why it is not listed)
    ("cache", "data.splits"),
}


def params_read(source: str) -> set[str]:
    """The params keys a stage module reads as ``p.<section>[.<field>]``."""
    keys = set()
    for section, field in re.findall(r"\bp\.(\w+)(?:\.(\w+))?", source):
        key = f"{section}.{field}" if field else section
        keys.update(PROPERTIES.get(key, PROPERTIES.get(section, (key,))))
    return keys


@pytest.mark.parametrize("name", [n for n, spec in stages().items()
                                  if not spec.get("always_changed")])  # check reads every key
def test_a_stage_reads_only_the_params_its_entry_lists(name):
    listed = params_of(name)
    modules = [d for d in stage_inputs.paths(name, "deps")
               if d.startswith("pipeline/stages/") and not d.endswith("/common.py")]
    unlisted = {key for module in modules for key in params_read((ROOT / module).read_text())
                if not any(key == k or key.startswith(k + ".") or k.startswith(key + ".")
                           for k in listed)
                and key.split(".")[0] in to_dict(Params())}  # (not a `p` of a loop)
    assert unlisted <= {key for stage, key in UNLISTED if stage == name}, (
        f"{name} reads {sorted(unlisted)}: list them under its params in dvc.yaml")


def test_the_params_scan_finds_an_unlisted_read():
    assert params_read("x = p.model.K + p.heads_seed\nq = p.runtime") == {
        "model.K", "seed", "attention.seed", "runtime"}
