"""Ranking metrics: CMC and mAP under the official (MARS MATLAB) and torchreid protocols, their
bootstrap intervals, and the attention statistics against the ground truth of the frames.

Values are checked against the published AP test vectors of the two protocols' reference codes
(MARS-evaluation, torchreid), hand-built problems worked out in the comments, and a brute-force
reference that follows each protocol's text loop by loop; the ground-truth measures on label maps
counted by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from pipeline.attention_stats import (
    COVER_MIN_PERSON,
    attention_ground_truth,
    cached_rows,
    check_parts,
    clip_ground_truth,
    head_parts,
    part_mass,
    parts_covered,
    visibility_correlation,
)
from pipeline.metrics import (
    bootstrap_estimates,
    bootstrap_interval,
    evaluate_rank,
    pairwise_distance,
    query_scores,
    rank_intervals,
    same_camera,
    same_camera_shares,
)

PROTOCOLS = ("official", "torchreid")


# --- brute-force reference, written from the protocol text ---------------------------------------


def reference_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, protocol):
    """CMC, mAP and the number of valid queries, one query and one gallery item at a time."""
    num_q, num_g = distmat.shape
    cmc = [0.0] * max_rank
    ap_sum, num_valid = 0.0, 0
    for i in range(num_q):
        order = sorted(range(num_g), key=lambda j: (distmat[i, j], j))  # ascending, stable
        junk = {j for j in range(num_g) if g_pids[j] == q_pids[i] and g_camids[j] == q_camids[i]}
        if protocol == "official":
            junk |= {j for j in range(num_g) if g_pids[j] == -1}
        good = {j for j in range(num_g)
                if g_pids[j] == q_pids[i] and g_camids[j] != q_camids[i] and j not in junk}
        if not good:
            continue  # official: scores 0 but counts in the denominator; torchreid: skipped
        num_valid += 1
        ap, first = (official_ap if protocol == "official" else torchreid_ap)(order, good, junk)
        ap_sum += ap
        for r in range(first, max_rank):
            cmc[r] += 1.0
    denominator = num_q if protocol == "official" else num_valid
    return np.array(cmc) / denominator, ap_sum / denominator, num_valid


def official_ap(order, good, junk):
    """The MARS-evaluation compute_AP loop: trapezoid rule, junk skipped, stop after last match."""
    ngood = len(good)
    old_recall, old_precision, ap = 0.0, 1.0, 0.0
    intersect, num_junk, first = 0, 0, None
    for n, j in enumerate(order, start=1):
        if j in junk:
            num_junk += 1
            continue
        if j in good:
            intersect += 1
            if first is None:
                first = n - num_junk - 1  # 0-based rank among non-junk items
        recall = intersect / ngood
        precision = intersect / (n - num_junk)
        ap += (recall - old_recall) * (old_precision + precision) / 2
        old_recall, old_precision = recall, precision
        if intersect == ngood:
            break
    return ap, first


def torchreid_ap(order, good, junk):
    """Mean of the precision at each true match of the junk-free ranked list."""
    ranked = [j for j in order if j not in junk]
    precisions, hits, first = [], 0, None
    for rank, j in enumerate(ranked, start=1):
        if j in good:
            hits += 1
            precisions.append(hits / rank)
            if first is None:
                first = rank - 1
    return sum(precisions) / len(precisions), first


def random_problem(seed, num_q=30, num_g=200, ties=False, queries_in_gallery=False):
    """Gallery ids in -1 (junk), 0 (distractor), 1..7; query ids 0..11 and 99 (8..11 and 99
    have no match unless the queries join the gallery);
    2-6 cameras; optionally tied distances."""
    rng = np.random.default_rng(seed)
    num_cams = int(rng.integers(2, 7))
    q_pids = rng.integers(0, 12, size=num_q)
    q_pids[-1] = 99  # at least one query without a match, even when the queries join the gallery
    q_camids = rng.integers(0, num_cams, size=num_q)
    g_pids = rng.integers(-1, 8, size=num_g)
    g_camids = rng.integers(0, num_cams, size=num_g)
    distmat = rng.random((num_q, num_g)) * 4
    if queries_in_gallery:  # the official gallery holds the queries, at distance 0 from themselves
        g_pids[:num_q], g_camids[:num_q] = q_pids, q_camids
        distmat[np.arange(num_q), np.arange(num_q)] = 0.0
    if ties:
        distmat = np.round(distmat, 1)  # ~40 distinct values: many exact ties per row
    return distmat, q_pids, g_pids, q_camids, g_camids


# --- test vectors of the reference codes ----------------------------------------------------------

# ranked relevance after junk removal -> (torchreid AP, official AP)
TEST_VECTORS = [
    ([1, 0, 1, 0], 0.83333, 0.79167),
    ([0, 1], 0.5, 0.25),
    ([1, 1, 0], 1.0, 1.0),
    ([0, 0, 1, 0, 1], 0.36667, 0.24583),
]


def single_query(relevance, junk_every=0, protocol="official"):
    """Query pid 1 camera 0; gallery ranked by distance 0, 1, ... with the given relevance.

    With ``junk_every`` > 0, junk items are interleaved after every ``junk_every`` items: a
    same-pid-same-camera item, and (official only, where it is junk) a pid -1 item.
    """
    g_pids, g_camids = [], []
    for i, rel in enumerate(relevance):
        if junk_every and i % junk_every == 0:
            g_pids.append(1)
            g_camids.append(0)
            if protocol == "official":
                g_pids.append(-1)
                g_camids.append(1)
        g_pids.append(1 if rel else 2)
        g_camids.append(1)
    distmat = np.arange(len(g_pids), dtype=np.float64)[None, :]
    return distmat, np.array([1]), np.array(g_pids), np.array([0]), np.array(g_camids)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("junk_every", [0, 1, 2])
@pytest.mark.parametrize(("relevance", "ap_torchreid", "ap_official"), TEST_VECTORS)
def test_reference_vectors(relevance, ap_torchreid, ap_official, junk_every, protocol):
    """AP matches the reference codes' test vectors; interleaved junk changes nothing."""
    problem = single_query(relevance, junk_every, protocol)
    res = evaluate_rank(*problem, max_rank=len(relevance), protocol=protocol)
    expected_ap = ap_official if protocol == "official" else ap_torchreid
    assert res["mAP"] == pytest.approx(expected_ap, abs=5e-6)
    first = relevance.index(1)
    assert_array_equal(res["cmc"], [float(r >= first) for r in range(len(relevance))])
    assert (res["num_valid_queries"], res["num_queries"]) == (1, 1)


