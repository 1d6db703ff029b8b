"""Stage ``check``: the first stage of every ``dvc repro`` and ``dvc exp run``, run even when every
other stage is up to date (``always_changed`` in dvc.yaml), for two reasons.

1. **A refused value never costs a result.** DVC removes a stage's outputs before it runs the
   stage's command; a params value the stage then refuses would leave the stage with no outputs
   (for the metrics and plots that git keeps, no copy in DVC's cache either). This stage checks all
   of params.yaml first (``pipeline.params``: unknown and duplicated keys, types, ranges, infinite
   numbers, repeated sets and splits, K against the grid, batch sizes against the identities);
   ``runtime.launcher``'s options as torchrun reads them (``launch.torchrun_args``) and that the
   global batch of every training stage divides among the processes it starts; that
   ``model.init`` is no model this pipeline writes and loads as pretrain will load it (ImageNet
   weights on this machine, a checkpoint of plain tensors that fits the backbone); that
   every real set can be prepared (a tree, its archives, or a URL); and that DVC's cache objects
   of the outputs dvc.lock records are sound (``check_dvc_cache``: the project keeps
   ``cache.type`` hardlink, since a copy would double the feature caches on disk, and an output
   written over in place damages its object).
   Every other stage depends on it, so DVC stops here, before it touches any output; a refused
   value that `dvc exp run -S` left in the workspace's params.yaml is named as such.
2. **Inputs DVC cannot see make their stages out of date.** ``data/raw/<name>`` is not a DVC
   dependency (a million frames would slow every ``dvc status``): the download stage records a
   fingerprint of each set it prepared (files, bytes and a hash of relative paths, sizes and
   modification times) in its manifest, and ``--datasets`` says, per set, "as prepared" while
   the tree still has that fingerprint, else the new fingerprint. The download stage depends on
   it, so frames added, removed, resized or written over since make download and index run
   again; the index records the content of the frames it lists, so what follows runs again
   where they changed; the next run finds the tree as prepared again (one more download run,
   whose manifest is the same, so index stays). ``--init`` records what ``model.init`` names (a
   checkpoint file by its sha256); the pretrain stage depends on it, so another file behind the
   same path re-runs pretraining.

Its two outputs change only when what they describe changes, so running it re-runs nothing else.

    python -m pipeline.stages.check --params params.yaml --raw data/raw --archives data/archives \
        --manifest data/download.json --datasets data/inputs/datasets.json \
        --init data/inputs/init.json
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
from pathlib import Path

import yaml

from pipeline.datasets.sources import unavailable
from pipeline.errors import CacheError, DatasetError, ParamsError
from pipeline.files import md5_file, sha256_file, tree_fingerprint, write_json
from pipeline.launch import processes
from pipeline.params import BACKBONE_INITS, RESTORE, SYNTHETIC_SETS, Params, load_params
from pipeline.stage_inputs import models_folder
from pipeline.stages.common import run
from pipeline.tables import experiment_origin, resolve_data_path
from pipeline.weights import check_mobilenet_weights, mobilenet_weights_file

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
        root = resolve_data_path(raw / name)  # as the index stage reads it
        now = tree_fingerprint(root) if root.exists() else None
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
    """What ``model.init`` names, checked as the pretrain stage will read it, so that a refusal
    comes before DVC deletes pretrain's outputs: the keyword (ImageNet: the weights file must be
    on this machine, ``MissingWeightsError`` saying how to get it; MobileNetV2's is the installed
    package's, recorded by its checked sha256), or the checkpoint file by its sha256, loaded
    (``weights_only``: no pickled objects) into the backbone it must fit."""
    init, backbone = p.model.init, p.model.backbone
    if init not in BACKBONE_INITS:
        refuse_pipeline_output(init)
    if init == "imagenet" and backbone == "mobilenet_v2":
        # a package's file: it can change behind the same path (found and hashed without torch,
        # which the default run's check never imports)
        return {"init": init, "backbone": backbone,
                "sha256": check_mobilenet_weights(mobilenet_weights_file())}
    if init == "imagenet":
        from pipeline.model import imagenet_weights_file

        imagenet_weights_file(backbone)  # a ResNet's is downloaded when missing
        return {"init": init, "backbone": backbone}
    if init in BACKBONE_INITS:
        return {"init": init, "backbone": backbone}
    path = resolve_data_path(init)
    if not path.is_file():
        raise ParamsError(f"model.init: {init} is neither {' nor '.join(BACKBONE_INITS)} nor an "
                          "existing checkpoint file")
    from pipeline.model import build_backbone

    build_backbone(backbone, str(path), p.model.last_stride)  # CheckpointError: as pretrain's
    return {"init": init, "sha256": sha256_file(path)}


MODELS = models_folder()  # where every model of the pipeline is written (dvc.yaml)


def refuse_pipeline_output(init: str) -> None:
    """``model.init`` naming a model this pipeline writes (under ``data/models/``, here or in
    the project an experiment was copied from): DVC would delete it before the stage that writes
    it runs (pretrain.pt), or every run would start from the last one's output (a cycle)."""
    path = resolve_data_path(init).resolve()
    places = {MODELS.resolve(), resolve_data_path(MODELS).resolve()}
    if (origin := experiment_origin()) is not None:  # an experiment's copy: its project's too
        places.add((origin / MODELS).resolve())
    if any(path == place or place in path.parents for place in places):
        raise ParamsError(
            f"model.init: {init} is an output of this pipeline (under {MODELS}/): DVC deletes it "
            f"before the stage that writes it runs, and a run that starts from a model it makes "
            f"changes its results at every run. Copy the file out of {MODELS}/ (e.g. to "
            f"data/init/) and set model.init to the copy")


