"""Tests of the attention sweep (tools/experiments/sweep.py) and of the report's sections beside the
paper (tools/experiments/tables.py: gains, orderings, claims; sources.head_summary), on
hand-made `dvc exp show --json` outputs (the helpers of tests/test_report.py) and hand-built rows,
every expected value worked out by hand."""

from __future__ import annotations

import json
import math

import pytest

from tests.test_report import HEAD, FakeGit, exp_show, experiment, md_row, render
from tools.experiments.cells import SWEEP
from tools.experiments.data import MISSING, PAPER, TARGET, Report, RowResult, Stat
from tools.experiments.sources import head_summary
from tools.experiments.sweep import (
    LEGACY_CURVE,
    LIVE_SUMMARY,
    choice_line,
    choose,
    collect,
    final_epoch,
    main,
    matched_lines,
    matched_overlap,
    sweep_rows,
    training_maps,
)
from tools.experiments.tables import (
    claims,
    mechanism_rows,
    ordering,
    paper_rows,
)

CURVE = LEGACY_CURVE.format(run="synthetic-0")
SUMMARY = LIVE_SUMMARY.format(run="synthetic-0")
COLUMNS = "epoch,step,lr,loss,id_loss,diversity,map_entropy,map_saturated\n"
# the last epoch (2) has two steps: entropy (1.0 + 1.5) / 2 = 1.25, saturated (0.5 + 0) / 2
CURVE_TEXT = COLUMNS + "1,1,0.1,1,1,0,3.0,0.0\n2,2,0.1,1,1,0,1.0,0.5\n2,3,0.1,1,1,0,1.5,0.0\n"
DEFAULTS = {"loss.diversity": "hellinger", "loss.diversity_weight": 1.0,
            "loss.diversity_scale": "sum", "loss.diversity_warmup_epochs": 0,
            "model.score_init": "uniform", "attention.spatial.lr": 0.1}


def evaluation(overlap: float, entropy: float, rank1: float = 0.5) -> dict:
    """metrics/eval/synthetic-0.json: the spatial model at ``rank1``, the temporal one 0.1 above."""
    def official(r):
        return {"rank1": r, "rank1_lo": r - 0.05, "rank1_hi": r + 0.05, "mAP": r - 0.1,
                "mAP_lo": r - 0.15, "mAP_hi": r - 0.05, "num_valid_queries": 64}

    maps = {"overlap": overlap, "entropy": entropy, "person": 0.7, "parts_covered": 4,
            "visibility_corr": 0.2, "visibility_corr_lo": -0.1, "visibility_corr_hi": 0.5}
    return {"dataset": "synthetic", "split": 0, "seed": 0,
            "models": {"spatial": {"official": official(rank1)},
                       "temporal": {"official": official(rank1 + 0.1)}},
            "attention": {"spatial": maps, "temporal": {**maps, "overlap": 0.25}}}


def sweep_show(git: FakeGit) -> list[dict]:
    """The baseline commit, sw-q-w0.1 (done), sw-p-w0.1 (no loss curve), sw-q-zero (running)."""
    done = experiment(git, "sw-q-w0.1", [evaluation(0.05, 1.5, 0.6)],
                      params={"loss": {"diversity_weight": 0.1}})
    no_curve = experiment(git, "sw-p-w0.1", [evaluation(0.1, 1.0)],
                          params={"loss": {"diversity": "sparse", "diversity_weight": 0.1}})
    running = experiment(git, "sw-q-zero", [evaluation(0.1, 1.0)], state="running")
    stale = experiment(git, "sw-q-w0.01", [evaluation(0.1, 1.0)],
                       params={"loss": {"diversity_weight": 0.1}})  # not the row's setting
    # a DVCLive summary (pipeline.curves) for the experiment, a legacy CSV for the commit
    git.commits[done["revs"][0]["rev"]][SUMMARY] = json.dumps(
        {"epoch": 2, "step": 3, "mean": {"loss": 1.0, "map_entropy": 1.25, "map_saturated": 0.25}})
    show = exp_show(git, [evaluation(0.3, 2.0)], [done, no_curve, running, stale])
    git.commits[HEAD][CURVE] = COLUMNS + "1,1,0.1,1,1,0,2.0,0.25\n"
    return show


