"""params.yaml loading: defaults, overrides, and an error naming the key for every bad value."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest
import yaml

from pipeline.params import (
    LossParams,
    ModelParams,
    Params,
    ParamsError,
    TrainParams,
    from_dict,
    load_params,
    paper_overrides,
    to_dict,
)

ROOT = Path(__file__).resolve().parents[1]


def dotted_keys(cls: type, prefix: str = "") -> list[str]:
    """Every leaf key of a params dataclass, dotted (``attention.spatial.lr``)."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += dotted_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_dataclass_defaults_are_the_papers_setting():
    params = Params()
    m, loss = params.model, params.loss
    assert (m.N, m.K, m.d, m.embed_dim, m.backbone) == (6, 6, 256, 128, "resnet50")
    assert (m.init, m.last_stride) == ("imagenet", 2)
    assert (params.data.height, params.data.width) == (256, 128)
    assert (loss.kind, loss.oim_scalar, loss.oim_momentum) == ("oim", 10.0, 0.5)
    for stage in (params.pretrain, params.finetune, params.attention.spatial,
                  params.attention.temporal, params.joint):
        assert stage.lr == pytest.approx(0.1)
        assert stage.lr * stage.lr_gamma == pytest.approx(0.01)


def marked_keys(text: str, mark: str = "(default run)") -> set[str]:
    """Dotted keys of the block-style YAML lines carrying ``mark`` in their comment."""
    keys, path = set(), []
    for line in text.splitlines():
        content = line.split("#")[0].rstrip()
        if not content.strip() or content.lstrip().startswith("-"):
            continue
        depth = (len(content) - len(content.lstrip())) // 2
        key = content.strip().split(":")[0]
        path = [*path[:depth], key]
        if mark in line:
            keys.add(".".join(path))
    return keys


def test_default_run_differs_from_the_paper_only_where_marked():
    """params.yaml (the offline default) departs from the paper exactly on the keys its comments
    mark "(default run)", besides the choice of data and machine."""
    mine = load_params(ROOT / "params.yaml")
    paper = Params()
    differing = {key for key in dotted_keys(Params)
                 if _get(mine, key) != _get(paper, key)
                 and not key.startswith(("synthetic.", "runtime."))}
    assert differing == marked_keys((ROOT / "params.yaml").read_text())


def _get(params, dotted: str):
    for part in dotted.split("."):
        params = getattr(params, part)
    return params


@pytest.mark.parametrize(("dataset", "splits"), [("mars", [0]), ("prid2011", list(range(10)))])
def test_paper_overrides_restore_the_paper_setting(dataset, splits):
    mine = load_params(ROOT / "params.yaml")
    paper = load_params(ROOT / "params.yaml", paper_overrides(mine, dataset))
    assert paper.model == Params().model
    assert (paper.pretrain, paper.finetune, paper.joint) == (
        Params().pretrain, Params().finetune, Params().joint)
    assert paper.attention == Params().attention
    assert (paper.data.height, paper.data.width) == (256, 128)
    assert paper.data.video == [dataset] and paper.data.splits == splits
    assert paper.data.image == ["cuhk01", "cuhk03", "3dpes", "viper", "dukemtmcreid", "cuhksysu"]
    assert paper.synthetic == mine.synthetic and paper.runtime == mine.runtime


def test_paper_overrides_refuse_an_unknown_dataset():
    with pytest.raises(ParamsError, match="unknown video dataset 'market1501'"):
        paper_overrides(Params(), "market1501")


