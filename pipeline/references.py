"""Reference points on a video set's test split: where the learned models sit between a floor and
a ceiling measured on the same test tracklets, under the official protocol.

- ``chance``: a ranking that ignores the features (the mean over seeded random rankings).
- ``histogram_frame``: hand-made colour features of the whole frame, no learning: each of the N
  test frames (the first of each chunk, as the models see them) cut into 8 horizontal stripes,
  a 4 x 4 x 4 RGB histogram per stripe (512 values), square-rooted (Hellinger), averaged over the
  frames, L2-normalised. What the camera's backdrop and colour cast make of a ranking.
- ``histogram_person_greyworld`` (an oracle: it reads the ground truth): the same histogram of the
  person's pixels only (the label maps; occluder and background left out) after a grey-world
  normalisation of each frame on those pixels (each channel scaled so that its mean over them is
  mid-grey: a camera's gain and colour cast, per-channel multiplications, cancel). What a model
  that looks only at the person and discounts the camera could reach with colour alone.

Each reference gets rank-1 and mAP with their 95 percent intervals (``pipeline.metrics.score``)
and the share of each query's 10 nearest gallery tracklets from its own camera
(``pipeline.metrics.same_camera``). The histograms need the label maps of the synthetic set;
chance and the whole-frame histogram run on any set. The ``references`` stage writes them for
every (set, split), beside the cell probe (``pipeline.cell_probe``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.attention_stats import person_labels
from pipeline.formatting import pct_of
from pipeline.metrics import evaluate_rank, protocol_gallery, same_camera, score
from pipeline.sampling import restricted_random_sample
from pipeline.tables import LABELS, load_video_index

STRIPES = 8  # horizontal stripes of a frame
LEVELS = 4  # histogram bins per colour channel (LEVELS**3 colours)
CHANCE_DRAWS = 20  # random rankings averaged for the chance level


GREY = 128.0  # the mean each channel is scaled to by ``grey_world``


def grey_world(rgb: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """A frame (H, W, 3) in [0, 255] with each channel scaled so that its mean over the pixels of
    ``mask`` (H, W; the whole frame without one, or when the mask is empty) is ``GREY`` (the
    grey-world assumption: what is seen averages to grey, so a camera's gain and colour cast
    show as channel means away from it), clipped to [0, 255]."""
    rgb = rgb.astype(np.float64)
    seen = rgb[mask] if mask is not None and mask.any() else rgb.reshape(-1, 3)
    return np.clip(rgb * (GREY / np.maximum(seen.mean(axis=0), 1e-6)), 0, 255)


def stripe_histogram(rgb: np.ndarray, mask: np.ndarray | None = None,
                     stripes: int = STRIPES, levels: int = LEVELS) -> np.ndarray:
    """The colour histogram of a frame (H, W, 3) in [0, 255]: ``stripes`` horizontal stripes
    (rows split as evenly as ``np.array_split`` does), ``levels``**3 RGB bins each, counting
    only the pixels where ``mask`` (H, W) is true (all without a mask), each stripe's counts
    divided by the frame's counted pixels, then square-rooted: (stripes * levels**3,)."""
    H, W, _ = rgb.shape
    mask = np.ones((H, W), dtype=bool) if mask is None else mask
    q = np.minimum((rgb / 256.0 * levels).astype(np.int64), levels - 1)  # (H, W, 3) bins
    colour = (q[..., 0] * levels + q[..., 1]) * levels + q[..., 2]  # (H, W)
    out = np.zeros((stripes, levels ** 3))
    for s, rows in enumerate(np.array_split(np.arange(H), stripes)):
        out[s] = np.bincount(colour[rows][mask[rows]], minlength=levels ** 3)
    return np.sqrt(out.ravel() / max(int(mask.sum()), 1))


def tracklet_histograms(frames: list, labels: list, N: int, person: list[int] | None,
                        grey: bool) -> np.ndarray:
    """The mean over a tracklet's N test frames of their ``stripe_histogram``, L2-normalised;
    with ``person`` (label indices), only those pixels of each frame's label map count."""
    picks = restricted_random_sample(len(frames), N, train=False)
    rows = []
    for i in picks:
        with Image.open(frames[i]) as image:
            rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
        mask = None
        if person is not None:
            with Image.open(labels[i]) as label_map:
                visible = np.asarray(label_map.getchannel(0).resize(
                    (rgb.shape[1], rgb.shape[0]), Image.NEAREST))
            mask = np.isin(visible, person)
        if grey:
            rgb = grey_world(rgb, mask)
        rows.append(stripe_histogram(rgb, mask))
    mean = np.mean(rows, axis=0)
    return mean / max(float(np.linalg.norm(mean)), 1e-12)


