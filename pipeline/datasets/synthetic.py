"""A procedurally generated video re-id dataset: the pipeline's offline default.

It is built to exercise what DRSA is about, not only to fill shapes:

- **Identities are compositions of parts**: hair (or a hat), skin, torso colour and texture
  (plain, horizontal or vertical stripes, checks), legs (trousers or shorts), shoes, and an
  optional bag on the left or right side. A share of the identities (``sibling_rate``) are copies
  of another identity with exactly one part changed, so that a whole-frame average barely
  separates the pair while a detector of that part does.
- **Cameras** have their own illumination gain, colour cast, background clutter, noise and
  viewpoint (mirrored or not, so a bag changes side; person scale and placement).
- **Tracklets** vary in length (``min_length`` to ``max_length``, from shorter than N to many
  times N). Every frame jitters the person's position and scale (misalignment) and advances a
  walking cycle; in a share of the tracklets (``occlusion_rate``) an occluder hides a different
  band of the body in different frames.
- **Splits** like the real protocols: train and test identities are disjoint; each test identity
  has one query tracklet, in a camera chosen per identity, and its other tracklets form the
  gallery; a few distractor (pid 0) and junk (pid -1) tracklets are mixed into the test set.
  Single images of further, disjoint identities serve the image-pretraining stage.

On disk the video part uses the MARS layout and the image part the Market-1501 layout, so it is
indexed by exactly the code that reads the real sets::

    <root>/video/bbox_{train,test}/<pid4>/<pid4>C<cam>T<tracklet4>F<frame3>.jpg
    <root>/video/info/{train,test}_name.txt, tracks_{train,test}_info.mat, query_IDX.mat
    <root>/images/bounding_box_train/<pid4>_c<cam>s1_<index6>_00.jpg
    <root>/identities.json   every identity's parts, camera settings, split (for inspection)

Everything is drawn with PIL primitives and numpy array operations, deterministically from
``SyntheticParams.seed``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image, ImageDraw

from pipeline.files import atomic_dir
from pipeline.params import SyntheticParams

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


def make_identities(count: int, sibling_rate: float, rng: np.random.Generator) -> list[Identity]:
    """``count`` identities that all look different, about ``sibling_rate`` of them one-part
    variants (a variant whose change would not show is drawn again)."""
    identities: list[Identity] = []
    seen: set[Identity] = set()  # appearances
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


def draw_person(draw: ImageDraw.ImageDraw, ident: Identity, box: tuple[float, float, float, float],
                phase: float, mirror: bool) -> None:
    """The person inside ``box`` = (left, top, width, height), walking at ``phase`` (radians)."""
    left, top, w, h = box

    def rect(x0, y0, x1, y1, colour):  # coordinates as fractions of the box
        if mirror:
            x0, x1 = 1 - x1, 1 - x0
        draw.rectangle([left + x0 * w, top + y0 * h, left + x1 * w, top + y1 * h],
                       fill=tuple(int(v) for v in colour))

    def ellipse(x0, y0, x1, y1, colour):
        if mirror:
            x0, x1 = 1 - x1, 1 - x0
        draw.ellipse([left + x0 * w, top + y0 * h, left + x1 * w, top + y1 * h],
                     fill=tuple(int(v) for v in colour))

    skin, torso = SKIN[ident.skin], CLOTHES[ident.torso]
    stride = 0.08 * np.sin(phase)
    # legs (0.52-0.92), shorts end at 0.68 and show skin below
    legs = CLOTHES[ident.legs]
    for x, s in ((0.33, stride), (0.53, -stride)):
        rect(x + s, 0.52, x + s + 0.16, 0.92, legs)
        if ident.shorts:
            rect(x + s, 0.68, x + s + 0.16, 0.92, skin)
        rect(x + s - 0.03, 0.91, x + s + 0.19, 0.97, CLOTHES[ident.shoes])  # shoes
    # arms swing against the legs
    for x, s in ((0.17, -stride), (0.71, stride)):
        rect(x, 0.2 + s / 3, x + 0.12, 0.5 + s / 3, torso)
        rect(x, 0.5 + s / 3, x + 0.12, 0.56 + s / 3, skin)  # hands
    # torso (0.18-0.54) with its texture
    rect(0.28, 0.18, 0.72, 0.54, torso)
    tex, tex_colour = TEXTURES[ident.texture], CLOTHES[ident.texture_colour]
    if tex == "hstripes":
        for y in np.arange(0.21, 0.52, 0.08):
            rect(0.28, y, 0.72, y + 0.035, tex_colour)
    elif tex == "vstripes":
        for x in np.arange(0.31, 0.7, 0.1):
            rect(x, 0.18, x + 0.045, 0.54, tex_colour)
    elif tex == "checks":
        for i, y in enumerate(np.arange(0.18, 0.54, 0.09)):
            for j, x in enumerate(np.arange(0.28, 0.72, 0.11)):
                if (i + j) % 2:
                    rect(x, y, x + 0.11, y + 0.09, tex_colour)
    # head (0.03-0.18): face, hair or hat
    ellipse(0.37, 0.04, 0.63, 0.18, skin)
    if ident.hat >= 0:
        rect(0.33, 0.02, 0.67, 0.08, CLOTHES[ident.hat])
    else:
        ellipse(0.36, 0.02, 0.64, 0.09, HAIR[ident.hair])
    # bag on one side, over the hip
    if BAGS[ident.bag] != "none":
        x = 0.06 if BAGS[ident.bag] == "left" else 0.74
        rect(x, 0.36, x + 0.2, 0.6, CLOTHES[ident.bag_colour])


def render_tracklet(ident: Identity | None, camera: Camera, backdrop: np.ndarray, length: int,
                    occluded: bool, size: tuple[int, int], rng: np.random.Generator
                    ) -> list[np.ndarray]:
    """``length`` frames (H, W, 3) uint8 of one identity walking past one camera. ``ident`` None
    gives a junk tracklet: background and occluders only."""
    H, W = size
    oy, ox = int(rng.integers(H)), int(rng.integers(W))  # this tracklet's crop of the backdrop
    phase0, speed = rng.uniform(0, 2 * np.pi), rng.uniform(0.4, 1.0)
    occluder = CLOTHES[int(rng.integers(len(CLOTHES)))]
    frames = []
    for n in range(length):
        canvas = Image.fromarray(backdrop[oy:oy + H, ox:ox + W].copy())
        draw = ImageDraw.Draw(canvas)
        if ident is not None:
            scale = camera.scale * rng.uniform(0.9, 1.05)
            h, w = scale * H, scale * H * 0.42
            left = (W - w) / 2 + rng.uniform(-0.12, 0.12) * W
            top = (H - h) * rng.uniform(0.2, 0.8)
            draw_person(draw, ident, (left, top, w, h), phase0 + speed * n, camera.mirror)
        if occluded and rng.random() < 0.7:
            # a band hiding the head, torso, or legs: a different part in different frames
            y0 = rng.uniform(0.0, 0.7) * H
            band = rng.uniform(0.25, 0.45) * H
            x0 = rng.uniform(-0.3, 0.3) * W
            draw.rectangle([x0, y0, x0 + W, y0 + band], fill=tuple(int(v) for v in occluder))
        frames.append(np.asarray(canvas))
    stack = np.stack(frames).astype(np.float32)  # (F, H, W, 3)
    stack *= camera.gain * np.asarray(camera.cast, dtype=np.float32)
    stack += rng.normal(0.0, camera.noise, size=stack.shape).astype(np.float32)
    return list(np.clip(stack, 0, 255).astype(np.uint8))


# --- the dataset ----------------------------------------------------------------------------------


def generator_version() -> str:
    """A hash of this module's source: a set on disk made by other code is stale."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def generate(cfg: SyntheticParams, root: str | Path) -> Path:
    """Write the dataset under ``root`` (replaced whole, atomically) and return ``root``."""
    root = Path(root)
    with atomic_dir(root) as tmp:
        _write(cfg, tmp)
    return root


