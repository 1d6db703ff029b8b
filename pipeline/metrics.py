"""Re-identification ranking metrics: CMC and mAP under the two protocols in common use.

Two protocols differ by 0.5-3 points on MARS, so both are supported and the number of valid
queries is always reported:

- ``official``: each benchmark's own protocol. On MARS and the MARS-layout sets (the
  MARS-evaluation MATLAB code) the gallery is every test tracklet, queries included; on PRID2011
  and iLIDS-VID (Wang et al., ECCV 2014, which DRSA follows: ``CAMERA_PAIR_SETS``) a probe is
  ranked against the test tracklets of the other camera only (the non-query ones). Junk = gallery
  pid -1, or same pid AND same camera; junk is skipped without advancing the rank. AP by the
  trapezoid rule: walking the ranked non-junk list, ``ap += (recall - old_recall) *
  (old_precision + precision) / 2`` with ``old_precision = 1`` at the start. CMC and mAP are
  divided by ALL queries (a query without a true match scores 0).
- ``torchreid``: the caller passes the gallery without the queries and without pid -1. Junk = same
  pid AND same camera only. AP = mean of the precision at each true match. Queries without a true
  match are skipped; CMC and mAP are divided by the valid queries.

Arrays: ``distmat`` (num_q, num_g) distances, smaller = more similar; ``q_pids``, ``q_camids``
(num_q,); ``g_pids``, ``g_camids`` (num_g,). Ranking uses a stable sort, so ties keep gallery order.
Queries are processed in blocks, so memory stays bounded whatever the number of queries (what a
MARS-sized problem needs beyond its distance matrix: docs/benchmarks.md).

Precision: a seeded bootstrap over the query identities (``bootstrap_interval``) gives a 95 percent
interval of rank-1 and mAP; a difference between two models scored on the same queries gets its
own interval from a paired bootstrap over the same identities (``paired_bootstrap``, on the
per-query values ``query_scores`` gives). Results over splits: ``summarize`` and the headline.
(The statistics of the attention maps: ``pipeline.attention_stats``.)
"""

from __future__ import annotations

import numpy as np

from pipeline.names import SHORT
from pipeline.params import PROTOCOLS

RANKS = (1, 5, 10, 20)  # the CMC ranks reported (those up to max_rank)
# The bootstrap behind every interval: resamples, their seed (a constant, not params' `seed`, so
# that an interval moves only with the results it is computed from), and the coverage.
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
CI_LEVEL = 0.95


# The sets whose benchmark ranks each probe (camera 1 / cam_a) against the other camera's test
# tracklets only (the readers mark the camera-1 test sequences as queries): the official
# protocol's gallery there is the non-query test tracklets, not MARS's every test tracklet. The
# generated PRID-like set (two cameras, one query tracklet per test identity) is read the same way.
CAMERA_PAIR_SETS = ("prid2011", "ilidsvid", "synthetic2")


def protocol_gallery(protocol: str, pids: np.ndarray, is_query: np.ndarray,
                     dataset: str | None = None) -> np.ndarray:
    """Boolean mask of the test tracklets that form the gallery under ``protocol`` on
    ``dataset``: all of them (``official``, MARS's rule), those that are neither queries nor junk
    (``torchreid``; and ``official`` on the ``CAMERA_PAIR_SETS``, where the non-query test
    tracklets are the gallery camera's)."""
    if protocol == "official" and dataset not in CAMERA_PAIR_SETS:
        return np.ones(len(pids), dtype=bool)
    return ~np.asarray(is_query, dtype=bool) & (np.asarray(pids) != -1)


