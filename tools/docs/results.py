"""The ``results`` block (the default run's headline and detail) and the ``datasets`` block (the
index statistics)."""

from __future__ import annotations

from pathlib import Path

from pipeline.metrics import HEADLINE_NAMES
from pipeline.params import load_params
from tools.docs.common import field_of, pct, read_json, table
from tools.experiments import TABLE1


def model_rows() -> dict[str, str]:
    """Model name -> the Table 1 row it is scored as in the default pipeline."""
    return {row.model: row.label for row in TABLE1 if not row.overrides}


def results_block(root: Path) -> str:
    p = load_params(root / "params.yaml")
    labels, parts = model_rows(), []
    for dataset in p.data.video:
        relative = f"metrics/results/{dataset}.json"
        head = read_json(root, relative, "make repro")
        short = list(field_of(head, relative, "R1"))
        header = ["set", "splits", *(f"R1.{s}" for s in short), *(f"mAP.{s}" for s in short)]
        row = [dataset, ", ".join(map(str, p.data.splits)),
               *(f"{field_of(head, relative, m, s):.1f}" for m in ("R1", "mAP") for s in short)]
        parts.append(f"Headline (`{relative}`): {p.evaluate.protocols[0]} protocol, percent, "
                     f"mean over the splits.\n\n" + table(header, [row]))
        parts.append(eval_detail(root, dataset, p.data.splits[0], labels))
    return "\n\n".join(parts)


def eval_detail(root: Path, dataset: str, split: int, labels: dict[str, str]) -> str:
    relative = f"metrics/eval/{dataset}-{split}.json"
    ev = read_json(root, relative, "make repro")
    models = field_of(ev, relative, "models")
    some = field_of(models, relative, next(iter(models)))  # every model has the same protocols
    protocols = list(some)
    first = protocols[0]
    ranks = [k for k in ("rank1", "rank5", "rank10", "rank20") if k in some[first]]
    header = ["model", "paper row", *(f"{first} R{k[4:]}" for k in ranks), f"{first} mAP"]
    header += [f"{p} {m}" for p in protocols[1:] for m in ("R1", "mAP")]
    header += ["map overlap", "map entropy (nats)"]
    rows = []
    for model, scores in models.items():
        attention = ev.get("attention", {}).get(model)
        cells = [pct(field_of(scores, relative, first, k)) for k in [*ranks, "mAP"]]
        cells += [pct(field_of(scores, relative, p, m)) for p in protocols[1:]
                  for m in ("rank1", "mAP")]
        cells += (["n/a", "n/a"] if attention is None else
                  [_stat(attention.get("overlap")), _stat(attention.get("entropy"))])
        rows.append([f"`{model}` ({HEADLINE_NAMES.get(model, model)})",
                     labels.get(model, "-"), *cells])
    queries = "; ".join(f"{p}: {some[p]['num_valid_queries']} of {some[p]['num_queries']} "
                        "queries valid" for p in protocols)
    return (f"Detail of split {ev.get('split', split)}, seed {ev.get('seed', '?')} "
            f"(`{relative}`), percent; {queries}.\n\n" + table(header, rows))


def _stat(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"  # overlaps can be far below 0.001


def datasets_block(root: Path) -> str:
    relative = "metrics/datasets.json"
    stats = read_json(root, relative, "make repro (the index stage)")
    rows = []
    for name, splits in field_of(stats, relative, "video").items():
        for split, s in splits.items():
            train, test, length = s["train"], s["test"], s["frames_per_tracklet"]
            rows.append([name, split.removeprefix("split_"),
                         f"{train['ids']} / {train['tracklets']} / {train['frames']}",
                         f"{test['ids']} / {test['tracklets']} / {test['frames']}",
                         test.get("queries", "-"), test.get("junk_tracklets", "-"),
                         test.get("distractor_tracklets", "-"),
                         f"{length['min']} / {length['mean']:.1f} / {length['max']}",
                         s.get("skipped", {}).get("frames", 0)])
    video = table(["set", "split", "train ids / tracklets / frames",
                   "test ids / tracklets / frames", "queries", "junk", "distractors",
                   "frames per tracklet (min / mean / max)", "skipped frames"], rows)
    images = [[name, s["ids"], s["images"], s["cameras"], s.get("skipped", 0)]
              for name, s in stats.get("image", {}).items()]
    return (f"From `{relative}` (the index stage):\n\n{video}\n\n"
            + table(["image set", "ids", "images", "cameras", "skipped"], images))
