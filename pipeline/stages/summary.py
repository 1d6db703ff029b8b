"""Stage ``summary``: the headline of every video set, averaged over its splits, and the pictures.

Reads the evaluate stage's results of every (set, split) of ``data.video`` x ``data.splits`` (the
runs DVC's matrix makes, named ``<set>-<split>`` in dvc.yaml) and writes, per set,
``--out/<set>.json``: the headline figures (official rank-1 and mAP of each model, mean over the
splits, in percent, and the largest half-width of their 95 percent intervals, ``ci.R1`` and
``ci.mAP``; see ``pipeline.metrics.headline``), the one metrics file `dvc exp show` and
`dvc metrics diff` show by default. Prints every metric, mean ± std over the splits with the 95
percent interval of the mean, and the attention statistics (with the ground-truth ones where the
set has them). Draws, into ``--figures``, each set's CMC curves (``cmc_<set>.png``, the
mean over its splits) and each run's training curves (``loss_<set>-<k>.png``: the per-epoch means
the training stages logged with DVCLive under ``--live``, ``pipeline.curves``).

    python -m pipeline.stages.summary --params params.yaml --evals metrics/eval \
        --cmc metrics/plots/cmc --live metrics/live --out metrics/results \
        --figures metrics/plots/summary
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from pipeline.attention_stats import GROUND_TRUTH_STATS, summarize_attention
from pipeline.curves import read_means
from pipeline.errors import InputError
from pipeline.figures import cmc_figure, loss_figure, save_figure
from pipeline.files import write_json
from pipeline.formatting import NA, num_stat, pct_stat, text_table
from pipeline.metrics import SUMMARY_METRICS, headline, summarize
from pipeline.params import load_params, run_name
from pipeline.stages.common import run

# Each run's DVCLive folders under --live, as dvc.yaml's training stages write them (a test
# checks this against dvc.yaml): stage -> folder with {run} = <set>-<split>.
LIVE_FOLDERS = {"pretrain": "pretrain",
                "finetune": "finetune/{run}",
                "attention spatial": "attention/{run}/spatial",
                "attention temporal": "attention/{run}/temporal",
                "joint": "joint/{run}"}


def read_json(path: Path) -> dict:
    """A results file of the evaluate stage; a missing, truncated or non-JSON one is an error
    naming it."""
    if not path.exists():
        raise FileNotFoundError(f"evaluation results missing: {path} (run the evaluate stage)")
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a JSON results file of the evaluate stage ({err}); run "
                         "the evaluate stage again") from err
    if not isinstance(results, dict):
        raise InputError(f"{path}: holds a JSON {type(results).__name__}, expected the object "
                         "the evaluate stage writes; run the evaluate stage again")
    return results


def mean_cmc(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """The mean of several splits' CMC tables (the same columns)."""
    return sum(tables[1:], tables[0]) / len(tables)


def epoch_means(live: Path, run_: str) -> dict[str, pd.DataFrame]:
    """The per-epoch means of one run's training stages that logged epochs, by stage
    (``LIVE_FOLDERS``)."""
    tables = {stage: read_means(live / folder.format(run=run_))
              for stage, folder in LIVE_FOLDERS.items()}
    return {stage: t for stage, t in tables.items() if not t.empty}  # (no image sets: no epochs)


def print_tables(summary: dict, attention: dict) -> None:
    rows = [[dataset, model, protocol, *(_pm(m[k]) if k in m else "" for k in SUMMARY_METRICS),
             len(m["splits"])]
            for dataset, models in summary.items() for model, protocols in models.items()
            for protocol, m in protocols.items()]
    print("\nResults (percent, mean ± std over splits [95% interval of the mean])\n"
          + text_table(["dataset", "model", "protocol", *SUMMARY_METRICS, "splits"], rows))
    rows = [[dataset, model, _stat(a["overlap"], "n/a (K = 1)"), _stat(a["entropy"])]
            for dataset, models in attention.items() for model, a in models.items()]
    print("\nSpatial attention maps on the test frames (overlap: mean pairwise Bhattacharyya "
          "coefficient, 0 = disjoint, 1 = identical; entropy in nats; mean ± std over splits)\n"
          + text_table(["dataset", "model", "overlap", "entropy"], rows))
    rows = [[dataset, model, *(_stat(a[k]) if k in a else "n/a" for k in GROUND_TRUTH_STATS)]
            for dataset, models in attention.items() for model, a in models.items()
            if any(k in a for k in GROUND_TRUTH_STATS)]
    if rows:  # only sets with ground truth (the synthetic set)
        print("\nWhere the heads look (attention mass on the person, occluder, background, mean "
              "over heads; parts covered by the heads; visibility_corr: Pearson r within clips "
              "of temporal weight and visibility of each head's part, mean over heads; mean ± "
              "std over splits)\n"
              + text_table(["dataset", "model", *GROUND_TRUTH_STATS], rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--evals", type=Path, required=True, help="folder of evaluate outputs")
    parser.add_argument("--cmc", type=Path, required=True, help="folder of CMC CSVs")
    parser.add_argument("--live", type=Path, required=True,
                        help="folder of the training stages' DVCLive folders")
    parser.add_argument("--out", type=Path, required=True, help="folder of headline JSONs")
    parser.add_argument("--figures", type=Path, required=True, help="folder for the PNGs")
    args = parser.parse_args(argv)
    p = load_params(args.params)
    runs = [(name, split, run_name(name, split)) for name in p.data.video
            for split in p.data.splits]
    evals = [read_json(args.evals / f"{run_}.json") for _, _, run_ in runs]
    summary, attention = summarize(evals), summarize_attention(evals)
    protocol = p.evaluate.protocols[0]  # official unless the params leave it out

    for old in [*args.out.glob("*.json"), *args.figures.glob("*.png")]:
        old.unlink()  # nothing of a set or run no longer in the params is left behind
    for name in p.data.video:
        write_json(args.out / f"{name}.json", headline(summary[name], protocol))
        tables = [pd.read_csv(args.cmc / f"{run_}.csv") for n, _, run_ in runs if n == name]
        splits = (f"mean of {len(tables)} splits" if len(tables) > 1
                  else f"split {p.data.splits[0]}")
        save_figure(cmc_figure(mean_cmc(tables), f"{name}, {splits}"),
                    args.figures / f"cmc_{name}.png")
    for _, _, run_ in runs:
        save_figure(loss_figure(epoch_means(args.live, run_)),
                    args.figures / f"loss_{run_}.png")
    print_tables(summary, attention)


def _pm(value: dict) -> str:
    return pct_stat(value["mean"], value["std"], value.get("lo"), value.get("hi"))


def _stat(value: dict | None, undefined: str = NA) -> str:
    return undefined if value is None else num_stat(value["mean"], value["std"])


if __name__ == "__main__":
    run(main)
