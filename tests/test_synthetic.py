"""The synthetic re-id set: read back by the MARS and Market-1501 readers, with the real protocols'
split invariants, deterministic from its seed, and with the parts, occluders and camera effects
that its docstring promises."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.datasets import index_images, index_video, synthetic
from pipeline.datasets.synthetic import (
    CLOTHES,
    HAIR,
    LABELS,
    SKIN,
    Camera,
    Identity,
    appearance,
    generate,
    make_identities,
    random_identity,
    render_tracklet,
    sibling,
)
from pipeline.errors import DatasetError
from pipeline.params import ParamsError, SyntheticParams, load_params

ROOT = Path(__file__).resolve().parents[1]
N = 6  # frames per clip (model.N): the set must have tracklets shorter than that
TINY = SyntheticParams(train_identities=6, test_identities=6, image_identities=4,
                       images_per_identity=2, cameras=3, tracklets_per_camera=2, query_cameras=2,
                       min_length=2, max_length=9, distractor_tracklets=2, junk_tracklets=2,
                       height=64, width=32)
# the part groups of synthetic.PARTS: a sibling changes the fields of exactly one of them
GROUPS = {"head": ("hair", "hat"), "torso": ("torso",), "texture": ("texture", "texture_colour"),
          "legs": ("legs", "shorts"), "shoes": ("shoes",), "bag": ("bag", "bag_colour")}
PLAIN = Camera(gain=1.0, cast=(1.0, 1.0, 1.0), mirror=False, scale=0.85, noise=0.0, background=0)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    return generate(TINY, tmp_path_factory.mktemp("tiny") / "synthetic")


@pytest.fixture(scope="module")
def tiny_video(tiny_root):
    return index_video("synthetic", tiny_root)


def tree_digest(root: Path) -> str:
    """sha256 over every file's relative path and bytes."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def changed_groups(a: Identity, b: Identity) -> list[str]:
    return [g for g, names in GROUPS.items()
            if any(getattr(a, n) != getattr(b, n) for n in names)]


def identity_parts(entry: dict) -> tuple:
    """An identities.json entry without its split: the identity's fields, in order."""
    return tuple(entry[f.name] for f in dataclasses.fields(Identity))


# --- the set as the readers see it ----------------------------------------------------------------


def test_tiny_set_reads_back_with_the_configured_counts(tiny_root, tiny_video):
    """Per identity 1..tracklets_per_camera tracklets in every camera; lengths in range."""
    video = tiny_video
    people = video[video["pid"] > 0]
    assert sorted(people.loc[people["subset"] == "train", "pid"].unique()) == list(range(1, 7))
    assert sorted(people.loc[people["subset"] == "test", "pid"].unique()) == list(range(7, 13))
    per_camera = people.groupby(["pid", "camid"]).size()
    assert per_camera.between(1, TINY.tracklets_per_camera).all()
    assert (people.groupby("pid")["camid"].nunique() == TINY.cameras).all()
    per_pid = people.groupby("pid").size()
    assert per_pid.between(TINY.cameras, TINY.cameras * TINY.tracklets_per_camera).all()
    assert per_pid.nunique() > 1  # the number of tracklets does vary

    lengths = video["frames"].map(len)
    assert lengths.between(TINY.min_length, TINY.max_length).all()
    assert (lengths < N).any()
    assert lengths.nunique() > 3


def test_tiny_set_frames_are_in_order_and_on_disk(tiny_video):
    for row in tiny_video.itertuples():
        numbers = [int(re.search(r"F(\d+)\.jpg$", p.name).group(1)) for p in row.frames]
        assert numbers == list(range(1, len(numbers) + 1))
        assert all(p.is_file() for p in row.frames)
        assert {p.parent.name for p in row.frames} == {"00-1" if row.pid == -1
                                                        else f"{row.pid:04d}"}


def test_tiny_set_images(tiny_root):
    """images_per_identity Market-1501-named images for each of the image identities."""
    table = index_images("synthetic", tiny_root)
    assert len(table) == TINY.image_identities * TINY.images_per_identity
    assert table.groupby("pid").size().to_dict() == {p: 2 for p in range(1, 5)}
    assert table["camid"].between(1, TINY.cameras).all()
    assert all(Path(p).is_file() for p in table["path"])


