"""The summary stage on small hand-made inputs: the headline always under the official protocol,
the pictures, and every input checked before an old output is replaced (a refused one is one
line naming the file and what to do, and the last run's headline and pictures stay byte for
byte)."""

from __future__ import annotations

import errno
import json
import os
import signal
import tempfile
from pathlib import Path

import pytest
import yaml

from pipeline.curves import read_means
from pipeline.errors import InputError
from pipeline.params import Params, from_dict
from pipeline.stages import evaluate, summary
from pipeline.stages.common import run


def scores(rank1: float, mAP: float) -> dict:
    return {"rank1": rank1, "rank5": 1.0, "mAP": mAP, "num_valid_queries": 4, "num_queries": 4}


def write(path: Path, content: str | dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@pytest.fixture
def inputs(tmp_path) -> dict:
    """One run (synthetic, split 0) as the evaluate and training stages leave it: baseline and
    joint under both protocols (torchreid 10 points above official), their CMC curves, the
    fine-tuning's per-epoch mean loss; and a last run's headline and pictures in the outputs."""
    write(tmp_path / "params.yaml", yaml.safe_dump(
        {"data": {"video": ["synthetic"], "splits": [0]},
         "evaluate": {"protocols": ["torchreid", "official"]}}))
    write(tmp_path / "eval/synthetic-0.json", {
        "dataset": "synthetic", "split": 0, "seed": 0,
        "models": {m: {"official": scores(r1, mAP), "torchreid": scores(r1 + 0.1, mAP + 0.1)}
                   for m, r1, mAP in (("baseline", 0.5, 0.25), ("joint", 0.75, 0.5))}})
    write(tmp_path / "cmc/synthetic-0.csv",
          "rank,baseline_official,baseline_torchreid,joint_official,joint_torchreid\n"
          "1,0.5,0.6,0.75,0.85\n2,0.75,0.8,1.0,1.0\n")
    write(tmp_path / "live/finetune/synthetic-0/plots/metrics/mean/loss.tsv",
          "step\tloss\n4\t2.5\n8\t2.0\n")
    old = {"results/synthetic.json": "{}", "results/gone.json": "{}",
           "figures/cmc_synthetic.png": "old", "figures/loss_synthetic-0.png": "old",
           "figures/loss_gone-0.png": "old"}
    for relative, content in old.items():
        write(tmp_path / relative, content)
    argv = ["--params", tmp_path / "params.yaml", "--evals", tmp_path / "eval", "--cmc",
            tmp_path / "cmc", "--live", tmp_path / "live", "--out", tmp_path / "results",
            "--figures", tmp_path / "figures"]
    return {"root": tmp_path, "argv": [str(a) for a in argv]}


def outputs(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for folder in ("results", "figures") for p in sorted((root / folder).iterdir())}


def test_the_headline_is_official_whatever_the_protocols_listed_and_old_outputs_go(inputs):
    """evaluate.protocols lists torchreid first: the headline keys still hold the official
    figures (50.0, not 60.0); the pictures are drawn; a set or run no longer in the params
    leaves nothing behind."""
    summary.main(inputs["argv"])
    root = inputs["root"]
    assert json.loads((root / "results/synthetic.json").read_text()) == {
        "R1": {"base": 50.0, "ind": 75.0}, "mAP": {"base": 25.0, "ind": 50.0}}
    assert sorted(outputs(root)) == ["figures/cmc_synthetic.png", "figures/loss_synthetic-0.png",
                                     "results/synthetic.json"]
    assert all(data.startswith(b"\x89PNG") for name, data in outputs(root).items()
               if name.endswith(".png"))
    assert not list(root.rglob(".*.tmp"))


@pytest.mark.parametrize(("params", "computed"), [
    ({}, ["official", "torchreid"]),
    ({"protocols": ["torchreid"]}, ["official", "torchreid"]),
    ({"protocols": ["torchreid", "official"]}, ["official", "torchreid"]),
    ({"protocols": ["official"]}, ["official"]),
])
def test_the_evaluate_stage_always_scores_the_headlines_protocol_first(params, computed):
    """Leaving official out of evaluate.protocols (or listing it second) does not switch the
    headline to torchreid figures: the evaluate stage scores official anyway, first."""
    p = from_dict(Params, {"evaluate": params})
    assert evaluate.protocols(p) == computed
    assert computed[0] == summary.HEADLINE_PROTOCOL


LOSS = "live/finetune/synthetic-0/plots/metrics/mean/loss.tsv"
CMC = "cmc/synthetic-0.csv"
EVAL = "eval/synthetic-0.json"
RETRAIN = "run the training stage that wrote it again, or restore it: git checkout -- {path}"
REEVALUATE = "run the evaluate stage again"


def bad_curve(reason: str) -> str:
    return (f"{{path}}: expected DVCLive's tab-separated columns step and loss, one row of "
            f"numbers per epoch ({reason}); {RETRAIN}")


def bad_cmc(reason: str) -> str:
    return (f"{{path}}: expected the evaluate stage's CMC table, a column rank and one column "
            f"of fractions per <model>_<protocol> ({reason}); {REEVALUATE}")


@pytest.mark.parametrize(("relative", "content", "message"), [
    (LOSS, "epoch\tloss\n1\t2.0\n", bad_curve("no column step; found epoch, loss")),
    (LOSS, "step\tloss\n4\tnan?\n", bad_curve("a value that is not a number")),
    (LOSS, "step\tloss\n4\t2.0\n4\t1.0\n", bad_curve("a step written twice")),
    (LOSS, "", bad_curve("No columns to parse from file")),
    (CMC, "rank,baseline_official\n1,0.5\n2,x\n", bad_cmc("a value that is not a number")),
    (CMC, "rank,baseline_official,joint_official\n1,0.5,0.75\n2,0.7",
     bad_cmc("a value missing (a truncated file?)")),
    (CMC, "rank,baseline\n1,0.5\n", bad_cmc("column baseline names no protocol")),
    (CMC, "rank,baseline_official\n1,50\n", bad_cmc("a matching rate outside [0, 1]")),
    (CMC, "", "{path}: expected the evaluate stage's CMC table, a column rank and one column of "
              f"fractions per <model>_<protocol> (No columns to parse from file); {REEVALUATE}"),
    (EVAL, {"dataset": "synthetic", "split": 0,
            "models": {"baseline": {"torchreid": scores(0.5, 0.25)}}},
     "{path}: expected the evaluate stage's results with each model's official rank1 and mAP "
     f"(the headline's), but models.baseline.official.rank1 is missing; {REEVALUATE}"),
])
def test_a_refused_input_is_one_line_and_the_old_outputs_stay(inputs, capsys, relative, content,
                                                             message):
    """Each input is checked before any old output is replaced or removed."""
    root = inputs["root"]
    write(root / relative, content)
    before = outputs(root)
    expected = f"error: {message.format(path=root / relative)}"
    assert one_line_error(inputs["argv"], capsys) == expected
    assert outputs(root) == before


def test_no_training_curves_at_all_say_where_they_were_expected(inputs, capsys):
    """An emptied metrics/live (then `dvc repro -s summary`): the folder named, and how to
    restore its curves; the old pictures stay."""
    root = inputs["root"]
    (root / LOSS).unlink()
    before = outputs(root)
    assert one_line_error(inputs["argv"], capsys) == (
        f"error: {root / 'live'}: no training curves of synthetic-0 (expected the DVCLive folders "
        "pretrain, finetune/synthetic-0, attention/synthetic-0/spatial, "
        "attention/synthetic-0/temporal, joint/synthetic-0 with plots/metrics/mean/*.tsv); "
        f"restore them with `git checkout -- {root / 'live'}`, or run the training stages again "
        "(dvc repro)")
    assert outputs(root) == before


def test_a_read_only_results_folder_fails_before_anything_is_read(inputs, capsys, monkeypatch):
    """metrics/ read-only (simulated: the tests may run as root, whom chmod does not stop): one
    line naming the folder, before an input is read or an old output touched."""
    root = inputs["root"]
    real = tempfile.TemporaryFile

    def refuse(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == root / "results":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    (root / EVAL).unlink()  # not read: the folder's check comes first
    before = outputs(root)
    assert one_line_error(inputs["argv"], capsys) == (
        f"error: {root / 'results'}: cannot write there, read-only file system: make it "
        "writable or point the output elsewhere, then run the stage again")
    assert outputs(root) == before


def test_splits_whose_cmc_tables_differ_are_named(inputs, capsys):
    """Two splits of a set whose CMC tables have other columns: the second named beside the
    first, never averaged into NaN."""
    root = inputs["root"]
    write(root / "params.yaml", yaml.safe_dump({"data": {"video": ["ilidsvid"], "splits": [0, 1]}}))
    evaluation = json.loads((root / EVAL).read_text())
    for split in (0, 1):
        write(root / f"eval/ilidsvid-{split}.json",
              {**evaluation, "dataset": "ilidsvid", "split": split})
        write(root / f"live/finetune/ilidsvid-{split}/plots/metrics/mean/loss.tsv",
              "step\tloss\n4\t2.0\n")
    (root / CMC).rename(root / "cmc/ilidsvid-0.csv")
    write(root / "cmc/ilidsvid-1.csv", "rank,baseline_official\n1,0.5\n2,0.75\n")
    before = outputs(root)
    assert one_line_error(inputs["argv"], capsys) == (
        f"error: {root / 'cmc/ilidsvid-1.csv'}: its columns or ranks differ from those of "
        f"{root / 'cmc/ilidsvid-0.csv'}; run the evaluate stage of both again")
    assert outputs(root) == before


def test_read_means_joins_each_metric_by_step_and_numbers_the_epochs(tmp_path):
    folder = tmp_path / "plots/metrics/mean"
    write(folder / "loss.tsv", "step\tloss\n8\t2.0\n4\t2.5\n")
    write(folder / "id_loss.tsv", "step\tid_loss\n4\t2.25\n8\t1.75\n")
    means = read_means(tmp_path)
    assert means.to_dict("index") == {1: {"id_loss": 2.25, "loss": 2.5},
                                      2: {"id_loss": 1.75, "loss": 2.0}}
    assert read_means(tmp_path / "nothing").empty  # a stage that logged no epoch
    write(folder / "loss.tsv", "step\tloss\n")
    with pytest.raises(InputError, match=r"loss\.tsv: expected DVCLive's .* \(no rows\)"):
        read_means(tmp_path)


def one_line_error(argv: list[str], capsys) -> str:
    """The summary stage run as its command line runs it: exit status 1, one line on stderr."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    capsys.readouterr()
    try:
        with pytest.raises(SystemExit) as caught:
            run(summary.main, argv)
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    err = capsys.readouterr().err
    assert caught.value.code == 1 and "Traceback" not in err, err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert err.strip() == line, err
    return line
