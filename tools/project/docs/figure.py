"""The ``figure`` block: the README's Fig. 3 picture, the first query's attention figure of the
default run (``metrics/plots/attention/<set>-<split>/``, which evaluate rewrites at every run: the
first query's file name holds its pid and camera, so it is read, not typed)."""

from __future__ import annotations

from pathlib import Path

from pipeline.params import load_params, run_name
from pipeline.stage_inputs import output
from tools.project.docs.common import NotProduced


def figure_block(root: Path) -> str:
    p = load_params(root / "params.yaml")
    dataset, split = p.data.video[0], p.data.splits[0]
    folder = output("evaluate", "metrics/plots/attention/").format(run=run_name(dataset, split))
    pictures = sorted((root / folder).glob("*.png"))
    if not pictures:
        raise NotProduced(f"{folder}/*.png", "make repro")
    first = pictures[0].relative_to(root).as_posix()
    return (f"![Fig. 3 style: the first query of {dataset} split {split}: its frames, their body "
            f"parts and the {p.model.K} spatial attention maps]({first})")