def score(features: np.ndarray, pids: np.ndarray, camids: np.ndarray, is_query: np.ndarray,
          protocols: list[str], max_rank: int,
          dataset: str | None = None) -> tuple[dict, dict, dict]:
    """One model's test features (num_tracklets, E), in the order of the test tracklets' ``pids``,
    ``camids`` and ``is_query`` (num_tracklets,), ranked under each protocol (the official one
    as ``dataset``'s benchmark has it: ``protocol_gallery``).

    Returns:
        ``{protocol: {"rank1", "rank1_lo", "rank1_hi", "rank5", ..., "mAP", "mAP_lo", "mAP_hi",
        "num_valid_queries", "num_queries"}}`` (``_lo``, ``_hi``: the bounds of the 95 percent
        bootstrap interval, ``rank_intervals``), ``{protocol: cmc}`` (the CMC curve,
        ``max_rank`` fractions) and ``{protocol: query_scores(...)}`` (each counted query's pid,
        rank-1 hit and AP: what a paired comparison of two models needs).
    """
    pids, camids = np.asarray(pids), np.asarray(camids)
    is_query = np.asarray(is_query, dtype=bool)
    metrics, curves, queries = {}, {}, {}
    for protocol in protocols:
        gallery = protocol_gallery(protocol, pids, is_query, dataset)
        distmat = pairwise_distance(features[is_query], features[gallery])
        result = evaluate_rank(distmat, pids[is_query], pids[gallery], camids[is_query],
                               camids[gallery], max_rank=max_rank, protocol=protocol)
        cmc = result["cmc"]
        (r1_lo, r1_hi), (ap_lo, ap_hi) = rank_intervals(result, pids[is_query], protocol)
        metrics[protocol] = {"rank1": float(cmc[0]), "rank1_lo": r1_lo, "rank1_hi": r1_hi}
        metrics[protocol].update({f"rank{r}": float(cmc[r - 1]) for r in RANKS[1:]
                                  if r <= max_rank})
        metrics[protocol].update({"mAP": result["mAP"], "mAP_lo": ap_lo, "mAP_hi": ap_hi,
                                  "num_valid_queries": result["num_valid_queries"],
                                  "num_queries": result["num_queries"]})
        curves[protocol] = cmc
        queries[protocol] = query_scores(result, pids[is_query], protocol)
    return metrics, curves, queries


def evaluate_rank(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int = 20,
    protocol: str = "official",
    block_size: int = 128,
) -> dict:
    """CMC curve and mAP of a ranking problem.

    Returns:
        ``cmc``: float64 array of length ``max_rank``, cmc[k] = fraction of queries whose first true
        match is within the top k+1 (after junk removal); ``mAP``: float in [0, 1];
        ``num_valid_queries``: queries with at least one true match in the gallery;
        ``num_queries``: all queries; per query (num_q,): ``first_hit``, the 0-based rank of its
        first true match (-1 without one), and ``ap``, its AP (0 without a true match).
    """
    distmat = np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    _check_inputs(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, protocol)
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    num_q = distmat.shape[0]

    first_hit = np.empty(num_q, dtype=np.int64)  # 0-based rank of the first true match, -1 if none
    ap = np.empty(num_q, dtype=np.float64)
    for start in range(0, num_q, block_size):
        block = slice(start, min(start + block_size, num_q))
        first_hit[block], ap[block] = _rank_block(
            distmat[block], q_pids[block], q_camids[block], g_pids, g_camids, protocol)

    valid = first_hit >= 0
    num_valid = int(valid.sum())
    hits = np.zeros((num_q, max_rank), dtype=np.float64)
    ranks = np.arange(max_rank)
    hits[valid] = first_hit[valid, None] <= ranks[None, :]
    if protocol == "official":
        denominator, counted = num_q, np.ones(num_q, dtype=bool)
    else:
        denominator, counted = num_valid, valid
    if num_valid == 0:  # under either protocol the scores would mean nothing
        raise ValueError("no query has a true match in the gallery: check the ids and cameras")
    return {
        "cmc": hits[counted].sum(axis=0) / denominator,
        "mAP": float(ap[counted].sum() / denominator),
        "num_valid_queries": num_valid,
        "num_queries": num_q,
        "first_hit": first_hit,
        "ap": ap,
    }


