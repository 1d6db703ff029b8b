"""Ranking metrics: CMC and mAP under the official (MARS MATLAB) and torchreid protocols.

Values are checked against the published AP test vectors of the two protocols' reference codes
(MARS-evaluation, torchreid), hand-built problems worked out in the comments, and a brute-force
reference that follows each protocol's text loop by loop.
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from pipeline.metrics import evaluate_rank, pairwise_distance

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
