"""Training curves through DVCLive: ``fit`` logs every step and every epoch of a training run into
one DVCLive folder per stage and matrix run (``metrics/live/<stage>[/<set>-<split>[/<phase>]]``),
which dvc.yaml declares as the stage's metrics (``metrics.json``) and plots (``plots/``), so that
`dvc exp show` shows a running experiment's epoch, step and last epoch's means, and
`dvc plots show` / `dvc plots diff` draw the curves without plot configuration of their own.

What a folder holds (DVCLive's layout; ``step`` is the global SGD step, from 1):

- ``plots/metrics/batch/<name>.tsv``: one row per step (the global batch's values under torchrun):
  ``lr``, ``loss``, ``id_loss``, ``diversity``, and for a model with spatial attention the
  training maps' ``map_entropy`` and ``map_saturated`` (``map_statistics``, below);
- ``plots/metrics/mean/<name>.tsv``: one row per epoch, at its last step: the mean over the
  epoch's steps of ``loss``, ``id_loss``, ``diversity`` (and the two map statistics);
- ``metrics.json``: ``epoch`` and ``step`` reached and ``mean``, the last complete epoch's means
  (the per-step values are left out of it: one batch says little).

Only rank 0 writes (torchrun). A resumed run rebuilds its folder from the history its resume
checkpoint holds before it goes on, so that its files equal an uninterrupted run's byte for byte.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.errors import InputError

if TYPE_CHECKING:  # the maps' statistics take tensors; this module needs no torch
    from torch import Tensor

log = logging.getLogger(__name__)

# fit's history columns logged per step, and those averaged over each epoch
BATCH = ("lr", "loss", "id_loss", "diversity", "map_entropy", "map_saturated")
MEAN = ("loss", "id_loss", "diversity", "map_entropy", "map_saturated")


class Curves:
    """The DVCLive logger of one training run, or nothing at all (``directory`` None: tests,
    benchmarks, ranks other than 0). A context manager: leaving it without an exception ends the
    DVCLive run; leaving it with one (a stop, a diverged loss) keeps what was logged."""

    def __init__(self, directory: str | Path | None):
        self.live: Any = None
        if directory is None:
            return
        from dvclive import Live  # imports DVC: only the runs that log pay for it

        # resume=False: the folder starts empty (DVCLive removes what an earlier run left);
        # no report, no dvc.yaml of its own (dvc.yaml declares the files), no experiment saved
        # by DVCLive (`dvc exp run` saves it)
        self.live = Live(str(directory), resume=False, report=None, save_dvc_exp=False,
                         dvcyaml=None)
        Path(self.live.plots_dir).mkdir(parents=True, exist_ok=True)  # a declared output

    def __enter__(self) -> Curves:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self.live is None:
            return
        try:
            if kind is None:
                self.live.end()  # the summary written; DVC Studio told (where configured)
        finally:
            repo = getattr(self.live, "_dvc_repo", None)  # the repository DVCLive opened
            if repo is not None:
                repo.close()

    def replay(self, history: Sequence[dict], complete_epochs: int) -> None:
        """Log the rows of a resumed run's history, and the means of its first
        ``complete_epochs`` epochs, as the interrupted run logged them."""
        if self.live is None:
            return
        first = 0  # the index of the current epoch's first row
        for i, row in enumerate(history):
            self.step(row, summary=False)
            last_of_epoch = i + 1 == len(history) or history[i + 1]["epoch"] != row["epoch"]
            if last_of_epoch:
                if row["epoch"] <= complete_epochs:
                    self.epoch(history[first:i + 1])
                first = i + 1

    def step(self, row: dict, summary: bool = True) -> None:
        """Log one row of ``fit``'s history (its ``step`` and ``epoch``)."""
        if self.live is None:
            return
        self.live.step = row["step"]
        for name in BATCH:
            if name in row:
                self.live.log_metric(f"batch/{name}", row[name])
        self.live.log_metric("epoch", row["epoch"], plot=False)
        self.live.summary.pop("batch", None)
        self.live.summary["step"] = row["step"]  # its place in the file the same when replayed
        if summary:
            self.live.make_summary()

    def epoch(self, rows: Sequence[dict]) -> None:
        """Log the means of a complete epoch's rows, at its last step."""
        if self.live is None:
            return
        for name in MEAN:
            if name in rows[-1]:
                self.live.log_metric(f"mean/{name}", float(np.mean([r[name] for r in rows])))
        self.live.make_summary()  # (end() sends DVC Studio the run, where configured)


