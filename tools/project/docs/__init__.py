"""The generated blocks of README.md and docs/*.md: every figure the documentation shows is rendered
from the file it comes from, never typed by hand.

A block is a pair of HTML comments on lines of their own, ``<!-- generated: NAME -->`` and
``<!-- end generated -->``; what lies between them is ``BLOCKS[NAME](root)``:

- ``headline``: the default run's headline of each set of ``data.video``
  (``metrics/results/<set>.json``);
- ``results``: the detail of each set's first split and where its heads look
  (``metrics/eval/<set>-<split>.json``);
- ``datasets``: the statistics of the indexed sets (``metrics/datasets.json``);
- ``params``: every key of ``pipeline.params.Params``: type, default, allowed values and the
  field's comment, read from the source, and the value in ``params.yaml`` where it differs;
- ``bench``, ``bench-notes``: the benchmark table and what its details say (``metrics/bench.json``);
- ``report``: Tables 1 and 2 of ``metrics/report.json`` (official protocol) and the steps of
  Table 1;
- ``claims``: the paper's orderings and this project's targets as ``metrics/report.json``
  measured them;
- ``schedules``: Table 1 under both schedules on the generated sets, as ``metrics/report.json``
  measured it (``make schedule``);
- ``paper``, ``rows``: the paper's numbers and the experiment of each table row
  (``tools.experiments``);
- ``figure``: the README's Fig. 3 picture: the default run's first query
  (``metrics/plots/attention/<set>-<split>/``);
- ``standing``: the default run's models between the floor and the ceilings of the same test set
  (``metrics/eval/<set>-<split>.json``, ``metrics/references/<set>-<split>.json``);
- ``locality``: the candidate grids' locality (``metrics/locality.json``,
  ``tools.probes.locality``);
- ``architecture``: each DVC stage's entry point and the library modules it reads (``dvc.yaml``);
- ``cache-disk``: the disk a whole split matrix of feature caches takes per real video set and the
  time caching takes (the sets' published frame counts, ``metrics/bench.json``).

Prose is wrapped at 100 columns (``tools.project.docs.common.wrap``); tables are not. A measured
source that does not exist yet renders one line saying so, naming the file and the
command that writes it; a source that exists but cannot be read is an error naming it.

    python -m tools.project.docs            # rewrite every block (make docs)
    python -m tools.project.docs --check    # write nothing; exit 1 naming each stale block
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from pipeline.errors import InputError
from pipeline.files import write_text
from tools.project.docs.architecture import architecture_block
from tools.project.docs.bench import bench_block, bench_notes_block
from tools.project.docs.cache_disk import cache_disk_block
from tools.project.docs.common import DocsError, NotProduced, wrap
from tools.project.docs.figure import figure_block
from tools.project.docs.params_reference import params_block
from tools.project.docs.report import (
    claims_block,
    paper_block,
    report_block,
    rows_block,
    schedules_block,
)
from tools.project.docs.results import datasets_block, headline_block, results_block
from tools.project.docs.standing import locality_block, standing_block
from tools.project.docs.timings import timings_block

ROOT = Path(__file__).resolve().parents[3]
START = re.compile(r"^<!-- generated: ([\w-]+) -->$")
END = "<!-- end generated -->"

BLOCKS: dict[str, Callable[[Path], str]] = {
    "headline": headline_block, "results": results_block, "datasets": datasets_block,
    "params": params_block,
    "bench": bench_block, "bench-notes": bench_notes_block, "report": report_block,
    "paper": paper_block, "rows": rows_block, "cache-disk": cache_disk_block,
    "timings": timings_block, "figure": figure_block, "claims": claims_block,
    "standing": standing_block, "locality": locality_block, "schedules": schedules_block,
    "architecture": architecture_block,
}


# --- filling the documents ------------------------------------------------------------------------


def render(name: str, root: Path) -> str:
    """The body of block ``name``: its rendering, or the line saying its source is not there."""
    try:
        body = wrap(BLOCKS[name](root))
    except NotProduced as missing:
        body = (f"*Not yet produced: `{missing.path}` does not exist; run `{missing.command}`, "
                "then `make docs`.*")
    return body.strip("\n") + "\n"


def blocks(text: str, source: str) -> Iterator[tuple[str, int, int]]:
    """(name, start, end) of each block of ``text``: its body is ``lines[start:end]``."""
    lines, open_ = text.splitlines(), None
    for i, line in enumerate(lines):
        if m := START.match(line):
            if open_:
                raise DocsError(f"{source}:{i + 1}: block '{m[1]}' starts inside block "
                                f"'{open_[0]}'")
            if m[1] not in BLOCKS:
                raise DocsError(f"{source}:{i + 1}: unknown generated block '{m[1]}'; "
                                f"known: {', '.join(BLOCKS)}")
            open_ = (m[1], i + 1)
        elif line == END:
            if not open_:
                raise DocsError(f"{source}:{i + 1}: '{END}' without a block")
            yield open_[0], open_[1], i
            open_ = None
    if open_:
        raise DocsError(f"{source}:{open_[1]}: block '{open_[0]}' has no '{END}'")


def fill(text: str, root: Path, source: str = "README.md") -> tuple[str, list[str]]:
    """``text`` with every block rendered anew, and the names of the blocks that changed."""
    lines, out, changed, last = text.splitlines(keepends=True), [], [], 0
    for name, start, end in blocks(text, source):
        body = render(name, root)
        out += [*lines[last:start], body]
        if "".join(lines[start:end]) != body:
            changed.append(name)
        last = end
    return "".join(out + lines[last:]), changed


def documents(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.project.docs",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 naming every stale block")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this)")
    args = parser.parse_args(argv)
    stale = []
    try:
        for path in documents(args.root):
            source = str(path.relative_to(args.root))
            new, changed = fill(path.read_text(), args.root, source)
            stale += [f"{source}: block '{name}'" for name in changed]
            if changed and not args.check:
                write_text(path, new)
                print(f"wrote {source} ({', '.join(changed)})")
    except (DocsError, InputError) as err:  # a source or params.yaml that does not read
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.check and stale:
        print("stale generated blocks (run `make docs`):\n  " + "\n  ".join(stale),
              file=sys.stderr)
        return 1
    return 0
