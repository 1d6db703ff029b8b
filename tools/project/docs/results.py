"""The ``headline`` block (the default run's headline, README), the ``results`` block (the detail of
its first split and where its heads look, docs/results.md) and the ``datasets`` block (the index
statistics)."""

from __future__ import annotations

from pathlib import Path

from pipeline.attention_stats import GROUND_TRUTH_STATS, head_count
from pipeline.formatting import corr, markdown_table, num, pct_of
from pipeline.metrics import HEADLINE_CI
from pipeline.names import ROW, SHORT
from pipeline.params import load_params, run_name
from pipeline.stage_inputs import output
from pipeline.stages.summary import HEADLINE_PROTOCOL
from tools.project.docs.common import field_of, read_json


def headline_block(root: Path) -> str:
    p = load_params(root / "params.yaml")
    parts = []
    for dataset in p.data.video:
        relative = f"{output('summary', 'metrics/results')}/{dataset}.json"
        head = read_json(root, relative, "make repro")
        short = list(field_of(head, relative, "R1"))
        columns = [(m, s) for m in ("R1", "mAP") for s in short]
        columns += [(HEADLINE_CI, m) for m in ("R1", "mAP") if HEADLINE_CI in head]
        header = ["set", "splits", *(f"{group}.{key}" for group, key in columns)]
        row = [dataset, ", ".join(map(str, p.data.splits)),
               *(f"{field_of(head, relative, group, key):.1f}" for group, key in columns)]
        ci = (f" `{HEADLINE_CI}.R1`, `{HEADLINE_CI}.mAP`: the largest half-width of a 95 percent "
              "interval over the models (bootstrap over the query identities); a difference "
              "smaller than it is within the noise of the test set." if HEADLINE_CI in head
              else "")
        parts.append(f"Headline (`{relative}`): {HEADLINE_PROTOCOL} protocol, percent, "
                     f"mean over the splits.{ci}\n\n" + markdown_table(header, [row]))
    return "\n\n".join(parts)


def results_block(root: Path) -> str:
    p = load_params(root / "params.yaml")
    return "\n\n".join(eval_detail(root, dataset, p.data.splits[0], ROW)
                       for dataset in p.data.video)


def eval_detail(root: Path, dataset: str, split: int, labels: dict[str, str]) -> str:
    relative = output("evaluate", "metrics/eval/").format(run=run_name(dataset, split))
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
        cells = [_pct(scores, relative, first, k) for k in [*ranks, "mAP"]]
        cells += [_pct(scores, relative, p, m) for p in protocols[1:] for m in ("rank1", "mAP")]
        cells += [num((attention or {}).get(k), ".3g") for k in ("overlap", "entropy")]
        rows.append([f"`{model}` ({SHORT.get(model, model)})",
                     labels.get(model, "-"), *cells])
    queries = "; ".join(f"{p}: {some[p]['num_valid_queries']} of {some[p]['num_queries']} "
                        "queries valid" for p in protocols)
    intervals = (" R1 and mAP with their 95 percent interval in brackets (bootstrap over the "
                 "query identities)." if "rank1_lo" in some[first] else "")
    detail = (f"Detail of split {ev.get('split', split)}, seed {ev.get('seed', '?')} "
              f"(`{relative}`), percent; {queries}.{intervals}\n\n" + markdown_table(header, rows))
    truth = ground_truth(ev.get("attention", {}))
    return detail + (f"\n\n{truth}" if truth else "")


def ground_truth(attention: dict) -> str:
    """Where the heads look, per attention model that was measured against the ground truth of
    the frames (the synthetic set): "" where none was."""
    measured = {m: a for m, a in attention.items() if all(k in a for k in GROUND_TRUTH_STATS)}
    if not measured:
        return ""
    rows = []
    for model, a in measured.items():
        parts = ", ".join(f"{a[f'head{k}_part'] or 'none'}" for k in range(1, head_count(a) + 1))
        r = corr(a["visibility_corr"], a.get("visibility_corr_lo"), a.get("visibility_corr_hi"),
                 digits=2)
        r += " (equal weights)" if a["visibility_corr"] is not None and \
            "visibility_corr_note" in a else ""
        rows.append([f"`{model}` ({SHORT.get(model, model)})",
                     *(num(a.get(k), ".3g") for k in ("person", "person_uniform", "occluder",
                                                 "background")),
                     a["parts_covered"], parts, r])
    return ("Where the heads look, on the test frames of that split: attention mass on the "
            "person (beside a uniform map's: where a head that ignores the frame would be), "
            "the occluder and the background (mean over heads), the part each head "
            "looks at most, how many distinct parts that makes, and the correlation of each "
            "head's temporal weight with the visibility of its part, mean over heads, 95 "
            "percent interval over clips ([docs/method.md](docs/method.md#measuring-the-"
            "attention-maps)).\n\n" + markdown_table(
                ["model", "person", "uniform map's person", "occluder", "background",
                 "parts covered", "head parts",
                 "r (temporal weight, visibility)"], rows))


def _pct(scores: dict, relative: str, protocol: str, metric: str) -> str:
    """A model's score under ``protocol`` in percent, with its interval where the file has one
    (a missing score is an error naming the file)."""
    field_of(scores, relative, protocol, metric)
    return pct_of(scores[protocol], metric)


def datasets_block(root: Path) -> str:
    relative = output("index", "metrics/datasets")
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
    video = markdown_table(["set", "split", "train ids / tracklets / frames",
                   "test ids / tracklets / frames", "queries", "junk", "distractors",
                   "frames per tracklet (min / mean / max)", "skipped frames"], rows)
    images = [[name, s["ids"], s["images"], s["cameras"], s.get("skipped", 0)]
              for name, s in stats.get("image", {}).items()]
    return (f"From `{relative}` (the index stage):\n\n{video}\n\n"
            + markdown_table(["image set", "ids", "images", "cameras", "skipped"], images))