def test_split_invariants(tiny_root, tiny_video):
    """Disjoint train/test ids; a query per test id in query_cameras of its cameras (chosen per
    identity, as identities.json records), the other cameras gallery only; distractors (0) and
    junk (-1) in the test set only, never queries."""
    video = tiny_video
    train, test = video[video["subset"] == "train"], video[video["subset"] == "test"]
    assert not set(train["pid"]) & set(test["pid"])
    queries = test[test["is_query"]]
    assert len(queries) == 6 * TINY.query_cameras
    entries = json.loads((tiny_root / "identities.json").read_text())["identities"]
    chosen = set()
    for pid in range(7, 13):
        cams = sorted(queries.loc[queries["pid"] == pid, "camid"])
        assert cams == entries[str(pid)]["query_cameras"]  # one query in each, distinct
        assert len(cams) == TINY.query_cameras
        chosen.add(tuple(cams))
        gallery = test[(test["pid"] == pid) & ~test["is_query"]]
        assert set(gallery["camid"]) >= set(range(1, TINY.cameras + 1)) - set(cams)
    assert len(chosen) > 1  # chosen per identity
    assert (test["pid"] == 0).sum() == TINY.distractor_tracklets
    assert (test["pid"] == -1).sum() == TINY.junk_tracklets
    assert not test.loc[test["pid"] <= 0, "is_query"].any()
    assert (train["pid"] > 0).all()
    assert not train["is_query"].any()


def test_identities_are_distinct_across_splits(tiny_root):
    """identities.json: every identity once, image identities none of the video ones."""
    manifest = json.loads((tiny_root / "identities.json").read_text())
    entries = manifest["identities"]
    assert len(entries) == 6 + 6 + 4
    parts = {key: identity_parts(e) for key, e in entries.items()}
    assert len(set(parts.values())) == len(parts)
    video_parts = {parts[k] for k, e in entries.items() if e["subset"] in ("train", "test")}
    image_parts = {parts[k] for k, e in entries.items() if e["subset"] == "images"}
    assert len(image_parts) == 4
    assert not image_parts & video_parts
    assert {e["subset"] for k, e in entries.items() if k.startswith("image-")} == {"images"}


# --- determinism and the atomic write -------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_bytes(tiny_root, tmp_path):
    """Frames and label maps alike, whether one process renders them or several."""
    again = generate(TINY, tmp_path / "again", workers=1)
    assert tree_digest(again) == tree_digest(tiny_root)
    assert tree_digest(generate(TINY, tmp_path / "two", workers=2)) == tree_digest(tiny_root)
    other = generate(dataclasses.replace(TINY, seed=1), tmp_path / "other")
    assert tree_digest(other) != tree_digest(tiny_root)


def test_generate_replaces_the_root_whole(tmp_path):
    """A stale file in the root is gone afterwards, and no temporary folder stays beside it."""
    root = tmp_path / "synthetic"
    root.mkdir()
    (root / "stale.txt").write_text("old")
    generate(TINY, root)
    assert not (root / "stale.txt").exists()
    assert (root / "identities.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic"]


