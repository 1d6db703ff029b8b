"""Stage ``summary``: the results of every (video set, split) evaluated, averaged over the
splits of each set (mean and standard deviation; PRID2011 and iLIDS-VID have 10), written as
``metrics/results.json`` and shown as a table in the terminal.

    python -m pipeline.stages.summary --params params.yaml --evals metrics/eval \
        --out metrics/results.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--evals", type=Path, required=True, help="folder of evaluate outputs")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    p = load_params(args.params)
    files = [args.evals / f"{name}-{split}.json" for name in p.data.video
             for split in p.data.splits]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(f"evaluation results missing: {', '.join(missing)}")
    summary = summarize([json.loads(f.read_text()) for f in files])
    write_json(args.out, {"seed": p.seed, "results": summary})

    rows = []
    for dataset, models in summary.items():
        for model, protocols in models.items():
            for protocol, m in protocols.items():
                cells = [_pm(m[k]) if k in m else "" for k in METRICS]
                rows.append([dataset, model, protocol, *cells, len(m["splits"])])
    print("\nResults (percent, mean ± std over splits)\n"
          + format_table(["dataset", "model", "protocol", *METRICS, "splits"], rows))


def _pm(value: dict) -> str:
    return f"{100 * value['mean']:.1f} ± {100 * value['std']:.1f}"


if __name__ == "__main__":
    run(main)
