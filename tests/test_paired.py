"""The paired bootstrap of a difference between two models (pipeline.metrics.paired_bootstrap,
paired_bootstrap_splits) against a brute-force loop that draws the same resamples, its
invariants (identical models: [0, 0]; a model better on every query: an interval above 0), and
tools.experiments.paired: the comparison of two evaluate outputs, its verdicts and its command
line."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from pipeline.errors import InputError
from pipeline.metrics import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    bootstrap_interval,
    evaluate_rank,
    paired_bootstrap,
    paired_bootstrap_splits,
    query_scores,
)
from pipeline.stages.evaluate import per_query_record, results_json
from tools.experiments import paired

# --- a hand-made ranking: two models on the same 6 queries of 4 identities -----------------------

# Gallery: one tracklet of each of pids 1-4 in camera 2; the queries (camera 0) have exactly one
# true match each. A model that ranks it at r has rank-1 hit [r == 1] and official AP
# (0 + 1/r) / 2 for r > 1 (trapezoid rule), 1 for r = 1: r = 1, 2, 4 -> AP 1, 1/4, 1/8.
G_PIDS, G_CAMIDS = np.array([1, 2, 3, 4]), np.full(4, 2)
Q_PIDS, Q_CAMIDS = np.array([1, 1, 2, 3, 3, 4]), np.zeros(6, dtype=int)
RANKS_A = [1, 2, 4, 1, 2, 1]  # hits 1 0 0 1 0 1 (1/2); APs 1 1/4 1/8 1 1/4 1
RANKS_B = [1, 1, 2, 1, 4, 1]  # hits 1 1 0 1 0 1 (2/3); APs 1 1 1/4 1 1/8 1
HITS = {"A": [1, 0, 0, 1, 0, 1], "B": [1, 1, 0, 1, 0, 1]}
APS = {"A": [1, 0.25, 0.125, 1, 0.25, 1], "B": [1, 1, 0.25, 1, 0.125, 1]}


def distmat_of(ranks: list[int]) -> np.ndarray:
    """Distances (6, 4) that put each query's true match at its rank, the other gallery
    tracklets in gallery order around it."""
    distmat = np.zeros((len(Q_PIDS), len(G_PIDS)))
    for q, (pid, rank) in enumerate(zip(Q_PIDS, ranks, strict=True)):
        match = int(np.flatnonzero(np.equal(G_PIDS, pid))[0])
        others = [g for g in range(len(G_PIDS)) if g != match]
        order = [*others[:rank - 1], match, *others[rank - 1:]]
        distmat[q, order] = np.arange(len(G_PIDS))
    return distmat


def hand_made_scores() -> dict[str, dict[str, np.ndarray]]:
    """Model -> query_scores of the hand-made ranking (official protocol)."""
    return {name: query_scores(evaluate_rank(distmat_of(ranks), Q_PIDS, G_PIDS, Q_CAMIDS,
                                             G_CAMIDS, max_rank=4), Q_PIDS, "official")
            for name, ranks in (("A", RANKS_A), ("B", RANKS_B))}


def brute_force(splits, num_resamples=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED, level=0.95):
    """The paired bootstrap one resample, one identity and one query at a time: for each split
    in turn the same multinomial draws of its identities (sorted pids) from one generator; a
    resample's difference is each split's mean over the drawn queries (an identity drawn k times
    brings its queries k times) of B's mean over its seeds minus A's, averaged over the splits;
    numpy's percentile of those differences."""
    rng = np.random.default_rng(seed)
    differences = [0.0] * num_resamples
    for a, b, groups in splits:
        a, b = np.atleast_2d(a), np.atleast_2d(b)
        ids = sorted(set(groups.tolist()))
        counts = rng.multinomial(len(ids), [1 / len(ids)] * len(ids), size=num_resamples)
        for r in range(num_resamples):
            drawn = [q for g, pid in enumerate(ids) for _ in range(counts[r, g])
                     for q in range(len(groups)) if groups[q] == pid]
            per_query = [sum(b[:, q]) / len(b) - sum(a[:, q]) / len(a) for q in drawn]
            differences[r] += sum(per_query) / len(drawn) / len(splits)
    tail = 100 * (1 - level) / 2
    return [float(x) for x in np.percentile(differences, [tail, 100 - tail])]


def test_hand_made_ranking_scores_as_worked_out():
    scores = hand_made_scores()
    for name in ("A", "B"):
        assert scores[name]["pid"].tolist() == Q_PIDS.tolist()
        assert scores[name]["hit"].tolist() == HITS[name]
        assert scores[name]["ap"].tolist() == APS[name]  # binary fractions: exact