def test_failed_generation_keeps_the_old_root(tmp_path, monkeypatch):
    """A generation that fails halfway leaves the previous set as it was, and no temp folder."""
    root = tmp_path / "synthetic"
    root.mkdir()
    (root / "old.txt").write_text("old")

    def broken(cfg, out, workers):
        (out / "half.txt").write_text("half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(synthetic, "_write", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        generate(TINY, root)
    assert sorted(p.name for p in root.iterdir()) == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic"]


# --- identities and siblings ----------------------------------------------------------------------


def one_group_neighbours(identities: list[Identity]) -> int:
    """How many identities differ from some other one in exactly one part group."""
    return sum(any(len(changed_groups(a, b)) == 1 for b in identities if b is not a)
               for a in identities)


def test_groups_cover_every_field():
    assert set(GROUPS) == set(synthetic.PARTS)
    grouped = {n for names in GROUPS.values() for n in names}
    assert grouped | {"skin"} == {f.name for f in dataclasses.fields(Identity)}


def test_sibling_changes_exactly_one_group():
    """Each draw changes at most one part group, nearly always exactly one, and every group
    gets its turn."""
    rng = np.random.default_rng(0)
    counts = {g: 0 for g in GROUPS}
    unchanged = 0
    for _ in range(600):
        base = random_identity(rng)
        changed = changed_groups(base, sibling(base, rng))
        assert len(changed) <= 1
        unchanged += not changed
        for g in changed:
            counts[g] += 1
    assert unchanged < 600 * 0.2
    assert min(counts.values()) > 40


def test_sibling_rate_controls_one_part_variants():
    """sibling_rate 1: every identity has a one-group neighbour; 0: (almost) none has."""
    with_siblings = make_identities(60, 1.0, np.random.default_rng(0))
    without = make_identities(60, 0.0, np.random.default_rng(0))
    assert one_group_neighbours(with_siblings) == 60
    assert one_group_neighbours(without) <= 6


def appearance_key(ident: Identity) -> tuple:
    """What draw_person shows: hair only without a hat, the texture colour only on a textured
    torso, the bag colour only with a bag."""
    return (None if ident.hat >= 0 else ident.hair, ident.hat, ident.skin, ident.torso,
            ident.texture, ident.texture_colour if ident.texture else None, ident.legs,
            ident.shorts, ident.shoes, ident.bag, ident.bag_colour if ident.bag else None)


@pytest.mark.parametrize("sibling_rate", [0.5, 1.0])
def test_no_two_identities_look_alike(sibling_rate):
    """A change to a part that is not drawn (hair under a hat, the colour of a missing bag or of a
    plain torso's texture) does not count: every identity must look different."""
    identities = make_identities(300, sibling_rate, np.random.default_rng(1))
    assert len({appearance_key(i) for i in identities}) == 300


# --- rendering: occluders and cameras -------------------------------------------------------------

SUBJECT = Identity(hair=0, hat=-1, skin=0, torso=2, texture=1, texture_colour=3, legs=5,
                   shorts=False, shoes=1, bag=1, bag_colour=7)  # bag "left", orange


def band_rows(frame: np.ndarray, share: float = 0.6) -> tuple[np.ndarray, set[tuple]]:
    """Rows where one palette colour covers at least ``share`` of the width, and those colours."""
    rows, colours = [], set()
    for y, row in enumerate(frame):
        for colour in CLOTHES:
            if (row == colour).all(axis=1).mean() >= share:
                rows.append(y)
                colours.add(tuple(int(v) for v in colour))
    return np.asarray(rows), colours


def test_occluders_hide_a_moving_band():
    """Occluded: most frames carry a horizontal band of one palette colour, at varying heights,
    in a colour drawn per frame (a colour per tracklet would be its fingerprint). Not occluded:
    no such band (the person alone is too narrow for it)."""
    H, W = 64, 64
    backdrop = np.random.default_rng(0).integers(0, 256, (2 * H, 2 * W, 3), dtype=np.uint8)
    frames, _ = render_tracklet(SUBJECT, PLAIN, backdrop, 30, True, (H, W),
                                np.random.default_rng(1))
    bands = [band_rows(f) for f in frames]
    occluded = [(rows, colours) for rows, colours in bands if len(rows)]
    assert len(occluded) >= 15
    assert all(len(colours) == 1 for _, colours in occluded)  # one colour in a frame
    assert len(set().union(*(c for _, c in occluded))) >= 5  # colours vary between frames
    for rows, _ in occluded:
        assert np.array_equal(rows, np.arange(rows[0], rows[-1] + 1))  # one contiguous band
        assert len(rows) >= 0.2 * H
    assert len({rows[0] for rows, _ in occluded}) >= 5

    clear, _ = render_tracklet(SUBJECT, PLAIN, backdrop, 30, False, (H, W),
                               np.random.default_rng(1))
    assert all(len(band_rows(f)[0]) == 0 for f in clear)


def test_camera_gain_changes_brightness():
    H, W = 128, 64
    backdrop = synthetic.background(PLAIN, H, W)
    dim, bright = (dataclasses.replace(PLAIN, gain=g) for g in (0.6, 1.2))
    frames = [render_tracklet(SUBJECT, cam, backdrop, 5, False, (H, W),
                              np.random.default_rng(3))[0].astype(float)
              for cam in (dim, bright)]
    assert frames[1].mean() > 1.4 * frames[0].mean()


def bag_centroids(mirror: bool) -> list[float]:
    """Column centroid of the bag colour in each frame, on a plain grey backdrop."""
    H, W = 128, 64
    backdrop = np.full((2 * H, 2 * W, 3), 90, dtype=np.uint8)
    camera = dataclasses.replace(PLAIN, mirror=mirror)
    frames, _ = render_tracklet(SUBJECT, camera, backdrop, 10, False, (H, W),
                                np.random.default_rng(4))
    bag = CLOTHES[SUBJECT.bag_colour]
    return [float(np.nonzero((f == bag).all(axis=2))[1].mean()) for f in frames]


def test_mirrored_camera_moves_the_bag_to_the_other_side():
    assert all(x < 32 for x in bag_centroids(mirror=False))
    assert all(x > 32 for x in bag_centroids(mirror=True))


# --- label maps: the ground truth of every frame --------------------------------------------------

LABEL = {name: value for value, name in enumerate(LABELS)}
# the colours each label of SUBJECT shows on a plain camera (no light, no noise)
SUBJECT_COLOURS = {
    "hair": [HAIR[SUBJECT.hair]], "skin": [SKIN[SUBJECT.skin]],
    "torso": [CLOTHES[SUBJECT.torso], CLOTHES[SUBJECT.texture_colour]],  # hstripes
    "arms": [CLOTHES[SUBJECT.torso]], "legs": [CLOTHES[SUBJECT.legs]],
    "shoes": [CLOTHES[SUBJECT.shoes]], "bag": [CLOTHES[SUBJECT.bag_colour]],
}


def colours(pixels: np.ndarray) -> set[tuple]:
    return {tuple(int(v) for v in c) for c in pixels.reshape(-1, 3)}


def backdrop_offset(frame: np.ndarray, backdrop: np.ndarray, mask: np.ndarray) -> tuple | None:
    """An offset (oy, ox) at which ``backdrop``'s crop equals ``frame`` on every pixel of
    ``mask``, or None."""
    crops = np.lib.stride_tricks.sliding_window_view(backdrop, (*mask.shape, 3))[:, :, 0]
    # crops: (oy, ox, H, W, 3), every crop of the backdrop
    match = (crops[:, :, mask] == frame[mask]).all(axis=(-2, -1))  # (oy, ox)
    hits = np.argwhere(match)
    return tuple(int(v) for v in hits[0]) if len(hits) else None


def test_labels_are_the_module_constant():
    assert LABELS == ("background", "hair", "skin", "torso", "arms", "legs", "shoes", "bag",
                      "occluder")
    assert synthetic.LABEL == LABEL


@pytest.mark.parametrize("mirror", [False, True])
def test_label_maps_agree_with_the_frames_pixel_for_pixel(mirror):
    """A plain camera (noise 0, gain 1): pixels labelled background are the backdrop's crop,
    each person label shows exactly its part's colours, the occluder label the band's one colour;
    the map without the occluder differs from the visible one exactly on the band, a rectangle."""
    H, W = 64, 32
    backdrop = np.random.default_rng(5).integers(0, 256, (2 * H, 2 * W, 3), dtype=np.uint8)
    camera = dataclasses.replace(PLAIN, mirror=mirror)
    frames, labels = render_tracklet(SUBJECT, camera, backdrop, 12, True, (H, W),
                                     np.random.default_rng(6))
    assert frames.shape == (12, H, W, 3) and labels.shape == (12, H, W, 2)
    assert labels.dtype == np.uint8
    bands = 0
    for frame, label in zip(frames, labels, strict=True):
        visible, clear = label[..., 0], label[..., 1]
        assert backdrop_offset(frame, backdrop, visible == 0) is not None
        for name, expected in SUBJECT_COLOURS.items():
            assert (clear == LABEL[name]).any()  # (the occluder may hide it)
            assert colours(frame[visible == LABEL[name]]) <= colours(np.asarray(expected))
        band = visible == LABEL["occluder"]
        assert not (clear == LABEL["occluder"]).any()
        assert np.array_equal(visible != clear, band)  # equal everywhere but on the band
        if band.any():
            bands += 1
            assert len(colours(frame[band])) == 1
            assert colours(frame[band]) <= colours(CLOTHES)
            rows, cols = np.nonzero(band)  # a rectangle, clipped by the frame
            assert band[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
            assert (clear[band] > 0).any()  # it hides some of the person
    assert bands >= 4
    # the bag sits on the side the camera shows it, in the labels as in the colours
    bag_columns = np.nonzero(labels[..., 0] == LABEL["bag"])[2]
    assert (bag_columns.mean() > W / 2) == mirror


def test_a_part_an_identity_lacks_never_appears_and_a_hat_is_hair():
    ident = dataclasses.replace(SUBJECT, bag=0, hat=4)  # no bag, a white hat
    H, W = 64, 32
    backdrop = np.full((2 * H, 2 * W, 3), 90, dtype=np.uint8)
    frames, labels = render_tracklet(ident, PLAIN, backdrop, 8, True, (H, W),
                                     np.random.default_rng(2))
    assert not (labels == LABEL["bag"]).any()
    hair = labels[..., 0] == LABEL["hair"]
    assert hair.any()
    assert colours(frames[hair]) == {tuple(int(v) for v in CLOTHES[4])}


def test_light_and_noise_change_the_frame_not_the_labels():
    H, W = 64, 32
    backdrop = synthetic.background(PLAIN, H, W)
    dim = dataclasses.replace(PLAIN, gain=0.7, cast=(1.1, 0.9, 1.0), noise=6.0)
    plain_frames, plain_labels = render_tracklet(SUBJECT, PLAIN, backdrop, 6, True, (H, W),
                                                 np.random.default_rng(8))
    dim_frames, dim_labels = render_tracklet(SUBJECT, dim, backdrop, 6, True, (H, W),
                                             np.random.default_rng(8))
    assert np.array_equal(plain_labels, dim_labels)
    assert not np.array_equal(plain_frames, dim_frames)


def test_two_frames_of_a_tracklet_do_not_share_their_background():
    """The backdrop is cropped at another offset in every frame: no background is fixed per
    tracklet (it would let the identity loss learn the tracklet instead of the person)."""
    H, W = 64, 32
    backdrop = synthetic.background(PLAIN, H, W)
    frames, labels = render_tracklet(SUBJECT, PLAIN, backdrop, 10, False, (H, W),
                                     np.random.default_rng(9))
    offsets = [backdrop_offset(f, backdrop, lab[..., 0] == 0)
               for f, lab in zip(frames, labels, strict=True)]
    assert None not in offsets
    assert len(set(offsets)) >= 8
    both = (labels[0, ..., 0] == 0) & (labels[1, ..., 0] == 0)  # background in both frames
    assert not np.array_equal(frames[0][both], frames[1][both])
    junk, _ = render_tracklet(None, PLAIN, backdrop, 10, False, (H, W), np.random.default_rng(9))
    assert len({f.tobytes() for f in junk}) == 10


def test_every_frame_on_disk_has_its_label_map(tiny_root, tiny_video):
    """The index lists a label map per frame, in the parallel labels/ tree: an LA PNG the frame's
    size whose channels hold labels, the occluder only in the visible one; images likewise."""
    seen = np.zeros(len(LABELS), dtype=bool)
    for row in tiny_video.itertuples():
        assert len(row.labels) == len(row.frames)
        for frame, label in zip(row.frames, row.labels, strict=True):
            assert label == tiny_root / "video" / "labels" / frame.relative_to(
                tiny_root / "video").with_suffix(".png")
        with Image.open(row.labels[0]) as image:
            assert image.mode == "LA"
            maps = np.asarray(image)
        with Image.open(row.frames[0]) as image:
            assert maps.shape == (image.height, image.width, 2)
        assert maps.max() < len(LABELS)
        assert not (maps[..., 1] == LABEL["occluder"]).any()
        seen[np.unique(maps)] = True
        if row.pid == -1:
            assert set(np.unique(maps)) <= {LABEL["background"], LABEL["occluder"]}
    assert seen.all()
    for image in index_images("synthetic", tiny_root)["path"]:
        assert synthetic.label_path(image, tiny_root).is_file()
    manifest = json.loads((tiny_root / "identities.json").read_text())
    assert manifest["labels"] == list(LABELS)


def test_the_reader_refuses_a_missing_label_map_and_reads_a_set_without_any(tiny_root,
                                                                             tmp_path):
    root = tmp_path / "synthetic"
    shutil.copytree(tiny_root, root)
    victim = sorted((root / "video" / "labels" / "bbox_test").rglob("*.png"))[3]
    victim.unlink()
    with pytest.raises(DatasetError, match=rf"label map .*{victim.name} of a frame is missing"):
        index_video("synthetic", root)
    shutil.rmtree(root / "video" / "labels")  # a set generated before label maps existed
    assert index_video("synthetic", root)["labels"].map(len).eq(0).all()


# --- params and the default set -------------------------------------------------------------------


def test_min_length_above_max_length_is_refused():
    with pytest.raises(ParamsError, match=r"synthetic\.min_length"):
        load_params(ROOT / "params.yaml", {"synthetic.min_length": 12, "synthetic.max_length": 8})
    with pytest.raises(ParamsError, match=r"synthetic\.min_length"):
        SyntheticParams(min_length=5, max_length=4)


@pytest.mark.slow  # about 44,000 files (frames and label maps) written by several processes
def test_default_set_sizes(tmp_path):
    """The default config: 64 + 450 ids x 3 cameras, 8 + 8 extra test tracklets, 450 x 2 = 900
    queries (a rank-1 standard error of at most 2 points), 128 x 6 images. (Frames of
    32 x 16 pixels: the size changes no count, and rendering and saving the default size take
    most of the time.)"""
    cfg = dataclasses.replace(SyntheticParams(), height=32, width=16)
    root = generate(cfg, tmp_path / "synthetic")
    video = index_video("synthetic", root)
    train, test = video[video["subset"] == "train"], video[video["subset"] == "test"]
    assert len(train) == 64 * 3
    assert train["pid"].nunique() == 64
    assert len(test) == 450 * 3 + 8 + 8
    assert test["is_query"].sum() == 900
    queries = test[test["is_query"]]
    assert (queries.groupby("pid")["camid"].nunique() == 2).all()  # two cameras per identity
    assert ((test["pid"] == 0).sum(), (test["pid"] == -1).sum()) == (8, 8)
    assert video["frames"].map(len).between(cfg.min_length, cfg.max_length).all()
    images = index_images("synthetic", root)
    assert len(images) == 128 * 6
    assert images["pid"].nunique() == 128


def test_more_test_identities_change_only_the_test_set(tiny_root, tmp_path):
    """Each part of the set has its own stream (synthetic.STREAMS): with 9 test identities instead
    of 6, the cameras, the training tracklets, the pretraining images and the distractors are the
    same bytes, the first 6 test identities keep their parts, query cameras and frames, and
    only 3 identities (and their tracklets) are new."""
    more = generate(dataclasses.replace(TINY, test_identities=9), tmp_path / "more")
    for part in ("video/bbox_train", "video/labels/bbox_train", "images"):
        assert tree_digest(more / part) == tree_digest(tiny_root / part), part
    assert ((more / "video/info/train_name.txt").read_bytes()
            == (tiny_root / "video/info/train_name.txt").read_bytes())
    old, new = (json.loads((r / "identities.json").read_text()) for r in (tiny_root, more))
    assert new["cameras"] == old["cameras"]
    kept = {pid: entry for pid, entry in new["identities"].items() if pid in old["identities"]}
    assert kept == old["identities"]  # train, images, the first 6 test ids: parts and queries
    assert len(new["identities"]) - len(old["identities"]) == 3
    before, after = (index_video("synthetic", r) for r in (tiny_root, more))
    for pid in range(TINY.train_identities + 1, TINY.train_identities + TINY.test_identities + 1):
        a, b = (t[t["pid"] == pid] for t in (before, after))
        assert a["camid"].tolist() == b["camid"].tolist()
        assert a["is_query"].tolist() == b["is_query"].tolist()
        for frames_a, frames_b in zip(a["frames"], b["frames"], strict=True):
            assert [f.read_bytes() for f in frames_a] == [f.read_bytes() for f in frames_b]
    extra = after[after["pid"].isin([0, -1])], before[before["pid"].isin([0, -1])]
    assert [[f.read_bytes() for f in t] for t in extra[0]["frames"]] == [
        [f.read_bytes() for f in t] for t in extra[1]["frames"]]  # distractors and junk alike


def test_make_identities_grows_by_adding_and_avoids_what_is_seen():
    """The first n of a larger draw are the draw of n; identities already seen are never drawn."""
    ten = make_identities(10, 0.5, np.random.default_rng(4))
    assert make_identities(6, 0.5, np.random.default_rng(4)) == ten[:6]
    seen = {appearance(i) for i in ten}
    others = make_identities(20, 0.5, np.random.default_rng(4), seen)
    assert not {appearance(i) for i in others} & {appearance(i) for i in ten}
    assert len(seen) == 30  # the call added its own


def test_the_second_generated_set_is_prid_like_and_ranked_as_prid(tmp_path):
    """synthetic2 (``data.video: [synthetic, synthetic2]``): its own section of params.yaml, two
    cameras, every identity seen by both; each test identity has one query tracklet and its match
    in the other camera; its official gallery is PRID2011's (the non-query, non-junk tracklets),
    not MARS's; and its people are not the first set's (another seed)."""
    from pipeline.metrics import protocol_gallery
    from pipeline.params import Params

    params = load_params(ROOT / "params.yaml")
    assert params.generated("synthetic2") == Params().generated("synthetic2")  # file = defaults
    second = dataclasses.replace(params.generated("synthetic2"), train_identities=4,
                                 test_identities=5, distractor_tracklets=1, junk_tracklets=1)
    first = dataclasses.replace(second, seed=params.generated("synthetic").seed)
    generate(second, tmp_path / "synthetic2")
    generate(first, tmp_path / "first")
    table = index_video("synthetic2", tmp_path / "synthetic2", 0)
    people = table[table["pid"] > 0]
    assert set(people["camid"]) == {1, 2}
    assert (people.groupby("pid")["camid"].nunique() == 2).all()
    queries = people[people["is_query"]]
    assert sorted(queries["pid"]) == sorted(people[people["subset"] == "test"]["pid"].unique())
    for row in queries.itertuples():  # the match: the same person in the other camera
        match = people[(people["pid"] == row.pid) & ~people["is_query"]]
        assert list(match["camid"]) == [3 - row.camid]
    test = table[table["subset"] == "test"]
    gallery = protocol_gallery("official", test["pid"].to_numpy(), test["is_query"].to_numpy(),
                               "synthetic2")
    assert gallery.tolist() == (~test["is_query"] & (test["pid"] != -1)).tolist()
    assert protocol_gallery("official", test["pid"].to_numpy(), test["is_query"].to_numpy(),
                            "synthetic").all()
    looks = [{json.dumps({k: v for k, v in ident.items() if k != "subset"}, sort_keys=True)
              for ident in json.loads((tmp_path / name / "identities.json").read_text())[
                  "identities"].values()} for name in ("synthetic2", "first")]
    assert len(looks[0] & looks[1]) < len(looks[0]) // 2  # the same counts, other people