def _rank_block(distmat, q_pids, q_camids, g_pids, g_camids, protocol):
    """First-hit rank and AP of each query of a block (b queries x num_g gallery items)."""
    order = np.argsort(distmat, axis=1, kind="stable")  # (b, num_g)
    pids, cams = g_pids[order], g_camids[order]  # (b, num_g), ranked
    same_pid = pids == q_pids[:, None]
    same_cam = cams == q_camids[:, None]
    junk = same_pid & same_cam
    if protocol == "official":
        junk |= pids == -1
    keep = ~junk
    match = same_pid & ~same_cam & keep  # true matches (junk removed)
    position = np.cumsum(keep, axis=1)  # 1-based rank among non-junk items
    found = np.cumsum(match, axis=1)  # true matches seen so far
    num_good = found[:, -1]
    has_match = num_good > 0

    first = np.where(has_match, np.argmax(match, axis=1), 0)  # index in the ranked list
    first_hit = np.where(has_match, position[np.arange(len(order)), first] - 1, -1)

    precision = np.where(match, found / np.maximum(position, 1), 0.0)
    if protocol == "official":
        # precision at the previous non-junk item; 1 before the first item (trapezoid rule)
        prev = np.where(position > 1, (found - 1) / np.maximum(position - 1, 1), 1.0)
        precision = np.where(match, (prev + precision) / 2, 0.0)
    ap = precision.sum(axis=1) / np.maximum(num_good, 1)
    return first_hit, np.where(has_match, ap, 0.0)


def _check_inputs(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, protocol):
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    if distmat.ndim != 2:
        raise ValueError(f"distmat must be 2-D (num_q, num_g), got shape {distmat.shape}")
    num_q, num_g = distmat.shape
    if num_q == 0 or num_g == 0:
        raise ValueError(f"distmat needs at least one query and one gallery item, got shape "
                         f"{distmat.shape}")
    for name, arr, n in [("q_pids", q_pids, num_q), ("q_camids", q_camids, num_q),
                         ("g_pids", g_pids, num_g), ("g_camids", g_camids, num_g)]:
        if arr.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},) to match distmat {distmat.shape}, "
                             f"got {arr.shape}")
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    if np.isnan(distmat).any():
        raise ValueError("distmat contains NaN: the features are broken")


