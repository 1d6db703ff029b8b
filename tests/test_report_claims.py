"""Tests of the claims of Table 1 read from paired intervals (tools/experiments/tables.py:
paired_rows, ordering, gain_claims, claims; sources.read_results' per-query scores) on
hand-made results: 8 test queries of 6 identities, each row's per-query rank-1 hits and APs chosen
here, the evaluate outputs written as the evaluate stage writes them (per_query_record) and read
back through the report's own sources (the fake `git show` of tests/test_report.py). The expected
intervals are those of tools.experiments.paired.compare / pipeline.metrics.paired_bootstrap_splits
on the same arrays."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.metrics import paired_bootstrap_splits
from pipeline.stages.evaluate import per_query_record
from tests.test_report import FakeGit, exp_show, experiment, report_of
from tests.test_sweep_report import result
from tools.experiments.cells import table1_cells
from tools.experiments.paired import Queries, compare
from tools.experiments.show import collect_sources
from tools.experiments.sources import read_results, resolve
from tools.experiments.tables import (
    CONTROL_GAIN,
    FULL_MODEL_GAIN,
    aggregate,
    claims,
    gain_claims,
    no_pairs,
    ordering,
    paired_rows,
)

MODELS = ("baseline", "spatial", "temporal", "joint")
# the query identity of each of the 8 test queries: identities 0 and 3 have two queries each
PID = np.array([0, 0, 1, 2, 3, 3, 4, 5])
# per-query (rank-1 hits, APs) of each row's model
Q = ([1, 1, 1, 1, 1, 0, 1, 1], [1.0, 1.0, 0.75, 1.0, 0.5, 0.25, 1.0, 1.0])  # SpaAtn+Q: 87.5, 81.25
# the width control: behind SpaAtn+Q on every identity but 4 (rank-1 25.0, mAP 50.0)
WIDTH = ([0, 1, 0, 0, 0, 0, 1, 0], [0.25, 1.0, 0.25, 0.5, 0.25, 0.25, 1.0, 0.5])
# uniform maps: rank-1 12.5 points behind SpaAtn+Q, but ahead on identity 3 (+1 on 2, 4; -1 on
# 3): the paired interval holds 0; every AP 0.03 below SpaAtn+Q's: an interval above 0, a gain
# under CONTROL_GAIN
UNIFORM = ([1, 1, 0, 1, 1, 1, 0, 1], [a - 0.03 for a in Q[1]])
BASELINE = ([0, 1, 0, 1, 0, 0, 1, 0], [0.25, 1.0, 0.5, 1.0, 0.25, 0.25, 1.0, 0.25])
JOINT = ([1, 1, 1, 1, 1, 0, 1, 1], [1.0, 1.0, 0.75, 1.0, 0.5, 0.25, 1.0, 1.0])
TEMPORAL = UNIFORM


def evaluation(seed: int, scores: dict[str, tuple[list, list]], split: int = 0) -> dict:
    """One evaluate output of the synthetic set: per model its rank-1 and mAP (the means of its
    per-query hits and APs), the same under torchreid, and the per-query scores under the
    official protocol as the evaluate stage stores them."""
    models = {}
    for model in MODELS:
        hit, ap = scores[model]
        entry = {"rank1": float(np.mean(hit)), "mAP": float(np.mean(ap)),
                 "num_valid_queries": len(PID), "num_queries": len(PID)}
        models[model] = {"official": dict(entry), "torchreid": dict(entry)}
    record = per_query_record({model: {"pid": PID, "hit": np.array(hit), "ap": np.array(ap)}
                               for model, (hit, ap) in scores.items()})
    return {"dataset": "synthetic", "split": split, "seed": seed, "models": models,
            "per_query": {"official": record}}


def commit_scores(**spatial) -> dict[str, tuple[list, list]]:
    """The four models of a run of the default pipeline (``spatial``: another spatial model)."""
    return {"baseline": BASELINE, "spatial": spatial.get("spatial", Q), "temporal": TEMPORAL,
            "joint": JOINT}


ROW_RUNS = {  # Table 1's experiments at a seed: (key, params, its spatial model)
    "width": ({"model": {"maps": "average"}}, WIDTH),
    "uniform": ({"model": {"maps": "uniform"}}, UNIFORM),
    "nodiv": ({"loss": {"diversity": "none"}}, Q),  # SpaAtn: SpaAtn+Q's very scores
}


def table1(seeds=(0,), per_query: bool = True, splits=(0,)) -> tuple[FakeGit, list[dict]]:
    """A `dvc exp show --json` of Table 1 at ``seeds`` (base seed 0): the default pipeline and
    the width control, uniform maps and SpaAtn rows at each seed (SpaAtn+Q' and MaxPool never
    ran); at seed s every score is the same (the seed's spread is not what is tested here)."""
    git = FakeGit()

    def runs(seed: int, scores: dict) -> list[dict]:
        out = [evaluation(seed, scores, split) for split in splits]
        if not per_query:
            for e in out:
                del e["per_query"]
        return out

    exps = [experiment(git, f"t1-s{s}", runs(s, commit_scores())) for s in seeds if s != 0]
    exps += [experiment(git, f"t1-s{s}-{key}", runs(s, commit_scores(spatial=spatial)),
                        params=params)
             for s in seeds for key, (params, spatial) in ROW_RUNS.items()]
    return git, exp_show(git, runs(0, commit_scores()), exps)


def resolved_of(git: FakeGit, show: list[dict], seeds=(0,)):
    """Table 1's cells and each one's results, as tools.experiments.report.build_report resolves
    them."""
    sources = collect_sources(show)
    cells = table1_cells(list(seeds), 0)
    return cells, {cell: resolve(cell, sources, lambda s: read_results(s, git.read))[0]
                   for cell in cells}


def queries(scores: tuple[list, list]) -> Queries:
    return Queries(PID, np.array(scores[0], dtype=np.float64),
                   np.round(np.array(scores[1], dtype=np.float64), 4))


def figures(r: dict[str, float]) -> str:
    """The paired figures of a claim: high vs low, the difference, its interval and half-width
    (percent), from a ``compare`` result."""
    lo, hi = 100 * r["lo"], 100 * r["hi"]
    return (f"{100 * r['b']:.1f} vs {100 * r['a']:.1f}, {100 * r['diff']:+.1f} "
            f"[{lo:+.1f}, {hi:+.1f}], half-width {(hi - lo) / 2:.1f}")


def test_read_results_keeps_each_splits_per_query_scores():
    git, show = table1(splits=(0, 1))
    sources = collect_sources(show)
    results, problem = read_results(sources.baseline, git.read)
    assert problem is None
    assert results["per_query"] == {"synthetic": {
        split: evaluation(0, commit_scores(), split)["per_query"] for split in (0, 1)}}
    git, show = table1(per_query=False)  # results scored before per-query scores were stored
    assert read_results(collect_sources(show).baseline, git.read)[0]["per_query"] == {}


def test_paired_rows_compare_two_rows_on_the_same_queries():
    """high - low on the official protocol: tools.experiments.paired.compare of the low row's runs
    (A) against the high row's (B), the same as paired_bootstrap_splits on the bare arrays;
    reversed, the difference changes sign; a row that never ran has none."""
    paired = paired_rows(*resolved_of(*table1()), "synthetic", "official")
    found = paired("SpaAtn+Q", "Width control")
    assert found == compare([{0: queries(WIDTH)}], [{0: queries(Q)}])
    assert found["rank1"] == paired_bootstrap_splits(
        [(np.array(WIDTH[0]), np.array(Q[0]), PID)])
    assert found["mAP"] == paired_bootstrap_splits(
        [(np.array(WIDTH[1]), np.array(Q[1]), PID)])
    rank1 = found["rank1"]
    assert (rank1["a"], rank1["b"], rank1["diff"]) == (0.25, 0.875, 0.625)
    assert rank1["lo"] > 0 and rank1["hi"] <= 1
    back = paired("Width control", "SpaAtn+Q")["rank1"]
    assert (back["a"], back["b"], back["diff"]) == (0.875, 0.25, -0.625)
    assert paired("SpaAtn+Q'", "SpaAtn") is None  # SpaAtn+Q' has no experiment
    # identical scores (SpaAtn's experiment scored SpaAtn+Q's very queries): exactly [0, 0]
    same = paired("SpaAtn+Q", "SpaAtn")
    assert same["rank1"] == {"a": 0.875, "b": 0.875, "diff": 0.0, "lo": 0.0, "hi": 0.0}
    assert same["mAP"]["lo"] == same["mAP"]["hi"] == same["mAP"]["diff"] == 0.0


def test_paired_rows_pair_every_seed_of_both_rows():
    """Two seeds: each row's runs are its seeds' (the baseline commit and t1-s1 for SpaAtn+Q,
    t1-s0-width and t1-s1-width for the control), compared as tools.experiments.paired.compare
    compares them."""
    seeds = (0, 1)
    cells, resolved = resolved_of(*table1(seeds), seeds)
    assert all(resolved[cell] is not None for cell in cells
               if cell.label in ("SpaAtn+Q", "Width control"))
    found = paired_rows(cells, resolved, "synthetic", "official")("SpaAtn+Q", "Width control")
    assert found == compare([{0: queries(WIDTH)}] * 2, [{0: queries(Q)}] * 2)


def test_paired_rows_give_none_without_comparable_per_query_scores():
    """Results from before per-query scores were stored, or rows whose runs cover other splits:
    no paired comparison (the claims fall back to the unpaired rule)."""
    paired = paired_rows(*resolved_of(*table1(per_query=False)), "synthetic", "official")
    assert paired("SpaAtn+Q", "Width control") is None
    git, show = table1()
    other = experiment(git, "t1-s0-width", [evaluation(0, commit_scores(spatial=WIDTH), s)
                                            for s in (0, 1)],
                       params={"model": {"maps": "average"}})
    show[1]["experiments"] = [other if e["name"] == "t1-s0-width" else e
                              for e in show[1]["experiments"]]
    paired = paired_rows(*resolved_of(git, show), "synthetic", "official")
    assert paired("SpaAtn+Q", "Width control") is None  # splits 0, 1 against split 0
    assert paired("SpaAtn+Q", "Uniform maps") is not None


def test_claims_take_their_verdicts_and_figures_from_the_paired_intervals():
    """Official protocol: each ordering's verdict from its paired interval (identical models:
    not resolved, [0, 0]); SpaAtn+Q against each control and the full model against Baseline
    hold only with the gain and an interval above 0."""
    cells, resolved = resolved_of(*table1())
    paired = paired_rows(cells, resolved, "synthetic", "official")
    rows = aggregate(cells, resolved, "synthetic", "official")

    def pair(high, low):
        return compare([{0: queries(low)}], [{0: queries(high)}])

    q_width, q_uniform, joint_base = pair(Q, WIDTH), pair(Q, UNIFORM), pair(JOINT, BASELINE)
    tem_q, ind_tem = pair(TEMPORAL, Q), pair(JOINT, TEMPORAL)
    # the cases this test is about, as the bootstrap resolves them
    assert q_width["rank1"]["lo"] > 0 and q_width["mAP"]["lo"] > 0
    assert q_uniform["rank1"]["diff"] >= CONTROL_GAIN and q_uniform["rank1"]["lo"] < 0
    assert q_uniform["mAP"]["diff"] < CONTROL_GAIN and q_uniform["mAP"]["lo"] > 0
    assert joint_base["rank1"]["lo"] > 0 and joint_base["mAP"]["lo"] > 0
    assert joint_base["mAP"]["diff"] >= FULL_MODEL_GAIN
    assert tem_q["rank1"]["lo"] < 0 < tem_q["rank1"]["hi"]
    assert ind_tem["rank1"]["lo"] < 0 < ind_tem["rank1"]["hi"]

    assert [c.line() for c in claims(rows, paired)][:11] == [
        "- SpaAtn+Q > SpaAtn+Q': not measured (missing)",  # never ran: no pairs
        "- SpaAtn+Q' > SpaAtn: not measured (missing)",
        "- SpaAtn+Q > SpaAtn: not resolved (87.5 vs 87.5, +0.0 [+0.0, +0.0], "
        "half-width 0.0)",
        f"- SpaAtn+Q+TemAtn > SpaAtn+Q: not resolved ({figures(tem_q['rank1'])})",
        f"- SpaAtn+Q+TemAtn+Ind > SpaAtn+Q+TemAtn: not resolved "
        f"({figures(ind_tem['rank1'])})",
        f"- SpaAtn+Q >= Width control + 4 rank-1: holds "
        f"({figures(q_width['rank1'])})",
        f"- SpaAtn+Q >= Width control + 4 mAP: holds "
        f"({figures(q_width['mAP'])})",
        # a gain of 12.5 points, but an interval that holds 0
        f"- SpaAtn+Q >= Uniform maps + 4 rank-1: does not hold "
        f"({figures(q_uniform['rank1'])})",
        # an interval above 0, but a gain of 3 points
        f"- SpaAtn+Q >= Uniform maps + 4 mAP: does not hold "
        f"({figures(q_uniform['mAP'])})",
        f"- SpaAtn+Q+TemAtn+Ind >= Baseline + 3 rank-1: holds "
        f"({figures(joint_base['rank1'])})",
        f"- SpaAtn+Q+TemAtn+Ind >= Baseline + 3 mAP: holds "
        f"({figures(joint_base['mAP'])})"]
    assert figures(q_width["rank1"]) == "87.5 vs 25.0, +62.5 [+40.0, +85.7], half-width 22.9"


def test_the_torchreid_protocol_keeps_the_unpaired_rule():
    """The per-query scores are the official protocol's: under torchreid no pairs, the old
    rule (identical rows: within the noise) and gains said to be unpaired."""
    cells, resolved = resolved_of(*table1())
    paired = paired_rows(cells, resolved, "synthetic", "torchreid")
    assert paired is no_pairs and paired("SpaAtn+Q", "Width control") is None
    lines = [c.line() for c in claims(aggregate(cells, resolved, "synthetic", "torchreid"),
                                      paired)]
    assert lines[2] == "- SpaAtn+Q > SpaAtn: within the noise (87.5 vs 87.5, +0.0; " \
                       "noise ±0.0)"
    assert lines[5:7] == [
        "- SpaAtn+Q >= Width control + 4 rank-1: holds (+62.50, unpaired)",
        "- SpaAtn+Q >= Width control + 4 mAP: holds (+31.25, unpaired)"]
    # a gain of 12.5 rank-1 points holds unpaired (the paired interval is what failed it above)
    assert lines[7] == ("- SpaAtn+Q >= Uniform maps + 4 rank-1: holds (+12.50, "
                        "unpaired)")


def test_build_report_pairs_table1_under_the_official_protocol_only():
    git, show = table1()
    report = report_of(git, show, seeds=[0])
    official = [c.line() for c in report.claims["synthetic", "official"]]
    torchreid = [c.line() for c in report.claims["synthetic", "torchreid"]]
    assert official[2] == ("- SpaAtn+Q > SpaAtn: not resolved (87.5 vs 87.5, +0.0 [+0.0, +0.0], "
                           "half-width 0.0)")
    assert official[5] == ("- SpaAtn+Q >= Width control + 4 rank-1: holds (87.5 vs 25.0, +62.5 "
                           "[+40.0, +85.7], half-width 22.9)")
    assert not any("half-width" in line or "]" in line for line in torchreid)
    assert torchreid[5].endswith(": holds (+62.50, unpaired)")
    cells, resolved = resolved_of(git, show)
    assert report.claims["synthetic", "official"] == claims(
        aggregate(cells, resolved, "synthetic", "official"),
        paired_rows(cells, resolved, "synthetic", "official"))


def test_ordering_with_a_paired_result_reads_its_interval():
    high, low = result("high", 0.6), result("low", 0.5)
    pair = {"a": 0.5, "b": 0.6, "diff": 0.1, "lo": 0.02, "hi": 0.18}
    assert ordering(high, low, paired=pair) == (
        "holds", "60.0 vs 50.0, +10.0 [+2.0, +18.0], half-width 8.0")
    assert ordering(high, low, paired={**pair, "lo": -0.02})[0] == "not resolved"
    assert ordering(high, low, paired={**pair, "lo": 0.0})[0] == "not resolved"  # 0 is in it
    assert ordering(high, low, paired={**pair, "diff": -0.1, "lo": -0.18, "hi": -0.02})[0] == \
        "does not hold"
    assert ordering(high, low) == ("holds", "60.0 vs 50.0, +10.0; noise ±0.0")  # unpaired


@pytest.mark.parametrize(("means", "lo", "verdict"), [
    ((0.60, 0.55), 0.01, "holds"),  # 5 points, interval above 0
    ((0.60, 0.55), 0.0, "does not hold"),  # 5 points, 0 at the interval's edge
    ((0.60, 0.55), -0.01, "does not hold"),  # 5 points, 0 inside the interval
    ((0.60, 0.57), 0.01, "does not hold"),  # 3 points, interval above 0
    ((0.60, 0.55), None, "holds"),  # 5 points, no per-query scores: the gain alone
    ((0.60, 0.57), None, "does not hold"),
])
def test_gain_claims_need_the_gain_and_an_interval_above_zero(means, lo, verdict):
    high, low = result("high", means[0], means[0]), result("low", means[1], means[1])
    calls = []

    def paired(h, l_):
        calls.append((h, l_))
        if lo is None:
            return None
        pair = {"a": means[1], "b": means[0], "diff": means[0] - means[1], "lo": lo, "hi": 0.1}
        return {"rank1": pair, "mAP": pair}

    found = gain_claims(high, low, 0.04, paired)
    assert calls == [("high", "low")]  # one paired comparison for both metrics
    assert [c.verdict for c in found] == [verdict, verdict]
    assert [c.claim for c in found] == ["high >= low + 4 rank-1", "high >= low + 4 mAP"]
    if lo is None:
        assert found[0].figures.endswith(", unpaired")
    else:
        assert found[0].figures.endswith(f"], half-width {(10 - 100 * lo) / 2:.1f}")
    assert gain_claims(high, result("low", None, None), 0.04, paired) == []  # not measured


def schedule_show(seeds=(0,), git: FakeGit | None = None, sha: str = "a" * 40,
                  skip: tuple[str, ...] = ()) -> tuple[FakeGit, list[dict]]:
    """A `dvc exp show --json` with Table 1 under both schedules on the two generated sets
    (experiments sc-per-s<seed>, sc-across-s<seed>): per set, +Ind scores TEMPORAL's very
    scores; across sets, +Ind scores JOINT and the Baseline Q's; both sets alike; the heads'
    maps measured against the ground truth (person mass 0.5). ``skip``: experiments not run."""
    git = git or FakeGit()
    per = {**commit_scores(), "joint": TEMPORAL}
    across = {**commit_scores(), "baseline": Q}
    exps = []
    for seed in seeds:
        for short, schedule, scores in (("per", "per_set", per), ("across", "across_sets", across)):
            if f"sc-{short}-s{seed}" in skip:
                continue
            runs = [dict(evaluation(seed, scores), dataset=name, attention={
                model: {"overlap": 0.3, "entropy": 2.0, "person": 0.5}
                for model in ("spatial", "temporal", "joint")})
                for name in ("synthetic", "synthetic2")]
            exps.append(experiment(git, f"sc-{short}-s{seed}", runs,
                                   params={"schedule": schedule}))
    return git, exp_show(git, [evaluation(0, commit_scores())], exps, sha)


def test_table1_under_both_schedules_reads_the_sc_experiments_and_pairs_across_with_per_set():
    git, show = schedule_show()
    report = report_of(git, show)
    assert list(report.schedules) == [("synthetic", "official"), ("synthetic", "torchreid"),
                                      ("synthetic2", "official"), ("synthetic2", "torchreid")]
    assert report.schedule_seeds == (0,)
    table = report.schedules["synthetic2", "official"]
    rows = {schedule: {r.label: r for r in found} for schedule, found in table.rows.items()}
    assert rows["per_set"]["SpaAtn+Q+TemAtn+Ind"].experiments == ("sc-per-s0",)
    assert rows["per_set"]["SpaAtn+Q+TemAtn+Ind"].rank1.mean == pytest.approx(np.mean(TEMPORAL[0]))
    assert rows["across_sets"]["SpaAtn+Q+TemAtn+Ind"].rank1.mean == pytest.approx(
        np.mean(JOINT[0]))
    # each row across sets against per set: tools.experiments.paired.compare on the same queries
    between = {b["label"]: b for b in table.between}
    expected = compare([{0: queries(TEMPORAL)}], [{0: queries(JOINT)}])
    assert between["SpaAtn+Q+TemAtn+Ind"]["rank1"] == pytest.approx(expected["rank1"])
    assert between["SpaAtn+Q+TemAtn+Ind"]["mAP"] == pytest.approx(expected["mAP"])
    assert between["SpaAtn+Q"]["rank1"]["diff"] == 0  # the same scores under both
    # within each schedule, +Ind against +TemAtn, paired: identical scores per set
    lines = {c.claim: c for c in table.claims["per_set"]}
    ind = lines["SpaAtn+Q+TemAtn+Ind > SpaAtn+Q+TemAtn"]
    assert ind.verdict == "not resolved" and "+0.0 [+0.0, +0.0]" in ind.figures
    across = {c.claim: c for c in table.claims["across_sets"]}
    assert across["SpaAtn+Q+TemAtn+Ind > SpaAtn+Q+TemAtn"].figures == figures(
        compare([{0: queries(TEMPORAL)}], [{0: queries(JOINT)}])["rank1"])
    # no map targets in the schedules' claims (the same rows would have them in Table 1's); the
    # full model's gain is there
    rows = table.rows["across_sets"]
    assert any("person mass" in c.claim for c in claims(rows))
    assert not any("person mass" in claim for claim in across)
    assert "SpaAtn+Q+TemAtn+Ind >= Baseline + 3 rank-1" in across
    # not paired under torchreid (no per-query scores stored for it)
    assert report.schedules["synthetic", "torchreid"].between[0]["rank1"] is None


def test_schedules_render_with_each_claim_naming_its_schedule_and_survive_report_json():
    from tests.test_report import render

    git, show = schedule_show()
    report = report_of(git, show)
    text = render(report)
    section = text[text.index("## Table 1 under both schedules"):]
    assert "### synthetic2, official protocol" in section
    assert "- across sets: SpaAtn+Q+TemAtn+Ind > SpaAtn+Q+TemAtn:" in section
    assert "- per set: SpaAtn+Q+TemAtn+Ind > SpaAtn+Q+TemAtn: not resolved" in section
    cells = next(line for line in section.splitlines()
                 if line.startswith("| SpaAtn+Q+TemAtn+Ind |")).split(" | ")
    diff = compare([{0: queries(TEMPORAL)}], [{0: queries(JOINT)}])["rank1"]
    assert cells[3].startswith(f"{100 * diff['diff']:+.1f} [")
    # without sc- experiments the report has no such section
    git, show = table1()
    alone = report_of(git, show)
    assert alone.schedules == {} and "## Table 1 under both schedules" not in render(alone)


def test_a_missing_schedule_experiment_is_listed_and_its_rows_say_missing():
    """The schedules' seeds are those of their experiments, whatever Table 1's seeds: seed 1 run
    across sets only shows per set's as missing."""
    git, show = schedule_show(seeds=(0, 1), skip=("sc-per-s1",))
    report = report_of(git, show, seeds=[0, 1, 2])
    assert report.schedule_seeds == (0, 1)
    assert report.problems["sc-per-s1"].startswith("not run")
    assert "sc-per-s2" not in report.problems
    table = report.schedules["synthetic", "official"]
    per = next(r for r in table.rows["per_set"] if r.label == "Baseline")
    across = next(r for r in table.rows["across_sets"] if r.label == "Baseline")
    assert (per.seeds_found, per.seeds_wanted, across.seeds_found) == (1, 2, 2)


def test_the_docs_block_shows_both_schedules_on_the_first_protocol_of_each_set(tmp_path):
    from tools.experiments.data import write_report
    from tools.project.docs.report import REPORT, schedules_block

    git, show = schedule_show()
    write_report(tmp_path / REPORT, report_of(git, show))
    block = schedules_block(tmp_path)
    assert "**synthetic, official protocol**" in block
    assert "**synthetic2, official protocol**" in block and "torchreid" not in block
    assert block.count("- across sets: SpaAtn+Q+TemAtn+Ind > SpaAtn+Q+TemAtn:") == 2
    git, show = table1()
    write_report(tmp_path / REPORT, report_of(git, show))
    assert schedules_block(tmp_path).endswith("run `make schedule`, then `make report`.")


def test_the_schedules_can_come_from_the_experiments_of_another_commit():
    """Table 1 of one commit, the schedules of a later one (``--schedule-rev``): each table
    from its own commit's experiments, and the report says whose they are."""
    from tests.test_report import render

    git, show = table1()
    later = "b" * 40
    _, theirs = schedule_show(git=git, sha=later)
    report = report_of(git, show, schedule_show=theirs, schedule_head=later)
    assert report.schedule_commit == later and report.commit == "a" * 40
    assert row_of(report.table1["synthetic", "official"], "Width control").experiments == (
        "t1-s0-width",)
    across = report.schedules["synthetic2", "official"].rows["across_sets"]
    assert row_of(across, "Baseline").experiments == ("sc-across-s0",)
    assert "of commit `bbbbbbb`" in render(report)
    assert report_of(git, show).schedules == {}  # the first commit has none


def row_of(rows, label):
    return next(r for r in rows if r.label == label)