def test_final_epoch_is_the_mean_of_the_last_epochs_steps():
    assert final_epoch(CURVE_TEXT) == {"entropy": 1.25, "saturated": 0.25}
    assert final_epoch("epoch,step,lr,loss,id_loss,diversity\n1,1,0.1,1,1,0\n") is None
    assert final_epoch("") is None


def test_training_maps_read_the_dvclive_summary_and_fall_back_to_the_legacy_curve():
    git = FakeGit()
    git.commits[HEAD] = {SUMMARY: json.dumps({"epoch": 1, "step": 1, "mean": {"loss": 2.0}})}
    assert training_maps(git.read, HEAD, "synthetic-0") is None  # a phase without maps
    git.commits[HEAD][SUMMARY] = json.dumps(
        {"mean": {"map_entropy": 1.5, "map_saturated": 0.125}})
    assert training_maps(git.read, HEAD, "synthetic-0") == {"entropy": 1.5, "saturated": 0.125}
    del git.commits[HEAD][SUMMARY]
    git.commits[HEAD][CURVE] = CURVE_TEXT  # an experiment made before the DVCLive curves
    assert training_maps(git.read, HEAD, "synthetic-0") == {"entropy": 1.25, "saturated": 0.25}


def test_collect_reads_each_row_from_its_experiment():
    git = FakeGit()
    show = sweep_show(git)
    sweep = collect(show, None, git.read)
    assert (sweep["commit"], sweep["dataset"], sweep["split"]) == (HEAD, "synthetic", 0)
    rows = {row["experiment"]: row for row in sweep["rows"]}
    assert len(sweep["rows"]) == 1 + len(SWEEP) and sweep["rows"][0]["label"] == "params.yaml"
    base = rows["baseline commit"]
    assert base["settings"] == DEFAULTS  # no loss section in its params: every default
    assert base["training"] == {"entropy": 2.0, "saturated": 0.25}
    assert base["spatial"]["overlap"] == 0.3 and base["temporal"]["overlap"] == 0.25
    done = rows["sw-q-w0.1"]
    assert done["label"] == "Q, coefficient 0.1"
    assert done["settings"] == {**DEFAULTS, "loss.diversity_weight": 0.1}
    assert done["training"] == {"entropy": 1.25, "saturated": 0.25}
    assert done["spatial"] == {"rank1": 0.6, "rank1_lo": 0.6 - 0.05, "rank1_hi": 0.6 + 0.05,
                               "mAP": 0.6 - 0.1, "mAP_lo": 0.6 - 0.15, "mAP_hi": 0.6 - 0.05,
                               "overlap": 0.05, "entropy": 1.5, "person": 0.7,
                               "parts_covered": 4}  # no correlation for the spatial model
    assert done["temporal"]["rank1"] == 0.6 + 0.1
    assert (done["temporal"]["visibility_corr_lo"], done["temporal"]["overlap"]) == (-0.1, 0.25)
    no_curve = rows["sw-p-w0.1"]
    assert no_curve["settings"]["loss.diversity"] == "sparse"
    rev = show[1]["experiments"][1]["revs"][0]["rev"]
    assert no_curve["problem"] == f"path '{SUMMARY}' does not exist in '{rev}'"
    assert "spatial" not in no_curve
    assert rows["sw-q-zero"] == {"label": "Q, w'_k from zero", "experiment": "sw-q-zero",
                                 "problem": "running, not finished"}
    assert rows["sw-none"] == {"label": "no regulariser", "experiment": "sw-none",
                               "problem": "not run"}
    assert rows["sw-q-w0.01"]["problem"] == ("its params have loss.diversity_weight=0.1, "
                                             "expected 0.01")
    assert sweep["matched"] == []  # no Q' row with a test overlap


def sweep_row(kind: str, weight: float, overlap: float | None, entropy: float, **settings) -> dict:
    s = {**DEFAULTS, "loss.diversity": kind, "loss.diversity_weight": weight, **settings}
    return {"label": f"{kind} {weight}", "experiment": "x", "settings": s,
            "spatial": {"overlap": overlap, "entropy": entropy}}


