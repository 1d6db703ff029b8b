"""Re-identification ranking metrics: CMC and mAP under the two protocols in common use.

Two protocols differ by 0.5-3 points on MARS, so both are supported and the number of valid
queries is always reported:

- ``official`` (the MARS-evaluation MATLAB code): the gallery is every test tracklet, queries
  included. Junk = gallery pid -1, or same pid AND same camera; junk is skipped without advancing
  the rank. AP by the trapezoid rule: walking the ranked non-junk list,
  ``ap += (recall - old_recall) * (old_precision + precision) / 2`` with ``old_precision = 1`` at
  the start. CMC and mAP are divided by ALL queries (a query without a true match scores 0).
- ``torchreid``: the caller passes the gallery without the queries and without pid -1. Junk = same
  pid AND same camera only. AP = mean of the precision at each true match. Queries without a true
  match are skipped; CMC and mAP are divided by the valid queries.

Arrays: ``distmat`` (num_q, num_g) distances, smaller = more similar; ``q_pids``, ``q_camids``
(num_q,); ``g_pids``, ``g_camids`` (num_g,). Ranking uses a stable sort, so ties keep gallery order.
Queries are processed in blocks, so memory stays bounded whatever the number of queries (what a
MARS-sized problem needs beyond its distance matrix: docs/benchmarks.md).
"""

from __future__ import annotations

import numpy as np

from pipeline.params import PROTOCOLS

RANKS = (1, 5, 10, 20)  # the CMC ranks reported (those up to max_rank)


def protocol_gallery(protocol: str, pids: np.ndarray, is_query: np.ndarray) -> np.ndarray:
    """Boolean mask of the test tracklets that form the gallery under ``protocol``: all of them
    (``official``), or those that are neither queries nor junk (``torchreid``)."""
    if protocol == "official":
        return np.ones(len(pids), dtype=bool)
    return ~np.asarray(is_query, dtype=bool) & (np.asarray(pids) != -1)