def check_sources(p: Params, raw: Path, archives: Path) -> None:
    """Every real set the params name can be prepared: an extracted tree, its archives, or a
    public URL (``sources.unavailable``); else the download stage's instructions, here, before
    DVC removes the download stage's manifest."""
    for name in dict.fromkeys(p.data.video + p.data.image):
        if name in SYNTHETIC_SETS:
            continue
        if problem := unavailable(name, resolve_data_path(raw / name).parent, archives):
            raise DatasetError(problem)


# DVC cache objects up to this size are hashed again when a workspace file shares them (a
# hardlink); larger ones (the feature caches) are checked by their size only
REHASH_BYTES = 256 * 2**20


def locked_stages(lock: Path = Path("dvc.lock")) -> dict:
    """The stages ``lock`` records, name (a matrix stage by its full name) -> entry; {} without
    a lock or with one DVC cannot read either (DVC reports its own lock file)."""
    try:
        return (yaml.safe_load(lock.read_text()) or {}).get("stages") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return {}


def check_dvc_cache(lock: Path = Path("dvc.lock")) -> None:
    """Refuse a DVC cache object that no longer holds what its name says, for every output
    ``lock`` records. With ``cache.type`` hardlink (.dvc/config) an output and its cache object
    are one file: written over in place (by hand, or by ``torch.save`` from a notebook: root
    ignores the read-only bit), the cache is damaged, and DVC links the damaged object back
    into the workspace the next time a stage makes that output again. Checked: each file
    output's object size against dvc.lock, and the md5 of every object its workspace file
    shares (a hardlink or a symlink to it), up to ``REHASH_BYTES``; the files of a folder output
    likewise (DVC's folder listings record no sizes: their shared objects are hashed)."""
    stages = locked_stages(lock)
    if not stages:
        return
    from dvc.repo import Repo  # only the check stage pays for importing DVC

    repo = Repo(str(lock.parent.resolve()))
    try:
        cache = Path(repo.cache.local.path)
    finally:
        repo.close()
    for stage, entry in stages.items():
        for out in (entry or {}).get("outs") or []:
            md5 = out.get("md5")
            if not md5:
                continue
            problem = damaged_object(cache, md5, out.get("size"), lock.parent / out["path"])
            if problem:
                raise CacheError(
                    f"{out['path']}: DVC's cache holds a damaged copy of it ({problem}): the file "
                    f"was written over in place while it shared that object (cache.type "
                    f"hardlink in .dvc/config). Remove the object "
                    f"(rm -f {problem.split(':')[0]}) and run `dvc repro -f -s {stage}`, which "
                    f"writes the file again")