def test_matched_overlap_interpolates_in_log_overlap():
    rows = [sweep_row("sparse", 0.1, 0.01, 0.2), sweep_row("sparse", 0.01, 0.1, 1.0),
            # Q' rows off the coefficient line: not points of the curve
            sweep_row("sparse", 1.0, 0.05, 9.0, **{"attention.spatial.lr": 0.01}),
            sweep_row("sparse", 1.0, 0.02, 9.0, **{"model.score_init": "zero"}),
            sweep_row("sparse", 0.3, None, 9.0),
            {"label": "missing", "experiment": "y", "problem": "not run"},
            sweep_row("hellinger", 0.03, math.sqrt(0.001), 0.9),  # halfway in log: 0.6
            sweep_row("hellinger", 1.0, 0.1, 1.4),  # on a Q' point: its entropy
            sweep_row("hellinger", 0.003, 0.2, 2.0),  # above the range
            sweep_row("hellinger", 0.001, 0.005, 2.0),  # below it
            sweep_row("hellinger", 0.5, 0.05, 2.0, **{"loss.diversity_scale": "pairs"}),
            sweep_row("hellinger", 0.5, 0.05, 2.0, **{"loss.diversity_warmup_epochs": 5}),
            sweep_row("none", 1.0, 0.05, 2.0)]
    matched = matched_overlap(rows)
    assert [(m["coefficient"], m["between"]) for m in matched] == [(0.03, [0.1, 0.01]),
                                                                   (1.0, [0.01, 0.01])]
    first, second = matched
    assert first["overlap"] == math.sqrt(0.001) and first["entropy_q"] == 0.9
    assert first["entropy_sparse"] == pytest.approx(0.6, abs=1e-12)
    assert first["difference"] == pytest.approx(0.3, abs=1e-12)
    assert (second["entropy_sparse"], second["difference"]) == (1.0, pytest.approx(0.4))
    assert matched_lines({"matched": [first]}) == [
        "- Q x0.03: overlap 0.032, entropy 0.900 nats; Q' at the same overlap (between its "
        "coefficients 0.1 and 0.01): 0.600; Q broader by +0.300 nats"]


def rendered_row(**settings) -> dict:
    maps = {"entropy": 0.9, "overlap": 0.0316, "person": 0.7, "parts_covered": 4}
    return {"label": "a row", "settings": {**DEFAULTS, **settings},
            "training": {"entropy": 1.25, "saturated": 0.25},
            "spatial": {"rank1": 0.123, "rank1_lo": 0.1, "rank1_hi": 0.146, "mAP": 0.08, **maps},
            "temporal": {"rank1": None, "mAP": 0.5, "mAP_lo": 0.4, "mAP_hi": 0.6,
                         "visibility_corr": 0.25, "visibility_corr_lo": -0.05,
                         "visibility_corr_hi": 0.5, **maps}}


def test_sweep_rows_print_settings_maps_and_intervals():
    odd = rendered_row(**{"loss.diversity": "sparse", "loss.diversity_weight": 0.1,
                          "loss.diversity_scale": "pairs", "loss.diversity_warmup_epochs": 5,
                          "model.score_init": "zero", "attention.spatial.lr": 0.01})
    bare = rendered_row(**{"loss.diversity": "none"})
    bare.update(training=None, spatial={**bare["spatial"], "parts_covered": None,
                                        "person": None})
    bare["temporal"]["visibility_corr"] = None
    missing = {"label": "Q, w'_k from zero", "experiment": "sw-q-zero", "problem": "not run"}
    lines = sweep_rows({"rows": [rendered_row(), odd, bare, missing]})
    assert lines[0] == ["a row", "Q, x1, lr 0.1", "1.250", "0.25", "0.900", "0.032", "0.700",
                        "4", "12.3 [10.0, 14.6]", "8.0", "n/a", "50.0 [40.0, 60.0]",
                        "+0.250 [-0.050, +0.500]"]
    assert lines[1][1] == "Q', x0.1, /pairs, warm-up 5, w'_k zero, lr 0.01"
    assert lines[2][1:8] == ["none, lr 0.1", "n/a", "n/a", "0.900", "0.032", "n/a", "n/a"]
    assert lines[2][-1] == "n/a"
    assert lines[3] == ["Q, w'_k from zero", "missing: not run", *[""] * 11]


