"""The four models the default pipeline scores, and their names, in one table.

Each model has three names: its ``key`` (the evaluate stage's ``--model NAME``, the key of
``metrics/eval/<set>-<split>.json``, the file ``data/models/<run>/<key>.pt``), its ``short`` name
(its column in the headline ``metrics/results/<set>.json``, what ``dvc exp show`` and
``dvc metrics diff`` print) and the ``row`` of the paper's Table 1 it is scored as.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelName:
    key: str
    short: str
    row: str


MODELS = (
    ModelName("baseline", "base", "Baseline"),  # the fine-tuned backbone, frames averaged
    ModelName("spatial", "spa", "SpaAtn+Q"),  # spatial heads with Q, frames averaged
    ModelName("temporal", "tem", "SpaAtn+Q+TemAtn"),  # + temporal attention
    ModelName("joint", "ind", "SpaAtn+Q+TemAtn+Ind"),  # + end-to-end fine-tuning
)
SHORT = {m.key: m.short for m in MODELS}  # key -> short name
ROW = {m.key: m.row for m in MODELS}  # key -> Table 1 row