# --- a hand-built problem ------------------------------------------------------------------------

# Gallery (pid, camera):       g0      g1      g2       g3      g4      g5      g6
G_PIDS = np.array([1, 2, -1, 0, 1, 2, 1])
G_CAMIDS = np.array([0, 1, 1, 1, 1, 0, 2])
Q_PIDS = np.array([1, 2, 3])  # q3: pid 3 is not in the gallery, so it has no valid match
Q_CAMIDS = np.array([0, 0, 0])
DISTMAT = np.array([
    # q1 ranks g0 g2 g3 g1 g4 g6 g5; g1 and g4 tie at 0.5 and keep gallery order (g1 first).
    #   official:  g0 junk (same cam), g2 junk (pid -1) -> g3 g1 g4 g6 g5 = [0, 0, 1, 1, 0]
    #              first hit rank 3; AP = 0.5*(0 + 1/3)/2 + 0.5*(1/3 + 2/4)/2 = 1/12 + 5/24 = 7/24
    #   torchreid: g0 junk -> g2 g3 g1 g4 g6 g5 = [0, 0, 0, 1, 1, 0]
    #              first hit rank 4; AP = (1/4 + 2/5)/2 = 0.325
    [0.1, 0.5, 0.2, 0.3, 0.5, 0.9, 0.6],
    # q2 ranks g5 g1 ...; g5 is junk (same pid, same camera), g1 is the only true match:
    #   both protocols: first hit rank 1, AP 1
    [0.4, 0.2, 0.3, 0.8, 0.7, 0.05, 0.5],
    # q3: no true match. official: CMC 0 and AP 0 over all 3 queries; torchreid: skipped.
    [0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3],
])
HAND_EXPECTED = {
    # CMC at ranks 1..7 and mAP
    "official": ([1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3], (7 / 24 + 1 + 0) / 3),
    "torchreid": ([1 / 2, 1 / 2, 1 / 2, 1, 1, 1, 1], (0.325 + 1) / 2),
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("max_rank", [1, 4, 7, 10])
@pytest.mark.parametrize("block_size", [1, 2, 128])
def test_hand_built_problem(protocol, max_rank, block_size):
    """Exact CMC/mAP with junk, pid -1, a distractor, a tie and a query without a match."""
    res = evaluate_rank(DISTMAT, Q_PIDS, G_PIDS, Q_CAMIDS, G_CAMIDS, max_rank=max_rank,
                        protocol=protocol, block_size=block_size)
    cmc, mean_ap = HAND_EXPECTED[protocol]
    expected_cmc = np.pad(cmc, (0, max(0, max_rank - len(cmc))), mode="edge")[:max_rank]
    assert_allclose(res["cmc"], expected_cmc, rtol=0, atol=1e-12)
    assert res["mAP"] == pytest.approx(mean_ap, abs=1e-12)
    assert res["num_valid_queries"] == 2
    assert res["num_queries"] == 3
    assert res["cmc"].dtype == np.float64
    assert res["cmc"].shape == (max_rank,)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_distractor_is_an_ordinary_non_match(protocol):
    """pid 0 items push the true match down the ranking; they are never skipped."""
    # query pid 5; gallery: distractor, distractor, match -> relevance [0, 0, 1]
    res = evaluate_rank(np.array([[0.0, 1.0, 2.0]]), [5], [0, 0, 5], [0], [1, 2, 1],
                        max_rank=3, protocol=protocol)
    assert_array_equal(res["cmc"], [0.0, 0.0, 1.0])
    # official: 1 * (0 + 1/3) / 2 = 1/6; torchreid: 1/3
    assert res["mAP"] == pytest.approx(1 / 6 if protocol == "official" else 1 / 3, abs=1e-12)


@pytest.mark.parametrize(("protocol", "expected_cmc", "expected_ap"), [
    # official: pid -1 is junk -> [1]: rank 1, AP 1
    ("official", [1.0, 1.0], 1.0),
    # torchreid: pid -1 is an ordinary non-match -> [0, 1]: rank 2, AP 1/2
    ("torchreid", [0.0, 1.0], 0.5),
])
def test_pid_minus_one(protocol, expected_cmc, expected_ap):
    """A pid -1 gallery item is junk under official and a non-match under torchreid."""
    res = evaluate_rank(np.array([[0.0, 1.0]]), [4], [-1, 4], [0], [1, 1], max_rank=2,
                        protocol=protocol)
    assert_array_equal(res["cmc"], expected_cmc)
    assert res["mAP"] == pytest.approx(expected_ap, abs=1e-12)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_ties_follow_gallery_order(protocol):
    """Equal distances keep gallery order (stable sort): a match listed first ranks first."""
    distmat = np.zeros((1, 4))
    first = evaluate_rank(distmat, [1], [1, 2, 2, 2], [0], [1, 1, 1, 1], max_rank=4,
                          protocol=protocol)
    last = evaluate_rank(distmat, [1], [2, 2, 2, 1], [0], [1, 1, 1, 1], max_rank=4,
                         protocol=protocol)
    assert_array_equal(first["cmc"], [1, 1, 1, 1])
    assert_array_equal(last["cmc"], [0, 0, 0, 1])
    assert first["mAP"] == pytest.approx(1.0)
    # official: 1 * (0 + 1/4) / 2 = 1/8; torchreid: 1/4
    assert last["mAP"] == pytest.approx(0.125 if protocol == "official" else 0.25)


# --- brute-force comparison on random problems ---------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("ties", "queries_in_gallery"), [
    (False, False), (True, False), (False, True), (True, True),
])
def test_matches_brute_force(protocol, seed, ties, queries_in_gallery):
    """evaluate_rank equals the loop-by-loop reference, for every block size."""
    problem = random_problem(seed, ties=ties, queries_in_gallery=queries_in_gallery)
    cmc, mean_ap, num_valid = reference_rank(*problem, max_rank=20, protocol=protocol)
    assert 0 < num_valid < 30  # the problem has both valid queries and queries without a match
    for block_size in (1, 7, 128):
        res = evaluate_rank(*problem, max_rank=20, protocol=protocol, block_size=block_size)
        assert_allclose(res["cmc"], cmc, rtol=0, atol=1e-12)
        assert res["mAP"] == pytest.approx(mean_ap, abs=1e-12)
        assert res["num_valid_queries"] == num_valid
        assert res["num_queries"] == 30


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_invariant_to_gallery_and_query_order(protocol):
    """Permuting gallery columns and query rows (no ties) leaves CMC and mAP unchanged."""
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(5)
    rng = np.random.default_rng(7)
    qp, gp = rng.permutation(len(q_pids)), rng.permutation(len(g_pids))
    res = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, protocol=protocol)
    perm = evaluate_rank(distmat[qp][:, gp], q_pids[qp], g_pids[gp], q_camids[qp], g_camids[gp],
                         protocol=protocol, block_size=7)
    assert_allclose(perm["cmc"], res["cmc"], rtol=0, atol=1e-12)
    assert perm["mAP"] == pytest.approx(res["mAP"], abs=1e-12)


