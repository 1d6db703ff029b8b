"""Stage ``download``: make ``<raw>/<name>/`` ready for every dataset in ``data.video`` and
``data.image``, and write a small manifest that fingerprints each one.

A generated set (``synthetic``, ``synthetic2``) is made from the params section of its name (again
only when they changed). A real
set is used as already extracted when ``<raw>/<name>/`` holds a tree (a tree that does not read is
an error naming the problem: it is never extracted or downloaded over); only an absent or empty
folder is extracted from the archives the user placed in ``<archives>/<name>/``, else downloaded
where a public URL exists (see ``pipeline.datasets.sources``). The extracted trees are not DVC
outputs (a million files would make every ``dvc status`` slow): the manifest written here is, and
the index stage depends on it. The manifest is DVC-cached, not kept in git, so that a fresh clone
runs this stage and prepares the data again.

    python -m pipeline.stages.download --params params.yaml --raw data/raw \
        --archives data/archives --manifest data/download.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from pathlib import Path

from pipeline import download as transfer
from pipeline.datasets import index_images, index_video, synthetic
from pipeline.datasets.common import MissingPathError, find_misplaced
from pipeline.datasets.sources import SOURCES, Source, holds_a_tree, instructions
from pipeline.errors import DatasetError
from pipeline.files import md5_file, tree_fingerprint, write_json
from pipeline.params import SYNTHETIC_SETS, SyntheticParams, load_params
from pipeline.stages.common import run
from pipeline.tables import resolve_data_path

log = logging.getLogger("download")


def dataset_names(video: list[str], image: list[str]) -> list[str]:
    """Every dataset to prepare, once each, in params order."""
    return list(dict.fromkeys(video + image))


def layout_error(name: str, root: Path, video: bool, image: bool) -> Exception | None:
    """Why ``root`` does not (yet) hold dataset ``name`` (the reader's error), or None when it
    reads fine."""
    try:
        if video:
            index_video(name, root)
        if image:
            index_images(name, root)
    except (DatasetError, OSError) as err:
        return err
    return None


def misplaced_hint(root: Path, problem: Exception) -> str:
    """Where the file or folder a reader missed was found instead (a tree one level too deep, or
    without the archive's top folder), and the move that fixes it; "" when not found."""
    if not isinstance(problem, MissingPathError) or problem.path is None:
        return ""
    expected = problem.path
    hit = find_misplaced(root, expected)
    if hit is None:
        return ""
    found, tail = hit  # tail: how much of the layout path matched (prid_2011/multi_shot: 2)
    # what to move where: the found folder that stands for the first part of the tail
    moved = found.parents[tail - 2] if tail > 1 else found
    target = expected.parents[tail - 2] if tail > 1 else expected
    if target in moved.parents:  # one level down, in a folder of the same name
        move = f"move the contents of {moved} up into {target}"
    else:
        move = f"move {moved} to {target}"
    return f" {'/'.join(expected.parts[-tail:])} was found at {found} instead: {move}."


def placed_problem(name: str, root: Path, problem: Exception, source: Source) -> str | None:
    """The error when ``problem`` lies in a file placed by hand (``source.placed``, e.g. a bad
    splits_prid2011.json): extracting the archives again would not mend it."""
    if any(str(problem).startswith(str(root / p)) for p in source.placed):
        return f"{name}: {problem}. Fix or remove that file (see docs/datasets.md)."
    return None


def tree_error(name: str, root: Path, problem: Exception, archive_dir: Path,
               source: Source) -> str:
    """The error for an extracted tree of ``name`` at ``root`` that does not read: the reader's
    problem, where a misplaced folder was found, and the two ways out."""
    archives = ", ".join(a.name for a in source.archives)
    fetched = " (downloading it first if absent)" if any(a.url for a in source.archives) else ""
    placed = [p for p in source.placed if (root / p).exists()]
    keep = f" except {', '.join(placed)}" if placed else ""
    return placed_problem(name, root, problem, source) or (
        f"{name}: {root} holds an extracted tree that does not read: {problem}."
        f"{misplaced_hint(root, problem)} Fix the tree to the layout of docs/datasets.md, or "
        f"remove everything in {root}{keep} so that the stage extracts {archives} from "
        f"{archive_dir}{fetched} instead.")


def prepare_synthetic(cfg: SyntheticParams, root: Path) -> dict:
    """Generate the synthetic set unless ``root`` already holds one made with ``cfg`` by this
    version of the generator."""
    stamp = root / "identities.json"
    wanted = dataclasses.asdict(cfg)
    made = json.loads(stamp.read_text()) if stamp.exists() else {}
    if made.get("params") == wanted and made.get("generator") == synthetic.generator_version():
        log.info("synthetic: %s is up to date", root)
    else:
        log.info("synthetic: generating into %s", root)
        synthetic.generate(cfg, root)
    return {"source": "generated", "params": wanted, "generator": synthetic.generator_version()}


def prepare_real(name: str, root: Path, archive_dir: Path, raw: Path, video: bool,
                 image: bool) -> dict:
    """Use the extracted tree of real dataset ``name`` at ``root`` when there is one (its layout
    error, if any, is the error); only into an absent or empty ``root``, extract the archives
    (downloading them where a public URL exists)."""
    source = SOURCES[name]
    if root.is_symlink() and not root.exists():
        raise DatasetError(f"{name}: {root} is a symlink to {os.readlink(root)}, which does not "
                           f"exist: point it at the extracted dataset, or remove it so that the "
                           f"stage extracts the archives of {archive_dir}")
    if holds_a_tree(root, source):
        problem = layout_error(name, root, video, image)
        if problem is not None:
            raise DatasetError(tree_error(name, root, problem, archive_dir, source))
        log.info("%s: using the extracted dataset at %s", name, root)
        return {"source": "extracted"}
    checksums = {}
    for archive in source.archives:
        path = archive_dir / archive.name
        if not path.exists():
            if archive.url is None:
                raise DatasetError(instructions(name, str(raw), str(archive_dir.parent)))
            log.info("%s: downloading %s", name, archive.url)
            transfer.fetch(archive.url, path, archive.md5)
        checksums[archive.name] = md5_file(path)
        if archive.md5 is not None and checksums[archive.name] != archive.md5:
            raise DatasetError(f"{path}: md5 {checksums[archive.name]} does not match the "
                               f"published {archive.md5}; the archive is damaged or another "
                               "version: replace it")
        log.info("%s: extracting %s into %s", name, path, root)
        entries = transfer.extract(path, root)
        log.info("%s: extracted %s", name, ", ".join(e.name for e in entries))
    problem = layout_error(name, root, video, image)
    if problem is not None:
        found = sorted(p.name for p in root.iterdir()) if root.exists() else []
        raise DatasetError(placed_problem(name, root, problem, source) or (
            f"{name}: after extracting {', '.join(checksums)} into {root} (which now holds "
            f"{found}) the layout is still not as expected: {problem}."
            f"{misplaced_hint(root, problem)} The archives may be another version of the set: "
            f"{instructions(name, str(raw), str(archive_dir.parent))}"))
    return {"source": "archives", "md5": checksums}


def dataset_root(raw: Path, name: str) -> Path:
    """Where set ``name`` is prepared. In a DVC experiment's own copy of the project (``--temp``,
    ``--queue``) a real set is read from the project it was copied from when the copy lacks it
    (``resolve_data_path``: a million frames are not copied, and reading them changes nothing),
    but the synthetic set is always generated in the copy itself: an experiment writes only in
    its own workspace, never the frames the project and the experiments beside it read."""
    return raw / name if name in SYNTHETIC_SETS else resolve_data_path(raw / name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--raw", type=Path, required=True, help="extracted datasets go here")
    parser.add_argument("--archives", type=Path, required=True, help="user-supplied archives")
    parser.add_argument("--manifest", type=Path, required=True, help="JSON written here")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    # in an experiment workspace, the project's own data/archives (never copied; read only)
    args.archives = resolve_data_path(args.archives)
    manifest = {}
    for name in dataset_names(params.data.video, params.data.image):
        root = dataset_root(args.raw, name)
        if name in SYNTHETIC_SETS:
            entry = prepare_synthetic(params.generated(name), root)
        else:
            entry = prepare_real(name, root, args.archives / name, args.raw,
                                 video=name in params.data.video, image=name in params.data.image)
        manifest[name] = {**entry, **tree_fingerprint(root)}
        log.info("%s: %d files, %.1f MB", name, manifest[name]["files"],
                 manifest[name]["bytes"] / 1e6)
    write_json(args.manifest, manifest)


if __name__ == "__main__":
    run(main)
