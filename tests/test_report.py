"""Tests of the report of Tables 1 and 2 (pipeline/report.py) on hand-made `dvc exp show --json`
outputs: where each row is read from, the mean ± std over seeds, missing rows, the paper's
numbers, the chart and the atomic writes. No dvc is run."""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from pipeline.report import (
    CHART_DPI,
    CHART_PANEL_HEIGHT,
    CHART_WIDTH,
    MISSING,
    ReportError,
    Stat,
    build_report,
    draw_chart,
    main,
    render_markdown,
)

HEAD = "a" * 40
MODELS = ("baseline", "spatial", "temporal", "joint")


def results_json(seed: int, rank1: dict[str, float], *, dataset: str = "synthetic",
                 split_std: float = 0.0, attention: bool = True) -> dict:
    """A metrics/results.json: rank-1 per model as given (others 0.1), mAP = rank-1 - 0.1, both
    protocols (torchreid = official + 0.05), ``split_std`` as every std, and the attention
    overlap (0.3) and entropy (2.0) of the attention models unless ``attention`` is False."""
    def stat(value: float) -> dict:
        return {"mean": value, "std": split_std}

    results = {dataset: {model: {
        protocol: {"splits": [0], "num_valid_queries": 64.0,
                   "rank1": stat(rank1.get(model, 0.1) + extra),
                   "mAP": stat(rank1.get(model, 0.1) - 0.1 + extra)}
        for protocol, extra in (("official", 0.0), ("torchreid", 0.05))} for model in MODELS}}
    out = {"seed": seed, "results": results}
    if attention:
        out["attention"] = {dataset: {model: {"overlap": stat(0.3), "entropy": stat(2.0)}
                                      for model in MODELS if model != "baseline"}}
    return out


def rev_data(results: dict | None, params: dict | None = None) -> dict:
    metrics = {} if results is None else {"metrics/results.json": {"data": results}}
    return {"rev": "0" * 40, "timestamp": None, "metrics": metrics,
            "params": {"params.yaml": {"data": params or {}}}, "deps": {}, "outs": {}, "meta": {}}


def experiment(name: str, results: dict | None, *, params: dict | None = None,
               error: dict | None = None, state: str | None = None) -> dict:
    """One experiment entry of a baseline commit's ``experiments``."""
    run = {"rev": "1" * 40, "name": name, "data": rev_data(results, params), "error": error,
           "experiments": None}
    executor = None if state is None else {"state": state, "name": None, "local": None}
    return {"revs": [run], "executor": executor, "name": name}


def exp_show(baseline: dict, experiments: list[dict], sha: str = HEAD) -> list[dict]:
    """A `dvc exp show --json` output: the workspace and one baseline commit."""
    return [{"rev": "workspace", "name": None, "data": rev_data(baseline), "error": None,
             "experiments": None},
            {"rev": sha, "name": "main", "data": rev_data(baseline), "error": None,
             "experiments": experiments or None}]


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


def three_seeds(skip: tuple[str, ...] = ()) -> list[dict]:
    base = results_json(0, {"baseline": 0.26, "spatial": 0.90}, split_std=0.012)
    exps = [experiment(f"t1-s{s}", results_json(s, {"baseline": 0.26 + s / 100}),
                       params={"seed": s}) for s in (1, 2)]
    exps += [experiment(f"t1-s{s}-nodiv", results_json(s, {"spatial": v}),
                        params={"seed": s, "loss": {"diversity": "none"}})
             for s, v in NODIV.items()]
    return exp_show(base, [e for e in exps if e["name"] not in skip])