def test_main_writes_the_sweep_json(tmp_path, capsys):
    git = FakeGit()
    show_path, out = tmp_path / "show.json", tmp_path / "sweep.json"
    show_path.write_text(json.dumps(sweep_show(git)))
    main(["--show-json", str(show_path), "--out", str(out)], read=git.read)
    written = json.loads(out.read_text())
    assert written == collect(json.loads(show_path.read_text()), None, git.read)
    assert written["commit"] == HEAD and len(written["rows"]) == 1 + len(SWEEP)
    assert [r["experiment"] for r in written["rows"] if "problem" not in r] == [
        "baseline commit", "sw-q-w0.1"]
    printed = capsys.readouterr()
    assert f"wrote {out} ({1 + len(SWEEP)} rows, commit {HEAD[:12]})" in printed.out
    assert "missing: not run" in printed.out
    assert printed.err.startswith("missing: sw-q-w1, sw-p-w0.1, sw-q-w0.01, ")


# --- the report's sections beside the paper ------------------------------------------------------


def result(label: str, rank1: float | None, mean_ap: float | None = None,
           ci: tuple[float, float] | None = None, model: str = "spatial", **truth) -> RowResult:
    def stat(v):
        return MISSING if v is None else Stat(v, 0.0, 1)

    return RowResult(label, model, stat(rank1), stat(mean_ap), Stat(0.1, 0.0, 1),
                     Stat(1.2, 0.0, 1), 64.0, 1, 1, ("baseline commit",), rank1_ci=ci, **truth)


def test_paper_rows_put_the_gains_beside_the_papers():
    rows = [result("Baseline", 0.5, 0.4, model="baseline"),
            result("SpaAtn", None), result("K = 2", 0.45, 0.4),
            result("SpaAtn+Q+TemAtn+Ind", 0.55, 0.47, ci=(0.5, 0.6), model="joint")]
    header, cells = paper_rows("synthetic", rows)
    assert header[2:] == ["gain over Baseline", "mAP (%)", "gain over Baseline",
                          "paper PRID2011 rank-1 (gain)", "paper iLIDS-VID rank-1 (gain)",
                          "paper MARS rank-1 (gain)", "paper MARS mAP (gain)"]
    assert cells[0][2] == "+0.0" and cells[0][5] == "82.7 (+0.0)"
    assert cells[1][1:5] == [MISSING, "n/a", MISSING, "n/a"]
    assert cells[2][2:] == ["-5.0", "40.0 ± 0.0", "+0.0", *["n/a (no paper number)"] * 4]
    assert cells[3] == ["SpaAtn+Q+TemAtn+Ind", "55.0 ± 0.0 [50.0, 60.0]", "+5.0",
                        "47.0 ± 0.0", "+7.0", "93.2 (+10.5)", "80.2 (+19.0)", "82.3 (+8.9)",
                        "65.8 (+7.7)"]
    assert paper_rows("synthetic", rows[1:])[1][2][2] == "n/a"  # no Baseline row


def test_ordering_uses_the_larger_half_width_of_both_rows():
    low = result("low", 0.5, ci=(0.47, 0.53))  # half-width 3 points
    assert ordering(result("a", 0.6, ci=(0.55, 0.66)), low) == \
        ("holds", "60.0 vs 50.0, +10.0; noise ±6.0")
    assert ordering(result("a", 0.54, ci=(0.48, 0.6)), low) == \
        ("within the noise", "54.0 vs 50.0, +4.0; noise ±6.0")
    assert ordering(result("a", 0.4, ci=(0.34, 0.45)), low) == \
        ("does not hold", "40.0 vs 50.0, -10.0; noise ±6.0")
    # the noise is the low row's here (8 points), not the high row's (1)
    assert ordering(result("a", 0.56, ci=(0.55, 0.57)), result("b", 0.5, ci=(0.42, 0.58))) == \
        ("within the noise", "56.0 vs 50.0, +6.0; noise ±8.0")
    assert ordering(result("a", 0.51), result("b", 0.5)) == \
        ("holds", "51.0 vs 50.0, +1.0; noise ±0.0")
    assert ordering(result("a", 0.6, 0.3), result("b", 0.5, 0.4), "mAP") == \
        ("does not hold", "30.0 vs 40.0, -10.0; noise ±0.0")
    assert ordering(result("a", None), low) == ("not measured (missing)", "")


