"""Rows 3: ``metrics.evaluate_rank`` on a MARS-sized ranking problem, per protocol, against the
usual evaluator (speed-up), against the sort bound (how close to the least work possible), and
its peak extra memory. The usual evaluator is also the reference the tests score it against."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline.metrics import evaluate_rank, pairwise_distance
from pipeline.params import PROTOCOLS
from tools.project.bench.common import Setup, Target, log, row, timed

MEMORY_LIMIT_MB = 1024.0


def mars_like_problem(num_q: int, num_g: int, num_ids: int, cameras: int = 6, dim: int = 128,
                      seed: int = 0) -> tuple[np.ndarray, ...]:
    """A ranking problem shaped like MARS's test set: (distmat, q_pids, g_pids, q_camids,
    g_camids).

    The gallery holds tracklets of ``num_ids`` identities (pids 1..num_ids, about num_g / num_ids
    each, cameras drawn at random, so nearly every identity is seen by several cameras), 10%
    distractors (pid 0) and 5% junk (pid -1). Queries are gallery tracklets of identities, as in
    MARS's official protocol (a query finds itself at distance 0, as junk: same pid and camera).
    Features are 128-d and L2-normalised: an identity's centre plus noise, random for pids 0 and
    -1. The same matrix serves both protocols; under ``torchreid`` the junk tracklets simply count
    as non-matches, which costs the same.
    """
    rng = np.random.default_rng(seed)
    num_junk, num_distractors = num_g // 20, num_g // 10
    num_people = num_g - num_junk - num_distractors
    people = np.sort(rng.integers(0, num_ids, num_people)) + 1
    people[:num_ids] = np.arange(1, num_ids + 1)  # every identity at least once
    g_pids = np.concatenate([people, np.zeros(num_distractors, np.int64),
                             np.full(num_junk, -1, np.int64)])
    g_camids = rng.integers(1, cameras + 1, num_g)

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    centres = unit(rng.standard_normal((num_ids + 1, dim)))
    feats = unit(rng.standard_normal((num_g, dim)))
    is_person = g_pids > 0
    feats[is_person] = unit(centres[g_pids[is_person]] + 0.12 * rng.standard_normal(
        (int(is_person.sum()), dim)))
    shuffle = rng.permutation(num_g)
    g_pids, g_camids, feats = g_pids[shuffle], g_camids[shuffle], feats[shuffle]
    queries = rng.choice(np.flatnonzero(g_pids > 0), num_q, replace=False)
    distmat = pairwise_distance(feats[queries], feats)
    return distmat, g_pids[queries], g_pids, g_camids[queries], g_camids


def usual_evaluator(distmat: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray,
                    q_camids: np.ndarray, g_camids: np.ndarray, max_rank: int = 20,
                    protocol: str = "torchreid") -> dict:
    """CMC and mAP the usual way: the reference ``evaluate_rank`` is compared with.

    The shape of the classic torchreid ``eval_market1501``: one full argsort of the distance matrix,
    a (num_q, num_g) match matrix, then a Python loop over the queries that drops the junk of each,
    takes cumulative sums, and computes the precision at every rank item by item. The argsort is
    stable, as ``evaluate_rank``'s, so tied distances rank alike. Protocols as in
    ``pipeline.metrics``: ``torchreid`` (junk = same pid and camera; AP = mean precision at the true
    matches; queries without a match skipped) or ``official`` (junk also pid -1; trapezoid AP;
    every query counts, a query without a match scores 0). Assumes more than ``max_rank`` non-junk
    gallery items per query.
    """
    num_q = distmat.shape[0]
    indices = np.argsort(distmat, axis=1, kind="stable")
    matches = (g_pids[indices] == q_pids[:, None]).astype(np.int32)
    all_cmc, all_ap = [], []
    for q_idx in tqdm(range(num_q), desc=f"usual evaluator ({protocol})", unit="query",
                      leave=False, mininterval=1.0):
        order = indices[q_idx]
        remove = (g_pids[order] == q_pids[q_idx]) & (g_camids[order] == q_camids[q_idx])
        if protocol == "official":
            remove |= g_pids[order] == -1
        raw_cmc = matches[q_idx][~remove]  # 1 at the true matches, junk dropped
        if not raw_cmc.any():
            if protocol == "official":
                all_cmc.append(np.zeros(max_rank))
                all_ap.append(0.0)
            continue
        cmc = raw_cmc.cumsum()
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank])
        num_rel = raw_cmc.sum()
        hits = raw_cmc.cumsum()
        precision = np.asarray([x / (i + 1.0) for i, x in enumerate(hits)])  # item by item
        if protocol == "official":  # mean of the precision here and one item before (1 at first)
            previous = np.concatenate([[1.0], precision[:-1]])
            precision = (previous + precision) / 2
        all_ap.append(float((precision * raw_cmc).sum() / num_rel))
    if not all_ap:
        raise ValueError("no query has a true match in the gallery")
    return {"cmc": np.asarray(all_cmc, dtype=np.float64).sum(axis=0) / len(all_cmc),
            "mAP": float(np.mean(all_ap)), "num_queries": num_q}


def sort_bound(distmat: np.ndarray) -> np.ndarray:
    """The work every ranking evaluator must do, and nothing else: one stable argsort per query
    row (the sort ``evaluate_rank`` uses). Returns each row's nearest gallery index."""
    return np.array([np.argsort(r, kind="stable")[0] for r in distmat])