def _write(cfg: SyntheticParams, out: Path) -> None:
    rng = np.random.default_rng(cfg.seed)
    size = (cfg.height, cfg.width)
    total = cfg.train_identities + cfg.test_identities + cfg.image_identities
    identities = make_identities(total + cfg.distractor_tracklets, cfg.sibling_rate, rng)
    # shuffle so that siblings land in every split, then cut: train | test | images | distractors
    order = rng.permutation(len(identities))
    identities = [identities[i] for i in order]
    cameras = make_cameras(cfg.cameras, rng)
    backdrops = [background(c, *size) for c in cameras]
    video = out / "video"
    train_ids = range(1, cfg.train_identities + 1)
    test_ids = range(cfg.train_identities + 1, cfg.train_identities + cfg.test_identities + 1)
    manifest = {"params": dataclasses.asdict(cfg), "generator": generator_version(),
                "cameras": [dataclasses.asdict(c) for c in cameras], "identities": {}}

    for subset, pids in (("train", train_ids), ("test", test_ids)):
        names, tracks, queries = [], [], []
        tracklet_no = 0
        for pid in pids:
            ident = identities[pid - 1]
            manifest["identities"][pid] = {"subset": subset, **dataclasses.asdict(ident)}
            query_cam = int(rng.integers(cfg.cameras)) + 1
            for cam in range(1, cfg.cameras + 1):
                for t in range(int(rng.integers(1, cfg.tracklets_per_camera + 1))):
                    tracklet_no += 1
                    if subset == "test" and cam == query_cam and t == 0:
                        queries.append(len(tracks) + 1)
                    tracks.append(_write_tracklet(video / f"bbox_{subset}", pid, cam, tracklet_no,
                                                  ident, cameras, backdrops, cfg, rng, names))
        if subset == "test":
            extras = [(0, identities[total + i]) for i in range(cfg.distractor_tracklets)]
            extras += [(-1, None)] * cfg.junk_tracklets
            for pid, ident in extras:
                tracklet_no += 1
                cam = int(rng.integers(cfg.cameras)) + 1
                tracks.append(_write_tracklet(video / "bbox_test", pid, cam, tracklet_no, ident,
                                              cameras, backdrops, cfg, rng, names))
        info = video / "info"
        info.mkdir(parents=True, exist_ok=True)
        (info / f"{subset}_name.txt").write_text("".join(n + "\n" for n in names))
        _savemat(info / f"tracks_{subset}_info.mat",
                 {f"track_{subset}_info": np.asarray(tracks, dtype=np.float64)})
        if subset == "test":
            _savemat(info / "query_IDX.mat",
                     {"query_IDX": np.asarray(queries, dtype=np.float64)[None, :]})

    images = out / "images" / "bounding_box_train"
    images.mkdir(parents=True)
    first = cfg.train_identities + cfg.test_identities
    index = 0
    for pid in range(1, cfg.image_identities + 1):
        ident = identities[first + pid - 1]
        manifest["identities"][f"image-{pid}"] = {"subset": "images", **dataclasses.asdict(ident)}
        for _ in range(cfg.images_per_identity):
            cam = int(rng.integers(cfg.cameras))
            occluded = rng.random() < cfg.occlusion_rate
            (frame,) = render_tracklet(ident, cameras[cam], backdrops[cam], 1, occluded,
                                       (cfg.height, cfg.width), rng)
            index += 1
            _save_jpeg(frame, images / f"{pid:04d}_c{cam + 1}s1_{index:06d}_00.jpg")
    (out / "identities.json").write_text(json.dumps(manifest, indent=1))