def test_repository_params_file_lists_every_key():
    """Every knob is visible in params.yaml (none hides behind a default)."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())

    def leaves(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield prefix + key

    assert sorted(leaves(raw)) == sorted(dotted_keys(Params))


def test_readme_documents_every_key():
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `([\w.]+)` \|", readme, flags=re.MULTILINE))
    assert set(dotted_keys(Params)) <= documented, set(dotted_keys(Params)) - documented


def test_data_splits_must_exist_for_every_video_set():
    with pytest.raises(ParamsError, match=r"data\.splits: mars has 1 split"):
        load_params(ROOT / "params.yaml", ["data.video=[mars]", "data.splits=[0, 1]"])
    params = load_params(ROOT / "params.yaml", ["data.video=[ilidsvid]", "data.splits=[0, 9]"])
    assert params.data.splits == [0, 9]


def test_missing_sections_take_defaults(tmp_path):
    params = load_params(write(tmp_path, "model:\n  K: 3\n"))
    assert params.model == ModelParams(K=3)
    assert params.loss == LossParams()


def test_empty_file_gives_defaults(tmp_path):
    assert load_params(write(tmp_path, "")) == Params()


@pytest.mark.parametrize(
    ("overrides", "check"),
    [
        ({"model.K": 8}, lambda p: p.model.K == 8),
        (["model.K=8"], lambda p: p.model.K == 8),
        (["loss.diversity=sparse"], lambda p: p.loss.diversity == "sparse"),
        (["attention.temporal.lr=0.05"], lambda p: p.attention.temporal.lr == 0.05),
        (["data.video=[mars, prid2011]"], lambda p: p.data.video == ["mars", "prid2011"]),
        (["loss.oim_scalar=30"], lambda p: p.loss.oim_scalar == 30.0),  # int accepted as float
        ({"runtime.launcher": "torchrun --nproc_per_node=$NPROC"},
         lambda p: p.runtime.launcher == "torchrun --nproc_per_node=$NPROC"),
        ({"runtime.launcher": "torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d "
                              "--rdzv_endpoint=$MASTER:29500 --standalone"},
         lambda p: p.runtime.launcher.startswith("torchrun --nnodes=2")),
    ],
)
def test_overrides(overrides, check):
    params = load_params(ROOT / "params.yaml", overrides)
    assert check(params)


def test_int_for_float_becomes_float():
    params = load_params(ROOT / "params.yaml", ["loss.oim_scalar=30"])
    assert isinstance(params.loss.oim_scalar, float)


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        # unknown keys, at every depth
        ("colour=red", "colour", "unknown key"),
        ("model.depth=50", "model.depth", "unknown key"),
        ("attention.spatial.steps=3", "attention.spatial.steps", "unknown key"),
        # wrong types
        ("model.K=six", "model.K", "expected an integer"),
        ("model.N=2.5", "model.N", "expected an integer"),
        ("model.N=true", "model.N", "expected an integer"),
        ("loss.oim_scalar=ten", "loss.oim_scalar", "expected a number"),
        ("model.backbone=50", "model.backbone", "expected a string"),
        ("data.video=mars", "data.video", "expected a list"),
        ("model=3", "model", "expected a mapping"),
        # out of range
        ("model.N=0", "model.N", ">= 1"),
        ("model.K=0", "model.K", ">= 1"),
        ("model.d=0", "model.d", ">= 1"),
        ("model.embed_dim=0", "model.embed_dim", ">= 1"),
        ("finetune.lr=0", "finetune.lr", "> 0"),
        ("attention.spatial.lr=-0.1", "attention.spatial.lr", "> 0"),
        ("joint.momentum=1.0", "joint.momentum", "< 1"),
        ("pretrain.momentum=-0.1", "pretrain.momentum", ">= 0"),
        ("loss.oim_momentum=1.5", "loss.oim_momentum", "< 1"),
        ("loss.diversity_weight=-1.0", "loss.diversity_weight", ">= 0"),
        ("pretrain.lr_gamma=2.0", "pretrain.lr_gamma", "<= 1"),
        ("evaluate.protocols=[]", "evaluate.protocols", "non-empty"),
        # unknown choices
        ("model.backbone=vgg16", "model.backbone", "resnet50"),
        ("model.enhancement=bilinear", "model.enhancement", "second_order"),
        ("model.temporal_pooling=lstm", "model.temporal_pooling", "attention"),
        ("loss.diversity=kl", "loss.diversity", "hellinger"),
        ("loss.kind=triplet", "loss.kind", "oim"),
        ("data.video=[mars, market]", "data.video[1]", "prid2011"),
        ("data.image=[synthetic, mars]", "data.image[1]", "market1501"),
        ("evaluate.protocols=[matlab]", "evaluate.protocols[0]", "official"),
        # the launcher goes into a shell command: only python or torchrun with plain --options
        ("runtime.launcher=bash", "runtime.launcher", "torchrun"),
        ("runtime.launcher=python; rm -rf data", "runtime.launcher", "torchrun"),
        ("runtime.launcher=torchrun --nproc_per_node=$(id)", "runtime.launcher", "torchrun"),
        ("runtime.launcher=torchrun --x=`id`", "runtime.launcher", "torchrun"),
        ("runtime.launcher=torchrun --x=1 && id", "runtime.launcher", "torchrun"),
    ],
)
def test_bad_values_name_their_key(override, key, expected):
    with pytest.raises(ParamsError) as err:
        load_params(ROOT / "params.yaml", [override])
    message = str(err.value)
    assert f"{key}:" in message or f"key {key};" in message, message
    assert expected in message, message
    assert "params.yaml" in message  # and the file


def test_float_read_as_string_gets_a_hint(tmp_path):
    # YAML 1.1 reads 1e-4 (no dot) as a string: the error says how to write it
    path = write(tmp_path, "pretrain:\n  weight_decay: 1e-4\n")
    with pytest.raises(ParamsError, match=r"pretrain\.weight_decay: .*write it as 1\.0e-4"):
        load_params(path)
    assert load_params(write(tmp_path, "pretrain:\n  weight_decay: 1.0e-4\n")).pretrain \
        .weight_decay == pytest.approx(1e-4)


def test_unknown_key_lists_the_known_ones():
    with pytest.raises(ParamsError, match="keys of model are: backbone, init, last_stride, N, K"):
        load_params(ROOT / "params.yaml", {"model.k": 8})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("model: [1, 2\n", "not valid YAML"),
        ("- just\n- a list\n", "expected a mapping of sections"),
    ],
)
def test_bad_files(tmp_path, text, expected):
    with pytest.raises(ParamsError, match=expected):
        load_params(write(tmp_path, text))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ParamsError, match=r"nope\.yaml: params file not found"):
        load_params(tmp_path / "nope.yaml")


@pytest.mark.parametrize("override", ["model.K", "=3", "  =1"])
def test_malformed_override(override):
    with pytest.raises(ParamsError, match="expected KEY=VALUE"):
        load_params(ROOT / "params.yaml", [override])


def test_override_into_a_scalar_is_refused():
    with pytest.raises(ParamsError, match="seed is not a section"):
        load_params(ROOT / "params.yaml", {"seed.value": 1})


def test_params_are_frozen():
    params = load_params(ROOT / "params.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.model.K = 3  # type: ignore[misc]


def test_round_trip_through_a_plain_dict():
    """Checkpoints store to_dict(params.model); from_dict rebuilds and re-validates it."""
    params = load_params(ROOT / "params.yaml", ["model.K=4", "attention.spatial.epochs=3"])
    plain = yaml.safe_load(yaml.safe_dump(to_dict(params)))
    assert from_dict(Params, plain) == params
    assert from_dict(ModelParams, to_dict(params.model)) == params.model
    with pytest.raises(ParamsError, match=r"model\.K: expected a value >= 1"):
        from_dict(ModelParams, {**to_dict(params.model), "K": 0}, prefix="model.")


def test_stage_defaults_differ_where_documented():
    assert Params().pretrain == TrainParams(epochs=40, lr_step_epoch=30)
    assert Params().joint == TrainParams(epochs=10, lr_step_epoch=7)