def claim_rows(lo: float | None) -> list[RowResult]:
    truth = {"person": Stat(0.65, 0.0, 1), "heads_below": Stat(2.0, 0.0, 1),
             "parts": Stat(3.0, 0.0, 1)}
    return [result("Baseline", 0.5, 0.4, model="baseline"), result("SpaAtn", 0.55, 0.4),
            result("SpaAtn+Q", 0.6, 0.5, **truth),
            result("SpaAtn+Q+TemAtn", 0.58, 0.5, model="temporal",
                   visibility=Stat(0.2, 0.01, 1), visibility_ci=None if lo is None else (lo, 0.45)),
            result("SpaAtn+Q+TemAtn+Ind", 0.56, 0.44, model="joint")]


def claim_lines(rows: list[RowResult]) -> list[str]:
    return [c.line() for c in claims(rows)]


def test_claims_check_orderings_gains_and_map_targets():
    found = claims(claim_rows(-0.05))
    assert [c.origin for c in found] == [PAPER] * 3 + [TARGET] * 8
    assert claim_lines(claim_rows(-0.05)) == [
        "- SpaAtn+Q > SpaAtn: holds (60.0 vs 55.0, +5.0; noise ±0.0)",
        "- SpaAtn+Q+TemAtn > SpaAtn+Q: does not hold (58.0 vs 60.0, -2.0; noise ±0.0)",
        "- SpaAtn+Q+TemAtn+Ind > SpaAtn+Q+TemAtn: does not hold (56.0 vs 58.0, -2.0; "
        "noise ±0.0)",
        # no paired intervals (no per-query scores): the gain alone, said to be unpaired
        "- SpaAtn+Q+TemAtn+Ind >= Baseline + 3 rank-1: holds (+6.00, unpaired)",
        "- SpaAtn+Q+TemAtn+Ind >= Baseline + 3 mAP: holds (+4.00, unpaired)",
        "- SpaAtn+Q map entropy >= 1.0: holds (1.200 nats)",
        "- SpaAtn+Q map overlap <= 0.15: holds (0.1000)",
        "- SpaAtn+Q person mass >= 0.6: holds (0.650)",
        "- SpaAtn+Q heads below 0.2 person <= 1: does not hold (2.0)",
        "- SpaAtn+Q parts covered >= 4: does not hold (3.0)",
        "- temporal weights follow the visibility of the heads' parts (r > 0 beyond its "
        "interval): does not hold (+0.200 ± 0.010 [-0.050, +0.450])"]
    assert claim_lines(claim_rows(0.05))[-1].endswith(": holds (+0.200 ± 0.010 [+0.050, +0.450])")
    assert claim_lines(claim_rows(None))[-1].endswith(": does not hold (+0.200 ± 0.010)")
    # no ground truth (a real set): no map targets, no visibility claim
    plain = [result(r.label, r.rank1.mean, r.mean_ap.mean, model=r.model) for r in claim_rows(0.1)]
    assert len(claim_lines(plain)) == 5 and "map" not in " ".join(claim_lines(plain))
    # the full model 2 mAP points over Baseline: below the 3 points of the target
    short = [*plain[:-1], result("SpaAtn+Q+TemAtn+Ind", 0.56, 0.42, model="joint")]
    assert claim_lines(short)[3:] == [
        "- SpaAtn+Q+TemAtn+Ind >= Baseline + 3 rank-1: holds (+6.00, unpaired)",
        "- SpaAtn+Q+TemAtn+Ind >= Baseline + 3 mAP: does not hold (+2.00, "
        "unpaired)"]