# --- bad input -----------------------------------------------------------------------------------


def _bad(**changes):
    args = {"distmat": DISTMAT, "q_pids": Q_PIDS, "g_pids": G_PIDS, "q_camids": Q_CAMIDS,
            "g_camids": G_CAMIDS}
    args.update(changes)
    return args


NAN_DISTMAT = DISTMAT.copy()
NAN_DISTMAT[1, 2] = np.nan


@pytest.mark.parametrize(("args", "extra", "match"), [
    (_bad(distmat=DISTMAT[0]), {}, "distmat must be 2-D"),
    (_bad(q_pids=Q_PIDS[:2]), {}, "q_pids must have shape"),
    (_bad(g_pids=G_PIDS[:, None]), {}, "g_pids must have shape"),
    (_bad(q_camids=np.zeros(4)), {}, "q_camids must have shape"),
    (_bad(g_camids=G_CAMIDS[1:]), {}, "g_camids must have shape"),
    (_bad(distmat=DISTMAT.T), {}, "must have shape"),
    (_bad(), {"protocol": "market"}, "unknown protocol 'market'"),
    (_bad(distmat=NAN_DISTMAT), {}, "NaN"),
    (_bad(), {"max_rank": 0}, "max_rank must be >= 1"),
    (_bad(), {"block_size": 0}, "block_size must be >= 1"),
    (_bad(), {"block_size": -3}, "block_size must be >= 1"),
    (_bad(distmat=np.zeros((3, 0)), g_pids=np.zeros(0), g_camids=np.zeros(0)), {},
     "at least one query and one gallery item"),
])
def test_bad_input(args, extra, match):
    """Malformed problems raise ValueError naming what is wrong."""
    with pytest.raises(ValueError, match=match):
        evaluate_rank(**args, **extra)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_no_valid_query_raises(protocol):
    """A problem where no query has a true match is an error under both protocols."""
    # every gallery item shares the query camera (junk) or another pid
    with pytest.raises(ValueError, match="no query has a true match"):
        evaluate_rank(np.zeros((2, 3)), [1, 2], [1, 2, 3], [0, 0], [0, 0, 1],
                      protocol=protocol)


