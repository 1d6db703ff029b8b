"""Stage ``summary``: the results of every (video set, split) evaluated, averaged over the
splits of each set (mean and standard deviation; PRID2011 and iLIDS-VID have 10), written as
``metrics/results.json`` and shown as a table in the terminal; with the attention-map overlap and
entropy of each attention model the same way. Draws, into ``--figures``, each set's CMC curves
(``cmc_<set>.png``, the mean over its splits) and each split's training-loss curves
(``loss_<set>-<k>.png``: pretrain, finetune, attention spatial and temporal, joint).

    python -m pipeline.stages.summary --params params.yaml --evals metrics/eval \
        --cmc metrics/plots/cmc --losses metrics/plots/loss --out metrics/results.json \
        --figures metrics/plots/summary
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.figures import cmc_figure, loss_figure, save_figure
from pipeline.params import load_params
from pipeline.stages.common import format_table, run, write_json

METRICS = ("rank1", "rank5", "rank10", "rank20", "mAP")


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
                for metric in METRICS:
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


def draw(p, args: argparse.Namespace) -> None:
    """The CMC and loss PNGs (see the module docstring); replaces the folder's PNGs."""
    args.figures.mkdir(parents=True, exist_ok=True)
    for old in args.figures.glob("*.png"):
        old.unlink()
    for name in p.data.video:
        tables = [pd.read_csv(args.cmc / f"{name}-{split}.csv") for split in p.data.splits]
        mean = sum(tables[1:], tables[0]) / len(tables)
        splits = f"mean of {len(tables)} splits" if len(tables) > 1 else f"split {p.data.splits[0]}"
        save_figure(cmc_figure(mean, f"{name}, {splits}"), args.figures / f"cmc_{name}.png")
        for split in p.data.splits:
            run_name = f"{name}-{split}"
            files = {"pretrain": args.losses / "pretrain.csv",
                     "finetune": args.losses / "finetune" / f"{run_name}.csv",
                     "attention spatial": args.losses / "attention" / run_name / "spatial.csv",
                     "attention temporal": args.losses / "attention" / run_name / "temporal.csv",
                     "joint": args.losses / "joint" / f"{run_name}.csv"}
            histories = {stage: pd.read_csv(f) for stage, f in files.items() if f.exists()}
            save_figure(loss_figure(histories), args.figures / f"loss_{run_name}.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--evals", type=Path, required=True, help="folder of evaluate outputs")
    parser.add_argument("--cmc", type=Path, required=True, help="folder of CMC CSVs")
    parser.add_argument("--losses", type=Path, required=True, help="folder of loss CSVs")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--figures", type=Path, required=True, help="folder for the PNGs")
    args = parser.parse_args(argv)
    p = load_params(args.params)
    files = [args.evals / f"{name}-{split}.json" for name in p.data.video
             for split in p.data.splits]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(f"evaluation results missing: {', '.join(missing)}")
    evals = [json.loads(f.read_text()) for f in files]
    summary = summarize(evals)
    attention = summarize_attention(evals)
    write_json(args.out, {"seed": p.seed, "results": summary, "attention": attention})
    draw(p, args)

    rows = []
    for dataset, models in summary.items():
        for model, protocols in models.items():
            for protocol, m in protocols.items():
                cells = [_pm(m[k]) if k in m else "" for k in METRICS]
                rows.append([dataset, model, protocol, *cells, len(m["splits"])])
    print("\nResults (percent, mean ± std over splits)\n"
          + format_table(["dataset", "model", "protocol", *METRICS, "splits"], rows))
    rows = [[dataset, model, *(_stat(a[k]) for k in ("overlap", "entropy"))]
            for dataset, models in attention.items() for model, a in models.items()]
    print("\nSpatial attention maps on the test frames (overlap: mean pairwise Bhattacharyya "
          "coefficient, 0 = disjoint, 1 = identical; entropy in nats; mean ± std over splits)\n"
          + format_table(["dataset", "model", "overlap", "entropy"], rows))


def _pm(value: dict) -> str:
    return f"{100 * value['mean']:.1f} ± {100 * value['std']:.1f}"


def _stat(value: dict | None) -> str:
    return "n/a (K = 1)" if value is None else f"{value['mean']:.3f} ± {value['std']:.3f}"


if __name__ == "__main__":
    run(main)