@pytest.mark.parametrize("key", ["hit", "ap"])
@pytest.mark.parametrize(("num_resamples", "seed"), [(200, 0), (1000, 3), (57, 11)])
def test_paired_bootstrap_equals_the_brute_force_loop(key, num_resamples, seed):
    """On the hand-made ranking, exactly: every value is a binary fraction, so the sums of the
    per-query differences are exact whichever way they are added."""
    scores = hand_made_scores()
    a, b = scores["A"][key], scores["B"][key]
    result = paired_bootstrap(a, b, Q_PIDS, num_resamples, seed)
    assert [result["lo"], result["hi"]] == brute_force([(a, b, Q_PIDS)], num_resamples, seed)
    assert result["a"] == np.mean(a) and result["b"] == np.mean(b)
    assert result["diff"] == np.mean(b - a)
    assert result["lo"] <= result["diff"] <= result["hi"]


def test_paired_bootstrap_over_seeds_and_splits_equals_the_brute_force_loop():
    """Two splits (other identities, other sizes), A with one seed and B with three: each split's
    identities drawn on their own, in turn, from one generator; B averaged over its seeds on the
    same draws. Up to the order of the additions (non-binary values here)."""
    rng = np.random.default_rng(5)
    groups = [np.repeat(np.arange(7), 2), np.array([3, 3, 3, 8, 9, 9, 12, 15, 15])]
    splits = [(rng.random(len(g)), rng.random((3, len(g))), g) for g in groups]
    result = paired_bootstrap_splits(splits, num_resamples=300, seed=2)
    assert [result["lo"], result["hi"]] == pytest.approx(brute_force(splits, 300, 2), abs=1e-12)
    assert result["diff"] == pytest.approx(np.mean([b.mean() - a.mean() for a, b, _ in splits]),
                                           abs=1e-12)
    assert result["b"] == pytest.approx(np.mean([b.mean() for _, b, _ in splits]), abs=1e-12)


@pytest.mark.parametrize("key", ["hit", "ap"])
def test_identical_models_give_exactly_zero(key):
    scores = hand_made_scores()["A"][key]
    result = paired_bootstrap(scores, scores, Q_PIDS)
    assert (result["diff"], result["lo"], result["hi"]) == (0.0, 0.0, 0.0)
    assert paired.verdict(result["lo"], result["hi"]) == paired.UNRESOLVED
    # the same model over three seeds against itself over two: still exactly 0
    result = paired_bootstrap(np.stack([scores] * 3), np.stack([scores] * 2), Q_PIDS)
    assert (result["diff"], result["lo"], result["hi"]) == (0.0, 0.0, 0.0)


def test_a_model_better_on_every_query_is_resolved():
    """B above A on every query: every resample's difference is positive, the interval lies
    above 0 (holds); swapped, below 0 (does not hold)."""
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 3)
    a = rng.random(len(groups)) * 0.8
    b = a + rng.random(len(groups)) * 0.2 + 1e-3
    better = paired_bootstrap(a, b, groups)
    assert 0 < better["lo"] <= better["diff"] <= better["hi"]
    assert paired.verdict(better["lo"], better["hi"]) == paired.HOLDS
    worse = paired_bootstrap(b, a, groups)
    assert worse["hi"] < 0
    assert paired.verdict(worse["lo"], worse["hi"]) == paired.FAILS


def test_one_split_draws_the_identities_of_the_unpaired_interval():
    """Against a model that scores 0 everywhere, the paired interval of B - A is B's own
    unpaired interval (bootstrap_interval, same seed): the same draws of the same identities."""
    scores = hand_made_scores()["B"]
    for key in ("hit", "ap"):
        result = paired_bootstrap(np.zeros(6), scores[key], Q_PIDS)
        assert_array_equal([result["lo"], result["hi"]], bootstrap_interval(scores[key], Q_PIDS))


def test_pairing_removes_what_the_models_share():
    """Two models that agree on all but a few queries: the paired interval of the difference is
    far narrower than what the two unpaired intervals allow (the hard and easy identities they
    share cancel)."""
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(100), 3)
    a = (rng.random(300) < 0.6).astype(float)
    b = a.copy()
    b[rng.choice(300, 15, replace=False)] = 1.0
    result = paired_bootstrap(a, b, groups)
    (a_lo, a_hi), (b_lo, b_hi) = bootstrap_interval(a, groups), bootstrap_interval(b, groups)
    assert result["hi"] - result["lo"] < 0.5 * ((a_hi - a_lo) / 2 + (b_hi - b_lo) / 2)
    assert result["lo"] > 0  # resolved, where the unpaired intervals overlap
    assert b_lo < a_hi


