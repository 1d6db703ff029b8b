"""The ``standing`` block: the default run's models between the floor and the ceilings of the same
test set (``metrics/references.json``, the run's ``metrics/eval/<set>-<split>.json``,
``metrics/cell_probe.json``), as ``tools.probes.references.standing_rows`` makes the rows; and the
``locality`` block: the candidate grids of ``tools.probes.locality``."""

from __future__ import annotations

from pathlib import Path

from pipeline.formatting import markdown_table
from pipeline.names import ROW
from pipeline.params import load_params, run_name
from pipeline.stage_inputs import output
from tools.probes.locality import rows as locality_rows
from tools.probes.references import STANDING_HEADER, standing_rows
from tools.project.docs.common import NotProduced, read_json

REFERENCES = "metrics/references.json"
PROBE = "metrics/cell_probe.json"
LOCALITY = "metrics/locality.json"


def standing_block(root: Path) -> str:
    p = load_params(root / "params.yaml")
    dataset, split = p.data.video[0], p.data.splits[0]
    relative = output("evaluate", "metrics/eval/").format(run=run_name(dataset, split))
    evaluation = read_json(root, relative, "make repro")
    optional = {}
    for name in (REFERENCES, PROBE):  # both written by `make references`
        try:
            optional[name] = read_json(root, name, "make references")
        except NotProduced:
            optional[name] = None
    read = [relative, *(name for name, data in optional.items() if data is not None)]
    missing = [name for name, data in optional.items() if data is None]
    note = (f" Not yet measured: {', '.join(f'`{m}`' for m in missing)} (`make references`)."
            if missing else "")
    return (f"{dataset} split {split}, official protocol, from "
            f"{', '.join(f'`{r}`' for r in read)}: rank-1 and mAP with their 95 percent "
            "intervals; same camera top 10: the share of each query's 10 nearest gallery "
            "tracklets that come from its own camera (chance: its camera's share of the "
            "gallery), high where the features encode the camera more than the person."
            f"{note}\n\n"
            + markdown_table(STANDING_HEADER, standing_rows(optional[REFERENCES], evaluation,
                                                   optional[PROBE], ROW)))


def locality_block(root: Path) -> str:
    """The candidate grids' locality (``metrics/locality.json``, ``tools.probes.locality``)."""
    result = read_json(root, LOCALITY, "make references")
    return (f"From `{LOCALITY}` (`python -m tools.probes.locality`): the test tracklets of "
            f"`{result['index']}`, {result['frames_per_tracklet']} frames each at "
            f"{result['input'][0]}x{result['input'][1]}, official rank-1 in percent with its 95 "
            "percent interval, of each candidate grid pooled on every cell, on the person's "
            "cells and on the background's cells (label maps resized to the grid).\n\n"
            + markdown_table(*locality_rows(result)))
