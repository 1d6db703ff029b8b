"""The cell probe (pipeline/cell_probe.py) and the references stage on a hand-made cache: a 2 x 1
grid whose top cell carries the identity (one-hot per person, all person) and whose bottom cell is
the same for everyone (all background)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from PIL import Image

from pipeline.cell_probe import probe
from pipeline.stages.references import main
from tests.test_sweep_report import claim_rows, render, report_of


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


def write_index(folder):
    """The index of the cache's test set: the same 4 tracklets (pids, cameras, queries), each of
    two frames of one colour per person, no label maps."""
    rows = []
    for t, (pid, cam) in enumerate(((1, 1), (2, 1), (1, 2), (2, 2))):
        frames = []
        for n in range(2):
            frames.append(f"t{t}f{n}.png")
            Image.new("RGB", (8, 16), (255, 0, 0) if pid == 1 else (0, 0, 255)).save(
                folder / frames[-1])
        rows.append({"pid": pid, "camid": cam, "subset": "test", "is_query": cam == 1,
                     "frames": frames, "labels": []})
    index = folder / "split_0.json"
    index.write_text(json.dumps({"root": str(folder), "tracklets": rows}))
    return index


def test_the_stage_writes_both_and_a_cache_without_label_maps_has_no_probe(tmp_path, capsys):
    """The references stage: the floor and the whole-frame histogram (no label maps: no person
    ceiling) and the cell probe in one file; a cache without label maps gives a null probe, said
    so; a missing cache is refused."""
    write_cache(tmp_path / "c.h5")
    index = write_index(tmp_path)
    (tmp_path / "params.yaml").write_text("model: {N: 2}\n")
    args = ["--params", str(tmp_path / "params.yaml"), "--dataset", "synthetic",
            "--index", str(index), "--cache", str(tmp_path / "c.h5")]
    main([*args, "--out", str(tmp_path / "out" / "p.json")])
    result = json.loads((tmp_path / "out" / "p.json").read_text())
    assert set(result["references"]) == {"index", "dataset", "frames_per_tracklet", "chance",
                                         "histogram_frame"}
    assert result["references"]["frames_per_tracklet"] == 2  # model.N
    # one colour per person: the whole-frame histogram finds each query's match first
    assert result["references"]["histogram_frame"]["rank1"] == 1.0
    assert result["cell_probe"] == probe(tmp_path / "c.h5")
    assert "person share map" in capsys.readouterr().out
    with h5py.File(tmp_path / "c.h5", "a") as f:
        del f["test/parts"]
    main([*args, "--out", str(tmp_path / "q.json")])
    assert json.loads((tmp_path / "q.json").read_text())["cell_probe"] is None
    assert "cell probe: none" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match=r"nothere\.h5"):
        main([*args[:-1], str(tmp_path / "nothere.h5"), "--out", str(tmp_path / "r.json")])


def test_the_probe_scores_under_the_set_s_own_protocol(tmp_path, monkeypatch):
    """Every ranking of the probe (each cell, each pooled map) is scored under the official
    protocol of the set it is given (a camera-pair set's gallery is the other camera)."""
    from pipeline import cell_probe

    seen, score = [], cell_probe.score
    monkeypatch.setattr(cell_probe, "score", lambda *args: seen.append(args[-1]) or score(*args))
    galleries, gallery = [], cell_probe.protocol_gallery  # each cell's rank-1, ranked apart
    monkeypatch.setattr(cell_probe, "protocol_gallery",
                        lambda *args: galleries.append(args[-1]) or gallery(*args))
    write_cache(tmp_path / "c.h5")
    probe(tmp_path / "c.h5", "prid2011")
    assert seen and set(seen) == {"prid2011"}
    assert galleries == ["prid2011", "prid2011"]  # the grid's two cells
