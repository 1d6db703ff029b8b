"""A procedurally generated video re-id dataset: the pipeline's offline default.

It is built to exercise what DRSA is about, not only to fill shapes, and to measure it: every frame
comes with its ground truth, the label of every pixel.

- **Identities are compositions of parts**: hair (or a hat), skin, torso colour and texture
  (plain, horizontal or vertical stripes, checks), legs (trousers or shorts), shoes, and an
  optional bag on the left or right side. A share of the identities (``sibling_rate``) are copies
  of another identity with exactly one part changed, so that a whole-frame average barely
  separates the pair while a detector of that part does.
- **Cameras** have their own illumination, colour cast, background clutter, noise and viewpoint
  (mirrored or not, so a bag changes side; person scale and placement).
- **Tracklets** vary in length (``min_length`` to ``max_length``, from shorter than N to many
  times N). Every frame jitters the person's position and scale (misalignment), advances a
  walking cycle and shows the camera's clutter at another offset; in a share of the tracklets
  (``occlusion_rate``) an occluder hides a different band of the body in different frames.
- **Splits** like the real protocols: train and test identities are disjoint; each test identity
  has a query tracklet in ``query_cameras`` of its cameras (chosen per identity), and its other
  tracklets form the gallery (the other cameras hold gallery tracklets only); a few distractor
  (pid 0) and junk (pid -1) tracklets are mixed into the test set. Single images of further,
  disjoint identities serve the image-pretraining stage.

Each part of the set is drawn from a seeded stream of its own (``STREAMS``; each identity's
tracklets from one of that identity's), so more test identities change nothing else. What is drawn
once for what (nothing is fixed per tracklet that its camera does not explain, so the identity
loss cannot learn a tracklet's look instead of its person's):

- per camera: gain, colour cast, noise level, viewpoint (mirror), mean person scale, and the
  clutter image (``background``, 2H x 2W) that every frame of the camera crops;
- per identity: its parts (``Identity``); for a test identity, its query cameras;
- per tracklet: its length, whether it is occluded, the walking cycle's start and speed;
- per frame: the crop offset of the camera's clutter, the person's scale and position jitter, the
  walking phase, the occluder band (whether, where, how high, its colour) and the pixel noise.

On disk the video part uses the MARS layout and the image part the Market-1501 layout, so it is
indexed by exactly the code that reads the real sets; each frame's label map lies in a parallel
tree under ``labels/``::

    <root>/video/bbox_{train,test}/<pid4>/<pid4>C<cam>T<tracklet4>F<frame3>.jpg
    <root>/video/labels/bbox_{train,test}/<pid4>/<pid4>C<cam>T<tracklet4>F<frame3>.png
    <root>/video/info/{train,test}_name.txt, tracks_{train,test}_info.mat, query_IDX.mat
    <root>/images/bounding_box_train/<pid4>_c<cam>s1_<index6>_00.jpg
    <root>/images/labels/bounding_box_train/<pid4>_c<cam>s1_<index6>_00.png
    <root>/identities.json   every identity's parts, camera settings, split, the label names

A label map is a 2-channel PNG (PIL mode "LA") of the frame's size: channel L holds the visible
labels (the occluder drawn over the person), channel A the labels without the occluder (to tell how
much of each part it hides). Values index ``LABELS``: 0 background, 1 hair (or hat), 2 skin (face,
hands, legs below shorts), 3 torso (with its texture), 4 arms (the sleeves), 5 legs (trousers or
shorts), 6 shoes, 7 bag, 8 occluder (channel L only)::

    labels = np.asarray(Image.open(path))  # (H, W, 2) uint8
    visible, unoccluded = labels[..., 0], labels[..., 1]
    hidden = (visible == LABELS.index("occluder")) & (unoccluded != 0)  # person pixels hidden

The person and the occluder are drawn once, with PIL primitives, on a canvas of codes that each
stand for a (colour, label) pair (``Inks``); the frame's colours and both label maps are read from
that one drawing, so they agree pixel for pixel, mirroring, jitter and walking phase included.
Lighting and noise change the frame only. Everything is drawn deterministically from
``SyntheticParams.seed``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image, ImageDraw

from pipeline.files import atomic_dir
from pipeline.params import SyntheticParams
from pipeline.tables import LABELS

# --- palettes: distinct enough that one part change is visible --------------------------------
CLOTHES = np.array([
    (200, 30, 30), (30, 140, 40), (30, 60, 190), (220, 200, 40), (240, 240, 240), (25, 25, 25),
    (130, 70, 160), (240, 130, 30), (40, 170, 180), (120, 80, 40), (140, 140, 140), (230, 120, 170),
], dtype=np.uint8)
HAIR = np.array([(20, 15, 10), (90, 55, 25), (200, 170, 90), (150, 40, 20), (160, 160, 160)],
                dtype=np.uint8)
SKIN = np.array([(240, 200, 170), (200, 150, 110), (120, 80, 55)], dtype=np.uint8)
TEXTURES = ("plain", "hstripes", "vstripes", "checks")
BAGS = ("none", "left", "right")

# The parts an identity is made of; a sibling differs from its base in exactly one of them.
PARTS = ("head", "torso", "texture", "legs", "shoes", "bag")

# The values of a label map (``LABELS``, defined with the canonical tables, whose ``labels`` column
# points at the maps): label -> its value. Person labels are 1..7.
LABEL = {name: value for value, name in enumerate(LABELS)}


@dataclass(frozen=True)
class Identity:
    hair: int  # HAIR index
    hat: int  # -1: no hat, else CLOTHES index
    skin: int  # SKIN index
    torso: int  # CLOTHES index
    texture: int  # TEXTURES index
    texture_colour: int  # CLOTHES index of the stripes / checks
    legs: int  # CLOTHES index
    shorts: bool  # shorts show skin below the knee
    shoes: int  # CLOTHES index
    bag: int  # BAGS index
    bag_colour: int  # CLOTHES index


@dataclass(frozen=True)
class Camera:
    gain: float  # overall illumination
    cast: tuple[float, float, float]  # per-channel colour multipliers
    mirror: bool  # viewpoint: the person seen from the other side (left and right swap)
    scale: float  # person height as a fraction of the frame height
    noise: float  # Gaussian pixel noise (std, in 0-255 units)
    background: int  # seed of the background clutter


def random_identity(rng: np.random.Generator) -> Identity:
    hat = int(rng.integers(len(CLOTHES))) if rng.random() < 0.2 else -1
    return Identity(
        hair=int(rng.integers(len(HAIR))), hat=hat, skin=int(rng.integers(len(SKIN))),
        torso=int(rng.integers(len(CLOTHES))),
        texture=int(rng.integers(len(TEXTURES))), texture_colour=int(rng.integers(len(CLOTHES))),
        legs=int(rng.integers(len(CLOTHES))), shorts=bool(rng.random() < 0.25),
        shoes=int(rng.integers(len(CLOTHES))), bag=int(rng.choice(3, p=[0.5, 0.25, 0.25])),
        bag_colour=int(rng.integers(len(CLOTHES))),
    )


def sibling(base: Identity, rng: np.random.Generator) -> Identity:
    """``base`` with exactly one part changed."""
    part = PARTS[int(rng.integers(len(PARTS)))]
    other = random_identity(rng)
    changes = {
        "head": {"hair": other.hair, "hat": other.hat},
        "torso": {"torso": other.torso},
        "texture": {"texture": other.texture, "texture_colour": other.texture_colour},
        "legs": {"legs": other.legs, "shorts": other.shorts},
        "shoes": {"shoes": other.shoes},
        "bag": {"bag": other.bag, "bag_colour": other.bag_colour},
    }[part]
    return dataclasses.replace(base, **changes)


def appearance(ident: Identity) -> Identity:
    """``ident`` with the fields ``draw_person`` does not show reset: the hair under a hat, the
    texture colour of a plain torso, the colour of a missing bag. Two identities look alike
    exactly when their appearances are equal."""
    return dataclasses.replace(
        ident, hair=0 if ident.hat >= 0 else ident.hair,
        texture_colour=0 if TEXTURES[ident.texture] == "plain" else ident.texture_colour,
        bag_colour=0 if BAGS[ident.bag] == "none" else ident.bag_colour)


def make_identities(count: int, sibling_rate: float, rng: np.random.Generator,
                    seen: set | None = None) -> list[Identity]:
    """``count`` identities that all look different, from each other and from the appearances in
    ``seen`` (which gains theirs), about ``sibling_rate`` of them one-part variants of another of
    them (a variant whose change would not show is drawn again). The first n of ``count`` are
    those of a call for n: more identities only add identities."""
    identities: list[Identity] = []
    seen = set() if seen is None else seen  # appearances
    while len(identities) < count:
        if identities and rng.random() < sibling_rate:
            candidate = sibling(identities[int(rng.integers(len(identities)))], rng)
        else:
            candidate = random_identity(rng)
        if appearance(candidate) not in seen:
            seen.add(appearance(candidate))
            identities.append(candidate)
    return identities


def make_cameras(count: int, rng: np.random.Generator) -> list[Camera]:
    cameras = []
    for c in range(count):
        cameras.append(Camera(
            gain=float(rng.uniform(0.65, 1.25)),
            cast=tuple(float(v) for v in rng.uniform(0.8, 1.2, size=3)),
            mirror=bool(c % 2),  # alternate viewpoints, so a bag changes side between cameras
            scale=float(rng.uniform(0.78, 0.95)),
            noise=float(rng.uniform(2.0, 8.0)),
            background=int(rng.integers(2**31)),
        ))
    return cameras


# --- rendering ------------------------------------------------------------------------------------


def background(camera: Camera, height: int, width: int) -> np.ndarray:
    """A camera's clutter: a floor, a wall and random blocks, larger than a frame so that each
    tracklet crops it at its own offset. (2H, 2W, 3) uint8."""
    rng = np.random.default_rng(camera.background)
    H, W = 2 * height, 2 * width
    wall, floor = rng.integers(60, 200, size=3), rng.integers(40, 160, size=3)
    canvas = Image.new("RGB", (W, H), tuple(int(v) for v in wall))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([0, int(H * 0.6), W, H], fill=tuple(int(v) for v in floor))
    for _ in range(14):
        x0, y0 = int(rng.integers(W)), int(rng.integers(H))
        w, h = int(rng.integers(W // 12, W // 3)), int(rng.integers(H // 20, H // 4))
        colour = tuple(int(v) for v in rng.integers(0, 255, 3))
        draw.rectangle([x0, y0, x0 + w, y0 + h], fill=colour)
    return np.asarray(canvas)


def rgb_ink(colour, label: int) -> tuple[int, ...]:
    """The fill of a part on an RGB canvas: its colour (the label is not drawn)."""
    return tuple(int(v) for v in colour)


class Inks:
    """Fill codes of one label-coded canvas (PIL mode "L"): each (colour, label) pair drawn gets
    its own code 1..255, 0 being nothing drawn (the backdrop). The person and the occluder are
    drawn once, in codes; the frame's colours (``rgb``) and its labels (``labels``) are both read
    from that one drawing, so that they agree pixel for pixel."""

    def __init__(self) -> None:
        self.colours: list[tuple[int, ...]] = [(0, 0, 0)]
        self.label_of: list[int] = [LABEL["background"]]
        self._codes: dict[tuple, int] = {}

    def __call__(self, colour, label: int) -> int:
        key = (tuple(int(v) for v in colour), int(label))
        if key not in self._codes:
            if len(self.colours) == 256:
                raise ValueError("more than 255 (colour, label) pairs on one canvas")
            self._codes[key] = len(self.colours)
            self.colours.append(key[0])
            self.label_of.append(key[1])
        return self._codes[key]

    def rgb(self, codes: np.ndarray) -> np.ndarray:
        """Codes (...) -> colours (..., 3) uint8 (code 0: black)."""
        return np.asarray(self.colours, dtype=np.uint8)[codes]

    def labels(self, codes: np.ndarray) -> np.ndarray:
        """Codes (...) -> labels (...) uint8, indices into ``LABELS``."""
        return np.asarray(self.label_of, dtype=np.uint8)[codes]


def draw_person(draw: ImageDraw.ImageDraw, ident: Identity, box: tuple[float, float, float, float],
                phase: float, mirror: bool, ink=rgb_ink) -> None:
    """The person inside ``box`` = (left, top, width, height), walking at ``phase`` (radians).
    ``ink(colour, label)`` gives the fill of each primitive: its colour on an RGB canvas
    (``rgb_ink``), or the code of an ``Inks`` on a label-coded one."""
    left, top, w, h = box

    def rect(x0, y0, x1, y1, colour, label):  # coordinates as fractions of the box
        if mirror:
            x0, x1 = 1 - x1, 1 - x0
        draw.rectangle([left + x0 * w, top + y0 * h, left + x1 * w, top + y1 * h],
                       fill=ink(colour, LABEL[label]))

    def ellipse(x0, y0, x1, y1, colour, label):
        if mirror:
            x0, x1 = 1 - x1, 1 - x0
        draw.ellipse([left + x0 * w, top + y0 * h, left + x1 * w, top + y1 * h],
                     fill=ink(colour, LABEL[label]))

    skin, torso = SKIN[ident.skin], CLOTHES[ident.torso]
    stride = 0.08 * np.sin(phase)
    # legs (0.52-0.92), shorts end at 0.68 and show skin below
    legs = CLOTHES[ident.legs]
    for x, s in ((0.33, stride), (0.53, -stride)):
        rect(x + s, 0.52, x + s + 0.16, 0.92, legs, "legs")
        if ident.shorts:
            rect(x + s, 0.68, x + s + 0.16, 0.92, skin, "skin")
        rect(x + s - 0.03, 0.91, x + s + 0.19, 0.97, CLOTHES[ident.shoes], "shoes")
    # arms swing against the legs: sleeves in the torso's colour, then the hands
    for x, s in ((0.17, -stride), (0.71, stride)):
        rect(x, 0.2 + s / 3, x + 0.12, 0.5 + s / 3, torso, "arms")
        rect(x, 0.5 + s / 3, x + 0.12, 0.56 + s / 3, skin, "skin")
    # torso (0.18-0.54) with its texture
    rect(0.28, 0.18, 0.72, 0.54, torso, "torso")
    tex, tex_colour = TEXTURES[ident.texture], CLOTHES[ident.texture_colour]
    if tex == "hstripes":
        for y in np.arange(0.21, 0.52, 0.08):
            rect(0.28, y, 0.72, y + 0.035, tex_colour, "torso")
    elif tex == "vstripes":
        for x in np.arange(0.31, 0.7, 0.1):
            rect(x, 0.18, x + 0.045, 0.54, tex_colour, "torso")
    elif tex == "checks":
        for i, y in enumerate(np.arange(0.18, 0.54, 0.09)):
            for j, x in enumerate(np.arange(0.28, 0.72, 0.11)):
                if (i + j) % 2:
                    rect(x, y, x + 0.11, y + 0.09, tex_colour, "torso")
    # head (0.03-0.18): face, hair or hat
    ellipse(0.37, 0.04, 0.63, 0.18, skin, "skin")
    if ident.hat >= 0:
        rect(0.33, 0.02, 0.67, 0.08, CLOTHES[ident.hat], "hair")
    else:
        ellipse(0.36, 0.02, 0.64, 0.09, HAIR[ident.hair], "hair")
    # bag on one side, over the hip
    if BAGS[ident.bag] != "none":
        x = 0.06 if BAGS[ident.bag] == "left" else 0.74
        rect(x, 0.36, x + 0.2, 0.6, CLOTHES[ident.bag_colour], "bag")


def render_tracklet(ident: Identity | None, camera: Camera, backdrop: np.ndarray, length: int,
                    occluded: bool, size: tuple[int, int], rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``length`` frames of one identity walking past one camera, and their label maps.
    ``ident`` None gives a junk tracklet: background and occluders only.

    Returns:
        frames (F, H, W, 3) uint8, and labels (F, H, W, 2) uint8: channel 0 the visible labels,
        channel 1 the labels without the occluder (indices into ``LABELS``).
    """
    H, W = size
    phase0, speed = rng.uniform(0, 2 * np.pi), rng.uniform(0.4, 1.0)
    inks = Inks()
    crops = np.empty((length, H, W, 3), dtype=np.uint8)
    codes = np.empty((2, length, H, W), dtype=np.uint8)  # (visible | without occluder, F, H, W)
    for n in range(length):
        # a crop of the camera's backdrop at its own offset in every frame: a fixed crop would be
        # a background (a tracklet fingerprint) that all frames of a tracklet share
        oy, ox = int(rng.integers(H)), int(rng.integers(W))
        crops[n] = backdrop[oy:oy + H, ox:ox + W]
        canvas = Image.new("L", (W, H), 0)
        draw = ImageDraw.Draw(canvas)
        if ident is not None:
            scale = camera.scale * rng.uniform(0.9, 1.05)
            h, w = scale * H, scale * H * 0.42
            left = (W - w) / 2 + rng.uniform(-0.12, 0.12) * W
            top = (H - h) * rng.uniform(0.2, 0.8)
            draw_person(draw, ident, (left, top, w, h), phase0 + speed * n, camera.mirror, inks)
        codes[1, n] = np.asarray(canvas)
        if occluded and rng.random() < 0.7:
            # a band hiding the head, torso, or legs: a different part in different frames, in a
            # colour of its own in every frame
            colour = CLOTHES[int(rng.integers(len(CLOTHES)))]
            y0 = rng.uniform(0.0, 0.7) * H
            band = rng.uniform(0.25, 0.45) * H
            x0 = rng.uniform(-0.3, 0.3) * W
            draw.rectangle([x0, y0, x0 + W, y0 + band], fill=inks(colour, LABEL["occluder"]))
        codes[0, n] = np.asarray(canvas)
    visible = codes[0]
    drawn = visible > 0
    crops[drawn] = inks.rgb(visible[drawn])  # the person and the occluder over the backdrop
    light = camera.gain * np.asarray(camera.cast, dtype=np.float32)
    stack = rng.standard_normal(crops.shape, dtype=np.float32)  # (F, H, W, 3)
    stack *= camera.noise
    stack += crops * light
    labels = np.stack([inks.labels(visible), inks.labels(codes[1])], axis=-1)  # (F, H, W, 2)
    return np.clip(stack, 0, 255, out=stack).astype(np.uint8), labels