def pairwise_distance(q_feats: np.ndarray, g_feats: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (num_q, num_g) between query and gallery features.

    For L2-normalised features this is ``2 - 2 cos``, so it ranks like cosine similarity. Computed
    in float64 and clamped at 0 (rounding can give tiny negatives), returned as float32.
    """
    q = np.asarray(q_feats, dtype=np.float64)
    g = np.asarray(g_feats, dtype=np.float64)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"expected features (num_q, E) and (num_g, E), got {q.shape}, {g.shape}")
    dist = (q * q).sum(1)[:, None] + (g * g).sum(1)[None, :] - 2.0 * q @ g.T
    return np.maximum(dist, 0.0).astype(np.float32)


# --- where a model sits between person and camera ------------------------------------------------

SAME_CAMERA_TOP = 10  # the nearest gallery tracklets looked at by ``same_camera``


def same_camera_shares(distmat: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray,
                       q_camids: np.ndarray, g_camids: np.ndarray, top: int = SAME_CAMERA_TOP,
                       block_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Per query (num_q,): the share of its ``top`` nearest non-junk gallery items that come from
    its own camera, and that share's chance level, the share of its whole non-junk gallery
    from its own camera (what a ranking blind to the camera gives on average). Junk as in the
    official protocol: gallery pid -1, or the query's pid and camera (the query itself, its own
    tracklets). A query with fewer than ``top`` non-junk items counts the ones it has."""
    distmat = np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    _check_inputs(distmat, q_pids, g_pids, q_camids, g_camids, top, "official")
    num_q = distmat.shape[0]
    share, chance = np.empty(num_q), np.empty(num_q)
    for start in range(0, num_q, block_size):
        block = slice(start, min(start + block_size, num_q))
        order = np.argsort(distmat[block], axis=1, kind="stable")  # (b, num_g)
        pids, cams = g_pids[order], g_camids[order]  # (b, num_g), ranked
        own = cams == q_camids[block, None]
        keep = ~((pids == q_pids[block, None]) & own) & (pids != -1)
        in_top = keep & (np.cumsum(keep, axis=1) <= top)  # the first ``top`` non-junk items
        share[block] = (own & in_top).sum(1) / np.maximum(in_top.sum(1), 1)
        chance[block] = (own & keep).sum(1) / np.maximum(keep.sum(1), 1)
    return share, chance


def same_camera(features: np.ndarray, pids: np.ndarray, camids: np.ndarray,
                is_query: np.ndarray, top: int = SAME_CAMERA_TOP) -> dict:
    """How much one model's test features (num_tracklets, E) encode the camera: the mean over
    the queries of ``same_camera_shares`` against every test tracklet (MARS's official gallery,
    on every set: the camera-pair sets' own gallery holds the other camera only, where the
    share would be 0 whatever the features), with its 95 percent bootstrap interval over the
    query identities, and the chance level. ``{"same_camera_top10", "same_camera_top10_lo",
    "same_camera_top10_hi", "same_camera_chance"}`` (for ``top`` = 10)."""
    pids, camids = np.asarray(pids), np.asarray(camids)
    is_query = np.asarray(is_query, dtype=bool)
    distmat = pairwise_distance(features[is_query], features)
    share, chance = same_camera_shares(distmat, pids[is_query], pids, camids[is_query], camids,
                                       top)
    lo, hi = bootstrap_interval(share, pids[is_query])
    key = f"same_camera_top{top}"
    return {key: float(share.mean()), f"{key}_lo": float(lo), f"{key}_hi": float(hi),
            "same_camera_chance": float(chance.mean())}


# --- precision: bootstrap intervals ---------------------------------------------------------------


def bootstrap_weights(num_groups: int, num_resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int | np.random.Generator = BOOTSTRAP_SEED) -> np.ndarray:
    """(num_resamples, num_groups) int counts: how many times each of ``num_groups`` groups is
    drawn in each resample of ``num_groups`` groups drawn with replacement (seeded; a Generator
    given as ``seed`` is drawn from, so that several calls continue one stream)."""
    if num_groups < 1:
        raise ValueError(f"a bootstrap needs at least one group, got {num_groups}")
    rng = np.random.default_rng(seed)
    return rng.multinomial(num_groups, np.full(num_groups, 1.0 / num_groups), size=num_resamples)


def bootstrap_estimates(values: np.ndarray, groups: np.ndarray,
                        num_resamples: int = BOOTSTRAP_RESAMPLES,
                        seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """The mean of ``values`` (Q,) or (Q, M) over the queries of each resample of the groups:
    (num_resamples,) or (num_resamples, M). The groups (``groups`` (Q,), e.g. the query pids)
    are resampled as wholes with replacement: a group drawn twice counts all its queries twice,
    since the queries of one identity are not independent draws."""
    values = np.asarray(values, dtype=np.float64)
    column = values.ndim == 1
    sums, counts = _group_sums(values[:, None] if column else values, groups)
    weights = bootstrap_weights(len(counts), num_resamples, seed)  # (R, G)
    estimates = (weights @ sums) / (weights @ counts)[:, None]  # (R, M)
    return estimates[:, 0] if column else estimates


def _group_sums(values: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sums (G, M) of ``values`` (Q, M) over the queries of each group and the number of
    queries (G,) of each, the groups in the order of their sorted labels ``groups`` (Q,)."""
    if len(groups) != len(values):
        raise ValueError(f"{len(values)} values but {len(groups)} group labels")
    if len(values) == 0:
        raise ValueError("a bootstrap needs at least one query")
    _, group = np.unique(np.asarray(groups), return_inverse=True)
    sums = np.zeros((group.max() + 1, values.shape[1]))  # (G, M) per group
    np.add.at(sums, group, values)
    return sums, np.bincount(group).astype(np.float64)


def bootstrap_interval(values: np.ndarray, groups: np.ndarray,
                       num_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                       level: float = CI_LEVEL) -> np.ndarray:
    """Percentile interval of ``bootstrap_estimates``: (2,) ``[lo, hi]`` for values (Q,), (M, 2)
    for values (Q, M); the same for the same inputs and seed."""
    estimates = bootstrap_estimates(values, groups, num_resamples, seed)
    tail = 100 * (1 - level) / 2
    return np.percentile(estimates, [tail, 100 - tail], axis=0).T


def rank_intervals(result: dict, q_pids: np.ndarray, protocol: str) -> list[tuple[float, float]]:
    """95 percent intervals ``[(lo, hi) of rank-1, (lo, hi) of mAP]`` of an ``evaluate_rank``
    result, bootstrapping the query identities (``q_pids``). The protocol's own averaging:
    official, every query (one without a true match counts 0); torchreid, the valid ones only."""
    queries = query_scores(result, q_pids, protocol)
    values = np.stack([queries["hit"], queries["ap"]], axis=1)  # (Q, 2): hit at rank 1, AP
    bounds = bootstrap_interval(values, queries["pid"])
    return [(float(lo), float(hi)) for lo, hi in bounds]


def query_scores(result: dict, q_pids: np.ndarray, protocol: str) -> dict[str, np.ndarray]:
    """The queries an ``evaluate_rank`` result counts under ``protocol``, each with its score:
    ``{"pid": (Q,), "hit": (Q,) int8 1 where its first true match is at rank 1, "ap": (Q,)}``.
    Official: every query (one without a true match: hit 0, AP 0); torchreid: the valid ones.
    Their means are the protocol's rank-1 and mAP, exactly (the same sums, the same division)."""
    first_hit, ap = result["first_hit"], result["ap"]
    counted = np.ones(len(ap), dtype=bool) if protocol == "official" else first_hit >= 0
    return {"pid": np.asarray(q_pids)[counted], "hit": (first_hit[counted] == 0).astype(np.int8),
            "ap": ap[counted]}


def paired_bootstrap(a: np.ndarray, b: np.ndarray, groups: np.ndarray,
                     num_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                     level: float = CI_LEVEL) -> dict[str, float]:
    """Model B against model A on the same queries: ``paired_bootstrap_splits`` of one split.

    Args:
        a, b: per-query scores (Q,) (rank-1 hits 0/1, or APs) of each model, the queries in the
            same order; or (S, Q), one row per seed of the model's heads (A and B may have
            different numbers of seeds: one Baseline against three seeds of heads).
        groups: (Q,) each query's identity (its pid): the unit resampled.
    """
    return paired_bootstrap_splits([(a, b, groups)], num_resamples, seed, level)


def paired_bootstrap_splits(splits: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                            num_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                            level: float = CI_LEVEL) -> dict[str, float]:
    """The difference B - A of two models' mean scores, with its 95 percent interval from a
    paired bootstrap over the query identities.

    Each resample draws the query identities of each split with replacement, as
    ``bootstrap_interval`` does (an identity drawn twice brings all its queries twice; with one
    split, the very draws of the unpaired interval of the same seed), and scores BOTH models on
    the same draw: what the two models have in common (the hard identities, the easy ones)
    cancels in the difference, which an unpaired comparison of two intervals cannot do. With
    seeds (rows of ``a``, ``b``), each model's score of a resample is the mean over its seeds on
    that resample (the same identities for every seed): the interval is that of the seed-averaged
    difference over the test identities; the spread of the seeds themselves is not resampled
    (three seeds are too few to bootstrap). Several splits (independent test sets, each
    ``(a, b, groups)`` as in ``paired_bootstrap``): each resampled on its own, the difference
    averaged over the splits as ``summarize`` averages the scores.

    Returns:
        ``{"a", "b": each model's mean score, "diff": b - a, "lo", "hi": the percentile interval
        of the difference}``, fractions (the percents of the report are formatting's); the same
        for the same inputs and ``seed``. Identical models: exactly ``[0, 0]``.
    """
    if not splits:
        raise ValueError("a paired bootstrap needs at least one split")
    rng = np.random.default_rng(seed)
    means, estimates = [], np.zeros(num_resamples)
    for a, b, groups in splits:
        a, b = np.atleast_2d(np.asarray(a, dtype=np.float64)), np.atleast_2d(
            np.asarray(b, dtype=np.float64))  # (S_a, Q), (S_b, Q)
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or 0 in a.shape + b.shape:
            raise ValueError(f"expected the scores of the same queries, (Q,) or (seeds, Q) "
                             f"each, got shapes {a.shape} and {b.shape}")
        diff = b.mean(axis=0) - a.mean(axis=0)  # (Q,): the seed-averaged difference per query
        sums, counts = _group_sums(diff[:, None], groups)  # (G, 1), (G,)
        weights = bootstrap_weights(len(counts), num_resamples, rng)  # (R, G)
        estimates += (weights @ sums[:, 0]) / (weights @ counts)  # (R,)
        means.append((a.mean(), b.mean(), diff.mean()))
    estimates /= len(splits)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(estimates, [tail, 100 - tail])
    a_mean, b_mean, diff_mean = np.mean(means, axis=0)
    return {"a": float(a_mean), "b": float(b_mean), "diff": float(diff_mean), "lo": float(lo),
            "hi": float(hi)}


# --- results over splits: what the summary stage and the report read ----------------------------

SUMMARY_METRICS = ("rank1", "rank5", "rank10", "rank20", "mAP")
# The headline (metrics/results/<set>.json, what `dvc exp show` and `dvc metrics diff` lead with):
# rank-1 and mAP in percent, each model under its short name (pipeline.names).


def summarize(evals: list[dict]) -> dict:
    """{dataset: {model: {protocol: {metric: {"mean", "std"}, "splits": n, ...}}}} over the
    given per-split results (std is the population std, 0 for one split)."""
    summary: dict = {}
    for dataset in dict.fromkeys(e["dataset"] for e in evals):
        runs = [e for e in evals if e["dataset"] == dataset]
        summary[dataset] = {}
        for model, protocols in runs[0]["models"].items():
            summary[dataset][model] = {}
            for protocol, first in protocols.items():
                valid = [e["models"][model][protocol]["num_valid_queries"] for e in runs]
                entry = {"splits": [e["split"] for e in runs],
                         "num_valid_queries": float(np.mean(valid))}  # mean over the splits
                for metric in SUMMARY_METRICS:
                    if metric in first:
                        values = [e["models"][model][protocol][metric] for e in runs]
                        entry[metric] = {"mean": float(np.mean(values)),
                                         "std": float(np.std(values))}
                        bounds = [(e["models"][model][protocol].get(f"{metric}_lo"),
                                   e["models"][model][protocol].get(f"{metric}_hi"))
                                  for e in runs]
                        if all(None not in b for b in bounds):  # (older files have none)
                            entry[metric]["lo"], entry[metric]["hi"] = split_interval(
                                values, bounds)
                summary[dataset][model][protocol] = entry
    return summary


def split_interval(values: list[float], bounds: list[tuple[float, float]]) -> tuple[float, float]:
    """The 95 percent interval of the mean over splits of ``values``, from each split's interval
    ``bounds`` [(lo, hi)]: that interval itself for one split; for several (independent test
    sets), the normal approximation ``mean ± sqrt(sum_s h_s^2) / S`` with h_s = (hi - lo) / 2
    each split's half-width (the standard error of a mean of independent estimates)."""
    if len(values) == 1:
        return float(bounds[0][0]), float(bounds[0][1])
    half = float(np.sqrt(sum(((hi - lo) / 2) ** 2 for lo, hi in bounds)) / len(values))
    mean = float(np.mean(values))
    return mean - half, mean + half


HEADLINE_CI = "ci"  # the headline's precision group: ci.R1, ci.mAP


def headline(summary: dict, protocol: str) -> dict:
    """``{"R1": {short model name: percent}, "mAP": {...}, "ci": {"R1": percent, "mAP":
    percent}}`` of one dataset's ``summarize`` entry under ``protocol``: the means over the
    splits, in percent with one decimal, and ``ci``, for each metric the largest half-width of
    the models' 95 percent intervals (a difference smaller than it is within the noise of the
    test set); no ``ci`` where a model has no interval (results from before intervals)."""
    out: dict = {"R1": {}, "mAP": {}}
    halves: dict[str, list] = {"R1": [], "mAP": []}
    for model, protocols in summary.items():
        short = SHORT.get(model, model)
        for name, metric in (("R1", "rank1"), ("mAP", "mAP")):
            value = protocols[protocol][metric]
            out[name][short] = round(100 * value["mean"], 1)
            halves[name].append((value["hi"] - value["lo"]) / 2 if "lo" in value else None)
    if all(h and None not in h for h in halves.values()):
        out[HEADLINE_CI] = {name: round(100 * max(h), 1) for name, h in halves.items()}
    return out