def damaged_object(cache: Path, md5: str, size: int | None, workspace: Path) -> str | None:
    """What is wrong with the cache object of ``md5`` (``<object>: <why>``), or None when it is
    absent (DVC's business) or sound; ``workspace`` is the output's path (a folder's: its
    files' paths are below it)."""
    path = cache / md5[:2] / md5[2:]
    if not path.is_file():
        return None
    if md5.endswith(".dir"):
        try:
            entries = json.loads(path.read_text())
        except (OSError, ValueError):
            return f"{path}: not the folder listing DVC writes"
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and entry.get("md5") and entry.get("relpath"):
                problem = damaged_object(cache, str(entry["md5"]), entry.get("size"),
                                         workspace / entry["relpath"])
                if problem:
                    return problem
        return None
    stat = path.stat()
    if size is not None and stat.st_size != size:
        return f"{path}: {stat.st_size} bytes, dvc.lock records {size}"
    try:
        shared = workspace.exists() and workspace.samefile(path)  # a hardlink or a symlink
    except OSError:
        shared = False
    if shared and stat.st_size <= REHASH_BYTES and (found := md5_file(path)) != md5:
        return f"{path}: its md5 is {found}"
    return None


# where a refused value a `dvc exp run -S` wrote stays, and how to get rid of it
WORKSPACE_HINT = ("the value is in the workspace's params.yaml: `dvc exp run -S` and `make paper` "
                  f"write it there, and it stays after a refusal; {RESTORE}, and `dvc exp run "
                  "--temp` or `--queue` leave the workspace's params.yaml as it is")


def params_edited(params: Path) -> bool:
    """Whether ``params`` is the workspace's own file and differs from the committed one (an
    experiment's copy under .dvc/tmp/exps is not the workspace: False; no git: False)."""
    if experiment_origin(params.resolve().parent) is not None:
        return False
    try:
        diff = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", params.name],
                              cwd=params.resolve().parent, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return diff.returncode == 1 and not diff.stderr  # outside git: 1 too, with an error


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--raw", type=Path, required=True, help="where the extracted sets live")
    parser.add_argument("--archives", type=Path, required=True, help="user-supplied archives")
    parser.add_argument("--lock", type=Path, default=Path("dvc.lock"),
                        help="DVC's lock file: its outputs' cache objects are checked")
    parser.add_argument("--manifest", type=Path, required=True, help="the download stage's")
    parser.add_argument("--datasets", type=Path, required=True, help="JSON written here")
    parser.add_argument("--init", type=Path, required=True, help="JSON written here")
    args = parser.parse_args(argv)
    try:
        check(args)
    except (ParamsError, DatasetError) as err:  # a refused value: where it lives, if it lingers
        if params_edited(args.params):
            err.args = (f"{err} ({WORKSPACE_HINT})",)
        raise


def check(args: argparse.Namespace) -> None:
    """Check the params, DVC's cache and the inputs DVC cannot see; write the two records."""
    p = load_params(args.params)
    check_dvc_cache(args.lock)
    count = check_processes(p)
    init = init_record(p)  # before anything is written: a refusal leaves both records as they are
    check_sources(p, args.raw, resolve_data_path(args.archives))
    write_json(args.datasets, datasets_record(p, args.raw, read_manifest(args.manifest)))
    write_json(args.init, init)
    log.info("%s: every value checked; %s process(es) per training stage", args.params,
             count or "a torchrun-chosen number of")


if __name__ == "__main__":
    run(main)
