"""Pictures of the results, as PNG files (DVC image plots, readable offline): the paper's Fig. 3
(each frame of a tracklet with the K spatial attention maps overlaid, one column per head, and
the temporal weight of each (frame, head) printed on it; beside the frame its ground-truth body
parts where the set has label maps), CMC curves and training-loss curves.

matplotlib's object-oriented API (``Figure``, no pyplot state and no display needed). Figures are
written as palette PNGs (at most ``PALETTE_COLOURS`` colours): a fraction of the size of full
colour, so that the pictures the default run commits stay small in git's history.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image

from pipeline.files import write_with

DPI = 100
PALETTE_COLOURS = 64
INCHES_PER_COLUMN = 1.0  # width of one frame column of the attention figure
LEGEND_INCHES = 0.3  # height of the legend row of the body parts
# Flat colours of the labels of a label map (pipeline.tables.LABELS), by name; another name takes
# a grey. Few, flat colours: the palette PNG stays small.
PART_COLOURS = {"background": "#303030", "hair": "#8c564b", "skin": "#f2b880",
                "torso": "#d62728", "arms": "#ff7f0e", "legs": "#1f77b4", "shoes": "#17becf",
                "bag": "#2ca02c", "occluder": "#ffffff"}


def save_figure(fig: Figure, path: str | Path) -> None:
    """Write ``fig`` as a palette PNG, atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    buffer.seek(0)
    with Image.open(buffer) as image:
        palette = image.convert("RGB").quantize(colors=PALETTE_COLOURS,
                                                method=Image.Quantize.MEDIANCUT)
    write_with(path, lambda tmp: palette.save(tmp, format="PNG", optimize=True))


# --- Fig. 3: spatial attention maps over the frames ----------------------------------------------


def cell_maps(maps: np.ndarray, grid: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Attention maps (N, K, L) on an h x w grid (cell l = row * w + col) drawn at cell
    resolution on an (H, W) image (each pixel takes its cell's value, no smoothing, so a map on
    one cell shows as one cell) and scaled so each map's maximum is 1: (N, K, H, W) in [0, 1]."""
    N, K, L = maps.shape
    h, w = grid
    if h * w != L:
        raise ValueError(f"maps have {L} cells, but the grid is {h} x {w}")
    H, W = size
    cells = np.asarray(maps, dtype=np.float64).reshape(N, K, h, w)
    rows = np.arange(H) * h // H  # the grid row of each pixel row
    cols = np.arange(W) * w // W
    image = cells[:, :, rows[:, None], cols[None, :]]  # (N, K, H, W)
    peak = np.maximum(image.reshape(N, K, -1).max(axis=-1), 1e-12)[..., None, None]
    return np.clip(image / peak, 0.0, 1.0)


def attention_figure(frames: np.ndarray, maps: np.ndarray, grid: tuple[int, int],
                     temporal: np.ndarray | None = None, title: str = "",
                     frame_labels: Sequence[str] | None = None,
                     parts: np.ndarray | None = None,
                     part_names: Sequence[str] | None = None) -> Figure:
    """One row per frame: the frame, its ground-truth body parts when ``parts`` is given, then
    each of the K spatial attention maps overlaid on the frame as a heatmap, with the temporal
    weight of (frame, head) printed in the corner.

    frames: (N, H, W, 3) uint8; maps: (N, K, L), each summing to 1 over L; temporal: (N, K);
    parts: (N, H, W) label maps (integers indexing ``part_names``), drawn in flat colours
    (``PART_COLOURS``) with a legend of the labels present."""
    N, H, W, _ = frames.shape
    K = maps.shape[1]
    heat = cell_maps(maps, grid, (H, W))
    first = 1 if parts is None else 2  # the column of head 1
    scale = INCHES_PER_COLUMN / max(W, 1)  # inches per pixel
    legend = 0.0 if parts is None else LEGEND_INCHES
    fig = Figure(figsize=((K + first) * W * scale, N * H * scale + 0.5 + legend))
    axes = fig.subplots(N, K + first, squeeze=False)
    if parts is not None:
        names = list(part_names) if part_names is not None else [
            str(i) for i in range(int(parts.max()) + 1)]
        colours = ListedColormap([PART_COLOURS.get(n, "#808080") for n in names])
    for n in range(N):
        axes[n, 0].imshow(frames[n])
        axes[n, 0].set_ylabel(frame_labels[n] if frame_labels else f"frame {n + 1}", fontsize=7)
        if parts is not None:
            axes[n, 1].imshow(parts[n], cmap=colours, vmin=-0.5, vmax=len(names) - 0.5,
                              interpolation="nearest")
        for k in range(K):
            ax = axes[n, k + first]
            ax.imshow(frames[n])
            ax.imshow(heat[n, k], cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0,
                      interpolation="nearest")
            if temporal is not None:
                ax.text(1, 1, f"{temporal[n, k]:.2f}", color="white", fontsize=7, va="top",
                        bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0})
    titles = ["frame", *(["parts"] if parts is not None else []),
              *(f"head {k + 1}" for k in range(K))]
    for ax, name in zip(axes[0], titles, strict=True):
        ax.set_title(name, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=8)
    if parts is not None:
        present = np.unique(parts)
        handles = [Patch(facecolor=colours(int(i)), edgecolor="black", linewidth=0.3,
                         label=names[int(i)]) for i in present]
        width = fig.get_size_inches()[0]
        fig.legend(handles=handles, loc="lower center", fontsize=6, frameon=False,
                   ncol=max(1, min(len(handles), int(width / 0.8))), handlelength=1,
                   columnspacing=0.8)
        fig.tight_layout(rect=(0, legend / fig.get_size_inches()[1], 1, 1))
    else:
        fig.tight_layout()
    return fig