# --- pairwise_distance ---------------------------------------------------------------------------


def test_pairwise_distance_is_squared_euclidean():
    """Equals sum_e (q_e - g_e)^2 computed naively; non-negative; float32 (num_q, num_g)."""
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(5, 16)), rng.normal(size=(7, 16))
    g[3] = q[2]  # an exact duplicate: distance 0, never negative from rounding
    dist = pairwise_distance(q, g)
    naive = np.array([[sum((q[i, e] - g[j, e]) ** 2 for e in range(16)) for j in range(7)]
                      for i in range(5)])
    assert dist.shape == (5, 7)
    assert dist.dtype == np.float32
    assert_allclose(dist, naive, rtol=1e-5, atol=1e-5)
    assert (dist >= 0).all()
    assert dist[2, 3] == pytest.approx(0.0, abs=1e-5)


def test_pairwise_distance_of_normalised_features_is_cosine():
    """For unit features the distance is 2 - 2 cos and ranks exactly like cosine similarity."""
    rng = np.random.default_rng(1)
    q, g = rng.normal(size=(6, 32)), rng.normal(size=(40, 32))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    cos = q @ g.T
    dist = pairwise_distance(q, g)
    assert_allclose(dist, 2 - 2 * cos, rtol=0, atol=1e-6)
    assert_array_equal(np.argsort(dist, axis=1, kind="stable"),
                       np.argsort(-cos, axis=1, kind="stable"))
    assert (dist >= 0).all()
    assert (dist <= 4 + 1e-6).all()


@pytest.mark.parametrize(("q_shape", "g_shape"), [((3, 4), (5, 6)), ((4,), (5, 4)),
                                                  ((3, 4), (2, 5, 4))])
def test_pairwise_distance_rejects_bad_shapes(q_shape, g_shape):
    """Features must be (num_q, E) and (num_g, E) with the same E."""
    with pytest.raises(ValueError, match="expected features"):
        pairwise_distance(np.zeros(q_shape), np.zeros(g_shape))


# --- intervals: the bootstrap over query identities ----------------------------------------------