def read_means(directory: str | Path) -> pd.DataFrame:
    """The per-epoch means a run logged (``mean/<name>.tsv``), one row per epoch indexed from 1;
    empty when the run logged no epoch (nothing trained). A file that does not read as DVCLive
    wrote it is an ``InputError`` naming it (``read_plot``)."""
    folder = Path(directory) / "plots" / "metrics" / "mean"
    tables = [read_plot(f) for f in sorted(folder.glob("*.tsv"))]
    if not tables:
        return pd.DataFrame()
    means = pd.concat(tables, axis=1).sort_index().reset_index(drop=True)
    means.index = pd.RangeIndex(1, len(means) + 1, name="epoch")
    return means


def read_plot(path: Path) -> pd.DataFrame:
    """One DVCLive plot file, ``step`` and ``<name>`` (its file name) tab-separated, one row of
    numbers per logged step: the ``<name>`` column indexed by step.

    Raises:
        InputError: naming the file, when it is not that (truncated, edited, another table).
    """
    name = path.stem
    try:
        table = pd.read_csv(path, sep="\t")
        reason = _plot_problem(table, name)
    except ValueError as err:  # pandas' parser and empty-file errors, a non-UTF-8 file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if reason:
        raise InputError(f"{path}: expected DVCLive's tab-separated columns step and {name}, one "
                         f"row of numbers per epoch ({reason}); run the training stage that "
                         f"wrote it again, or restore it: git checkout -- {path}")
    return table.set_index("step")[[name]]


def _plot_problem(table: pd.DataFrame, name: str) -> str:
    """What keeps ``table`` from being a plot file of ``name`` ("" when nothing does)."""
    missing = [c for c in ("step", name) if c not in table.columns]
    if missing:
        return f"no column {', '.join(missing)}; found {', '.join(map(str, table.columns))}"
    if table.empty:
        return "no rows"
    if not all(pd.api.types.is_numeric_dtype(table[c]) for c in ("step", name)):
        return "a value that is not a number"
    if not table["step"].is_unique:
        return "a step written twice"
    return ""


# --- the spatial maps during training: what fit records of them -----------------------------------

# An attention weight below this passes almost no gradient back through its softmax: a map whose
# entries are mostly below it is frozen wherever it is (``map_statistics``, ``warn_if_saturated``).
SATURATED = 1e-6
# The share of saturated entries at the end of a stage above which it warns.
SATURATION_WARNING = 0.5


def map_statistics(S: Tensor) -> tuple[Tensor, Tensor]:
    """The mean entropy in nats of the spatial maps S (..., K, L), each a distribution over the L
    cells (0: one cell, log L: uniform), and the share of their entries below ``SATURATED``; two
    scalar tensors, no gradient."""
    S = S.detach().float()
    entropy = -(S * S.clamp_min(1e-30).log()).sum(dim=-1).mean()
    return entropy, (S < SATURATED).float().mean()


def warn_if_saturated(history: list[dict], desc: str, params: str) -> bool:
    """Log a warning naming ``params`` when the last epoch of ``history`` (``fit``'s, with the
    ``map_entropy`` and ``map_saturated`` of each step) ended with more than
    ``SATURATION_WARNING`` of the spatial maps' entries saturated; whether it warned."""
    last = [h for h in history if h["epoch"] == history[-1]["epoch"] and "map_saturated" in h] \
        if history else []
    if not last:
        return False
    share = float(np.mean([h["map_saturated"] for h in last]))
    if share <= SATURATION_WARNING:
        return False
    entropy = float(np.mean([h["map_entropy"] for h in last]))
    log.warning("%s: the spatial attention maps ended saturated: %.0f%% of their entries below "
                "%g (mean entropy %.3f nats): their softmax passes almost no gradient, so the "
                "maps stay wherever they are; look at %s", desc, 100 * share, SATURATED, entropy,
                params)
    return True
