"""Statistics of the spatial attention maps and temporal weights on the test clips: how diverse the
K maps are (overlap, entropy), and, where the set has per-frame ground truth (the synthetic set:
``read_parts``), where they look (mass on the person, the occluder, the background; each
head's body part; the parts the K heads cover) and whether a head's temporal weight follows the
visibility of its part (a correlation with a bootstrap interval over clips). Definitions:
docs/method.md. Averaged over splits by ``summarize_attention``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from pipeline.metrics import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, CI_LEVEL, bootstrap_weights

# --- the ground truth the cache holds -----------------------------------------------------------


def read_parts(cache: str | Path | h5py.File, subset: str
               ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]] | None:
    """The ground truth of ``subset``'s cached frames (``pipeline.features`` writes it): ``parts``
    (F, P, h, w) and ``visibility`` (F, P) as float32, and the P ``part_names``; None for a cache
    without them (a set without label maps, or a file written before they existed). ``cache``: a
    path, or a file ``features.open_cache`` opened."""
    if not isinstance(cache, h5py.File):
        with h5py.File(cache, "r") as f:
            return read_parts(f, subset)
    group = cache.get(subset)
    if not isinstance(group, h5py.Group) or "parts" not in group:
        return None
    names = tuple(n.decode() if isinstance(n, bytes) else str(n)
                  for n in cache.attrs["part_names"])
    return (group["parts"][()].astype(np.float32), group["visibility"][()].astype(np.float32),
            names)


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


# --- where the attention looks: the ground truth of the synthetic set -----------------------------
#
# The cache of the synthetic set holds, per cached frame, the fraction of each res5c cell's pixels
# of each label (``parts`` (F, P, h, w)) and each label's visible fraction (``visibility`` (F, P));
# see pipeline/features.py. Real sets have neither, and none of what follows is measured there.

BACKGROUND, OCCLUDER = "background", "occluder"  # the labels that are not the person
EQUAL_WEIGHTS = "equal weights in every clip (average pooling): 0 by construction"


def cached_rows(offsets: np.ndarray, frame_index: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Cache rows (T, N) of the frames at ``positions`` (T, N) of each tracklet (positions in the
    tracklet, as ``frame_index`` records them): ``offsets[t] + i`` where ``frame_index[offsets[t]
    + i]`` is the position, -1 where that frame was not cached (a frame cap)."""
    positions = np.asarray(positions)
    rows = np.full(positions.shape, -1, dtype=np.int64)
    for t, wanted in enumerate(positions):
        start, stop = int(offsets[t]), int(offsets[t + 1])
        cached = np.asarray(frame_index[start:stop])
        order = np.argsort(cached, kind="stable")
        i = np.minimum(np.searchsorted(cached[order], wanted), len(cached) - 1)
        found = cached[order][i] == wanted
        rows[t, found] = start + order[i[found]]
    return rows