# --- the dataset ----------------------------------------------------------------------------------


def generator_version() -> str:
    """A hash of this module's source and of the label names: a set on disk made by other code
    is stale."""
    return hashlib.sha256(Path(__file__).read_bytes() + repr(LABELS).encode()).hexdigest()[:16]


def generate(cfg: SyntheticParams, root: str | Path, workers: int | None = None) -> Path:
    """Write the dataset under ``root`` (replaced whole, atomically) and return ``root``.
    ``workers`` processes render and save the frames (default: one per available CPU, at most
    8); the bytes written do not depend on how many."""
    root = Path(root)
    if workers is None:
        workers = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count() or 1)
    with atomic_dir(root) as tmp:
        _write(cfg, tmp, workers)
    return root


def label_path(frame: str | Path, root: str | Path) -> Path:
    """The label map of the frame ``frame`` of the set at ``root``: ``<root>/video/bbox_test/
    0001/0001C1T0001F001.jpg`` -> ``<root>/video/labels/bbox_test/0001/0001C1T0001F001.png``
    (the images' likewise, under ``<root>/images/labels/``)."""
    root, frame = Path(root), Path(frame)
    part, *rest = frame.relative_to(root).parts  # "video" or "images"
    return (root / part / "labels" / Path(*rest)).with_suffix(".png")


