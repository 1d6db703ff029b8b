"""What each stage reads and writes, recorded once: in dvc.yaml, read here.

A stage's params keys are those its ``params:`` lists; the resume fingerprint of a training stage
hashes exactly their values (``settings``), an exported model records exactly its ``model.*`` keys
(``model_fields``), and the files the summary, the report and the sweep read are found among the
stages' outputs (``output``). A key added to dvc.yaml is therefore in the resume key and the
export at once; none is a second list that can drift. ``rerun_by`` says which stages a params
change re-runs, as DVC decides it (the stages that list the key, and everything downstream).
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any

import yaml

from pipeline.params import Params, dotted, to_dict

DVC_YAML = Path(__file__).resolve().parents[1] / "dvc.yaml"
# the name a matrix stage's paths give one (set, split) run (pipeline.params.run_name)
RUN = "${item.dataset}-${item.split}"
# keys of how a stage runs, not of what it computes (launcher, device, loader workers: the same
# result, tests/test_pipeline_e2e.py): a run interrupted under one resumes under another
NOT_IN_RESUME_KEY = ("runtime", "data.num_workers")


@functools.cache
def stages() -> dict[str, dict]:
    """dvc.yaml's stages, in its order (the order they run in)."""
    return yaml.safe_load(DVC_YAML.read_text())["stages"]


def stage(name: str) -> dict:
    """Stage ``name``'s entry (a ``foreach`` stage's ``do``)."""
    try:
        spec = stages()[name]
    except KeyError:
        raise KeyError(f"{DVC_YAML}: no stage {name!r} (stages: {', '.join(stages())})") from None
    return spec.get("do", spec)


def params_of(name: str) -> tuple[str, ...]:
    """The params keys stage ``name`` lists (a section name stands for the whole section);
    ``- params.yaml: [keys]`` entries included. Keys of another file, or a whole file, are
    refused: nothing here could hash them."""
    keys: list[str] = []
    for entry in stage(name).get("params", []):
        if isinstance(entry, str):
            keys.append(entry)
        elif isinstance(entry, dict) and set(entry) == {"params.yaml"} \
                and isinstance(entry["params.yaml"], list) and entry["params.yaml"]:
            keys.extend(entry["params.yaml"])
        else:
            raise ValueError(f"{DVC_YAML}: stage {name}: params entry {entry!r}: expected a key "
                             "of params.yaml, or `params.yaml: [keys]`")
    return tuple(keys)


def settings(p: Params, name: str) -> dict[str, Any]:
    """{key: value} of every params key stage ``name`` lists but ``NOT_IN_RESUME_KEY``: what its
    resume fingerprint hashes."""
    tree = to_dict(p)
    return {key: dotted(tree, key) for key in params_of(name) if key not in NOT_IN_RESUME_KEY}


def model_fields(name: str) -> tuple[str, ...]:
    """The model params (``model.<field>``) stage ``name`` lists: what its exports record."""
    keys = params_of(name)
    if "model" in keys:
        return tuple(to_dict(Params().model))
    return tuple(key.removeprefix("model.") for key in keys if key.startswith("model."))


def paths(name: str, kind: str = "outs") -> list[str]:
    """The paths of stage ``name``'s ``kind`` (outs, deps, metrics, plots), as written."""
    return [next(iter(entry)) if isinstance(entry, dict) else entry
            for entry in stage(name).get(kind, [])]


def output(name: str, prefix: str, kind: str = "outs") -> str:
    """Stage ``name``'s path of ``kind`` that starts with ``prefix``, as a format string: ``{run}``
    for a (set, split) run (``pipeline.params.run_name``), ``{dataset}`` and ``{split}`` apart
    (``.format(run=..., dataset=..., split=...)`` fills any of them)."""
    found = [path for path in paths(name, kind) if path.startswith(prefix)]
    if len(found) != 1:
        raise KeyError(f"{DVC_YAML}: stage {name} has {len(found)} {kind} under {prefix} "
                       f"({', '.join(found) or 'none'}); expected one")
    path = re.sub(r"\$\{item\.(\w+)\}", r"{\1}", found[0].replace(RUN, "{run}"))
    if "${" in path:
        raise ValueError(f"{DVC_YAML}: stage {name}: {found[0]}: only ${{item.<field>}} "
                         "templates are read here")
    return path


def live_folders(root: str = "metrics/live") -> dict[str, str]:
    """Each training stage's DVCLive folders under ``root`` (those whose ``metrics.json`` dvc.yaml
    declares), relative to it with ``{run}``, by stage: ``"attention spatial"`` where a stage has
    several."""
    folders = {}
    for name in stages():
        found = [path.removesuffix("/metrics.json") for path in paths(name, "metrics")
                 if path.startswith(root + "/")]
        for path in found:
            label = name if len(found) == 1 else f"{name} {path.rsplit('/', 1)[1]}"
            folders[label] = path.removeprefix(root + "/").replace(RUN, "{run}")
    return folders


def models_folder() -> Path:
    """The folder every model of the pipeline is written under (data/models)."""
    models = [path for name in stages() for path in paths(name) if path.endswith(".pt")]
    return Path(os.path.commonpath(models))


def split_file() -> str:
    """One split's index of one set, as the per-set stages read it (``{dataset}``, ``{split}``)."""
    return output("finetune", "data/index/", "deps")


def _concrete(path: str) -> str:
    """A templated path with one value for every ``${...}``: the paths of one run compare."""
    return re.sub(r"\$\{[^}]*\}", "x", path)


def _feeds(outs: list[str], deps: list[str]) -> bool:
    return any(dep == out or dep.startswith(out + "/") or out.startswith(dep + "/")
               for out in map(_concrete, outs) for dep in map(_concrete, deps))


def rerun_by(key: str) -> list[str]:
    """The stages ``dvc exp run -S <key>=...`` re-runs, in dvc.yaml's order: those that list
    ``key`` (or its section), every stage downstream of them, and those that always run."""
    section = key.split(".")[0]
    chosen = [name for name, spec in stages().items()
              if spec.get("always_changed") or key in params_of(name) or section in params_of(name)]
    for name in stages():  # dvc.yaml lists a stage after the stages it reads
        if name not in chosen and any(_feeds(paths(up) + paths(up, "metrics") + paths(up, "plots"),
                                             paths(name, "deps"))
                                      for up in chosen if not stage(up).get("always_changed")):
            chosen.append(name)
    return [name for name in stages() if name in chosen]