# --- curves --------------------------------------------------------------------------------------


def cmc_figure(table: pd.DataFrame, title: str) -> Figure:
    """CMC curves from a table ``rank, <model>_<protocol>, ...`` (fractions), one panel per
    protocol, one line per model."""
    protocols = list(dict.fromkeys(c.rsplit("_", 1)[1] for c in table.columns if c != "rank"))
    fig = Figure(figsize=(4.5 * len(protocols), 3.5))
    axes = fig.subplots(1, len(protocols), squeeze=False)
    for ax, protocol in zip(axes[0], protocols, strict=True):
        for column in table.columns:
            if column.endswith(f"_{protocol}"):
                ax.plot(table["rank"], 100 * table[column], marker=".",
                        label=column.removesuffix(f"_{protocol}"))
        ax.set(title=f"{title} ({protocol})", xlabel="rank", ylabel="matching rate (%)",
               ylim=(0, 100))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def loss_figure(means: Mapping[str, pd.DataFrame]) -> Figure:
    """Training loss per epoch (mean over its steps; ``curves.read_means``) of each stage, one
    panel per stage; the identity and diversity parts too where they were logged, and, on a
    second axis, the training maps' mean entropy and share of saturated entries where the stage
    trained spatial attention (``curves.map_statistics``)."""
    fig = Figure(figsize=(3.5 * len(means), 3.0))
    axes = fig.subplots(1, len(means), squeeze=False)
    for ax, (name, per_epoch) in zip(axes[0], means.items(), strict=True):
        for column in ("loss", "id_loss", "diversity"):
            if column in per_epoch and per_epoch[column].notna().any():
                ax.plot(per_epoch.index, per_epoch[column], marker=".", label=column)
        ax.set(title=name, xlabel="epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        if "map_entropy" in per_epoch and per_epoch["map_entropy"].notna().any():
            maps = ax.twinx()
            maps.plot(per_epoch.index, per_epoch["map_entropy"], ls="--", color="tab:purple",
                      label="map entropy (nats)")
            maps.plot(per_epoch.index, per_epoch["map_saturated"], ls=":", color="tab:gray",
                      label="map entries < 1e-6 (share)")
            maps.set_ylim(bottom=0)
            maps.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    return fig