def test_claims_read_spaatn_q_against_its_two_controls():
    """SpaAtn+Q (60.0, 50.0) at least 4 points above each control, rank-1 and mAP, after the
    paper's orderings and before the full model's gain: the width control (55.0, 47.0) is 5
    rank-1 points below (holds) but 3 mAP points (does not hold); uniform maps (65.0, 45.0) are
    above in rank-1 (does not hold) and 5 mAP points below (holds)."""
    plain = [result(r.label, r.rank1.mean, r.mean_ap.mean, model=r.model) for r in claim_rows(0.1)]
    controls = [result("Width control", 0.55, 0.47), result("Uniform maps", 0.65, 0.45)]
    found = claims([plain[0], *controls, *plain[1:]])
    assert [c.origin for c in found] == [PAPER] * 3 + [TARGET] * 6
    assert [c.line() for c in found][3:7] == [
        "- SpaAtn+Q >= Width control + 4 rank-1: holds (+5.00, unpaired)",
        "- SpaAtn+Q >= Width control + 4 mAP: does not hold (+3.00, unpaired)",
        "- SpaAtn+Q >= Uniform maps + 4 rank-1: does not hold (-5.00, unpaired)",
        "- SpaAtn+Q >= Uniform maps + 4 mAP: holds (+5.00, unpaired)"]
    # a control without results: no claim against it, never a claim read as zero
    missing = [plain[0], result("Width control", None, None), *plain[1:]]
    assert not any("Width control" in c.line() for c in claims(missing))
    # no SpaAtn+Q row: no claim of the controls
    no_q = [r for r in [plain[0], *controls, *plain[1:]] if r.label != "SpaAtn+Q"]
    assert not any("control" in c.line() or "Uniform" in c.line() for c in claims(no_q))


def test_mechanism_rows_leave_out_the_baseline():
    header, cells = mechanism_rows(claim_rows(0.1))
    assert header[2:4] == ["uniform map's person mass", "heads below 0.2 person"]
    assert [c[0] for c in cells] == ["SpaAtn", "SpaAtn+Q", "SpaAtn+Q+TemAtn",
                                     "SpaAtn+Q+TemAtn+Ind"]
    assert cells[1][1:7] == ["0.650 ± 0.000", "n/a", "2.000 ± 0.000", "3.000 ± 0.000",
                             "0.100 ± 0.000", "1.200 ± 0.000"]
    assert cells[0][1:5] == ["n/a"] * 4 and cells[0][-1] == "n/a"
    assert cells[2][-1] == "+0.200 ± 0.010 [+0.100, +0.450]"


def report_of(rows: list[RowResult]) -> Report:
    k6 = [result("K = 6", 0.58, 0.5, model="temporal")]
    return Report(HEAD, None, (0,), 0, 6, ("synthetic",), {("synthetic", "official"): rows},
                  {("synthetic", "official"): k6}, {})


def test_render_markdown_has_the_sections_beside_the_paper_and_the_sweep():
    sweep = {"commit": HEAD, "dataset": "synthetic", "split": 0,
             "rows": [rendered_row()], "matched": []}
    text = render(report_of(claim_rows(0.1)), "cmd", sweep=sweep)
    titles = ["### Table 1, schedule per_set", "### Table 1 beside the paper",
              "### Where the heads look",
              "### The paper's orderings, as measured, schedule per_set",
              "### This project's targets, as measured, schedule per_set",
              "### Table 2, schedule per_set", "## The attention sweep",
              "## Missing results"]
    assert [t for t in text.split("\n\n") if t.startswith("#")][1:] == [
        "## synthetic, official protocol", *titles]
    beside = text.split("### Table 1 beside the paper")[1]
    assert md_row(beside, "SpaAtn+Q+TemAtn+Ind")[2:4] == ["+6.0", "44.0 ± 0.0"]
    assert md_row(text, "a row")[1:3] == ["Q, x1, lr 0.1", "1.250"]
    assert "No Q row's overlap lies within the Q' rows' range." in text
    bare = [result(r.label, r.rank1.mean, r.mean_ap.mean, model=r.model) for r in claim_rows(0)]
    text = render(report_of(bare), "cmd")
    assert "### Where the heads look" not in text and "## The attention sweep" not in text
    assert "### Table 1 beside the paper" in text