def peak_extra_mb(fn: Callable[[], Any]) -> float:
    """Peak memory allocated while ``fn`` runs, beyond what was allocated before, in MB, as
    ``tracemalloc`` sees it (Python objects and numpy's array buffers)."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return (peak - base) / 2 ** 20


def bench_evaluation(setup: Setup) -> dict[str, dict]:
    """Rows 3: per protocol, evaluate_rank against the usual evaluator (speed-up), against the sort
    bound (how close to it), and its peak extra memory. The scores of evaluate_rank and the usual
    evaluator are compared, so both did the same work."""
    s = setup.sizes
    log.info("3. evaluation: %d queries x %d gallery items", s.num_queries, s.num_gallery)
    problem = mars_like_problem(s.num_queries, s.num_gallery, s.eval_identities, seed=setup.seed)
    distmat = problem[0]
    sort_s = timed(lambda: sort_bound(distmat), s.eval_repeats)
    size = {"num_queries": s.num_queries, "num_gallery": s.num_gallery,
            "distmat_MB": distmat.nbytes / 2 ** 20}
    rows = {}
    for protocol in PROTOCOLS:
        ours: dict = {}

        def run_ours(protocol: str = protocol, ours: dict = ours) -> None:
            ours.update(evaluate_rank(*problem, protocol=protocol))

        ours_s = timed(run_ours, s.eval_repeats)
        start = time.perf_counter()
        usual = usual_evaluator(*problem, protocol=protocol)
        usual_s = time.perf_counter() - start
        memory = peak_extra_mb(run_ours)
        cmc_diff = float(np.abs(ours["cmc"] - usual["cmc"]).max())
        map_diff = abs(ours["mAP"] - usual["mAP"])
        log.info("%s: evaluate_rank %.3f s, usual evaluator %.3f s, sort bound %.3f s, "
                 "%.1f MB extra; |CMC diff| %.2g, |mAP diff| %.2g", protocol, ours_s, usual_s,
                 sort_s, memory, cmc_diff, map_diff)
        rows[f"eval_{protocol}_speedup"] = row(
            ("usual_evaluator_s", usual_s), ("evaluate_rank_s", ours_s), Target(">=", 20),
            max_abs_diff_cmc=cmc_diff, abs_diff_mAP=map_diff, rank1=float(ours["cmc"][0]),
            mAP=ours["mAP"], num_valid_queries=ours["num_valid_queries"], **size)
        rows[f"eval_{protocol}_vs_sort"] = row(
            ("evaluate_rank_s", ours_s), ("sort_bound_s", sort_s), Target("<=", 1.5), **size)
        rows[f"eval_{protocol}_memory"] = row(
            ("peak_extra_MB", memory), ("limit_MB", MEMORY_LIMIT_MB), Target("<=", 1.0),
            method="tracemalloc (numpy buffers traced), a separate untimed run", **size)
    return rows
