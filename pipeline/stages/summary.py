"""Stage ``summary``: the headline of every video set, averaged over its splits, and the pictures.

Reads the evaluate stage's results of every (set, split) of ``data.video`` x ``data.splits`` (the
runs DVC's matrix makes, named ``<set>-<split>`` in dvc.yaml) and writes, per set,
``--out/<set>.json``: the headline figures (rank-1 and mAP of each model under the official
protocol, whatever else ``evaluate.protocols`` lists, mean over the splits, in percent, and the
largest half-width of their 95 percent intervals, ``ci.R1`` and ``ci.mAP``; see
``pipeline.metrics.headline``), the one metrics file `dvc exp show` and `dvc metrics diff` show
by default. Prints every metric, mean ± std over the splits with the 95
percent interval of the mean, and the attention statistics (with the ground-truth ones where the
set has them). Draws, into ``--figures``, each set's CMC curves (``cmc_<set>.png``, the
mean over its splits) and each run's training curves (``loss_<set>-<k>.png``: the per-epoch means
the training stages logged with DVCLive under ``--live``, ``pipeline.curves``). Every input is
checked before an old output is replaced: a refused one leaves the last run's files as they were.

    python -m pipeline.stages.summary --params params.yaml --evals metrics/eval \
        --cmc metrics/plots/cmc --live metrics/live --out metrics/results \
        --figures metrics/plots/summary
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from pipeline.attention_stats import GROUND_TRUTH_STATS, summarize_attention
from pipeline.curves import read_means
from pipeline.errors import InputError
from pipeline.figures import cmc_figure, loss_figure, save_figure
from pipeline.files import check_writable, write_json
from pipeline.formatting import NA, num_stat, pct_stat, text_table
from pipeline.metrics import SUMMARY_METRICS, headline, summarize
from pipeline.params import load_params, run_name
from pipeline.stage_inputs import live_folders
from pipeline.stages.common import run

# Each run's DVCLive folders under --live, as dvc.yaml's training stages declare them: stage ->
# folder with {run} = <set>-<split>.
LIVE_FOLDERS = live_folders()
# The protocol of the headline (metrics/results: R1.base, mAP.spa, ...), whatever else
# evaluate.protocols lists, so that `dvc exp show` compares experiments on the same figures (the
# evaluate stage computes it always).
HEADLINE_PROTOCOL = "official"


def read_json(path: Path) -> dict:
    """A results file of the evaluate stage; a missing, truncated or non-JSON one, or one without
    the official-protocol figures of the headline, is an error naming it."""
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
    if missing := _missing_headline(results):
        raise InputError(f"{path}: expected the evaluate stage's results with each model's "
                         f"{HEADLINE_PROTOCOL} rank1 and mAP (the headline's), but {missing} is "
                         "missing; run the evaluate stage again")
    return results


def _missing_headline(results: dict) -> str:
    """The first key the headline needs that ``results`` lacks ("" when none)."""
    for key in ("dataset", "split", "models"):
        if key not in results:
            return key
    models = results["models"]
    if not isinstance(models, dict) or not models:
        return "models.<model>"
    for model, protocols in models.items():
        scores = protocols.get(HEADLINE_PROTOCOL) if isinstance(protocols, dict) else None
        for metric in ("rank1", "mAP"):
            if not isinstance(scores, dict) or metric not in scores:
                return f"models.{model}.{HEADLINE_PROTOCOL}.{metric}"
    return ""


def read_cmc(path: Path) -> pd.DataFrame:
    """A CMC table of the evaluate stage: a column ``rank`` and one column of fractions per
    ``<model>_<protocol>``; anything else is an error naming the file."""
    if not path.exists():
        raise FileNotFoundError(f"CMC curves missing: {path} (run the evaluate stage)")
    try:
        table = pd.read_csv(path)
        reason = _cmc_problem(table)
    except ValueError as err:  # pandas' parser and empty-file errors, a non-UTF-8 file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if reason:
        raise InputError(f"{path}: expected the evaluate stage's CMC table, a column rank and "
                         f"one column of fractions per <model>_<protocol> ({reason}); run the "
                         "evaluate stage again")
    return table


def _cmc_problem(table: pd.DataFrame) -> str:
    """What keeps ``table`` from being a CMC table ("" when nothing does)."""
    curves = [c for c in table.columns if c != "rank"]
    if "rank" not in table.columns or not curves or table.empty:
        return f"found the columns {', '.join(map(str, table.columns))} and {len(table)} rows"
    if unnamed := [c for c in curves if "_" not in str(c)]:
        return f"column {unnamed[0]} names no protocol"
    if not all(pd.api.types.is_numeric_dtype(table[c]) for c in table.columns):
        return "a value that is not a number"
    if table.isna().any().any():
        return "a value missing (a truncated file?)"
    if not ((table[curves] >= 0) & (table[curves] <= 1)).all().all():
        return "a matching rate outside [0, 1]"
    return ""


def mean_cmc(tables: dict[Path, pd.DataFrame]) -> pd.DataFrame:
    """The mean of several splits' CMC tables, which must have the same columns and ranks."""
    (first, base), *others = tables.items()
    for path, table in others:
        if list(table.columns) != list(base.columns) or not table["rank"].equals(base["rank"]):
            raise InputError(f"{path}: its columns or ranks differ from those of {first}; run "
                             "the evaluate stage of both again")
    return sum(list(tables.values())[1:], base) / len(tables)


