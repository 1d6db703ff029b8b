"""Stage ``download``: make ``<raw>/<name>/`` ready for every dataset in ``data.video`` and
``data.image``, and write a small manifest that fingerprints each one.

The synthetic set is generated from the ``synthetic`` params (again only when they changed). A real
set is used as already extracted, else extracted from the archives the user placed in
``<archives>/<name>/``, else downloaded where a public URL exists (see
``pipeline.datasets.sources``). The extracted trees are not DVC outputs (a million files would make
every ``dvc status`` slow): the manifest written here is, and the index stage depends on it. The
manifest is DVC-cached, not kept in git, so that a fresh clone runs this stage and prepares the
data again.

    python -m pipeline.stages.download --params params.yaml --raw data/raw \
        --archives data/archives --manifest data/download.json
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path

from pipeline.datasets import index_images, index_video, synthetic
from pipeline.datasets.sources import SOURCES, instructions
from pipeline.download import extract, fetch
from pipeline.errors import DatasetError
from pipeline.files import md5_file, write_json
from pipeline.params import SyntheticParams, load_params
from pipeline.stages.common import run
from pipeline.tables import resolve_data_path

log = logging.getLogger("download")


def dataset_names(video: list[str], image: list[str]) -> list[str]:
    """Every dataset to prepare, once each, in params order."""
    return list(dict.fromkeys(video + image))


def layout_error(name: str, root: Path, video: bool, image: bool) -> str | None:
    """Why ``root`` does not (yet) hold dataset ``name``, or None when it reads fine."""
    try:
        if video:
            index_video(name, root)
        if image:
            index_images(name, root)
    except (DatasetError, OSError) as err:
        return str(err)
    return None


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
    """Use, extract or download real dataset ``name`` into ``root``."""
    if layout_error(name, root, video, image) is None:
        log.info("%s: using the extracted dataset at %s", name, root)
        return {"source": "extracted"}
    source = SOURCES[name]
    checksums = {}
    for archive in source.archives:
        path = archive_dir / archive.name
        if not path.exists():
            if archive.url is None:
                raise DatasetError(instructions(name, str(raw), str(archive_dir.parent)))
            log.info("%s: downloading %s", name, archive.url)
            fetch(archive.url, path, archive.md5)
        checksums[archive.name] = md5_file(path)
        if archive.md5 is not None and checksums[archive.name] != archive.md5:
            raise DatasetError(f"{path}: md5 {checksums[archive.name]} does not match the "
                               f"published {archive.md5}; the archive is damaged or another "
                               "version: replace it")
        log.info("%s: extracting %s into %s", name, path, root)
        entries = extract(path, root)
        log.info("%s: extracted %s", name, ", ".join(e.name for e in entries))
    problem = layout_error(name, root, video, image)
    if problem is not None:
        found = sorted(p.name for p in root.iterdir()) if root.exists() else []
        raise DatasetError(f"{name}: after extracting {', '.join(checksums)} into {root} (which "
                           f"now holds {found}) the layout is still not as expected: {problem}. "
                           f"{instructions(name, str(raw), str(archive_dir.parent))}")
    return {"source": "archives", "md5": checksums}


def fingerprint(root: Path) -> dict:
    """Number of files, total bytes and a hash of every relative path and size under ``root``:
    cheap (no file is read) and changes whenever a file is added, removed or resized."""
    digest = hashlib.sha256()
    files = size = 0
    for folder, dirs, names in os.walk(root, followlinks=True):
        dirs.sort()
        for name in sorted(names):
            path = Path(folder) / name
            stat = path.stat()
            digest.update(f"{path.relative_to(root)}\0{stat.st_size}\n".encode())
            files, size = files + 1, size + stat.st_size
    return {"files": files, "bytes": size, "sha256": digest.hexdigest()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--raw", type=Path, required=True, help="extracted datasets go here")
    parser.add_argument("--archives", type=Path, required=True, help="user-supplied archives")
    parser.add_argument("--manifest", type=Path, required=True, help="JSON written here")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    # in an experiment workspace, the project's own data/raw and data/archives (never copied)
    args.raw, args.archives = resolve_data_path(args.raw), resolve_data_path(args.archives)
    manifest = {}
    for name in dataset_names(params.data.video, params.data.image):
        root = args.raw / name
        if name == "synthetic":
            entry = prepare_synthetic(params.synthetic, root)
        else:
            entry = prepare_real(name, root, args.archives / name, args.raw,
                                 video=name in params.data.video, image=name in params.data.image)
        manifest[name] = {**entry, **fingerprint(root)}
        log.info("%s: %d files, %.1f MB", name, manifest[name]["files"],
                 manifest[name]["bytes"] / 1e6)
    write_json(args.manifest, manifest)


if __name__ == "__main__":
    run(main)