def test_the_sweep_section_prints_the_matched_lines():
    matched = {"coefficient": 0.03, "overlap": 0.05, "entropy_q": 1.0, "entropy_sparse": 0.5,
               "difference": 0.5, "between": [0.1, 0.01]}
    text = render(report_of(claim_rows(0.1)), "cmd", sweep={
        "commit": "c0ffee", "dataset": "synthetic", "split": 0, "rows": [], "matched": [matched]})
    section = text.split("\n\n## The attention sweep\n\n")[1].split("\n\n## ")[0].split("\n\n")
    assert "baseline commit `c0ffee` (synthetic split 0, one seed;" in section[0]
    assert section[1].startswith("| row | setting | train entropy | train saturated |")
    assert section[-2] == ("- Q x0.03: overlap 0.050, entropy 1.000 nats; Q' at the same overlap "
                           "(between its coefficients 0.1 and 0.01): 0.500; Q broader by +0.500 "
                           "nats")
    assert section[-1].endswith("the rule picks nothing.")


def test_the_default_is_the_largest_unsaturated_coefficient_of_q_alone():
    """From the training maps only: rows saturated at 0.5 or more, Q' rows, rows that change
    anything besides the coefficient, and missing rows are never picked."""
    def row(label, saturated, **settings):
        return {**rendered_row(**settings), "label": label,
                "training": {"entropy": 1.0, "saturated": saturated}}

    rows = [row("Q x1", 0.96), row("Q x0.1", 0.5, **{"loss.diversity_weight": 0.1}),
            row("Q x0.01", 0.3, **{"loss.diversity_weight": 0.01}),
            row("Q x0.003", 0.1, **{"loss.diversity_weight": 0.003}),
            row("Q' x0.1", 0.1, **{"loss.diversity": "sparse", "loss.diversity_weight": 0.1}),
            row("Q x0.1 lr", 0.1, **{"loss.diversity_weight": 0.1,
                                     "attention.spatial.lr": 0.01}),
            row("pairs", 0.1, **{"loss.diversity_scale": "pairs"}),
            {"label": "Q x0.05", "experiment": "sw-x", "problem": "not run"}]
    assert choose({"rows": rows})["label"] == "Q x0.01"
    assert choice_line({"rows": rows}).endswith(
        'picks "Q x0.01" (coefficient 0.01; saturated 0.30, training entropy 1.000 nats).')
    assert choose({"rows": rows[:2]}) is None


def heads(persons: list[float | None], lo: float | None = None, hi: float | None = None) -> dict:
    stats = {"overlap": 0.3}
    for k, person in enumerate(persons, 1):
        stats[f"head{k}_part"] = "torso"
        if person is not None:
            stats[f"head{k}_person"] = person
    if lo is not None:
        stats.update(visibility_corr_lo=lo, visibility_corr_hi=hi)
    return stats


def test_head_summary_counts_heads_below_the_floor_over_the_splits():
    runs = [{"dataset": "synthetic", "split": 0, "attention": {
                "spatial": heads([0.1, 0.5, 0.15]), "temporal": heads([0.5, 0.5], -0.1, 0.3),
                "joint": {"overlap": 0.3}, "partly": heads([0.1])}},
            {"dataset": "synthetic", "split": 1, "attention": {
                "spatial": heads([0.3, 0.5, 0.19]), "temporal": heads([0.1, None], 0.1, 0.5),
                "joint": {"overlap": 0.3}, "partly": {"overlap": 0.3}}},
            {"dataset": "mars", "split": 0, "attention": {"spatial": {"overlap": 0.3}}}]
    runs[0]["attention"]["spatial"]["person_uniform"] = 0.2
    runs[1]["attention"]["spatial"]["person_uniform"] = 0.3
    summary = head_summary(runs)
    # spatial: a uniform map's person mass (0.2 + 0.3) / 2; 2 heads below 0.2 in split 0 (0.1,
    # 0.15), 1 in split 1 (0.19): 1.5; temporal:
    # 0 and 2 (0.1, and a head without a person figure): 1; visibility bounds (-0.1 + 0.1) / 2,
    # (0.3 + 0.5) / 2
    assert summary == {"synthetic": {
        "spatial": {"heads_below": 1.5, "person_uniform": 0.25},
        "temporal": {"heads_below": 1.0, "visibility_lo": 0.0,
                     "visibility_hi": pytest.approx(0.4)}}}
