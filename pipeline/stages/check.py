"""Stage ``check``: the first stage of every ``dvc repro`` and ``dvc exp run``, run even when every
other stage is up to date (``always_changed`` in dvc.yaml), for two reasons.

1. **A refused value never costs a result.** DVC removes a stage's outputs before it runs the
   stage's command; a params value the stage then refuses would leave the stage with no outputs
   (for the metrics and plots that git keeps, no copy in DVC's cache either). This stage checks all
   of params.yaml first (``pipeline.params``: unknown and duplicated keys, types, ranges, infinite
   numbers, repeated sets and splits, K against the grid, batch sizes against the identities) and
   that the global batch of every training stage divides among the processes
   ``runtime.launcher`` starts; every other stage depends on it, so DVC stops here, before it
   touches any output.
2. **Inputs DVC cannot see make their stages out of date.** ``data/raw/<name>`` is not a DVC
   dependency (a million frames would slow every ``dvc status``): the download stage records a
   fingerprint of each set it prepared (files, bytes and a hash of relative paths and sizes) in
   its manifest, and ``--datasets`` says, per set, "as prepared" while the tree still has that
   fingerprint, else the new fingerprint. The download stage depends on it, so frames added,
   removed or resized since make download and index run again (and what follows only where the
   tables change); the next run finds the tree as prepared again (one more download run, whose
   manifest is the same, so index stays). ``--init`` records what ``model.init`` names (a
   checkpoint file by its sha256); the pretrain stage depends on it, so another file behind the
   same path re-runs pretraining.

Its two outputs change only when what they describe changes, so running it re-runs nothing else.

    python -m pipeline.stages.check --params params.yaml --raw data/raw \
        --manifest data/download.json --datasets data/inputs/datasets.json \
        --init data/inputs/init.json
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from pipeline.errors import ParamsError
from pipeline.files import sha256_file, tree_fingerprint, write_json
from pipeline.launch import processes
from pipeline.model import check_mobilenet_weights, imagenet_weights_file
from pipeline.params import BACKBONE_INITS, Params, load_params
from pipeline.stages.common import run
from pipeline.tables import resolve_data_path

log = logging.getLogger("check")


def check_processes(p: Params, environ: dict[str, str] | None = None) -> int | None:
    """The number of processes ``runtime.launcher`` starts (None: decided by torchrun at run
    time); each training stage's global batch (P x M) must divide among them."""
    count = processes(p.runtime.launcher, environ)
    if count is None or count == 1:
        return count
    sections = {"pretrain": p.pretrain, **p.video_stages()}
    for key, cfg in sections.items():
        batch = cfg.identities_per_batch * cfg.instances_per_identity
        if batch % count:
            raise ParamsError(
                f"{key}.identities_per_batch x {key}.instances_per_identity = "
                f"{cfg.identities_per_batch} x {cfg.instances_per_identity} = {batch} clips per "
                f"global batch, which {count} processes (runtime.launcher "
                f"{p.runtime.launcher!r}) cannot share evenly: expected a multiple of {count}")
    return count


AS_PREPARED = "as prepared"
FINGERPRINT = ("files", "bytes", "sha256")  # the keys of files.tree_fingerprint


def datasets_record(p: Params, raw: Path, manifest: dict | None) -> dict:
    """Per set the params name: "as prepared" while ``raw/<name>`` has the fingerprint the
    download stage's ``manifest`` recorded (or when there is nothing to compare yet: no manifest,
    a set the download stage has not prepared), else the tree's fingerprint now (None: gone)."""
    record = {}
    for name in dict.fromkeys(p.data.video + p.data.image):
        prepared = (manifest or {}).get(name)
        if not isinstance(prepared, dict):
            record[name] = AS_PREPARED
            continue
        now = tree_fingerprint(raw / name) if (raw / name).exists() else None
        same = now is not None and all(now[k] == prepared.get(k) for k in FINGERPRINT)
        record[name] = AS_PREPARED if same else now
    return record


def read_manifest(path: Path) -> dict | None:
    """The download stage's manifest, or None when absent or unreadable (then download runs)."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def init_record(p: Params) -> dict:
    """What ``model.init`` names: the keyword (ImageNet: torchvision's fixed weights of a ResNet;
    for MobileNetV2 the installed package's weights file, by its sha256, checked), or the
    checkpoint file by its sha256."""
    init = p.model.init
    if init == "imagenet" and p.model.backbone == "mobilenet_v2":
        path = imagenet_weights_file(p.model.backbone)  # MissingWeightsError: not installed
        return {"init": init, "backbone": p.model.backbone,
                "sha256": check_mobilenet_weights(path)}
    if init in BACKBONE_INITS:
        return {"init": init, "backbone": p.model.backbone}
    path = resolve_data_path(init)
    if not path.is_file():
        raise ParamsError(f"model.init: {init} is neither {' nor '.join(BACKBONE_INITS)} nor an "
                          "existing checkpoint file")
    return {"init": init, "sha256": sha256_file(path)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--raw", type=Path, required=True, help="where the extracted sets live")
    parser.add_argument("--manifest", type=Path, required=True, help="the download stage's")
    parser.add_argument("--datasets", type=Path, required=True, help="JSON written here")
    parser.add_argument("--init", type=Path, required=True, help="JSON written here")
    args = parser.parse_args(argv)
    p = load_params(args.params)
    count = check_processes(p)
    write_json(args.datasets, datasets_record(p, resolve_data_path(args.raw),
                                              read_manifest(args.manifest)))
    write_json(args.init, init_record(p))
    log.info("%s: every value checked; %s process(es) per training stage", args.params,
             count or "a torchrun-chosen number of")


if __name__ == "__main__":
    run(main)
