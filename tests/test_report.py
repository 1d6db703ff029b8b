"""Tests of the report of Tables 1 and 2 (tools/experiments/report.py and its modules) on hand-made
`dvc exp show --json` outputs and a fake `git show` of their commits' per-split results: where each
row is read from, the mean ± std over splits and seeds, missing rows and files, the paper's numbers,
the chart and the atomic writes. No dvc is run; git only where a test builds a repository."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image

from pipeline.params import run_name
from tools.experiments.chart import CHART_DPI, CHART_PANEL_HEIGHT, CHART_WIDTH, draw_chart
from tools.experiments.data import MISSING, Report, Stat, from_data, to_data
from tools.experiments.report import build_report, main
from tools.experiments.show import ReportError
from tools.experiments.sources import EVAL_FILE, git_show
from tools.experiments.tables import claims, render_markdown
from tools.shell import run

ROOT = Path(__file__).resolve().parents[1]
HEAD = "a" * 40


def render(report: Report, command: str = "cmd", **extras) -> str:
    """metrics/report.md as tools.experiments.report renders it: through report.json's data (the
    claims made from Table 1 where the report has none yet)."""
    report = dataclasses.replace(
        report, command=command, extras=extras,
        claims=report.claims or {key: claims(rows) for key, rows in report.table1.items()})
    return render_markdown(from_data(json.loads(json.dumps(to_data(report)))))
MODELS = ("baseline", "spatial", "temporal", "joint")


class FakeGit:
    """The files of fake commits, read like `git show <rev>:<path>` (the report's reader)."""

    def __init__(self) -> None:
        self.commits: dict[str, dict[str, str]] = {}
        self.reads: list[tuple[str, str]] = []

    def commit(self, evals: list[dict], rev: str | None = None) -> str:
        rev = rev or f"{len(self.commits) + 1:040x}"
        self.commits[rev] = {EVAL_FILE.format(run=run_name(e["dataset"], e["split"])):
                             json.dumps(e) for e in evals}
        return rev

    def read(self, rev: str, path: str) -> str:
        self.reads.append((rev, path))
        if path not in self.commits.get(rev, {}):
            raise FileNotFoundError(f"path '{path}' does not exist in '{rev}'")
        return self.commits[rev][path]


@pytest.fixture
def git() -> FakeGit:
    return FakeGit()


def evals(seed: int, rank1: dict[str, float], *, dataset: str = "synthetic",
          split_std: float = 0.0, attention: bool = True,
          half_width: float | None = None) -> list[dict]:
    """The evaluate stage's per-split results of one run: rank-1 per model as given (others 0.1),
    mAP = rank-1 - 0.1, both protocols (torchreid = official + 0.05), and the maps' overlap (0.3)
    and entropy (2.0) of the attention models unless ``attention`` is False. One split, or with
    ``split_std`` two splits at value - split_std and value + split_std (mean: the value,
    population std: split_std). With ``half_width``, rank-1 and mAP have the 95% interval
    value ± half_width (``<metric>_lo``, ``<metric>_hi``)."""
    offsets = [0.0] if split_std == 0 else [-split_std, split_std]
    out = []
    for split, offset in enumerate(offsets):
        models = {model: {protocol: {"rank1": rank1.get(model, 0.1) + extra + offset,
                                     "mAP": rank1.get(model, 0.1) - 0.1 + extra + offset,
                                     "num_valid_queries": 64, "num_queries": 64}
                          for protocol, extra in (("official", 0.0), ("torchreid", 0.05))}
                  for model in MODELS}
        if half_width is not None:
            for per_protocol in models.values():
                for m in per_protocol.values():
                    for metric in ("rank1", "mAP"):
                        m[f"{metric}_lo"] = m[metric] - half_width
                        m[f"{metric}_hi"] = m[metric] + half_width
        evaluation = {"dataset": dataset, "split": split, "seed": seed, "models": models}
        if attention:
            evaluation["attention"] = {model: {"overlap": 0.3, "entropy": 2.0}
                                       for model in MODELS if model != "baseline"}
        out.append(evaluation)
    return out


def params_of(runs: list[dict], extra: dict | None = None) -> dict:
    """The params.yaml of the run that wrote ``runs``: its seed, sets and splits, then ``extra``
    (nested sections) on top."""
    params: dict = {}
    if runs:
        # the table's seed is attention.seed (tools.experiments.cells.SEED_KEY); the evaluate output
        # records the top-level seed, here the same number
        params = {"seed": runs[0]["seed"], "attention": {"seed": runs[0]["seed"]},
                  "data": {"video": list(dict.fromkeys(e["dataset"] for e in runs)),
                           "splits": sorted({e["split"] for e in runs})}}
    for key, value in (extra or {}).items():
        if isinstance(value, dict):
            params.setdefault(key, {}).update(value)
        else:
            params[key] = value
    return params


def rev_data(rev: str, params: dict) -> dict:
    return {"rev": rev, "timestamp": None, "metrics": {},
            "params": {"params.yaml": {"data": params}}, "deps": {}, "outs": {}, "meta": {}}


def experiment(git: FakeGit, name: str, runs: list[dict], *, params: dict | None = None,
               error: dict | None = None, state: str | None = None) -> dict:
    """One experiment entry of a baseline commit's ``experiments``, its commit holding ``runs``."""
    rev = git.commit(runs)
    revision = {"rev": rev, "name": name, "data": rev_data(rev, params_of(runs, params)),
                "error": error, "experiments": None}
    executor = None if state is None else {"state": state, "name": None, "local": None}
    return {"revs": [revision], "executor": executor, "name": name}


def exp_show(git: FakeGit, baseline: list[dict], experiments: list[dict],
             sha: str = HEAD) -> list[dict]:
    """A `dvc exp show --json` output: the workspace and one baseline commit (holding
    ``baseline``)."""
    git.commit(baseline, sha)
    params = params_of(baseline)
    return [{"rev": "workspace", "name": None, "data": rev_data("workspace", params),
             "error": None, "experiments": None},
            {"rev": sha, "name": "main", "data": rev_data(sha, params), "error": None,
             "experiments": experiments or None}]


def report_of(git: FakeGit, show: list[dict], **kwargs):
    return build_report(show, read=git.read, **{"base_seed": 0, "base_k": 6, **kwargs})


def row(rows: list, label: str):
    return next(r for r in rows if r.label == label)


def md_row(text: str, label: str) -> list[str]:
    """The cells of the first markdown table row whose first cell is ``label``."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == label:
            return cells
    raise AssertionError(f"no row {label!r}")


# Three seeds: SpaAtn's rank-1 is 0.50, 0.56, 0.59 in t1-s<seed>-nodiv: mean 0.55, population
# std sqrt((0.05² + 0.01² + 0.04²) / 3) = sqrt(0.0014) = 0.0374; the baseline commit's spatial
# model (the SpaAtn+Q row) has 0.90, so a value read from the wrong place shows.
NODIV = {0: 0.50, 1: 0.56, 2: 0.59}


def three_seeds(git: FakeGit, skip: tuple[str, ...] = (),
                no_attention: tuple[str, ...] = ()) -> list[dict]:
    base = evals(0, {"baseline": 0.26, "spatial": 0.90}, split_std=0.012)
    exps = [experiment(git, f"t1-s{s}", evals(s, {"baseline": 0.26 + s / 100}))
            for s in (1, 2) if f"t1-s{s}" not in skip]
    exps += [experiment(git, f"t1-s{s}-nodiv",
                        evals(s, {"spatial": v}, attention=f"t1-s{s}-nodiv" not in no_attention),
                        params={"loss": {"diversity": "none"}})
             for s, v in NODIV.items() if f"t1-s{s}-nodiv" not in skip]
    return exp_show(git, base, exps)


def test_rows_come_from_their_experiments_mean_and_std_over_seeds(git):
    report = report_of(git, three_seeds(git), seeds=[0, 1, 2], head=HEAD)
    rows = report.table1["synthetic", "official"]
    spa = row(rows, "SpaAtn")
    assert spa.experiments == ("t1-s0-nodiv", "t1-s1-nodiv", "t1-s2-nodiv")
    assert spa.rank1.mean == pytest.approx(0.55) and spa.rank1.std == pytest.approx(0.0014 ** 0.5)
    assert spa.seeds_found == 3
    # Baseline: 0.26 (baseline commit), 0.27 (t1-s1), 0.28 (t1-s2): 27.0 ± sqrt(2/3) 0.8.
    base = row(rows, "Baseline")
    assert base.experiments == ("baseline commit", "t1-s1", "t1-s2")
    assert base.rank1.mean == pytest.approx(0.27)

    text = render(report, "python -m tools.experiments.report")
    cells = md_row(text, "SpaAtn")
    assert cells[1:3] == ["55.0 ± 3.7", "45.0 ± 3.7"]  # rank-1, mAP (percent, one decimal)
    assert cells[3:5] == ["0.300 ± 0.000", "2.000 ± 0.000"]  # overlap, entropy
    assert cells[-3:] == ["t1-s0-nodiv, t1-s1-nodiv, t1-s2-nodiv", "3/3", "64.0"]
    assert md_row(text, "Baseline")[1:3] == ["27.0 ± 0.8", "17.0 ± 0.8"]
    assert md_row(text, "Baseline")[3:5] == ["n/a", "n/a"]  # no attention maps
    # SpaAtn+Q: the spatial model of the baseline commit (0.90), t1-s1 and t1-s2 (0.10 each):
    # mean 0.3667, std sqrt((0.5333² + 2 * 0.2667²) / 3) = 0.3771.
    assert md_row(text, "SpaAtn+Q")[1] == "36.7 ± 37.7"
    assert md_row(text, "SpaAtn+Q")[-3] == "baseline commit, t1-s1, t1-s2"
    assert HEAD in text and "seed(s) 0, 1, 2" in text
    assert report.problems == {name: "not run (no experiment of that name for this commit)"
                               for name in (*(f"t1-s{s}-{key}" for s in (0, 1, 2)
                                              for key in ("width", "uniform", "sparse",
                                                          "maxpool")),
                                            "t2-k1", "t2-k2", "t2-k4", "t2-k8")}


def test_one_seed_shows_the_split_std_and_each_file_is_read_once(git):
    """Two splits at 0.4916 and 0.5384: mean 0.515, population std 0.0234."""
    show = exp_show(git, evals(0, {"temporal": 0.515}, split_std=0.0234), [])
    report = report_of(git, show, seeds=[0])
    stat = row(report.table1["synthetic", "official"], "SpaAtn+Q+TemAtn").rank1
    assert stat.mean == pytest.approx(0.515) and stat.std == pytest.approx(0.0234)
    assert stat.seeds == 1
    assert sorted(git.reads) == [(HEAD, "metrics/eval/synthetic-0.json"),
                                 (HEAD, "metrics/eval/synthetic-1.json")]


def test_cells_print_the_interval_of_the_test_set(git):
    """One seed, one split: its own interval. Two seeds: the mean of their bounds (the same
    test set: its noise does not average out). A seed without intervals (older results): none."""
    base = evals(0, {"temporal": 0.5}, half_width=0.05)
    show = exp_show(git, base, [])
    text = render(report_of(git, show, seeds=[0]), "python -m tools.experiments.report")
    assert md_row(text, "SpaAtn+Q+TemAtn")[1:3] == ["50.0 ± 0.0 [45.0, 55.0]",
                                                     "40.0 ± 0.0 [35.0, 45.0]"]
    assert md_row(text, "6")[1] == "50.0 ± 0.0 [45.0, 55.0]"  # Table 2, K = 6
    assert "95 percent interval of the test set" in text

    git = FakeGit()
    other = experiment(git, "t1-s1", evals(1, {"temporal": 0.6}, half_width=0.15))
    show = exp_show(git, evals(0, {"temporal": 0.5}, half_width=0.05), [other])
    rows = report_of(git, show, seeds=[0, 1]).table1["synthetic", "official"]
    tem = row(rows, "SpaAtn+Q+TemAtn")
    assert tem.rank1_ci == pytest.approx((0.45, 0.65))  # ((0.45 + 0.45) / 2, (0.55 + 0.75) / 2)

    git = FakeGit()
    other = experiment(git, "t1-s1", evals(1, {"temporal": 0.6}))  # before intervals
    show = exp_show(git, evals(0, {"temporal": 0.5}, half_width=0.05), [other])
    report = report_of(git, show, seeds=[0, 1])
    assert row(report.table1["synthetic", "official"], "SpaAtn+Q+TemAtn").rank1_ci is None
    assert md_row(render(report, "x"), "SpaAtn+Q+TemAtn")[1] == "55.0 ± 5.0"


def test_missing_and_failed_experiments_show_missing_never_zero(git):
    show = three_seeds(git, skip=("t1-s1-nodiv", "t1-s2-nodiv"))
    failed = experiment(git, "t1-s2-nodiv", [],
                        error={"type": "ReproductionError", "msg": "boom"})
    show[1]["experiments"].append(failed)
    report = report_of(git, show, seeds=[0, 1, 2])
    spa = row(report.table1["synthetic", "official"], "SpaAtn")
    assert spa.seeds_found == 1 and spa.rank1 == Stat(0.50, 0.0, 1)
    text = render(report, "python -m tools.experiments.report")
    cells = md_row(text, "SpaAtn")
    assert cells[-2] == "1/3"
    assert "t1-s1-nodiv (missing)" in cells[-3] and "t1-s2-nodiv (missing)" in cells[-3]
    # No experiment at all for SpaAtn+Q': every number cell says missing.
    sparse = md_row(text, "SpaAtn+Q'")
    assert sparse[1:5] == [MISSING] * 4 and sparse[-2] == "0/3" and sparse[-1] == MISSING
    assert not any(c.startswith("0.0") for c in sparse)
    assert "`t1-s2-nodiv`: failed (ReproductionError: boom)" in text
    assert "`t1-s1-nodiv`: not run" in text


def test_a_missing_split_file_makes_that_set_missing_with_the_reason(git):
    """t1-s0-nodiv ran prid2011 and ilidsvid, splits 0 and 1, but its commit lacks ilidsvid's
    split 1: its prid2011 rows are read, its ilidsvid rows are missing (a mean over the one split
    left would pass for the set's), and the report says which file is missing."""
    sets = ("prid2011", "ilidsvid")
    base = [e for name in sets for e in evals(0, {}, dataset=name, split_std=0.01)]
    nodiv = [e for name in sets for e in evals(0, {"spatial": 0.5}, dataset=name, split_std=0.01)]
    exp = experiment(git, "t1-s0-nodiv", nodiv, params={"loss": {"diversity": "none"}})
    rev = exp["revs"][0]["rev"]
    del git.commits[rev]["metrics/eval/ilidsvid-1.json"]
    report = report_of(git, exp_show(git, base, [exp]), seeds=[0])
    spa = row(report.table1["prid2011", "official"], "SpaAtn").rank1
    assert spa.mean == pytest.approx(0.5) and spa.std == pytest.approx(0.01)
    assert row(report.table1["ilidsvid", "official"], "SpaAtn").rank1 == MISSING
    assert row(report.table1["ilidsvid", "official"], "Baseline").rank1.mean == pytest.approx(0.1)
    assert report.problems["t1-s0-nodiv"] == (f"path 'metrics/eval/ilidsvid-1.json' does not "
                                              f"exist in '{rev}'")
    text = render(report, "cmd")
    assert "`t1-s0-nodiv`: path 'metrics/eval/ilidsvid-1.json' does not exist" in text


def test_two_of_three_seeds(git):
    report = report_of(git, three_seeds(git, skip=("t1-s2-nodiv",)), seeds=[0, 1, 2])
    cells = md_row(render(report, "cmd"), "SpaAtn")
    assert cells[1] == "53.0 ± 3.0" and cells[-2] == "2/3"  # mean of 0.50 and 0.56


def test_unfinished_or_mislabelled_experiments_are_missing(git):
    show = exp_show(git, evals(0, {}), [
        experiment(git, "t1-s0-nodiv", evals(0, {"spatial": 0.7}), state="running"),
        # the params say diversity is still hellinger: not the SpaAtn row
        experiment(git, "t1-s0-sparse", evals(0, {"spatial": 0.7}),
                   params={"loss": {"diversity": "hellinger"}}),
        # a default-pipeline experiment for seed 1 whose results are the seed-0 ones
        experiment(git, "t1-s1", evals(0, {"baseline": 0.7}),
                   params={"seed": 1, "attention": {"seed": 1}}),
        # a seed-1 row whose params are those of seed 0
        experiment(git, "t1-s1-nodiv", evals(0, {"spatial": 0.7}),
                   params={"loss": {"diversity": "none"}}),
    ])
    report = report_of(git, show, seeds=[0, 1])
    rows = report.table1["synthetic", "official"]
    assert row(rows, "SpaAtn").seeds_found == 0 and row(rows, "SpaAtn").rank1 == MISSING
    assert row(rows, "SpaAtn+Q'").rank1 == MISSING
    assert row(rows, "Baseline").seeds_found == 1
    assert "running" in report.problems["t1-s0-nodiv"]
    assert "loss.diversity=hellinger" in report.problems["t1-s0-sparse"]
    assert report.problems["t1-s1"] == ("metrics/eval/synthetic-0.json: results for seed 0, "
                                        "not 1")
    assert report.problems["t1-s1-nodiv"] == "its params have attention.seed=0, expected 1"


def test_paper_numbers_for_mars_and_none_for_synthetic(git):
    mars = report_of(git, exp_show(git, evals(0, {}, dataset="mars"), []))
    text = render(mars, "cmd")
    assert "paper mAP (mars)" in text
    cells = md_row(text, "Baseline")
    assert "73.4" in cells and "58.1" in cells  # the paper's MARS rank-1 and mAP
    assert "77.1" in md_row(text, "6")  # Table 2, K = 6 on MARS
    synthetic = render(report_of(git, exp_show(git, evals(0, {}), [], sha="c" * 40)),
                                "cmd")
    assert "n/a (no paper number)" in md_row(synthetic, "Baseline")
    assert "paper mAP" not in synthetic


def test_table2_reads_t2_k_and_the_baseline_for_the_params_k(git):
    exps = [experiment(git, f"t2-k{k}", evals(0, {"temporal": k / 10}),
                       params={"model": {"K": k}}) for k in (1, 2, 4)]
    exps.append(experiment(git, "t2-k6", evals(0, {"temporal": 0.99}),
                           params={"model": {"K": 6}}))  # K = 6 is not read from an experiment
    report = report_of(git, exp_show(git, evals(0, {"temporal": 0.60}), exps), base_k=8)
    rows = report.table2["synthetic", "official"]
    assert [r.label for r in rows] == ["K = 1", "K = 2", "K = 4", "K = 6", "K = 8"]
    assert [r.experiments for r in rows] == [("t2-k1",), ("t2-k2",), ("t2-k4",),
                                             ("t2-k6",), ("baseline commit",)]
    assert rows[0].rank1.mean == pytest.approx(0.1)
    assert rows[3].rank1.mean == pytest.approx(0.99)
    assert rows[4].rank1.mean == pytest.approx(0.60)
    text = render(report, "cmd")
    assert md_row(text, "4")[1:3] == ["40.0 ± 0.0", "30.0 ± 0.0"]
    assert md_row(text, "8")[-1] == "baseline commit"


def test_old_results_without_attention_show_missing_maps(git):
    show = exp_show(git, evals(0, {}, attention=False), [])
    text = render(report_of(git, show), "cmd")
    assert md_row(text, "SpaAtn+Q")[3:5] == [MISSING, MISSING]
    assert md_row(text, "SpaAtn+Q")[1] == "10.0 ± 0.0"
    # Two seeds with maps, one from before: the maps' mean is over the two, and says so.
    show = three_seeds(git, no_attention=("t1-s2-nodiv",))
    text = render(report_of(git, show, seeds=[0, 1, 2]), "cmd")
    assert md_row(text, "SpaAtn")[3] == "0.300 ± 0.000 (2/3 seeds)"


def test_overlap_of_one_map_is_not_applicable(git):
    base = evals(0, {}, split_std=0.01)
    base[1]["attention"]["temporal"]["overlap"] = None  # K = 1: no pairs of maps
    text = render(report_of(git, exp_show(git, base, [])), "cmd")
    assert md_row(text, "SpaAtn+Q+TemAtn")[3:5] == ["n/a", "2.000 ± 0.000"]
    assert md_row(text, "SpaAtn+Q")[3:5] == ["0.300 ± 0.000", "2.000 ± 0.000"]


def test_protocols_in_order_official_first(git):
    text = render(report_of(git, exp_show(git, evals(0, {}), [])), "cmd")
    official = text.index("## synthetic, official protocol")
    torchreid = text.index("## synthetic, torchreid protocol")
    assert official < torchreid
    assert "divided by all queries" in text[official:torchreid]
    assert "queries without a valid match are skipped" in text[torchreid:]


def test_default_seeds_are_those_with_experiments(git):
    assert report_of(git, three_seeds(git)).seeds == (0, 1, 2)


def test_chart_is_a_png_of_the_fixed_size(git, tmp_path):
    report = report_of(git, three_seeds(git, skip=("t1-s2-nodiv",)), seeds=[0, 1, 2])
    path = tmp_path / "plots" / "table1.png"
    draw_chart(report, path)
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (round(CHART_WIDTH * CHART_DPI),
                              round(CHART_PANEL_HEIGHT * CHART_DPI))
    assert os.listdir(path.parent) == ["table1.png"]


def test_chart_leaves_no_partial_file_on_error(git, tmp_path, monkeypatch):
    report = report_of(git, exp_show(git, evals(0, {}), []))

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        draw_chart(report, tmp_path / "table1.png")
    assert os.listdir(tmp_path) == []


def write_inputs(tmp_path, show: list[dict]):
    params = tmp_path / "params.yaml"
    params.write_text("seed: 0\nmodel:\n  K: 6\n")
    show_path = tmp_path / "show.json"
    show_path.write_text(json.dumps(show))
    out, chart = tmp_path / "out" / "report.md", tmp_path / "out" / "table1.png"
    argv = ["--params", str(params), "--json", str(out.with_suffix(".json")), "--out", str(out),
            "--chart", str(chart), "--show-json", str(show_path)]
    return argv, out, chart


def test_main_writes_report_and_chart_atomically(git, tmp_path, capsys):
    argv, out, chart = write_inputs(tmp_path, exp_show(
        git, evals(0, {}, dataset="mars") + evals(0, {}), []))
    main(argv, read=git.read)
    assert sorted(os.listdir(out.parent)) == ["report.json", "report.md", "table1.png"]  # no temps
    text = out.read_text()
    data = json.loads(out.with_suffix(".json").read_text())
    assert [(s["dataset"], s["protocol"]) for s in data["sections"]] == [
        ("mars", "official"), ("mars", "torchreid"), ("synthetic", "official"),
        ("synthetic", "torchreid")]
    assert render_markdown(from_data(data)) == text  # the markdown is the data, rendered
    assert text.startswith("# ") and "--show-json" in text
    assert "python -m tools.experiments.report" in text
    with Image.open(chart) as image:  # two datasets: two panels
        assert image.size == (round(CHART_WIDTH * CHART_DPI),
                              round(2 * CHART_PANEL_HEIGHT * CHART_DPI))
    printed = capsys.readouterr().out
    assert "Table 1, mars, official protocol" in printed and "Table 2, synthetic" in printed
    main(argv, read=git.read)
    assert out.read_text() == text  # deterministic


def test_main_leaves_no_partial_file_on_error(git, tmp_path, monkeypatch):
    argv, out, _ = write_inputs(tmp_path, exp_show(git, evals(0, {}), []))
    out.parent.mkdir()
    out.write_text("previous report\n")

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        main(argv, read=git.read)
    assert out.read_text() == "previous report\n"
    assert os.listdir(out.parent) == ["report.md"]


def test_no_baseline_commit_is_a_clear_error(git, tmp_path):
    show = exp_show(git, evals(0, {}), [])[:1]  # the workspace only
    argv, _, _ = write_inputs(tmp_path, show)
    with pytest.raises(SystemExit, match=r"^error: `dvc exp show --json` has no baseline commit "
                                         r"entry .*; it lists: workspace$"):
        main(argv, read=git.read)


def test_head_not_listed_is_a_clear_error(git):
    with pytest.raises(ReportError, match=f"has no entry for the baseline commit {'b' * 40}"):
        report_of(git, exp_show(git, evals(0, {}), []), head="b" * 40)


def test_baseline_without_results_is_a_clear_error(git, tmp_path):
    show = exp_show(git, evals(0, {}), [])
    git.commits[HEAD] = {}
    argv, _, _ = write_inputs(tmp_path, show)
    with pytest.raises(SystemExit, match=r"^error: baseline commit a+: path "
                                         r"'metrics/eval/synthetic-0.json' does not exist in "
                                         r"'a+'; run `make repro` and commit metrics/eval$"):
        main(argv, read=git.read)


def test_unreadable_json_is_a_clear_error(git, tmp_path):
    argv, _, _ = write_inputs(tmp_path, [])
    (tmp_path / "show.json").write_text("Traceback (most recent call last):\n")
    with pytest.raises(SystemExit, match=r"^error: .*show.json: expected the JSON output of "
                                         r"`dvc exp show --json`"):
        main(argv, read=git.read)
    (tmp_path / "show.json").write_text('{"rev": "workspace"}')
    with pytest.raises(SystemExit, match=r"^error: .*expected a JSON list of revisions"):
        main(argv, read=git.read)


def test_eval_file_is_where_dvc_yaml_writes_it():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    outs = [next(iter(o)) if isinstance(o, dict) else o for o in stages["evaluate"]["outs"]]
    pattern = EVAL_FILE.format(run=run_name("${item.dataset}", "${item.split}"))
    assert pattern in outs


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_show_reads_a_file_of_a_commit(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "metrics" / "eval").mkdir(parents=True)
    evaluation = evals(0, {})[0]
    (repo / EVAL_FILE.format(run=run_name("synthetic", 0))).write_text(json.dumps(evaluation))
    run(repo, "git", "init", "-q")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-q", "-m", "results")
    rev = run(repo, "git", "rev-parse", "HEAD", stdout_only=True).strip()
    (repo / EVAL_FILE.format(run=run_name("synthetic", 0))).write_text("changed, not committed")
    monkeypatch.chdir(repo)
    assert json.loads(git_show(rev, "metrics/eval/synthetic-0.json")) == evaluation
    with pytest.raises(FileNotFoundError, match=f"^path 'metrics/eval/mars-0.json' does not "
                                                f"exist in '{rev}'$"):
        git_show(rev, "metrics/eval/mars-0.json")
    show = [{"rev": rev, "name": "main", "data": rev_data(rev, params_of([evaluation])),
             "error": None, "experiments": None}]
    report = build_report(copy.deepcopy(show), base_seed=0, base_k=6)  # git show by default
    assert row(report.table1["synthetic", "official"], "Baseline").rank1 == Stat(0.1, 0.0, 1)


def test_cnn_seed_rows_come_from_the_cs_experiments(git):
    """The default pipeline at CNN seeds 1 and 2 (experiments cs-s1, cs-s2: top-level seed, the
    heads' seed the params' own): Baseline 0.70 (commit), 0.74, 0.66 -> 70.0 ± sqrt(32/3) 3.3;
    the section is rendered beside Table 1; without a cs- experiment there is none."""
    base = evals(0, {"baseline": 0.70})
    exps = [experiment(git, f"cs-s{s}", evals(s, {"baseline": v}),
                       params={"attention": {"seed": 0}})
            for s, v in ((1, 0.74), (2, 0.66))]
    report = report_of(git, exp_show(git, base, exps), cnn_seed=0)
    assert report.cnn_seeds == (0, 1, 2)
    baseline = row(report.cnn["synthetic", "official"], "Baseline")
    assert baseline.experiments == ("baseline commit", "cs-s1", "cs-s2")
    assert baseline.rank1.mean == pytest.approx(0.70)
    assert baseline.rank1.std == pytest.approx((32 / 3) ** 0.5 / 100)
    assert [r.label for r in report.cnn["synthetic", "official"]] == [
        "Baseline", "SpaAtn+Q", "SpaAtn+Q+TemAtn", "SpaAtn+Q+TemAtn+Ind"]
    text = render(report, "cmd")
    assert "### Over CNN seeds, schedule per_set" in text and "`seed` 0, 1, 2" in text
    section = text[text.index("### Over CNN seeds, schedule per_set"):]
    assert md_row(section, "Baseline")[1].startswith("70.0 ± 3.3")
    alone = report_of(git, exp_show(git, base, []), cnn_seed=0)
    assert alone.cnn == {} and "### Over CNN seeds, schedule per_set" not in render(alone, "cmd")


def test_rev_that_is_no_commit_is_refused_before_dvc_runs(tmp_path, monkeypatch):
    """`make report REV=...` names the commit the experiments were run from; a name git does
    not know is refused in one line, without running dvc."""
    import tools.experiments.show as show

    def no_dvc(*args, **kwargs):
        raise AssertionError("dvc ran")

    monkeypatch.setattr(show, "dvc", no_dvc)
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  video: [synthetic]\n  splits: [0]\n")
    with pytest.raises(SystemExit, match=r"^error: --rev no-such-commit: not a commit of this "
                                         r"repository$"):
        main(["--params", str(params), "--json", str(tmp_path / "r.json"), "--out",
              str(tmp_path / "r.md"), "--chart", str(tmp_path / "c.png"), "--rev",
              "no-such-commit"])
    assert not list(tmp_path.glob("r.*"))


def test_rev_reads_k_and_the_seeds_base_from_that_commits_params(git, tmp_path):
    """`make report REV=<commit>`: K and Table 1's seed come from that commit's params.yaml, not
    from the workspace's, which has moved on (K = 4, attention.seed 5): the commit's own K = 6
    row is the baseline commit's, K = 4 its experiment, and nothing reads "missing"."""
    exps = [experiment(git, "t2-k4", evals(0, {"temporal": 0.40}), params={"model": {"K": 4}})]
    argv, out, _ = write_inputs(tmp_path, exp_show(git, evals(0, {"temporal": 0.60}), exps))
    git.commits[HEAD]["params.yaml"] = "seed: 0\nmodel:\n  K: 6\n"
    (tmp_path / "params.yaml").write_text("seed: 0\nmodel:\n  K: 4\nattention:\n  seed: 5\n")
    main([*argv, "--rev", HEAD], read=git.read)
    data = json.loads(out.with_suffix(".json").read_text())
    assert (data["base_k"], data["base_seed"], data["seeds"]) == (6, 0, [0])
    rows = {r["label"]: r for r in data["sections"][0]["table2"]}
    assert rows["K = 6"]["experiments"] == ["baseline commit"]
    assert rows["K = 6"]["rank1"]["mean"] == pytest.approx(0.60)
    assert rows["K = 4"]["experiments"] == ["t2-k4"]
    assert rows["K = 4"]["rank1"]["mean"] == pytest.approx(0.40)
    assert set(data["problems"]) == {"t1-s0-width", "t1-s0-uniform", "t1-s0-nodiv",
                                     "t1-s0-sparse", "t1-s0-maxpool", "t2-k1", "t2-k2",
                                     "t2-k8"}  # not "t2-k6", not the baseline commit


def test_rev_without_readable_params_is_one_line(git, tmp_path):
    argv, out, _ = write_inputs(tmp_path, exp_show(git, evals(0, {}), []))
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--rev", HEAD], read=git.read)
    assert exit_.value.code == (f"error: --rev {HEAD}: path 'params.yaml' does not exist in "
                                f"'{HEAD}'")
    git.commits[HEAD]["params.yaml"] = "model:\n  K: 0\n"
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--rev", HEAD], read=git.read)
    assert exit_.value.code == (f"error: {HEAD}:params.yaml: model.K: expected a value >= 1, "
                                "got 0")
    assert not out.parent.exists()


@pytest.mark.parametrize(("seeds", "expected"), [
    (["0", "0"], "SEEDS (--seeds): expected each seed once, got 0 0 (repeats 0)"),
    (["-1"], "SEEDS (--seeds): expected values of attention.seed, integers >= 0 and <= "
             "18446744073709551615, got '-1'"),
    (["two"], "SEEDS (--seeds): expected values of attention.seed, integers >= 0 and <= "
              "18446744073709551615, got 'two'"),
])
def test_repeated_or_invalid_seeds_are_refused_before_dvc_runs(tmp_path, monkeypatch, seeds,
                                                               expected):
    """SEEDS="0 0" counted seed 0 twice ("seeds found 2/2"); SEEDS=-1 reported rows of an
    experiment no check lets run. One line naming SEEDS and the range; no dvc, no file."""
    import tools.experiments.report as report
    import tools.experiments.show as show

    def no_dvc(*args, **kwargs):
        raise AssertionError("dvc ran")

    monkeypatch.setattr(show, "dvc", no_dvc)
    monkeypatch.setattr(report, "git_head", lambda rev: HEAD)
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  video: [synthetic]\n  splits: [0]\n")
    with pytest.raises(SystemExit) as exit_:
        main(["--params", str(params), "--json", str(tmp_path / "r.json"), "--out",
              str(tmp_path / "r.md"), "--chart", str(tmp_path / "c.png"), "--seeds", *seeds])
    assert exit_.value.code == f"error: {expected}"
    assert not list(tmp_path.glob("r.*"))


def test_a_row_combines_each_figure_over_the_seeds_that_measured_it():
    """aggregate_row on hand-made results of two seeds: rank-1 and its interval over both; the
    overlap of K = 1 (measured, no value) n/a, a model without maps missing, the Baseline's n/a;
    the ground-truth figures n/a where unmeasured; a correlation whose bounds come from another
    seed than its value gets no interval; a seed without results is named missing."""
    from tools.experiments.cells import Cell
    from tools.experiments.tables import aggregate_row

    def results(rank1: float, attention: dict, heads: dict | None = None) -> dict:
        entry = {"rank1": {"mean": rank1, "std": 0.0, "lo": rank1 - 0.1, "hi": rank1 + 0.1},
                 "mAP": {"mean": rank1 / 2, "std": 0.0}, "num_valid_queries": 10}
        return {"results": {"s": {"spatial": {"official": entry}}},
                "attention": {"s": {"spatial": attention}},
                "heads": {"s": {"spatial": heads or {}}}}

    cells = [Cell("SpaAtn+Q", "spatial", seed, f"e{seed}", ()) for seed in range(3)]
    resolved = {cells[0]: results(0.5, {"overlap": None, "entropy": {"mean": 1.0, "std": 0.2},
                                        "visibility_corr": {"mean": 0.3, "std": 0.0}}),
                cells[1]: results(0.7, {"overlap": {"mean": None}, "entropy": {"mean": 2.0}},
                                  {"visibility_lo": 0.1, "visibility_hi": 0.4}),
                cells[2]: None}
    row = aggregate_row(cells, resolved, "s", "official")
    assert (row.rank1.mean, row.rank1.seeds, row.rank1_ci) == (
        pytest.approx(0.6), 2, pytest.approx((0.5, 0.7)))
    assert row.mean_ap_ci is None and row.valid_queries == 10.0  # no seed has mAP bounds
    assert row.overlap == "n/a" and row.entropy == Stat(1.5, 0.5, 2)
    assert row.person == "n/a" and row.visibility == Stat(0.3, 0.0, 1)
    assert row.visibility_ci is None  # its bounds are the other seed's
    assert (row.seeds_found, row.seeds_wanted, row.experiments) == (2, 3, ("e0", "e1",
                                                                            "e2 (missing)"))
    bare = {cell: results(0.5, {}) for cell in cells}
    assert aggregate_row(cells, bare, "s", "official").overlap == MISSING  # maps not measured
    base = [Cell("Baseline", "baseline", 0, None, ())]
    baseline = aggregate_row(base, {base[0]: {"results": {"s": {"baseline": {"official": {
        "rank1": {"mean": 0.4}}}}}}}, "s", "official")
    assert (baseline.overlap, baseline.rank1, baseline.mean_ap, baseline.experiments) == (
        "n/a", Stat(0.4, 0.0, 1), MISSING, ("baseline commit",))