def epoch_means(live: Path, run_: str) -> dict[str, pd.DataFrame]:
    """The per-epoch means of one run's training stages that logged epochs, by stage
    (``LIVE_FOLDERS``); at least one stage must have (every run fine-tunes)."""
    tables = {stage: read_means(live / folder.format(run=run_))
              for stage, folder in LIVE_FOLDERS.items()}
    logged = {stage: t for stage, t in tables.items() if not t.empty}  # (no image sets: no epochs)
    if not logged:
        folders = ", ".join(folder.format(run=run_) for folder in LIVE_FOLDERS.values())
        raise InputError(f"{live}: no training curves of {run_} (expected the DVCLive folders "
                         f"{folders} with plots/metrics/mean/*.tsv); restore them with "
                         f"`git checkout -- {live}`, or run the training stages again (dvc "
                         "repro)")
    return logged


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
    check_writable(args.out, args.figures)
    p = load_params(args.params)
    runs = [(name, split, run_name(name, split)) for name in p.data.video
            for split in p.data.splits]
    evals = [read_json(args.evals / f"{run_}.json") for _, _, run_ in runs]
    summary, attention = summarize(evals), summarize_attention(evals)
    # every input is read and checked, and every picture drawn, before an old output is
    # replaced: a refused input leaves the last run's headline and pictures as they were
    headlines = {f"{name}.json": headline(summary[name], HEADLINE_PROTOCOL)
                 for name in p.data.video}
    figures = {}
    for name in p.data.video:
        tables = {path: read_cmc(path) for path in (args.cmc / f"{run_}.csv"
                                                    for n, _, run_ in runs if n == name)}
        splits = (f"mean of {len(tables)} splits" if len(tables) > 1
                  else f"split {p.data.splits[0]}")
        figures[f"cmc_{name}.png"] = cmc_figure(mean_cmc(tables), f"{name}, {splits}")
    for _, _, run_ in runs:
        figures[f"loss_{run_}.png"] = loss_figure(epoch_means(args.live, run_))
    write_outputs(args.out, headlines, args.figures, figures)
    print_tables(summary, attention)


def write_outputs(out: Path, headlines: dict[str, dict], folder: Path,
                  figures: dict[str, Figure]) -> None:
    """Write each headline and picture (each atomically), then remove the older ones of a set or
    run no longer in the params."""
    for file, head in headlines.items():
        write_json(out / file, head)
    for file, fig in figures.items():
        save_figure(fig, folder / file)
    for old in [*out.glob("*.json"), *folder.glob("*.png")]:
        if old.name not in (headlines if old.parent == out else figures):
            old.unlink()


def _pm(value: dict) -> str:
    return pct_stat(value["mean"], value["std"], value.get("lo"), value.get("hi"))


def _stat(value: dict | None, undefined: str = NA) -> str:
    return undefined if value is None else num_stat(value["mean"], value["std"])


if __name__ == "__main__":
    run(main)
