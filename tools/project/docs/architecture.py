"""The ``architecture`` block: each DVC stage, its entry point and the library modules it reads,
as dvc.yaml lists them (tests/test_dvc_deps.py checks that list against the imports)."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.formatting import markdown_table
from tools.project.docs.common import DocsError

# what every stage reads, said once above the table instead of on every row
EVERY_STAGE = ("pipeline/stages/common.py", "pipeline/signals.py", "pipeline/errors.py",
               "pipeline/files.py", "pipeline/params.py")


def architecture_block(root: Path) -> str:
    try:
        stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as err:
        raise DocsError(f"dvc.yaml: not readable ({err})") from None
    rows = []
    for name, spec in stages.items():
        deps = [d for d in spec.get("deps", []) if isinstance(d, str)]
        entry = next((d for d in deps if d.startswith("pipeline/stages/")
                      and d != "pipeline/stages/common.py"), "")
        library = sorted(d.removeprefix("pipeline/").removesuffix(".py") for d in deps
                         if d.startswith("pipeline/") and d != entry and d not in EVERY_STAGE)
        rows.append([f"`{name}`", f"`{entry}`" if entry else "",
                     ", ".join(library) or "(only what every stage reads)"])
    every = ", ".join(f"`{d}`" for d in EVERY_STAGE)
    return (f"From `dvc.yaml` (each stage's code deps; `tests/test_dvc_deps.py` fails when they "
            f"differ from what the stage imports). Every stage also reads {every}.\n\n"
            + markdown_table(["stage", "entry point", "library modules (pipeline/)"], rows))