def clip_ground_truth(parts: np.ndarray, visibility: np.ndarray,
                      rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ground truth of the test clips' frames: ``parts`` (F, P, h, w) and ``visibility``
    (F, P) taken at ``rows`` (T, N) (``cached_rows``): (T, N, P, L) cell fractions, cells
    row-major as the attention maps' (l = row * w + col), and (T, N, P), float32; NaN for a frame
    that was not cached."""
    _, P, h, w = parts.shape
    rows = np.asarray(rows)
    found = rows >= 0
    clip_parts = np.full((*rows.shape, P, h * w), np.nan, dtype=np.float32)
    clip_parts[found] = np.asarray(parts[rows[found]], dtype=np.float32).reshape(-1, P, h * w)
    clip_visibility = np.full((*rows.shape, P), np.nan, dtype=np.float32)
    clip_visibility[found] = visibility[rows[found]]
    return clip_parts, clip_visibility


def check_parts(parts: np.ndarray, atol: float = 5e-3) -> None:
    """Refuse cell fractions (..., P, L) that are not fractions summing to 1 in each cell (up to
    ``atol``: float16 storage); frames that are NaN (not cached) are skipped."""
    parts = np.asarray(parts, dtype=np.float64)
    measured = parts[~np.isnan(parts).any(axis=(-1, -2))]
    if measured.size and (measured.min() < -atol or measured.max() > 1 + atol):
        raise ValueError("the part fractions of the cache are not fractions in [0, 1]")
    total = measured.sum(axis=-2)  # (..., L)
    if measured.size and np.abs(total - 1).max() > atol:
        raise ValueError(f"the part fractions of the cache do not sum to 1 in every cell (up to "
                         f"{np.abs(total - 1).max():.3g} off): re-run the cache stage")


def part_mass(S: np.ndarray, parts: np.ndarray) -> np.ndarray:
    """(K, P): the mean over frames of each head's attention mass on each label,
    ``sum_l S[k, l] parts[p, l]``, for the maps S (M, K, L) and the cell fractions (M, P, L) of
    M frames. A head's masses sum to 1 over the labels when the fractions sum to 1 per cell."""
    S, parts = np.asarray(S, dtype=np.float64), np.asarray(parts, dtype=np.float64)
    return np.einsum("mkl,mpl->kp", S, parts) / len(S)


def person_labels(names: Sequence[str]) -> list[int]:
    """The indices of the labels in ``names`` that are the person (all but background and
    occluder)."""
    return [p for p, name in enumerate(names) if name not in (BACKGROUND, OCCLUDER)]


def head_parts(mass: np.ndarray, names: list[str]) -> tuple[list[str | None], np.ndarray]:
    """Each head's part: the person label with the largest share of the head's person mass, and
    that share, from ``part_mass`` (K, P). A head without person mass has none (None, NaN)."""
    person = person_labels(names)
    on_person = mass[:, person]  # (K, P')
    total = on_person.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = on_person / total[:, None]
    top = np.argmax(np.nan_to_num(share, nan=-1.0), axis=1)
    parts = [names[person[i]] if t > 0 else None for i, t in zip(top, total, strict=True)]
    return parts, np.where(total > 0, share[np.arange(len(top)), top], np.nan)


# A head covers its part only when at least this share of its map lies on the person: a head that
# looks at the background finds no part, whatever the few person pixels it touches are.
COVER_MIN_PERSON = 0.2


def parts_covered(parts: list[str | None], person: Sequence[float] | None = None,
                  min_person: float = COVER_MIN_PERSON) -> int:
    """How many distinct body parts the K heads cover: a part is covered when it is the largest
    share of the person mass (``head_parts``) of at least one head whose attention mass on the
    person (``person``, one per head; all heads count when not given) is at least
    ``min_person``."""
    person = [1.0] * len(parts) if person is None else list(person)
    return len({part for part, mass in zip(parts, person, strict=True)
                if part is not None and mass >= min_person})


def centred_sums(t: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per clip and head, with each clip's values centred on their mean over its frames (the
    weights of a clip sum to 1, so only their variation within the clip means anything):
    ``sum_n t' v'``, ``sum_n t'^2``, ``sum_n v'^2`` and the number of frames, each (T, K), for
    temporal weights t and visibilities v of shape (T, N, K). Frames where v is NaN (the part is
    absent, the frame not cached) are left out of the clip."""
    t, v = np.asarray(t, dtype=np.float64), np.asarray(v, dtype=np.float64)
    valid = ~np.isnan(v) & ~np.isnan(t)
    frames = valid.sum(axis=1)  # (T, K)
    count = np.maximum(frames, 1)[:, None, :]  # (T, 1, K)
    t_c = np.where(valid, t - np.where(valid, t, 0).sum(axis=1, keepdims=True) / count, 0.0)
    v_c = np.where(valid, v - np.where(valid, v, 0).sum(axis=1, keepdims=True) / count, 0.0)
    return ((t_c * v_c).sum(axis=1), (t_c * t_c).sum(axis=1), (v_c * v_c).sum(axis=1),
            frames.astype(np.float64))


def _correlation(tv, tt, vv, frames, equal):
    """Pearson r from pooled centred sums (..., K): NaN without a frame; 0 for the heads whose
    weights are ``equal`` in every clip (average pooling: the weights carry no information, by
    construction); NaN where the weights or the visibility never vary; else the ratio."""
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where((tt > 0) & (vv > 0), tv / np.sqrt(tt * vv), np.nan)
    return np.where(frames > 0, np.where(equal, 0.0, r), np.nan)


def visibility_correlation(t: np.ndarray, v: np.ndarray, num_resamples: int = BOOTSTRAP_RESAMPLES,
                           seed: int = BOOTSTRAP_SEED, level: float = CI_LEVEL) -> dict:
    """Temporal attention against visibility: per head, Pearson's r over all (clip, frame) pairs
    between the head's temporal weight t (T, N, K) and the visible fraction v (T, N, K) of the
    head's part, both centred on their clip's mean (``centred_sums``), with a percentile interval
    from a bootstrap over the clips; and the mean over heads (the heads where r is defined).

    Returns:
        ``r``, ``lo``, ``hi``: arrays (K,) per head; ``mean``, ``mean_lo``, ``mean_hi``: floats
        (NaN where undefined); ``equal_weights``: (K,) bool, the heads whose weights never vary
        within a clip, whose r is 0 by construction.
    """
    t = np.asarray(t, dtype=np.float64)
    equal = np.ptp(t, axis=1).max(axis=0) <= 1e-9  # (K,): the same weight in every frame
    sums = centred_sums(t, v)  # 4 x (T, K)
    r = _correlation(*(x.sum(axis=0) for x in sums), equal)  # (K,)
    weights = bootstrap_weights(len(t), num_resamples, seed)  # (R, T): the clips resampled
    r_boot = _correlation(*(weights @ x for x in sums), equal)  # (R, K)
    defined = ~np.isnan(r)
    tail = 100 * (1 - level) / 2
    lo, hi = np.full((2, len(r)), np.nan)
    mean_lo = mean_hi = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column: NaN bounds
        if defined.any():
            lo[defined], hi[defined] = np.nanpercentile(r_boot[:, defined], [tail, 100 - tail],
                                                        axis=0)
            mean_boot = np.nanmean(r_boot[:, defined], axis=1)
            mean_lo, mean_hi = np.nanpercentile(mean_boot, [tail, 100 - tail])
    return {"r": r, "lo": lo, "hi": hi,
            "mean": float(r[defined].mean()) if defined.any() else float("nan"),
            "mean_lo": float(mean_lo), "mean_hi": float(mean_hi), "equal_weights": equal}


def attention_ground_truth(S: np.ndarray, t: np.ndarray, parts: np.ndarray,
                           visibility: np.ndarray, names: list[str]) -> dict:
    """Where a model's heads look and when its temporal attention trusts a frame, on the test
    clips: maps S (T, N, K, L) and temporal weights t (T, N, K) against ``clip_ground_truth``'s
    parts (T, N, P, L) and visibility (T, N, P), labels ``names``.

    Returns the flat dict written under ``attention.<model>`` (flat, so ``dvc metrics`` shows
    every key): mean over heads of the attention mass on the person (any person label), on the
    occluder and on the background (``person``, ``occluder``, ``background``); the person mass of
    a uniform map, the level of a head that ignores the frame (``person_uniform``);
    ``parts_covered``;
    the temporal-visibility correlation, mean over heads, and its interval
    (``visibility_corr``, ``_lo``, ``_hi``; with ``visibility_corr_note`` where the weights are
    equal); per head k (from 1): ``head<k>_person``, ``_occluder``, ``_background``, ``_part``,
    ``_part_share``, ``_visibility_corr``, ``_visibility_corr_lo``, ``_visibility_corr_hi``;
    ``frames_measured`` and ``frames_missing`` (frames of the clips that were not cached).
    Undefined values (a head without person mass, a visibility that never varies) are None.
    """
    missing_name = [n for n in (BACKGROUND, OCCLUDER) if n not in names]
    if missing_name:
        raise ValueError(f"the part names {names} lack {missing_name}")
    measured = ~np.isnan(parts).any(axis=(-1, -2))  # (T, N): frames with ground truth
    check_parts(parts[measured])
    mass = part_mass(S[measured], parts[measured])  # (K, P)
    on_person = person_labels(names)
    person = mass[:, on_person].sum(1)
    occluder, background = mass[:, names.index(OCCLUDER)], mass[:, names.index(BACKGROUND)]
    top, share = head_parts(mass, names)
    # the visibility of each head's part in each frame (NaN: no part, or the part is absent)
    K = S.shape[2]
    v = np.full(t.shape, np.nan, dtype=np.float64)  # (T, N, K)
    for k, part in enumerate(top):
        if part is not None:
            v[:, :, k] = np.where(measured, visibility[:, :, names.index(part)], np.nan)
    corr = visibility_correlation(t, v)
    # what a head that ignores the frame would get: a uniform map's mass on the person
    uniform = parts[measured][:, on_person].sum(axis=1).mean() if measured.any() else np.nan
    out = {"person": _finite(person.mean()), "person_uniform": _finite(uniform),
           "occluder": _finite(occluder.mean()),
           "background": _finite(background.mean()), "parts_covered": parts_covered(top, person),
           "visibility_corr": _finite(corr["mean"]), "visibility_corr_lo": _finite(corr["mean_lo"]),
           "visibility_corr_hi": _finite(corr["mean_hi"])}
    if corr["equal_weights"].all():
        out["visibility_corr_note"] = EQUAL_WEIGHTS
    for k in range(K):
        out.update({f"head{k + 1}_person": _finite(person[k]),
                    f"head{k + 1}_occluder": _finite(occluder[k]),
                    f"head{k + 1}_background": _finite(background[k]),
                    f"head{k + 1}_part": top[k], f"head{k + 1}_part_share": _finite(share[k]),
                    f"head{k + 1}_visibility_corr": _finite(corr["r"][k]),
                    f"head{k + 1}_visibility_corr_lo": _finite(corr["lo"][k]),
                    f"head{k + 1}_visibility_corr_hi": _finite(corr["hi"][k])})
    out.update({"frames_measured": int(measured.sum()), "frames_missing": int((~measured).sum())})
    return out


def head_count(stats: dict) -> int:
    """The number of heads K of an ``attention_ground_truth`` record (its ``head<k>_part``
    keys)."""
    return sum(1 for key in stats if key.startswith("head") and key.endswith("_part"))


def _finite(value: float) -> float | None:
    """A float for the metrics file; None for NaN (undefined)."""
    return None if np.isnan(value) else float(value)


# The attention statistics averaged over splits: the diversity of the maps, and, where every split
# measured them (the synthetic set), the ground-truth ones of the model as a whole (the heads of
# different splits are different heads: per-head values are not averaged).
ATTENTION_STATS = ("overlap", "entropy")
GROUND_TRUTH_STATS = ("person", "occluder", "background", "parts_covered", "visibility_corr")


def summarize_attention(evals: list[dict]) -> dict:
    """{dataset: {model: {stat: {"mean", "std"} or None}}} over the splits: ``overlap`` and
    ``entropy`` (None for an overlap of K = 1), and each of ``GROUND_TRUTH_STATS`` that every
    split has (None where one split has it undefined)."""
    summary: dict = {}
    for dataset in dict.fromkeys(e["dataset"] for e in evals):
        runs = [e for e in evals if e["dataset"] == dataset and "attention" in e]
        summary[dataset] = {}
        for model in runs[0]["attention"] if runs else []:
            summary[dataset][model] = {}
            measured = [s for s in GROUND_TRUTH_STATS
                        if all(s in e["attention"].get(model, {}) for e in runs)]
            for stat in (*ATTENTION_STATS, *measured):
                values = [e["attention"][model][stat] for e in runs]
                summary[dataset][model][stat] = None if None in values else {
                    "mean": float(np.mean(values)), "std": float(np.std(values))}
    return summary