def score(features: np.ndarray, pids: np.ndarray, camids: np.ndarray, is_query: np.ndarray,
          protocols: list[str], max_rank: int) -> tuple[dict, dict]:
    """One model's test features (num_tracklets, E), in the order of the test tracklets' ``pids``,
    ``camids`` and ``is_query`` (num_tracklets,), ranked under each protocol.

    Returns:
        ``{protocol: {"rank1", "rank5", ..., "mAP", "num_valid_queries", "num_queries"}}`` and
        ``{protocol: cmc}`` (the CMC curve, ``max_rank`` fractions).
    """
    pids, camids = np.asarray(pids), np.asarray(camids)
    is_query = np.asarray(is_query, dtype=bool)
    metrics, curves = {}, {}
    for protocol in protocols:
        gallery = protocol_gallery(protocol, pids, is_query)
        distmat = pairwise_distance(features[is_query], features[gallery])
        result = evaluate_rank(distmat, pids[is_query], pids[gallery], camids[is_query],
                               camids[gallery], max_rank=max_rank, protocol=protocol)
        cmc = result["cmc"]
        metrics[protocol] = {f"rank{r}": float(cmc[r - 1]) for r in RANKS if r <= max_rank}
        metrics[protocol].update({"mAP": result["mAP"],
                                  "num_valid_queries": result["num_valid_queries"],
                                  "num_queries": result["num_queries"]})
        curves[protocol] = cmc
    return metrics, curves


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
        ``num_queries``: all queries.
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
        denominator = num_q
    else:
        denominator = num_valid
        hits, ap = hits[valid], ap[valid]
    if num_valid == 0:  # under either protocol the scores would mean nothing
        raise ValueError("no query has a true match in the gallery: check the ids and cameras")
    return {
        "cmc": hits.sum(axis=0) / denominator,
        "mAP": float(ap.sum() / denominator),
        "num_valid_queries": num_valid,
        "num_queries": num_q,
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


# --- how diverse the spatial attention maps are --------------------------------------------------


def attention_overlap(S: np.ndarray) -> np.ndarray:
    """Mean pairwise Bhattacharyya coefficient ``sum_l sqrt(s_i[l] s_j[l])`` over the K(K-1)/2
    pairs of an image's K spatial attention maps, for S of shape (..., K, L) whose rows sum to 1:
    shape (...). 0 when the maps have disjoint supports, 1 when they are identical; NaN for K = 1
    (no pair). This is 1 - H^2 of the Hellinger distance the diversity term Q penalises."""
    S = np.asarray(S, dtype=np.float64)
    K = S.shape[-2]
    if K < 2:
        return np.full(S.shape[:-2], np.nan)
    root = np.sqrt(np.clip(S, 0.0, None))
    bc = root @ np.swapaxes(root, -1, -2)  # (..., K, K), ones on the diagonal
    off_diagonal = bc.sum(axis=(-1, -2)) - np.trace(bc, axis1=-2, axis2=-1)
    return off_diagonal / (K * (K - 1))


def attention_entropy(S: np.ndarray) -> np.ndarray:
    """Mean entropy (nats) of an image's K attention maps, for S of shape (..., K, L): shape (...).
    0 for maps on one cell, log(L) for uniform maps; 0 log 0 counts as 0."""
    S = np.asarray(S, dtype=np.float64)
    terms = np.where(S > 0, -S * np.log(np.where(S > 0, S, 1.0)), 0.0)
    return terms.sum(axis=-1).mean(axis=-1)


def attention_frame_stats(S: np.ndarray) -> dict[str, np.ndarray]:
    """Per frame of a batch of spatial attention maps S (B, N, K, L): the overlap and the entropy
    of its K maps, flattened to (B * N,) arrays (a record for ``attention_summary``)."""
    return {"overlap": attention_overlap(S).ravel(), "entropy": attention_entropy(S).ravel()}


def attention_summary(records: list[dict[str, np.ndarray]]) -> dict[str, float | None]:
    """Means over every test frame of ``attention_frame_stats`` records: ``overlap`` (None for
    K = 1, where no pair of maps exists) and ``entropy``."""
    overlap = np.concatenate([r["overlap"] for r in records])
    entropy = np.concatenate([r["entropy"] for r in records])
    return {"overlap": None if np.isnan(overlap).all() else float(overlap.mean()),
            "entropy": float(entropy.mean())}


# --- results over splits: what the summary stage and the report read ----------------------------

SUMMARY_METRICS = ("rank1", "rank5", "rank10", "rank20", "mAP")
# The headline (metrics/results/<set>.json, what `dvc exp show` and `dvc metrics diff` lead with):
# rank-1 and mAP in percent, each model under a short name (the rows of the paper's Table 1).
HEADLINE_NAMES = {"baseline": "base", "spatial": "spa", "temporal": "tem", "joint": "ind"}


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
                summary[dataset][model][protocol] = entry
    return summary


def summarize_attention(evals: list[dict]) -> dict:
    """{dataset: {model: {"overlap" | "entropy": {"mean", "std"} or None}}} over the splits."""
    summary: dict = {}
    for dataset in dict.fromkeys(e["dataset"] for e in evals):
        runs = [e for e in evals if e["dataset"] == dataset and "attention" in e]
        summary[dataset] = {}
        for model in runs[0]["attention"] if runs else []:
            summary[dataset][model] = {}
            for stat in ("overlap", "entropy"):
                values = [e["attention"][model][stat] for e in runs]
                summary[dataset][model][stat] = None if None in values else {
                    "mean": float(np.mean(values)), "std": float(np.std(values))}
    return summary


def headline(summary: dict, protocol: str) -> dict:
    """``{"R1": {short model name: percent}, "mAP": {...}}`` of one dataset's ``summarize`` entry
    under ``protocol``: the means over the splits, in percent with one decimal."""
    out: dict = {"R1": {}, "mAP": {}}
    for model, protocols in summary.items():
        short = HEADLINE_NAMES.get(model, model)
        out["R1"][short] = round(100 * protocols[protocol]["rank1"]["mean"], 1)
        out["mAP"][short] = round(100 * protocols[protocol]["mAP"]["mean"], 1)
    return out