def test_paired_bootstrap_is_deterministic_for_a_seed():
    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(30), 2)
    a, b = rng.random(60), rng.random(60)
    first = paired_bootstrap(a, b, groups, seed=4)
    assert paired_bootstrap(a, b, groups, seed=4) == first
    assert paired_bootstrap(a, b, groups, seed=5) != first


def test_paired_bootstrap_of_900_queries_is_fast():
    """2000 resamples of the default run's 900 queries (300 identities) and 3 seeds each."""
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(300), 3)
    a, b = rng.random((3, 900)), rng.random((3, 900))
    start = time.perf_counter()
    paired_bootstrap(a, b, groups, num_resamples=2000)
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize(("a", "b", "groups", "match"), [
    (np.zeros(3), np.zeros(4), np.arange(3), "the same queries"),
    (np.zeros((2, 3)), np.zeros((0, 3)), np.arange(3), "the same queries"),
    (np.zeros(3), np.zeros(3), np.arange(4), "3 values but 4 group labels"),
    (np.zeros(0), np.zeros(0), np.arange(0), "the same queries"),
])
def test_paired_bootstrap_rejects_bad_input(a, b, groups, match):
    with pytest.raises(ValueError, match=match):
        paired_bootstrap(a, b, groups)


def test_paired_bootstrap_splits_needs_a_split():
    with pytest.raises(ValueError, match="at least one split"):
        paired_bootstrap_splits([])


# --- tools.experiments.paired: two evaluate outputs ---------------------------------------------


def evaluation(scores: dict, split: int = 0) -> dict:
    """An evaluate output holding ``scores`` (model -> query_scores) as the stage writes it."""
    return json.loads(results_json({"dataset": "synthetic", "split": split, "models": {},
                                    "per_query": {"official": per_query_record(scores)}}))


@pytest.mark.parametrize(("lo", "hi", "margin", "expected"), [
    (0.01, 0.03, 0.0, paired.HOLDS),
    (-0.03, -0.01, 0.0, paired.FAILS),
    (-0.01, 0.02, 0.0, paired.UNRESOLVED),
    (0.0, 0.02, 0.0, paired.UNRESOLVED),  # an interval that reaches 0 does not exclude it
    (0.0, 0.0, 0.0, paired.UNRESOLVED),
    (0.04, 0.08, 0.05, paired.UNRESOLVED),  # "at least 5 points": the interval holds 5
    (0.06, 0.08, 0.05, paired.HOLDS),
    (0.01, 0.04, 0.05, paired.FAILS),
])
def test_verdict(lo, hi, margin, expected):
    assert paired.verdict(lo, hi, margin) == expected


def test_compare_files_is_the_paired_bootstrap_of_the_stored_scores():
    scores = hand_made_scores()
    ev = evaluation(scores)
    result = paired.compare_files(ev, "A", ev, "B")
    assert list(result) == ["rank1", "mAP"]
    for metric, key in (("rank1", "hit"), ("mAP", "ap")):
        assert result[metric] == paired_bootstrap(scores["A"][key], scores["B"][key], Q_PIDS)
    same = paired.compare_files(ev, "B", evaluation(scores, split=0), "B")  # two runs, one model
    assert all((same[m]["lo"], same[m]["hi"]) == (0.0, 0.0) for m in same)


def test_compare_runs_over_seeds_and_splits():
    """Model A once per split, model B over 2 seeds: the stored scores stacked per split."""
    rng = np.random.default_rng(4)
    runs = {}
    for split, num_ids in ((0, 5), (1, 8)):
        pid = np.repeat(np.arange(num_ids) + 10 * split, 2)
        runs[split] = {name: {"pid": pid, "hit": (rng.random(len(pid)) < 0.5).astype(np.int8),
                              "ap": np.round(rng.random(len(pid)), 4)}
                       for name in ("A", "B0", "B1")}
    a = [{s: paired.queries_of(evaluation(runs[s]), "A") for s in runs}]
    b = [{s: paired.queries_of(evaluation(runs[s]), name) for s in runs} for name in ("B0", "B1")]
    result = paired.compare(a, b)
    for metric, key in (("rank1", "hit"), ("mAP", "ap")):
        splits = [(runs[s]["A"][key], np.stack([runs[s]["B0"][key], runs[s]["B1"][key]]),
                   runs[s]["A"]["pid"]) for s in runs]
        assert result[metric] == paired_bootstrap_splits(splits)