def _write_tracklet(folder: Path, pid: int, cam: int, tracklet_no: int, ident: Identity | None,
                    cameras: list[Camera], backdrops: list[np.ndarray], cfg: SyntheticParams,
                    rng: np.random.Generator, names: list[str]) -> list[int]:
    """Render and save one tracklet; append its frame names; return its MARS track row
    [start, end, pid, camid] (1-based, inclusive)."""
    length = int(rng.integers(cfg.min_length, cfg.max_length + 1))
    occluded = rng.random() < cfg.occlusion_rate
    frames = render_tracklet(ident, cameras[cam - 1], backdrops[cam - 1], length, occluded,
                             (cfg.height, cfg.width), rng)
    pid_dir = folder / ("00-1" if pid == -1 else f"{pid:04d}")
    pid_dir.mkdir(parents=True, exist_ok=True)
    start = len(names) + 1
    for n, frame in enumerate(frames, start=1):
        name = f"{pid_dir.name}C{cam}T{tracklet_no:04d}F{n:03d}.jpg"
        _save_jpeg(frame, pid_dir / name)
        names.append(name)
    return [start, len(names), pid, cam]


def _savemat(path: Path, content: dict) -> None:
    """``scipy.io.savemat`` with a fixed header: scipy stamps the creation time into the first 116
    bytes, which would make two generations with the same seed differ."""
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, content)
    header = b"MATLAB 5.0 MAT-file, written by pipeline.datasets.synthetic".ljust(116)
    path.write_bytes(header + buffer.getvalue()[116:])


def _save_jpeg(frame: np.ndarray, path: Path) -> None:
    Image.fromarray(frame).save(path, format="JPEG", quality=92)