def hits_of(num_ids: int, per_id: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Hits at rank 1 (Q,) of ``num_ids`` identities with ``per_id`` queries each, and the pids."""
    rng = np.random.default_rng(seed)
    return (rng.random(num_ids * per_id) < 0.4).astype(float), np.repeat(np.arange(num_ids),
                                                                           per_id)


def test_bootstrap_interval_is_deterministic_for_a_seed():
    values, groups = hits_of(30)
    first = bootstrap_interval(values, groups, seed=3)
    assert_array_equal(bootstrap_interval(values, groups, seed=3), first)
    assert not np.array_equal(bootstrap_interval(values, groups, seed=4), first)
    assert_array_equal(bootstrap_interval(values, groups), bootstrap_interval(values, groups,
                                                                              seed=0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bootstrap_interval_contains_the_point_estimate(seed):
    values, groups = hits_of(40, seed=seed)
    lo, hi = bootstrap_interval(values, groups)
    assert 0.0 <= lo < values.mean() < hi <= 1.0


def test_bootstrap_interval_shrinks_as_queries_grow():
    """The same hit rate over 4 and 16 times as many identities: narrower and narrower, by about
    the square root of the number (the standard error of a mean)."""
    values, groups = hits_of(20)
    widths = []
    for copies in (1, 4, 16):
        lo, hi = bootstrap_interval(np.tile(values, copies),
                                    np.concatenate([groups + 20 * c for c in range(copies)]))
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] / widths[2] == pytest.approx(4, rel=0.25)


def test_bootstrap_resamples_identities_as_wholes():
    """Identity 0 has two hits, identity 1 two misses: a resample of 2 identities scores 0, 1/2 or
    1, never 1/4 or 3/4 (what resampling the 4 queries one by one would give)."""
    estimates = bootstrap_estimates(np.array([1.0, 1.0, 0.0, 0.0]), np.array([7, 7, 3, 3]))
    assert set(np.unique(estimates)) <= {0.0, 0.5, 1.0}
    assert len(np.unique(estimates)) == 3
    # an identity with more queries weighs more: 3 hits of id 7 and 1 miss of id 3
    estimates = bootstrap_estimates(np.array([1.0, 1.0, 1.0, 0.0]), np.array([7, 7, 7, 3]))
    assert set(np.unique(estimates)) <= {0.0, 0.75, 1.0}


def test_bootstrap_of_several_columns_at_once():
    """Columns (Q, M) resampled together: each column's interval is its own."""
    values, groups = hits_of(25)
    both = bootstrap_interval(np.stack([values, 1 - values], axis=1), groups)
    assert both.shape == (2, 2)
    assert_allclose(both[0], bootstrap_interval(values, groups))
    assert_allclose(both[1], 1 - both[0][::-1])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_evaluate_rank_per_query_values_average_to_the_scores(protocol):
    """first_hit and ap per query: the protocol's average of them is its rank-1 and mAP (a query
    without a true match: -1 and 0)."""
    problem = random_problem(1)
    res = evaluate_rank(*problem, max_rank=20, protocol=protocol)
    valid = res["first_hit"] >= 0
    assert (res["ap"][~valid] == 0).all() and valid.sum() == res["num_valid_queries"]
    counted = np.ones_like(valid) if protocol == "official" else valid
    assert (res["first_hit"][counted] == 0).mean() == pytest.approx(res["cmc"][0], abs=1e-12)
    assert res["ap"][counted].mean() == pytest.approx(res["mAP"], abs=1e-12)
    (r1_lo, r1_hi), (ap_lo, ap_hi) = rank_intervals(res, problem[1], protocol)
    assert r1_lo <= res["cmc"][0] <= r1_hi and ap_lo <= res["mAP"] <= ap_hi


# (pid, rank-1 hit, AP) of each query of the hand-built problem each protocol counts
HAND_QUERIES = {"official": ([1, 2, 3], [0, 1, 0], [7 / 24, 1.0, 0.0]),
                "torchreid": ([1, 2], [0, 1], [0.325, 1.0])}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("block_size", [1, 128])
def test_query_scores_of_the_hand_built_problem(protocol, block_size):
    """Each counted query's pid, hit and AP as worked out above DISTMAT; their means are the
    protocol's rank-1 and mAP, exactly."""
    res = evaluate_rank(DISTMAT, Q_PIDS, G_PIDS, Q_CAMIDS, G_CAMIDS, max_rank=4,
                        protocol=protocol, block_size=block_size)
    queries = query_scores(res, Q_PIDS, protocol)
    pid, hit, ap = HAND_QUERIES[protocol]
    assert queries["pid"].tolist() == pid and queries["hit"].tolist() == hit
    assert_allclose(queries["ap"], ap, rtol=0, atol=1e-12)
    assert queries["hit"].mean() == res["cmc"][0]
    assert queries["ap"].mean() == res["mAP"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("junk_every", [0, 2])
@pytest.mark.parametrize(("relevance", "ap_torchreid", "ap_official"), TEST_VECTORS)
def test_query_scores_of_the_reference_vectors(relevance, ap_torchreid, ap_official,
                                               junk_every, protocol):
    res = evaluate_rank(*single_query(relevance, junk_every, protocol),
                        max_rank=len(relevance), protocol=protocol)
    queries = query_scores(res, [1], protocol)
    assert queries["hit"].tolist() == [relevance[0]]
    assert queries["ap"].tolist() == [res["mAP"]]
    assert queries["ap"][0] == pytest.approx(
        ap_official if protocol == "official" else ap_torchreid, abs=5e-6)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_query_scores_average_to_the_scores_exactly(protocol, seed):
    """On random problems too: the same sums, the same division; and the unpaired interval
    is the bootstrap of exactly these values."""
    problem = random_problem(seed, ties=True)
    res = evaluate_rank(*problem, max_rank=20, protocol=protocol, block_size=7)
    queries = query_scores(res, problem[1], protocol)
    assert len(queries["pid"]) == (30 if protocol == "official" else res["num_valid_queries"])
    assert queries["hit"].mean() == res["cmc"][0]
    assert queries["ap"].mean() == res["mAP"]
    assert_allclose(rank_intervals(res, problem[1], protocol), bootstrap_interval(
        np.stack([queries["hit"], queries["ap"]], axis=1), queries["pid"]), rtol=0, atol=0)


# --- same camera among the nearest ----------------------------------------------------------------


def test_same_camera_shares_on_a_hand_made_ranking():
    """Query 0 (pid 1, camera 0) against 6 gallery items ranked by distance:
    g0 pid 1 cam 0 (junk: its own pid and camera), g1 pid -1 (junk), g2 pid 2 cam 0, g3 pid 1
    cam 1, g4 pid 3 cam 0, g5 pid 4 cam 1. Top 2 non-junk: g2 (own camera), g3 -> 1/2; top 3:
    g2, g3, g4 -> 2/3. Chance: own camera among the 4 non-junk (g2, g4) -> 1/2.
    Query 1 (pid 5, camera 1), same gallery in reverse order: top 2 g5 (cam 1), g4 (cam 0) ->
    1/2; chance: g3, g5 of g2..g5 (none of its own pid is junk) plus g0 -> cameras of g0 g2 g3
    g4 g5 = 0 0 1 0 1 -> 2/5."""
    distmat = np.array([[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]], dtype=np.float32)
    q_pids, q_camids = np.array([1, 5]), np.array([0, 1])
    g_pids, g_camids = np.array([1, -1, 2, 1, 3, 4]), np.array([0, 0, 0, 1, 0, 1])
    share, chance = same_camera_shares(distmat, q_pids, g_pids, q_camids, g_camids, top=2)
    assert_allclose(share, [1 / 2, 1 / 2])
    assert_allclose(chance, [1 / 2, 2 / 5])
    share, _ = same_camera_shares(distmat, q_pids, g_pids, q_camids, g_camids, top=3)
    assert_allclose(share, [2 / 3, 2 / 3])  # query 1: g5, g4, g3 -> cameras 1, 0, 1
    share, _ = same_camera_shares(distmat, q_pids, g_pids, q_camids, g_camids, top=10)
    assert_allclose(share, chance)  # the whole non-junk gallery: the chance level itself


def test_same_camera_of_features_that_encode_only_the_camera_is_one():
    """Features equal to a one-hot of the camera: every nearest non-junk tracklet is from the
    query's camera (1.0, interval [1, 1]) while chance is the camera's share of the gallery;
    features of the identity alone put the cross-camera match first and fall below it."""
    pids = np.repeat(np.arange(12), 3)
    camids = np.tile(np.arange(3), 12)
    is_query = camids < 2
    by_camera = np.eye(3)[camids] + 1e-3 * np.random.default_rng(0).random((36, 3))
    out = same_camera(by_camera, pids, camids, is_query)
    assert out["same_camera_top10"] == out["same_camera_top10_lo"] == 1.0
    assert out["same_camera_chance"] == pytest.approx(11 / 35)
    by_person = np.eye(12)[pids] + 1e-3 * np.random.default_rng(0).random((36, 12))
    out = same_camera(by_person, pids, camids, is_query)
    # the 2 other-camera tracklets of the query's identity come first, then 8 of the others
    assert out["same_camera_top10"] < out["same_camera_chance"] + 0.05


# --- the attention against the ground truth ------------------------------------------------------

NAMES = ["background", "hair", "skin", "torso", "arms", "legs", "shoes", "bag", "occluder"]
TORSO, LEGS, BAG, OCCLUDER = (NAMES.index(n) for n in ("torso", "legs", "bag", "occluder"))


def fractions_of(labels: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Cell fractions (P, h * w) of a label map (H, W), by counting: the reference."""
    H, W = labels.shape
    h, w = grid
    out = np.zeros((len(NAMES), h * w))
    for r in range(H):
        for c in range(W):
            out[labels[r, c], (r * h // H) * w + c * w // W] += 1
    return out / out.sum(axis=0, keepdims=True)


def person_frame(seed: int = 0) -> np.ndarray:
    """A (16, 8) label map on a 4 x 2 grid of 4 x 4 pixel cells: hair on the background (cells
    0, 1), torso filling cells 2 and 3, legs filling cell 4 and beside a bag in cell 5, legs on
    the background under an occluder (cells 6, 7)."""
    labels = np.zeros((16, 8), dtype=np.int64)
    labels[1:4, 2:6] = NAMES.index("hair")
    labels[4:8, :] = TORSO
    labels[8:12, :6], labels[8:12, 6:] = LEGS, BAG
    labels[12:16, 2:6] = LEGS
    labels[13 + seed % 3:, :] = OCCLUDER
    return labels


def test_cell_fractions_sum_to_one_per_cell():
    parts = np.stack([fractions_of(person_frame(s), (4, 2)) for s in range(3)])  # (3, P, 8)
    assert_allclose(parts.sum(axis=1), 1.0)
    check_parts(parts)  # accepted; float16, as the cache stores them, too
    check_parts(parts.astype(np.float16))
    broken = parts.copy()
    broken[0, TORSO, 0] += 0.1
    with pytest.raises(ValueError, match="do not sum to 1 in every cell"):
        check_parts(broken)


def test_a_map_on_torso_cells_has_person_mass_one_and_part_torso():
    """Cells 2 and 3 of the 4 x 2 grid (rows 4-7 of the map) are all torso: a head on them puts
    all its mass on the person, on the torso."""
    parts = fractions_of(person_frame(), (4, 2))[None]  # (1, P, 8)
    assert_allclose(parts[0, TORSO, 2:4], 1.0)
    S = np.zeros((1, 1, 8))
    S[0, 0, 2], S[0, 0, 3] = 0.75, 0.25
    mass = part_mass(S, parts)
    assert mass.shape == (1, len(NAMES))
    assert mass[0, TORSO] == pytest.approx(1.0)
    assert head_parts(mass, NAMES) == (["torso"], pytest.approx([1.0]))


def test_a_uniform_map_scores_the_mean_person_fraction():
    parts = np.stack([fractions_of(person_frame(s), (4, 2)) for s in range(3)])
    person = [i for i, n in enumerate(NAMES) if n not in ("background", "occluder")]
    S = np.full((3, 2, 8), 1 / 8)
    mass = part_mass(S, parts)
    assert_allclose(mass[:, person].sum(axis=1), parts[:, person].sum(axis=1).mean(), atol=1e-12)
    assert_allclose(mass.sum(axis=1), 1.0)  # person, occluder and background add up to 1


def test_parts_covered_counts_distinct_top_parts():
    mass = np.zeros((4, len(NAMES)))
    mass[0, TORSO], mass[1, TORSO], mass[2, LEGS] = 0.5, 0.9, 0.6
    mass[0, LEGS] = 0.2
    mass[3, 0] = 1.0  # all on the background: no part
    parts, share = head_parts(mass, NAMES)
    assert parts == ["torso", "torso", "legs", None]
    assert_allclose(share[:3], [0.5 / 0.7, 1.0, 1.0]) and np.isnan(share[3])
    assert parts_covered(parts) == 2
    assert parts_covered(["torso", "legs", "bag", "hair", "skin", "shoes"]) == 6
    assert parts_covered([None, None]) == 0


def test_a_head_mostly_on_the_background_covers_no_part():
    """A part counts only for the heads with at least COVER_MIN_PERSON of their mass on the
    person: the legs of a head at 0.19 do not, at exactly 0.2 they do."""
    parts = ["torso", "legs", "arms"]
    assert COVER_MIN_PERSON == 0.2
    assert parts_covered(parts, [0.9, 0.19, 0.01]) == 1
    assert parts_covered(parts, [0.9, 0.2, 0.01]) == 2
    assert parts_covered(parts, [0.9, 0.5, 0.3], min_person=0.4) == 2


def clips(seed: int = 0, T: int = 12, N: int = 5, K: int = 2) -> np.ndarray:
    """Visibilities (T, N, K) in [0, 1] that vary within every clip."""
    return np.random.default_rng(seed).random((T, N, K))


def test_visibility_correlation_is_plus_one_for_weights_equal_to_visibility():
    v = clips()
    corr = visibility_correlation(v, v)
    assert_allclose(corr["r"], 1.0) and corr["mean"] == pytest.approx(1.0)
    assert_allclose(corr["lo"], 1.0) and corr["mean_hi"] == pytest.approx(1.0)
    assert not corr["equal_weights"].any()


def test_visibility_correlation_is_minus_one_for_the_reverse():
    v = clips()
    corr = visibility_correlation(1 - v, v)
    assert_allclose(corr["r"], -1.0) and corr["mean"] == pytest.approx(-1.0)


def test_visibility_correlation_is_within_clips():
    """A per-clip offset of the weights (they sum to 1 per clip, whatever the clip) changes
    nothing: the values are centred on their clip's mean."""
    v = clips()
    offsets = np.random.default_rng(5).random((len(v), 1, 1))
    assert_allclose(visibility_correlation(v + offsets, v)["r"], 1.0)
    # and it is Pearson's r of the centred values, pooled over the clips
    t = clips(seed=1)
    tc, vc = t - t.mean(axis=1, keepdims=True), v - v.mean(axis=1, keepdims=True)
    expected = [np.corrcoef(np.r_[tc[..., k].ravel(), -tc[..., k].ravel()],
                            np.r_[vc[..., k].ravel(), -vc[..., k].ravel()])[0, 1]
                for k in range(2)]  # mirrored: mean 0, as centring makes it
    assert_allclose(visibility_correlation(t, v)["r"], expected, atol=1e-12)


def test_visibility_correlation_of_equal_weights_is_zero_by_construction():
    """Average pooling: 1/N in every frame, r = 0 with an interval of 0, flagged."""
    v = clips()
    corr = visibility_correlation(np.full(v.shape, 1 / 5, dtype=np.float32), v)
    assert_array_equal(corr["r"], 0.0) and corr["equal_weights"].all()
    assert (corr["mean"], corr["mean_lo"], corr["mean_hi"]) == (0.0, 0.0, 0.0)


def test_visibility_correlation_leaves_out_absent_parts_and_is_undefined_without_variation():
    v, t = clips(), clips(seed=1)
    v_holes = v.copy()
    v_holes[::2, 1:3, 0] = np.nan  # the part absent in some frames: those frames left out
    expected = visibility_correlation(np.where(np.isnan(v_holes), np.nan, t), v_holes)["r"]
    assert_allclose(visibility_correlation(t, v_holes)["r"], expected)
    v_flat = v.copy()
    v_flat[..., 1] = 1.0  # head 2's part never hidden: r undefined
    corr = visibility_correlation(t, v_flat)
    assert not np.isnan(corr["r"][0]) and np.isnan(corr["r"][1]) and np.isnan(corr["lo"][1])
    assert corr["mean"] == pytest.approx(corr["r"][0])  # the mean over the defined heads


def test_cached_rows_and_clip_ground_truth():
    """Tracklet 0 cached whole (frames 0-3), tracklet 1 capped (frames 0, 2, 4 of 5): its frame
    3 was not cached, and its ground truth is NaN."""
    offsets, frame_index = np.array([0, 4, 7]), np.array([0, 1, 2, 3, 0, 2, 4])
    rows = cached_rows(offsets, frame_index, np.array([[0, 2], [2, 3]]))
    assert_array_equal(rows, [[0, 2], [5, -1]])
    parts = np.arange(7 * 2 * 2 * 1, dtype=np.float32).reshape(7, 2, 2, 1)  # (F, P, h, w)
    visibility = np.arange(14, dtype=np.float32).reshape(7, 2)
    clip_parts, clip_visibility = clip_ground_truth(parts, visibility, rows)
    assert clip_parts.shape == (2, 2, 2, 2) and clip_visibility.shape == (2, 2, 2)
    assert_array_equal(clip_parts[1, 0], parts[5].reshape(2, 2))
    assert np.isnan(clip_parts[1, 1]).all() and np.isnan(clip_visibility[1, 1]).all()


def test_attention_ground_truth_writes_flat_keys_per_model_and_head():
    """Two heads on torso cells and leg cells of frames whose legs are hidden in odd frames; the
    leg head's weight follows the legs' visibility: r = +1 for it, no variation for the torso."""
    T, N = 4, 4
    labels = [person_frame() for _ in range(T * N)]
    parts = np.stack([fractions_of(m, (4, 2)) for m in labels]).reshape(T, N, len(NAMES), 8)
    visibility = np.full((T, N, len(NAMES)), np.nan)
    visibility[..., TORSO] = 1.0
    visibility[..., LEGS] = np.where(np.arange(N) % 2, 0.25, 1.0)[None, :]
    S = np.zeros((T, N, 2, 8))
    S[..., 0, 2], S[..., 1, 4] = 1.0, 1.0  # cell 2: all torso; cell 4: all legs
    t = np.stack([np.random.default_rng(0).dirichlet(np.ones(N), size=T),
                  visibility[..., LEGS] / visibility[..., LEGS].sum(axis=1, keepdims=True)],
                 axis=-1)  # (T, N, 2): head 1 anywhere, head 2 following the legs
    out = attention_ground_truth(S, t, parts, visibility, NAMES)
    assert (out["head1_part"], out["head2_part"], out["parts_covered"]) == ("torso", "legs", 2)
    assert out["head1_person"] == pytest.approx(1.0) and out["head1_background"] == 0.0
    # a uniform map: the person's share of the frame, hair 12 + torso 32 + legs 24 + 4 + bag 8
    # of the 128 pixels (the occluder covers rows 13-15)
    assert out["person_uniform"] == pytest.approx(80 / 128)
    assert out["head2_visibility_corr"] == pytest.approx(1.0)
    assert out["head1_visibility_corr"] is None  # the torso is never hidden
    assert out["visibility_corr"] == pytest.approx(1.0)  # the mean over the defined head
    assert "visibility_corr_note" not in out
    assert (out["frames_measured"], out["frames_missing"]) == (T * N, 0)
    assert all(not isinstance(v, dict | list) for v in out.values())  # flat: dvc shows each key
    # a frame that was not cached (NaN ground truth): left out and counted
    parts[0, 1], visibility[0, 1] = np.nan, np.nan
    out = attention_ground_truth(S, t, parts, visibility, NAMES)
    assert (out["frames_measured"], out["frames_missing"]) == (T * N - 1, 1)
    assert out["head1_person"] == pytest.approx(1.0) and out["head2_part"] == "legs"
    assert out["head2_visibility_corr"] == pytest.approx(1.0)