@dataclass(frozen=True)
class _Job:
    """One tracklet (or pretraining image) to render and save: everything drawn for it by the
    dataset's generator, and its own generator's seed for the rest, so that jobs can run in any
    order, in any process, with the same result."""
    frames: tuple[Path, ...]  # where its frames go (their label maps: ``label_path``)
    ident: Identity | None
    camera: int  # index into the cameras
    occluded: bool
    seed: int


# Each part of the set is drawn from a seeded stream of its own (``stream``), its identities in this
# order, and each identity's tracklets (or images) from a stream of that identity's own, so that a
# count changes only its own part: more test identities (drawn last) leave the cameras, the
# training identities and tracklets, the pretraining images and the distractors as they were, and
# the first test identities with their query cameras and tracklets too.
STREAMS = ("cameras", "train", "images", "distractors", "test")


def stream(seed: int, name: str, *keys: int) -> np.random.Generator:
    """The generator of one part of the set (``STREAMS``) for ``synthetic.seed``; with ``keys``
    (a pid), that of one of its identities."""
    return np.random.default_rng([seed, STREAMS.index(name), *keys])


def _write(cfg: SyntheticParams, out: Path, workers: int = 1) -> None:
    # One function on purpose: it plans the whole set, and every frame depends on the order in
    # which it draws from its streams (cameras, identities, tracklets, images); read whole, that
    # order is the code's order, which a split into helpers would hide.
    rngs = {name: stream(cfg.seed, name) for name in STREAMS}
    size = (cfg.height, cfg.width)
    cameras = make_cameras(cfg.cameras, rngs["cameras"])
    seen: set = set()  # every identity looks different from every other, across the parts
    pools = {name: make_identities(count, cfg.sibling_rate, rngs[name], seen) for name, count in (
        ("train", cfg.train_identities), ("images", cfg.image_identities),
        ("distractors", cfg.distractor_tracklets), ("test", cfg.test_identities))}
    video = out / "video"
    train_ids = range(1, cfg.train_identities + 1)
    test_ids = range(cfg.train_identities + 1, cfg.train_identities + cfg.test_identities + 1)
    manifest = {"params": dataclasses.asdict(cfg), "generator": generator_version(),
                "labels": list(LABELS),
                "cameras": [dataclasses.asdict(c) for c in cameras], "identities": {}}
    jobs: list[_Job] = []

    def tracklet(rng: np.random.Generator, subset: str, pid: int, cam: int, tracklet_no: int,
                 ident: Identity | None, names: list[str]) -> list[int]:
        """Plan one tracklet from ``rng`` (its part's stream); append its frame names; return
        its MARS track row [start, end, pid, camid] (1-based, inclusive)."""
        length = int(rng.integers(cfg.min_length, cfg.max_length + 1))
        occluded = bool(rng.random() < cfg.occlusion_rate)
        pid_name = "00-1" if pid == -1 else f"{pid:04d}"
        stems = [f"{pid_name}C{cam}T{tracklet_no:04d}F{n:03d}" for n in range(1, length + 1)]
        folder = video / f"bbox_{subset}" / pid_name
        jobs.append(_Job(tuple(folder / f"{s}.jpg" for s in stems), ident, cam - 1, occluded,
                         int(rng.integers(2**63))))
        start = len(names) + 1
        names += [f"{s}.jpg" for s in stems]
        return [start, len(names), pid, cam]

    for subset, pids in (("train", train_ids), ("test", test_ids)):
        names, tracks, queries = [], [], []
        tracklet_no = 0
        for pid in pids:
            rng = stream(cfg.seed, subset, pid)  # the identity's query cameras and tracklets
            ident = pools[subset][pid - pids[0]]
            entry = manifest["identities"][pid] = {"subset": subset, **dataclasses.asdict(ident)}
            query_cams = set()
            if subset == "test":  # the first tracklet in each of these cameras is a query
                query_cams = {int(c) + 1 for c in rng.choice(cfg.cameras, cfg.query_cameras,
                                                               replace=False)}
                entry["query_cameras"] = sorted(query_cams)
            for cam in range(1, cfg.cameras + 1):
                for t in range(int(rng.integers(1, cfg.tracklets_per_camera + 1))):
                    tracklet_no += 1
                    if cam in query_cams and t == 0:
                        queries.append(len(tracks) + 1)
                    tracks.append(tracklet(rng, subset, pid, cam, tracklet_no, ident, names))
        if subset == "test":  # distractor (pid 0) and junk (pid -1) tracklets, from their stream
            extras = [(0, ident) for ident in pools["distractors"]]
            extras += [(-1, None)] * cfg.junk_tracklets
            for pid, ident in extras:
                tracklet_no += 1
                cam = int(rngs["distractors"].integers(cfg.cameras)) + 1
                tracks.append(tracklet(rngs["distractors"], subset, pid, cam, tracklet_no, ident,
                                       names))
        info = video / "info"
        info.mkdir(parents=True, exist_ok=True)
        (info / f"{subset}_name.txt").write_text("".join(n + "\n" for n in names))
        _savemat(info / f"tracks_{subset}_info.mat",
                 {f"track_{subset}_info": np.asarray(tracks, dtype=np.float64)})
        if subset == "test":
            _savemat(info / "query_IDX.mat",
                     {"query_IDX": np.asarray(queries, dtype=np.float64)[None, :]})

    images = out / "images" / "bounding_box_train"
    index = 0
    for pid in range(1, cfg.image_identities + 1):
        rng = stream(cfg.seed, "images", pid)  # the identity's images: cameras, occluders, seeds
        ident = pools["images"][pid - 1]
        manifest["identities"][f"image-{pid}"] = {"subset": "images", **dataclasses.asdict(ident)}
        for _ in range(cfg.images_per_identity):
            cam = int(rng.integers(cfg.cameras))
            occluded = bool(rng.random() < cfg.occlusion_rate)
            index += 1
            jobs.append(_Job((images / f"{pid:04d}_c{cam + 1}s1_{index:06d}_00.jpg",), ident,
                             cam, occluded, int(rng.integers(2**63))))
    (out / "identities.json").write_text(json.dumps(manifest, indent=1))
    _run_jobs(jobs, out, cameras, size, workers)


