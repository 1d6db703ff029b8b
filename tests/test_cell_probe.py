"""The cell probe (tools/probes/cell_probe.py) on a hand-made cache: a 2 x 1 grid whose top cell
carries the identity (one-hot per person, all person) and whose bottom cell is the same for everyone
(all background)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from tests.test_sweep_report import claim_rows, render, report_of
from tools.probes.cell_probe import main, probe


def write_cache(path):
    """4 tracklets of 2 frames: person 1 and 2 in camera 1 (the queries), then in camera 2."""
    pids, camids = np.array([1, 2, 1, 2]), np.array([1, 1, 2, 2])
    grids = np.zeros((8, 2, 2, 1), dtype=np.float16)  # (F, D, h, w)
    for t, pid in enumerate(pids):
        for n in range(2):
            grids[2 * t + n, :, 1, 0] = 1.0  # bottom cell: the same for everyone
            grids[2 * t + n, pid - 1, 0, 0] = 1.0  # top cell: the person's one-hot
    parts = np.zeros((8, 2, 2, 1), dtype=np.float16)  # (F, P, h, w): background, torso
    parts[:, 1, 0, 0], parts[:, 0, 1, 0] = 1.0, 1.0
    with h5py.File(path, "w") as f:
        f.attrs["part_names"] = ["background", "torso"]
        g = f.create_group("test")
        g["grids"], g["parts"] = grids, parts
        g["visibility"] = np.ones((8, 2), dtype=np.float16)
        g["offsets"] = np.array([0, 2, 4, 6, 8])
        g["pids"], g["camids"] = pids, camids
        g["is_query"] = camids == 1


def test_a_cell_on_the_person_ranks_and_a_shared_background_cell_does_not(tmp_path):
    """Top cell: one-hot identities, both queries find their match first (rank-1 1). Bottom cell:
    every distance ties, the stable sort keeps gallery order, and each query's first non-junk
    item is the other person (rank-1 0). Pooled: the person map is the top cell (1), the
    background map the bottom one (0), the uniform map their mean, (2, 1) against (1, 2): 1."""
    write_cache(tmp_path / "c.h5")
    result = probe(tmp_path / "c.h5")
    assert result["cell_rank1"] == [[1.0], [0.0]]
    assert result["cell_person_share"] == [[1.0], [0.0]]
    assert result["rank1_person_share_corr"] == pytest.approx(1.0)
    assert {k: v["rank1"] for k, v in result["pooled"].items()} == {
        "uniform map": 1.0, "person share map": 1.0, "background share map": 0.0}
    assert set(result["pooled"]["person share map"]) >= {"mAP", "rank1_lo", "same_camera_top10"}
    text = render(report_of(claim_rows(0.1)), "cmd", probe=result)
    assert "\n\n## Identity in each cell\n\n" in text
    lines = text.split("\n\n## Identity in each cell\n\n")[1].split("\n\n## ")[0].split("\n\n")
    assert "| row 1 | 100.0 (1.00) |" in lines[1] and "| row 2 | 0.0 (0.00) |" in lines[1]
    assert lines[2] == "Correlation of a cell's rank-1 with its person share: +1.00."
    assert "| background share map | 0.0 [0.0, 0.0] |" in lines[-1]


def test_main_writes_the_json_and_refuses_a_cache_without_label_maps(tmp_path, capsys):
    write_cache(tmp_path / "c.h5")
    main(["--cache", str(tmp_path / "c.h5"), "--out", str(tmp_path / "p.json")])
    assert (tmp_path / "p.json").exists() and "person share map" in capsys.readouterr().out
    with h5py.File(tmp_path / "c.h5", "a") as f:
        del f["test/parts"]
    with pytest.raises(SystemExit, match=r"c\.h5: no label maps"):
        main(["--cache", str(tmp_path / "c.h5"), "--out", str(tmp_path / "q.json")])
    with pytest.raises(SystemExit, match=r"nothere\.h5: no such cache"):
        main(["--cache", str(tmp_path / "nothere.h5")])