def test_rows_come_from_their_experiments_mean_and_std_over_seeds():
    report = build_report(three_seeds(), base_seed=0, base_k=6, seeds=[0, 1, 2], head=HEAD)
    rows = report.table1["synthetic", "official"]
    spa = row(rows, "SpaAtn")
    assert spa.experiments == ("t1-s0-nodiv", "t1-s1-nodiv", "t1-s2-nodiv")
    assert spa.rank1.mean == pytest.approx(0.55) and spa.rank1.std == pytest.approx(0.0014 ** 0.5)
    assert spa.seeds_found == 3
    # Baseline: 0.26 (baseline commit), 0.27 (t1-s1), 0.28 (t1-s2): 27.0 ± sqrt(2/3) 0.8.
    base = row(rows, "Baseline")
    assert base.experiments == ("baseline commit", "t1-s1", "t1-s2")
    assert base.rank1.mean == pytest.approx(0.27)

    text = render_markdown(report, "python -m pipeline.report")
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


def test_one_seed_shows_the_split_std():
    show = exp_show(results_json(0, {"temporal": 0.515}, split_std=0.0234), [])
    report = build_report(show, base_seed=0, base_k=6, seeds=[0])
    stat = row(report.table1["synthetic", "official"], "SpaAtn+Q+TemAtn").rank1
    assert stat == Stat(0.515, 0.0234, 1)


def test_missing_and_failed_experiments_show_missing_never_zero():
    show = three_seeds(skip=("t1-s1-nodiv", "t1-s2-nodiv"))
    failed = experiment("t1-s2-nodiv", None, error={"type": "ReproductionError", "msg": "boom"})
    show[1]["experiments"].append(failed)
    report = build_report(show, base_seed=0, base_k=6, seeds=[0, 1, 2])
    spa = row(report.table1["synthetic", "official"], "SpaAtn")
    assert spa.seeds_found == 1 and spa.rank1 == Stat(0.50, 0.0, 1)
    text = render_markdown(report, "python -m pipeline.report")
    cells = md_row(text, "SpaAtn")
    assert cells[-2] == "1/3"
    assert "t1-s1-nodiv (missing)" in cells[-3] and "t1-s2-nodiv (missing)" in cells[-3]
    # No experiment at all for SpaAtn+Q': every number cell says missing.
    sparse = md_row(text, "SpaAtn+Q'")
    assert sparse[1:5] == [MISSING] * 4 and sparse[-2] == "0/3" and sparse[-1] == MISSING
    assert not any(c.startswith("0.0") for c in sparse)
    assert "`t1-s2-nodiv`: failed (ReproductionError: boom)" in text
    assert "`t1-s1-nodiv`: not run" in text


def test_two_of_three_seeds():
    report = build_report(three_seeds(skip=("t1-s2-nodiv",)), base_seed=0, base_k=6,
                          seeds=[0, 1, 2])
    cells = md_row(render_markdown(report, "cmd"), "SpaAtn")
    assert cells[1] == "53.0 ± 3.0" and cells[-2] == "2/3"  # mean of 0.50 and 0.56


def test_unfinished_or_mislabelled_experiments_are_missing():
    base = results_json(0, {})
    show = exp_show(base, [
        experiment("t1-s0-nodiv", results_json(0, {"spatial": 0.7}), state="running"),
        # the params say diversity is still hellinger: not the SpaAtn row
        experiment("t1-s0-sparse", results_json(0, {"spatial": 0.7}),
                   params={"loss": {"diversity": "hellinger"}}),
        # a default-pipeline experiment for seed 1 whose results are the seed-0 ones
        experiment("t1-s1", results_json(0, {"baseline": 0.7}), params={"seed": 1}),
    ])
    report = build_report(show, base_seed=0, base_k=6, seeds=[0, 1])
    rows = report.table1["synthetic", "official"]
    assert row(rows, "SpaAtn").seeds_found == 0 and row(rows, "SpaAtn").rank1 == MISSING
    assert row(rows, "SpaAtn+Q'").rank1 == MISSING
    assert row(rows, "Baseline").seeds_found == 1
    assert "running" in report.problems["t1-s0-nodiv"]
    assert "loss.diversity=hellinger" in report.problems["t1-s0-sparse"]
    assert "seed 0, not 1" in report.problems["t1-s1"]


