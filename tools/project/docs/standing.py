"""The ``standing`` block: the default run's models between the floor and the ceilings of the same
test set (the run's ``metrics/eval/<set>-<split>.json`` and
``metrics/references/<set>-<split>.json``, both written by `make repro`), as
``pipeline.references.standing_rows`` makes the rows; and the ``locality`` block: the candidate
grids of ``tools.probes.locality``."""

from __future__ import annotations

from pathlib import Path

from pipeline.formatting import markdown_table
from pipeline.names import ROW
from pipeline.params import load_params, run_name
from pipeline.references import FILE_KEYS, STANDING_HEADER, standing_rows
from pipeline.stage_inputs import output
from tools.probes.locality import rows as locality_rows
from tools.project.docs.common import field_of, read_json

LOCALITY = "metrics/locality.json"


def standing_block(root: Path) -> str:
    p = load_params(root / "params.yaml")
    run = run_name(p.data.video[0], p.data.splits[0])
    evaluated = output("evaluate", "metrics/eval/").format(run=run)
    measured = output("references", "metrics/references/").format(run=run)
    evaluation = read_json(root, evaluated, "make repro")
    measures = read_json(root, measured, "make repro")
    references, probe = (field_of(measures, measured, key) for key in FILE_KEYS)
    oracles = ("" if probe is not None and "histogram_person_greyworld" in references else
               " The set has no label maps: no ceiling and no pooled grid, the floor alone.")
    return (f"{p.data.video[0]} split {p.data.splits[0]}, official protocol, from `{evaluated}` "
            f"and `{measured}`: rank-1 and mAP with their 95 percent "
            "intervals; same camera top 10: the share of each query's 10 nearest gallery "
            "tracklets that come from its own camera (chance: its camera's share of the "
            "gallery), high where the features encode the camera more than the person."
            f"{oracles}\n\n"
            + markdown_table(STANDING_HEADER, standing_rows(references, evaluation, probe, ROW)))


def locality_block(root: Path) -> str:
    """The candidate grids' locality (``metrics/locality.json``, ``tools.probes.locality``)."""
    result = read_json(root, LOCALITY, "make locality")
    return (f"From `{LOCALITY}` (`python -m tools.probes.locality`): the test tracklets of "
            f"`{result['index']}`, {result['frames_per_tracklet']} frames each at "
            f"{result['input'][0]}x{result['input'][1]}, official rank-1 in percent with its 95 "
            "percent interval, of each candidate grid pooled on every cell, on the person's "
            "cells and on the background's cells (label maps resized to the grid).\n\n"
            + markdown_table(*locality_rows(result)))