def test_compare_refuses_other_queries_and_other_splits():
    scores = hand_made_scores()
    a = paired.queries_of(evaluation(scores), "A")
    other = paired.Queries(a.pid[::-1], a.hit, a.ap)
    with pytest.raises(InputError, match="other queries"):
        paired.compare([{0: a}], [{0: other}])
    with pytest.raises(InputError, match="different splits"):
        paired.compare([{0: a}], [{1: a}])
    with pytest.raises(InputError, match="at least one run"):
        paired.compare([], [{0: a}])


def test_queries_of_names_what_is_missing():
    ev = evaluation(hand_made_scores())
    with pytest.raises(InputError, match=r"^old\.json: no per-query scores .*make repro"):
        paired.queries_of({"models": {}}, "A", "old.json")
    with pytest.raises(InputError, match="no model 'joint'; it has 'A', 'B'"):
        paired.queries_of(ev, "joint")


def test_command_line_prints_the_table(tmp_path, capsys):
    path = tmp_path / "synthetic-0.json"
    path.write_text(json.dumps(evaluation(hand_made_scores())))
    paired.main([f"{path}:A", f"{path}:B"])
    out = capsys.readouterr().out
    assert f"A: {path}:A" in out and "over the 4 query identities" in out
    rank1 = next(line for line in out.splitlines() if line.startswith("rank-1"))
    assert rank1.split()[:4] == ["rank-1", "50.0", "66.7", "+16.67"]
    assert rank1.endswith(paired.UNRESOLVED)  # one query of one identity of 4 differs
    assert "B > A" in out and "95% interval" in out


@pytest.mark.parametrize(("argument", "match"), [
    ("no-colon", "expected <evaluation file>:<model>"),
    ("{missing}:A", "cannot read it"),
    ("{bad}:A", "not a JSON results file"),
    ("{good}:joint", "no model 'joint'"),
])
def test_command_line_errors_are_one_line(tmp_path, argument, match):
    (tmp_path / "bad.json").write_text("{")
    (tmp_path / "good.json").write_text(json.dumps(evaluation(hand_made_scores())))
    argument = argument.format(missing=tmp_path / "missing.json", bad=tmp_path / "bad.json",
                               good=tmp_path / "good.json")
    with pytest.raises(SystemExit, match=f"^error: .*{match}"):
        paired.main([argument, f"{tmp_path / 'good.json'}:A"])


def test_each_experiment_is_compared_with_its_baseline_commit_model_by_model():
    """`make exp`'s paired table: per experiment, run and model, the differences with their
    intervals and verdicts; a commit whose files lack per-query scores, or an experiment that
    failed, says so instead of a number."""
    from tools.experiments.show import Source, Sources

    scores = hand_made_scores()
    models = ("baseline", "spatial", "temporal", "joint")
    base = evaluation({m: scores["A"] for m in models})
    better = evaluation({**{m: scores["A"] for m in models}, "joint": scores["B"]})
    files = {("c0ffee1", "metrics/eval/synthetic-0.json"): base,
             ("e1", "metrics/eval/synthetic-0.json"): better,
             ("e2", "metrics/eval/synthetic-0.json"): {"models": {}}}

    def read(rev: str, path: str) -> str:
        if (rev, path) not in files:
            raise FileNotFoundError(f"path '{path}' does not exist in '{rev}'")
        return json.dumps(files[rev, path])

    sources = Sources("c0ffee1", None, Source(None, "c0ffee1", {}), {
        "better": Source("better", "e1", {}), "old": Source("old", "e2", {}),
        "broken": Source("broken", None, None, "failed (boom)")})
    rows = paired.experiment_rows(sources, ["synthetic-0"], read)
    table = {(r[0], r[2]): r for r in rows}
    expected = paired.compare_files(base, "joint", better, "joint")["rank1"]
    assert table["better", "joint"][3] == (
        f"{100 * expected['diff']:+.2f} [{100 * expected['lo']:+.2f}, "
        f"{100 * expected['hi']:+.2f}] {paired.verdict(expected['lo'], expected['hi'])}")
    assert table["better", "baseline"][3] == "+0.00 [+0.00, +0.00] not resolved"
    assert table["better", "joint"][5] == "50.0 -> 66.7"
    assert table["old", "baseline"][3].startswith("not compared (old:metrics/eval/synthetic-0"
                                                  ".json: no per-query scores")
    assert table["broken", ""][3] == "failed (boom)"