def test_paper_numbers_for_mars_and_none_for_synthetic():
    mars = build_report(exp_show(results_json(0, {}, dataset="mars"), []), base_seed=0,
                        base_k=6)
    text = render_markdown(mars, "cmd")
    assert "paper mAP (mars)" in text
    cells = md_row(text, "Baseline")
    assert "73.4" in cells and "58.1" in cells  # the paper's MARS rank-1 and mAP
    assert "77.1" in md_row(text, "6")  # Table 2, K = 6 on MARS
    synthetic = render_markdown(build_report(exp_show(results_json(0, {}), []), base_seed=0,
                                             base_k=6), "cmd")
    assert "n/a (no paper number)" in md_row(synthetic, "Baseline")
    assert "paper mAP" not in synthetic


def test_table2_reads_t2_k_and_the_baseline_for_the_params_k():
    base = results_json(0, {"temporal": 0.60})
    exps = [experiment(f"t2-k{k}", results_json(0, {"temporal": k / 10}),
                       params={"model": {"K": k}}) for k in (1, 2, 4)]
    exps.append(experiment("t2-k6", results_json(0, {"temporal": 0.99}),
                           params={"model": {"K": 6}}))  # K = 6 is not read from an experiment
    report = build_report(exp_show(base, exps), base_seed=0, base_k=8)
    rows = report.table2["synthetic", "official"]
    assert [r.label for r in rows] == ["K = 1", "K = 2", "K = 4", "K = 6", "K = 8"]
    assert [r.experiments for r in rows] == [("t2-k1",), ("t2-k2",), ("t2-k4",),
                                             ("t2-k6",), ("baseline commit",)]
    assert rows[0].rank1.mean == pytest.approx(0.1)
    assert rows[3].rank1.mean == pytest.approx(0.99)
    assert rows[4].rank1.mean == pytest.approx(0.60)
    text = render_markdown(report, "cmd")
    assert md_row(text, "4")[1:3] == ["40.0 ± 0.0", "30.0 ± 0.0"]
    assert md_row(text, "8")[-1] == "baseline commit"


def test_old_results_without_attention_show_missing_maps():
    show = exp_show(results_json(0, {}, attention=False), [])
    text = render_markdown(build_report(show, base_seed=0, base_k=6), "cmd")
    assert md_row(text, "SpaAtn+Q")[3:5] == [MISSING, MISSING]
    assert md_row(text, "SpaAtn+Q")[1] == "10.0 ± 0.0"
    # Two seeds with maps, one from before: the maps' mean is over the two, and says so.
    show = three_seeds()
    old = show[1]["experiments"][-1]["revs"][0]["data"]["metrics"]["metrics/results.json"]["data"]
    del old["attention"]
    text = render_markdown(build_report(show, base_seed=0, base_k=6, seeds=[0, 1, 2]), "cmd")
    assert md_row(text, "SpaAtn")[3] == "0.300 ± 0.000 (2/3 seeds)"


def test_overlap_of_one_map_is_not_applicable():
    base = results_json(0, {})
    base["attention"]["synthetic"]["temporal"]["overlap"] = None  # K = 1: no pairs of maps
    text = render_markdown(build_report(exp_show(base, []), base_seed=0, base_k=6), "cmd")
    assert md_row(text, "SpaAtn+Q+TemAtn")[3:5] == ["n/a", "2.000 ± 0.000"]
    # `dvc exp show --json` leaves the null out of the metrics: still not applicable, not missing.
    del base["attention"]["synthetic"]["temporal"]["overlap"]
    text = render_markdown(build_report(exp_show(base, []), base_seed=0, base_k=6), "cmd")
    assert md_row(text, "SpaAtn+Q+TemAtn")[3:5] == ["n/a", "2.000 ± 0.000"]


def test_protocols_in_order_official_first():
    text = render_markdown(build_report(exp_show(results_json(0, {}), []), base_seed=0,
                                        base_k=6), "cmd")
    official = text.index("## synthetic, official protocol")
    torchreid = text.index("## synthetic, torchreid protocol")
    assert official < torchreid
    assert "divided by all queries" in text[official:torchreid]
    assert "queries without a valid match are skipped" in text[torchreid:]