def chance(pids: np.ndarray, camids: np.ndarray, is_query: np.ndarray, dataset: str,
           draws: int = CHANCE_DRAWS) -> dict:
    """Official rank-1 and mAP of random rankings, averaged over ``draws`` seeded draws."""
    gallery = protocol_gallery("official", pids, is_query, dataset)
    rng = np.random.default_rng(0)
    results = [evaluate_rank(rng.random((int(is_query.sum()), int(gallery.sum()))),
                             pids[is_query], pids[gallery], camids[is_query], camids[gallery],
                             max_rank=1, protocol="official") for _ in range(draws)]
    return {"rank1": float(np.mean([r["cmc"][0] for r in results])),
            "mAP": float(np.mean([r["mAP"] for r in results])), "draws": draws}


def references(index: Path, dataset: str, N: int) -> dict:
    """Every reference point of the test split of ``index`` (a split_<k>.json), ``N`` frames per
    tracklet (``model.N``: the first of each chunk, as the models see them)."""
    table = load_video_index(index)
    test = table[table["subset"] == "test"].reset_index(drop=True)
    ids = (test["pid"].to_numpy(), test["camid"].to_numpy(), test["is_query"].to_numpy(bool))
    out: dict = {"index": str(index), "dataset": dataset, "frames_per_tracklet": N,
                 "chance": chance(*ids, dataset)}
    has_labels = bool(len(test)) and all(len(x) for x in test["labels"])
    kinds = {"histogram_frame": (None, False)}
    if has_labels:
        kinds["histogram_person_greyworld"] = (person_labels(LABELS), True)
    for name, (person, grey) in kinds.items():
        features = np.stack([
            tracklet_histograms(row.frames, row.labels, N, person, grey)
            for row in tqdm(test.itertuples(), total=len(test), desc=name, leave=False)])
        metrics = score(features, *ids, ["official"], 1, dataset)[0]
        out[name] = {**metrics["official"], **same_camera(features, *ids)}
    return out


def shares(m: dict) -> str:
    """The same-camera share of the nearest 10 beside its chance ("" where not measured)."""
    if "same_camera_top10" not in m:
        return ""
    return f"{m['same_camera_top10']:.2f} (chance {m['same_camera_chance']:.2f})"


def rows(result: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the references table (percent; shares as fractions)."""
    body = [[name, pct_of(result[name], "rank1"), pct_of(result[name], "mAP"),
             shares(result[name])]
            for name in ("chance", "histogram_frame", "histogram_person_greyworld")
            if name in result]
    return ["reference", "rank-1 (%)", "mAP (%)", "same camera top 10"], body


# the references stage's file of a (set, split): these two keys, the cell probe None without
# label maps
FILE_KEYS = ("references", "cell_probe")
STANDING_HEADER = ["", "what it is", "rank-1 (%)", "mAP (%)", "same camera top 10"]
POOLED_LABELS = {"person share map": "the grid pooled on the person's cells (oracle)",
                 "background share map": "the grid pooled on the background's cells (oracle)",
                 "uniform map": "the grid pooled on every cell alike"}


def standing_rows(references: dict | None, evaluation: dict, probe: dict | None,
                  labels: dict[str, str], protocol: str = "official") -> list[list[str]]:
    """The learned models of one evaluation file (``metrics/eval/<set>-<k>.json``) between the
    floor and the ceilings of the same test set: chance and the whole-frame histogram
    (``references``, this module's), the models (``labels``: model name -> its Table 1
    row), the fine-tuned backbone's grid pooled on fixed maps (``probe``, ``pipeline.cell_probe``'s
    output) and the person-masked grey-world histogram. Rows under ``STANDING_HEADER``; a
    source that is None gives no rows."""
    def row(kind: str, what: str, m: dict) -> list[str]:
        return [kind, what, pct_of(m, "rank1"), pct_of(m, "mAP"), shares(m)]

    out = []
    if references is not None:
        out += [row("floor", "chance (random rankings)", references["chance"]),
                row("floor", "colour histogram of the whole frame",
                    references["histogram_frame"])]
    for name, scores in evaluation["models"].items():
        cameras = evaluation.get("same_camera", {}).get(name, {})
        out.append(row("learned", f"`{name}` ({labels.get(name, name)})",
                       {**scores[protocol], **cameras}))
    if probe is not None:
        out += [row("grid", POOLED_LABELS.get(name, name), m)
                for name, m in probe.get("pooled", {}).items()]
    if references is not None and "histogram_person_greyworld" in references:
        out.append(row("ceiling", "colour histogram of the person's pixels, grey-world "
                       "normalised (oracle)", references["histogram_person_greyworld"]))
    return out
