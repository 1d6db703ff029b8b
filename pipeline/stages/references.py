"""Stage ``references``: where the learned models of one video set's split can sit, measured on the
same test tracklets: the floor and the ceilings (``pipeline.references``: chance, colour
histograms of the whole frame and, with the label maps, of the person's pixels) and the grid's
locality (``pipeline.cell_probe``: each cell's identity against its person share, the grid pooled
on fixed maps; with ground truth in the cache). DVC re-runs it when the split's index (its frames)
or cache (its backbone) changes, so these figures always belong to the evaluation beside them;
the attention heads' params never re-run it.

Writes ``--out``: ``{"references": ..., "cell_probe": ... or null}``, and prints both tables.

    python -m pipeline.stages.references --params params.yaml --dataset <set> \\
        --index data/index/<set>/split_<k>.json --cache data/cache/<set>-<k>.h5 \\
        --out metrics/references/<set>-<k>.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import cell_probe
from pipeline.files import check_writable, write_json
from pipeline.formatting import text_table
from pipeline.params import load_params
from pipeline.references import FILE_KEYS, references, rows
from pipeline.stages.common import run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--dataset", required=True, help="the video set's name (its protocol)")
    parser.add_argument("--index", type=Path, required=True, help="a split_<k>.json")
    parser.add_argument("--cache", type=Path, required=True, help="the split's cached grids")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    check_writable(args.out.parent)
    p = load_params(args.params)
    probe = cell_probe.probe(args.cache, args.dataset)  # (the cache first: it is the quicker)
    floor = references(args.index, args.dataset, p.model.N)
    print(text_table(*rows(floor)))
    print("\n" + (cell_probe.render(probe) if probe is not None else
                  f"cell probe: none ({args.cache} holds no label maps)"))
    write_json(args.out, dict(zip(FILE_KEYS, (floor, probe), strict=True)))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    run(main)