def test_default_seeds_are_those_with_experiments():
    report = build_report(three_seeds(), base_seed=0, base_k=6)
    assert report.seeds == (0, 1, 2)


def test_chart_is_a_png_of_the_fixed_size(tmp_path):
    show = three_seeds(skip=("t1-s2-nodiv",))
    report = build_report(show, base_seed=0, base_k=6, seeds=[0, 1, 2])
    path = tmp_path / "plots" / "table1.png"
    draw_chart(report, path)
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (round(CHART_WIDTH * CHART_DPI),
                              round(CHART_PANEL_HEIGHT * CHART_DPI))
    assert os.listdir(path.parent) == ["table1.png"]


def test_chart_leaves_no_partial_file_on_error(tmp_path, monkeypatch):
    report = build_report(exp_show(results_json(0, {}), []), base_seed=0, base_k=6)

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
    argv = ["--params", str(params), "--out", str(out), "--chart", str(chart),
            "--show-json", str(show_path)]
    return argv, out, chart


def test_main_writes_report_and_chart_atomically(tmp_path, capsys):
    base = results_json(0, {}, dataset="mars")
    base["results"]["synthetic"] = results_json(0, {})["results"]["synthetic"]
    argv, out, chart = write_inputs(tmp_path, exp_show(base, []))
    main(argv)
    assert sorted(os.listdir(out.parent)) == ["report.md", "table1.png"]  # no temp files
    text = out.read_text()
    assert text.startswith("# ") and "--show-json" in text
    with Image.open(chart) as image:  # two datasets: two panels
        assert image.size == (round(CHART_WIDTH * CHART_DPI),
                              round(2 * CHART_PANEL_HEIGHT * CHART_DPI))
    printed = capsys.readouterr().out
    assert "Table 1, mars, official protocol" in printed and "Table 2, synthetic" in printed
    main(argv)
    assert out.read_text() == text  # deterministic


def test_main_leaves_no_partial_file_on_error(tmp_path, monkeypatch):
    argv, out, _ = write_inputs(tmp_path, exp_show(results_json(0, {}), []))
    out.parent.mkdir()
    out.write_text("previous report\n")

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        main(argv)
    assert out.read_text() == "previous report\n"
    assert os.listdir(out.parent) == ["report.md"]


def test_no_baseline_commit_is_a_clear_error(tmp_path):
    show = exp_show(results_json(0, {}), [])[:1]  # the workspace only
    argv, _, _ = write_inputs(tmp_path, show)
    with pytest.raises(SystemExit, match=r"^error: `dvc exp show --json` has no baseline commit "
                                         r"entry .*; it lists: workspace$"):
        main(argv)


def test_head_not_listed_is_a_clear_error():
    with pytest.raises(ReportError, match=f"has no entry for the baseline commit {'b' * 40}"):
        build_report(exp_show(results_json(0, {}), []), base_seed=0, base_k=6, head="b" * 40)


def test_baseline_without_results_is_a_clear_error(tmp_path):
    show = exp_show(results_json(0, {}), [])
    show[1]["data"]["metrics"] = {}
    argv, _, _ = write_inputs(tmp_path, show)
    with pytest.raises(SystemExit, match=r"^error: baseline commit a+: no readable "
                                         r"metrics/results.json"):
        main(argv)


def test_unreadable_json_is_a_clear_error(tmp_path):
    argv, _, _ = write_inputs(tmp_path, [])
    (tmp_path / "show.json").write_text("Traceback (most recent call last):\n")
    with pytest.raises(SystemExit, match=r"^error: .*show.json: expected the JSON output of "
                                         r"`dvc exp show --json`"):
        main(argv)
    (tmp_path / "show.json").write_text('{"rev": "workspace"}')
    with pytest.raises(SystemExit, match=r"^error: .*expected a JSON list of revisions"):
        main(argv)
