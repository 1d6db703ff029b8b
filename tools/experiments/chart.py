"""The report's chart: Table 1 as grouped bars (rank-1 and mAP, the paper's rank-1 marked), one
panel per dataset (``metrics/plots/table1.png``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.files import write_with
from tools.experiments.cells import PAPER_TABLE1
from tools.experiments.tables import MISSING, PAPER_DATASETS, Report, Stat

# One panel per dataset, stacked; fixed inches per panel and dpi, so its pixel size is
# CHART_WIDTH * CHART_DPI by n_datasets * CHART_PANEL_HEIGHT * CHART_DPI.
CHART_WIDTH = 9.0
CHART_PANEL_HEIGHT = 4.0
CHART_DPI = 100


def draw_chart(report: Report, path: str | Path) -> None:
    """Table 1 as grouped bars (rank-1, mAP; official protocol, or a dataset's first protocol
    when it has no official one), one panel per dataset; written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = []
    for dataset in report.datasets:
        protocols = [p for d, p in report.table1 if d == dataset]
        if protocols:
            protocol = "official" if "official" in protocols else protocols[0]
            panels.append((dataset, protocol, report.table1[dataset, protocol]))
    fig = Figure(figsize=(CHART_WIDTH, CHART_PANEL_HEIGHT * max(len(panels), 1)), dpi=CHART_DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(len(panels), 1), 1, squeeze=False)[:, 0]
    width = 0.38
    for ax, (dataset, protocol, rows) in zip(axes, panels, strict=False):
        x = np.arange(len(rows))
        for offset, metric, color in ((-width / 2, "rank1", "tab:blue"),
                                      (width / 2, "mean_ap", "tab:orange")):
            found = [(i, getattr(row, metric)) for i, row in enumerate(rows)
                     if isinstance(getattr(row, metric), Stat)]
            ax.bar([x[i] + offset for i, _ in found], [100 * s.mean for _, s in found], width,
                   yerr=[100 * s.std for _, s in found], capsize=3, color=color,
                   label="rank-1" if metric == "rank1" else "mAP")
            for i, row in enumerate(rows):
                if not isinstance(getattr(row, metric), Stat):
                    ax.text(x[i] + offset, 2, MISSING, rotation=90, ha="center", va="bottom",
                            fontsize=8, color="red")
        paper = [(i, PAPER_TABLE1[row.label][dataset]) for i, row in enumerate(rows)
                 if dataset in PAPER_DATASETS and row.label in PAPER_TABLE1]
        if paper:
            ax.scatter([x[i] - width / 2 for i, _ in paper], [v for _, v in paper], marker="_",
                       s=300, color="black", zorder=3, label="paper rank-1")
        ax.set_xticks(x, [row.label for row in rows], rotation=20, ha="right", fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_ylabel("%")
        ax.set_title(f"Table 1, {dataset} ({protocol} protocol)", fontsize=10)
        ax.legend(fontsize=8, loc="upper left")
    if not panels:
        axes[0].text(0.5, 0.5, "no results", ha="center", va="center")
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=CHART_DPI))