# The jobs' shared inputs, in each worker process (set before the workers fork, or in the one
# process): the root, the cameras, their backdrops, the frame size.
_SHARED: dict = {}


def _run_jobs(jobs: list[_Job], out: Path, cameras: list[Camera], size: tuple[int, int],
              workers: int) -> None:
    """Render and save every job, in ``workers`` forked processes (or in this one)."""
    _SHARED.update(out=out, cameras=cameras, size=size,
                   backdrops=[background(c, *size) for c in cameras])
    try:
        if workers <= 1 or len(jobs) < 2:
            for job in jobs:
                _run_job(job)
            return
        context = multiprocessing.get_context("fork")  # the workers inherit _SHARED
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
            for _ in pool.map(_run_job, jobs, chunksize=max(1, len(jobs) // (8 * workers))):
                pass
    finally:
        _SHARED.clear()


def _run_job(job: _Job) -> None:
    """Render one job's frames and label maps and save them: frames as JPEG, label maps as PNG
    (``_save_labels``) in the parallel ``labels/`` tree."""
    camera = _SHARED["cameras"][job.camera]
    frames, labels = render_tracklet(job.ident, camera, _SHARED["backdrops"][job.camera],
                                     len(job.frames), job.occluded, _SHARED["size"],
                                     np.random.default_rng(job.seed))
    maps = [label_path(f, _SHARED["out"]) for f in job.frames]
    job.frames[0].parent.mkdir(parents=True, exist_ok=True)
    maps[0].parent.mkdir(parents=True, exist_ok=True)
    for frame, label, path, map_path in zip(frames, labels, job.frames, maps, strict=True):
        _save_jpeg(frame, path)
        _save_labels(label, map_path)


def _savemat(path: Path, content: dict) -> None:
    """``scipy.io.savemat`` with a fixed header: scipy stamps the creation time into the first 116
    bytes, which would make two generations with the same seed differ."""
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, content)
    header = b"MATLAB 5.0 MAT-file, written by pipeline.datasets.synthetic".ljust(116)
    path.write_bytes(header + buffer.getvalue()[116:])


def _save_jpeg(frame: np.ndarray, path: Path) -> None:
    Image.fromarray(frame).save(path, format="JPEG", quality=92)


def _save_labels(labels: np.ndarray, path: Path) -> None:
    """A label map (H, W, 2) uint8 as a 2-channel PNG, mode "LA": L the visible labels, A the
    labels without the occluder."""
    Image.fromarray(labels).save(path, format="PNG", compress_level=1)
