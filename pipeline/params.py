"""Typed, validated parameters, loaded from ``params.yaml``.

Every knob of the project exists once: a field of one of the frozen dataclasses below, with its
default (the paper's value where the paper gives one) and a one-line comment. ``load_params``
reads the YAML file, applies command-line style overrides, and checks every value: an unknown or
duplicated key, a value of the wrong type, an infinite number, a value outside its range, a list
that repeats an item, or a combination of keys that cannot work (K heads on fewer grid cells, more
identities per batch than a set has) raises ``ParamsError`` naming the dotted key (``model.K``) and
what was expected. Nothing is coerced silently, except an int where a float is expected.

Range rules live in each field's ``metadata`` (``choices``, ``ge``, ``gt``, ``lt``, ``le``,
``nonempty``, ``unique``) so that the rule sits next to the field it guards; rules across keys
live in the ``__post_init__`` of the section that holds them all.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ParamsError

# Names accepted by the choice-valued keys. The dataset modules register exactly these names.
BACKBONES = ("resnet18", "resnet34", "resnet50", "mobilenet_v2")
BACKBONE_INITS = ("imagenet", "scratch")  # ... or the path of a checkpoint file
ENHANCEMENTS = ("identity", "second_order")
TEMPORAL_POOLINGS = ("attention", "avg", "max")
DIVERSITY_KINDS = ("hellinger", "sparse", "none")
DIVERSITY_SCALES = ("sum", "pairs", "authors")
SCORE_INITS = ("uniform", "zero")
PART_EMBEDDINGS = ("concat", "per_part")
SCORERS = ("paper", "authors")
MAPS = ("learned", "uniform", "average")
# model.grid_block: the blocks of each backbone whose output grid the heads may read, in order
# (torchvision's submodule names; MobileNetV2's features.0 is its stem convolution)
RESNET_BLOCKS = ("layer1", "layer2", "layer3", "layer4")
GRID_BLOCKS = {"resnet18": RESNET_BLOCKS, "resnet34": RESNET_BLOCKS, "resnet50": RESNET_BLOCKS,
               "mobilenet_v2": tuple(f"features.{i}" for i in range(1, 19))}
LOSSES = ("oim", "softmax")
PROTOCOLS = ("official", "torchreid")
# video sets and how many standard train/test splits each has
VIDEO_SPLITS = {"synthetic": 1, "synthetic2": 1, "mars": 1, "ilidsvid": 10, "prid2011": 10,
                "dukev": 1}
VIDEO_DATASETS = tuple(VIDEO_SPLITS)
# the generated video sets, each made from the params section of its own name: synthetic (MARS-like,
# the default run's) and synthetic2 (PRID-like: two cameras, the query camera's tracklets ranked
# against the other camera's); only synthetic also makes images (the image set "synthetic")
SYNTHETIC_SETS = ("synthetic", "synthetic2")
# schedule: each video set fine-tuned on its own from the start (per_set), or the paper's (§4.2,
# §4.3): the CNN and the heads trained once on the union of the sets, +Ind per set (across_sets)
SCHEDULES = ("per_set", "across_sets")
UNION_SAMPLING = ("set", "identity")  # data.union_sampling (pipeline.sampling.BALANCES)
# training identities of each real video set's standard split (MARS 625; iLIDS-VID 300 and
# PRID2011 178 people halved; DukeMTMC-VideoReID 702): a batch cannot hold more
VIDEO_TRAIN_IDENTITIES = {"mars": 625, "ilidsvid": 150, "prid2011": 89, "dukev": 702}
DEVICES = ("auto", "cpu", "cuda")
# runtime.launcher: python, or torchrun with --key[=value] options made of letters, digits and
# _.:/$- (a $VARIABLE, a host:port). pipeline/launch.py turns it into an argument list (never a
# shell command); the pattern keeps it to what torchrun understands.
LAUNCHER = re.compile(r"python|torchrun( --[a-z][a-z0-9_-]*(=[A-Za-z0-9_.:/$-]+)?)*")
IMAGE_DATASETS = (
    "synthetic", "market1501", "dukemtmcreid", "cuhk03", "cuhk01", "viper", "cuhksysu", "3dpes",
)


# --- field helpers: the validation rule sits in the field's metadata -----------------------------


def choice(default: str, options: tuple[str, ...]) -> Any:
    """A string field restricted to ``options``."""
    return field(default=default, metadata={"choices": options})


def choices(default: list[str], options: tuple[str, ...], nonempty: bool = True) -> Any:
    """A list field of distinct items restricted to ``options`` (non-empty unless told)."""
    return field(default_factory=lambda: list(default),
                 metadata={"choices": options, "nonempty": nonempty, "unique": True})


def at_least(default: int | float, lower: int | float) -> Any:
    """A number field with ``value >= lower``."""
    return field(default=default, metadata={"ge": lower})


# The largest seed every RNG the stages seed takes (torch.manual_seed: 64 bits, unsigned; python's
# and numpy's generators take any non-negative integer).
MAX_SEED = 2**64 - 1


def identities(default: int, why: str, most: int | None = 4000) -> Any:
    """A count of synthetic identities, at least 2 (``why`` says what fewer break) and at most
    ``most`` (None: no limit)."""
    return field(default=default, metadata={"ge": 2, "why_min": why,
                                            **({} if most is None else {"le": most})})


def seed_field() -> Any:
    """A seed: an integer in [0, MAX_SEED]."""
    return field(default=0, metadata={"ge": 0, "le": MAX_SEED})


def positive(default: float) -> Any:
    """A number field with ``value > 0``."""
    return field(default=default, metadata={"gt": 0})


def unit_interval(default: float) -> Any:
    """A number field in the half-open interval [0, 1)."""
    return field(default=default, metadata={"ge": 0, "lt": 1})


def section(factory: Any) -> Any:
    """A nested section built by ``factory`` when absent from the file."""
    return field(default_factory=factory)


# --- the sections --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataParams:
    video: list[str] = choices(["synthetic"], VIDEO_DATASETS)  # video sets, one branch each
    # image sets pooled for pretraining; none: pretraining is skipped and the backbone starts the
    # video stages as model.init made it (e.g. ImageNet weights)
    image: list[str] = choices(["synthetic"], IMAGE_DATASETS, nonempty=False)
    # split ids of the video sets; each (set, split) is a branch of its own
    splits: list[int] = field(default_factory=lambda: [0],
                              metadata={"ge": 0, "nonempty": True, "unique": True})
    height: int = at_least(256, 16)  # input height in pixels (paper: 256)
    width: int = at_least(128, 16)  # input width in pixels (paper: 128)
    augment: bool = True  # pretrain/finetune clips: random flip (whole clip) and small shifts
    num_workers: int = at_least(2, 0)  # DataLoader worker processes (0: load in the main process)
    # frames (and images) that are missing, empty or not an image when the index is built: fail
    # (stop, naming them) or skip (leave them out with a warning; counted in datasets.json)
    bad_frames: str = choice("fail", ("fail", "skip"))
    # schedule across_sets: what a batch of the union of the sets keeps equally likely, each set
    # (every batch gives each set an equal share of its identities) or each identity (a set's
    # share of a batch is its share of the union's identities: MARS 625 beside PRID2011's 89);
    # docs/method.md, "Schedules", argues the default
    union_sampling: str = choice("set", UNION_SAMPLING)

    def __post_init__(self) -> None:
        top = max(self.splits)
        for name in self.video:
            if top < VIDEO_SPLITS[name] or one_split_joins(name, self.video, self.splits):
                continue
            raise ParamsError(
                f"data.splits: {name} has {VIDEO_SPLITS[name]} split(s), so split ids must be "
                f"< {VIDEO_SPLITS[name]}, got {self.splits} (run sets with 10 splits, "
                "prid2011 and ilidsvid, in an experiment of their own, or beside a set of one "
                "split under schedule across_sets)")


def one_split_joins(name: str, video: Sequence[str], splits: Sequence[int]) -> bool:
    """Whether set ``name`` has one standard split (MARS, the generated sets) and ``splits``
    reach beyond it only as far as another set of ``video`` has splits: the paper's schedule
    trains on PRID2011's and iLIDS-VID's split k with MARS's one split beside them, so that set
    takes part in every split index (the index stage writes its one split as each of them)."""
    top = max(splits)
    return VIDEO_SPLITS[name] == 1 <= top and any(top < VIDEO_SPLITS[other] for other in video)


# Why a synthetic set needs 2 training identities: the identity losses classify them.
_ONE_CLASS = ("OIM and the softmax classify the training identities: on one, the loss is 0 and "
              "{stages} learns nothing")


@dataclass(frozen=True)
class SyntheticParams:
    seed: int = seed_field()  # the generator's own seed (the training seed does not change data)
    # video train ids (OIM and softmax learn by telling at least 2 apart)
    train_identities: int = identities(64, _ONE_CLASS.format(stages="every video stage"))
    # video test ids; with query_cameras 2, 900 official queries: a standard error of rank-1 of
    # at most 2 points from the sampling of the test identities alone (bootstrap, rank-1 near 0.5)
    test_identities: int = identities(450, (
        "the 95 percent intervals resample the query identities: with one, every resample is the "
        "same and the interval has width 0, so no difference between two rows can be read"))
    # further ids, single images, for pretraining (at least 2, as train_identities)
    image_identities: int = identities(128, _ONE_CLASS.format(stages="pretraining"), most=None)
    images_per_identity: int = at_least(6, 1)  # images of each pretraining identity
    # cameras, each with its own light, colour cast, clutter, noise and viewpoint; every identity
    # walks past every camera
    cameras: int = field(default=3, metadata={"ge": 2, "le": 9})
    tracklets_per_camera: int = at_least(1, 1)  # 1 to this many tracklets per id and camera
    # test identities have a query tracklet in this many of their cameras (chosen per identity;
    # MARS has one query per identity and camera); the other cameras hold gallery tracklets only,
    # so that every query has a true match outside the queries (the torchreid protocol's gallery)
    query_cameras: int = at_least(2, 1)
    min_length: int = at_least(3, 1)  # shortest tracklet, in frames
    # longest, in frames (the test frames are what the cache and evaluate stages pay for)
    max_length: int = field(default=24, metadata={"ge": 1, "le": 999})
    # share of the tracklets in which an occluder hides a band of the body, a different band in
    # different frames
    occlusion_rate: float = field(default=0.5, metadata={"ge": 0, "le": 1})
    # share of the identities that copy another identity with exactly one part changed (hair,
    # torso, texture, legs, shoes or bag), so that only a detector of that part tells them apart
    sibling_rate: float = field(default=0.5, metadata={"ge": 0, "le": 1})
    distractor_tracklets: int = at_least(8, 0)  # pid 0 tracklets of unrelated people (test set)
    junk_tracklets: int = at_least(8, 0)  # pid -1 tracklets without a person (test set)
    height: int = at_least(128, 32)  # rendered frame height in pixels
    width: int = at_least(64, 16)  # rendered frame width in pixels

    def __post_init__(self) -> None:
        if self.min_length > self.max_length:
            raise ParamsError(f"synthetic.min_length: expected a value <= synthetic.max_length "
                              f"({self.max_length}), got {self.min_length}")
        if self.query_cameras >= self.cameras:
            raise ParamsError(f"synthetic.query_cameras: expected fewer than synthetic.cameras "
                              f"({self.cameras}), so that a camera holds gallery tracklets only, "
                              f"got {self.query_cameras}")


@dataclass(frozen=True)
class ModelParams:
    backbone: str = choice("resnet50", BACKBONES)  # CNN to its last block (paper: ResNet-50)
    init: str = "imagenet"  # backbone start: imagenet, scratch, or a checkpoint path
    # stride of the backbone's last stride-2 block (ResNet's layer4, MobileNetV2's block 14): 2 as
    # in the ImageNet network (8 x 4 cells at 256 x 128), 1 keeps twice the cells in each
    # direction (8 x 4 at 128 x 64)
    last_stride: int = field(default=2, metadata={"choices": (1, 2)})
    N: int = at_least(6, 1)  # frames per clip = restricted-random-sampling chunks (paper §3.1)
    K: int = at_least(6, 1)  # spatial attention heads (paper: 6)
    d: int = at_least(256, 1)  # hidden width of each spatial attention head, eq. 1 (paper: 256)
    embed_dim: int = at_least(128, 1)  # size of the final L2-normalised embedding (paper: 128)
    enhancement: str = choice("second_order", ENHANCEMENTS)  # E of eq. 4 (model.Enhancement)
    temporal_pooling: str = choice("attention", TEMPORAL_POOLINGS)  # eq. 11-13, or avg / max
    # start of each head's scoring vector w'_k (eq. 1; not in the paper): uniform in
    # +-1/sqrt(d), nn.Linear's default, or zero, every map uniform over the cells at the start
    score_init: str = choice("uniform", SCORE_INITS)
    # how the heads score the cells: paper (eq. 1: each head its own two-layer scorer, W_k of
    # d x D) or authors (their released multiple_spatial_attention.py: one hidden layer of d units
    # shared by the heads, without biases, BatchNorm on the hidden units and on the K scores;
    # they use d = 64)
    scorer: str = choice("paper", SCORERS)
    # the heads' spatial maps: learned (eq. 1-3); uniform over the cells and never trained, the
    # control a claim of the learned maps is read against (same grid, same embedding and width);
    # or average, the width control: no parts, the grid averaged over cells and frames, one FC
    # (+ BatchNorm) to the heads' output width (embed_dim, K x embed_dim for per_part), L2
    maps: str = choice("learned", MAPS)
    # how the K part features become the video's embedding: concat (eq. 15 and §3 as the paper
    # words them: the K x D part features concatenated, one FC to embed_dim) or per_part (the
    # authors' released module: one FC + BatchNorm shared by the K parts, per frame and part, each
    # part L2-normalised, temporal pooling on the embedded parts, the K parts side by side:
    # K x embed_dim)
    part_embedding: str = choice("concat", PART_EMBEDDINGS)
    # the backbone block whose output grid the heads read and the cache stores (torchvision's
    # submodule name: ResNet layer1..layer4, MobileNetV2 features.1..features.18); last: the
    # backbone's last block (ResNet-50 layer4 = res5c, the paper's grid; MobileNetV2 features.18)
    grid_block: str = "last"

    @property
    def embedding_size(self) -> int:
        """The size of the video's embedding the heads give: E, or K x E for per_part."""
        return self.K * self.embed_dim if self.part_embedding == "per_part" else self.embed_dim

    def __post_init__(self) -> None:
        # a word that is neither keyword is a typo (imagnet); a path has a folder or a suffix
        if self.init not in BACKBONE_INITS and not ("/" in self.init or Path(self.init).suffix):
            raise ParamsError(f"model.init: expected {' or '.join(BACKBONE_INITS)}, or the path "
                              f"of a checkpoint file (e.g. weights/resnet50.pth), got "
                              f"{self.init!r}")
        canonical_grid_block(self.backbone, self.grid_block)  # a name of the backbone's blocks


@dataclass(frozen=True)
class LossParams:
    kind: str = choice("oim", LOSSES)  # identity loss: OIM (paper §3.5) or a softmax classifier
    oim_scalar: float = positive(10.0)  # OIM inverse temperature (10 original; 100 gives NaNs)
    oim_momentum: float = unit_interval(0.5)  # OIM lookup-table momentum m
    diversity: str = choice("hellinger", DIVERSITY_KINDS)  # Q (eq. 9), Q' = sparse (eq. 10), none
    diversity_weight: float = at_least(1.0, 0.0)  # coefficient of the diversity term in the loss
    # what the coefficient multiplies (the paper: "Q will be multiplied by a coefficient"): the
    # norm of eq. 9 / 10 as written, a sum over the K x K entries (sum), or that sum over the
    # K(K-1) ordered pairs of heads (pairs), so the term's size does not grow with K; or
    # authors: their released trainer's sqrt(1e-5 + the sum over the batch of the squared
    # norms), which they weigh 1
    diversity_scale: str = choice("sum", DIVERSITY_SCALES)
    # the coefficient grows linearly from 0 in the first epoch to its value in this epoch of each
    # training phase (epoch e, counted from 0, uses weight x min(1, e / n)); 0: from the start.
    # Not in the paper: lets the identity loss shape the maps before the regulariser separates them
    diversity_warmup_epochs: int = at_least(0, 0)


@dataclass(frozen=True)
class TrainParams:
    epochs: int = at_least(20, 1)  # passes over the training identities
    identities_per_batch: int = at_least(8, 1)  # P: identities per global batch
    instances_per_identity: int = at_least(4, 1)  # M: tracklets (or images) per identity in a batch
    lr: float = positive(0.1)  # SGD learning rate before the step (paper: 0.1)
    lr_step_epoch: int = at_least(15, 0)  # epoch at which lr is multiplied by lr_gamma
    lr_gamma: float = field(default=0.1, metadata={"gt": 0, "le": 1})  # 0.1 -> 0.01 (paper)
    momentum: float = unit_interval(0.9)  # SGD momentum
    weight_decay: float = at_least(5.0e-4, 0.0)  # SGD L2 weight decay


@dataclass(frozen=True)
class AttentionParams:
    # Phase 1, CNN fixed: spatial heads with average temporal pooling (paper: SpaAtn+Q).
    spatial: TrainParams = section(lambda: TrainParams(epochs=20, lr_step_epoch=15))
    # Phase 2, CNN fixed: all heads jointly with temporal attention (paper: SpaAtn+Q+TemAtn).
    temporal: TrainParams = section(lambda: TrainParams(epochs=20, lr_step_epoch=15))
    # added to ``seed`` for the heads' training, in the attention and joint stages only
    # (Params.heads_seed): another value re-trains the heads on the same cached CNN features, so
    # that repeated runs (Table 1's seeds) need no CNN stage again
    seed: int = seed_field()


@dataclass(frozen=True)
class CacheParams:
    max_frames_per_tracklet: int = at_least(0, 0)  # 0: every frame; else evenly spaced cap
    batch_size: int = at_least(64, 1)  # frames per backbone forward pass


@dataclass(frozen=True)
class EvaluateParams:
    # ranking protocols scored beside official, which is always scored: the headline's
    # (metrics/results; docs/protocols.md)
    protocols: list[str] = choices(["official", "torchreid"], PROTOCOLS)
    max_rank: int = at_least(20, 1)  # length of the CMC curve
    batch_size: int = at_least(32, 1)  # tracklets per forward pass at test time
    attention_figures: int = at_least(3, 0)  # query tracklets drawn with their attention maps


@dataclass(frozen=True)
class RuntimeParams:
    device: str = choice("auto", DEVICES)  # auto: CUDA when available, else CPU
    amp: bool = True  # bf16 autocast for the backbone on CUDA (losses and softmaxes stay fp32)
    # How dvc.yaml starts the stages that run models (pretrain, union_cnn, finetune, cache,
    # baseline, union_heads, attention, joint, evaluate): "python", or "torchrun
    # --nproc_per_node=$NPROC" (and torchrun's other --options) for one process per GPU; $NPROC
    # is read from the shell's environment when DVC runs it.
    launcher: str = "python"
    # torch.compile the models the stages train and the backbone of cache and evaluate (a first
    # step slower by the compilation, then faster; needs a C++ compiler on CPU)
    compile: bool = False
    # under torchrun on CUDA: BatchNorm statistics of the global batch (SyncBatchNorm) instead of
    # each rank's share, so that training on G GPUs normalises like one process
    sync_bn: bool = False

    def __post_init__(self) -> None:
        if not LAUNCHER.fullmatch(self.launcher):
            raise ParamsError(
                f"runtime.launcher: expected 'python' or 'torchrun' followed by torchrun's "
                f"--options (e.g. 'torchrun --nproc_per_node=$NPROC'), got {self.launcher!r}")


@dataclass(frozen=True)
class Params:
    seed: int = seed_field()  # seeds every RNG (python, numpy, torch, samplers)
    # across_sets (the paper's): the CNN (finetune) and the heads (attention) trained once per
    # split on the union of data.video's sets, +Ind (joint) per set from them (with one set, the
    # models of per_set); per_set: every video set's CNN and heads trained on that set alone, +Ind
    # a second pass on it (docs/method.md, "Schedules")
    schedule: str = choice("across_sets", SCHEDULES)
    data: DataParams = section(DataParams)
    synthetic: SyntheticParams = section(SyntheticParams)
    # The second generated video set (data.video: [synthetic, synthetic2] for two sets): other
    # people (its own seed), two cameras, one query camera per identity, no image part.
    synthetic2: SyntheticParams = section(lambda: SyntheticParams(
        seed=1, train_identities=64, test_identities=200, image_identities=2,
        images_per_identity=1, cameras=2, query_cameras=1))
    model: ModelParams = section(ModelParams)
    loss: LossParams = section(LossParams)
    # Backbone on the pooled image sets, N = 1 frame per sample.
    pretrain: TrainParams = section(lambda: TrainParams(epochs=40, lr_step_epoch=30))
    # Backbone on each video set's training tracklets; also the paper's Baseline.
    finetune: TrainParams = section(lambda: TrainParams(epochs=20, lr_step_epoch=15))
    cache: CacheParams = section(CacheParams)
    attention: AttentionParams = section(AttentionParams)
    # Whole network, CNN included, end to end per dataset (paper: "Ind").
    joint: TrainParams = section(lambda: TrainParams(epochs=10, lr_step_epoch=7))
    evaluate: EvaluateParams = section(EvaluateParams)
    runtime: RuntimeParams = section(RuntimeParams)

    def __post_init__(self) -> None:
        if self.heads_seed > MAX_SEED:
            raise ParamsError(
                f"seed + attention.seed: {self.seed} + {self.attention.seed} = {self.heads_seed} "
                f"seeds the attention and joint stages, beyond what torch.manual_seed takes: "
                f"expected a sum <= {MAX_SEED} (2**64 - 1)")
        m = self.model
        h, w = grid_size(self.data.height, self.data.width, m.last_stride, m.backbone,
                         m.grid_block)
        if h * w < m.K:
            grid = "res5c" if m.grid_block == "last" else f"{m.backbone} {m.grid_block}"
            raise ParamsError(
                f"model.K: {m.K} spatial attention heads on a {grid} grid of {h} x {w} = "
                f"{h * w} cells (data.height x data.width = {self.data.height} x "
                f"{self.data.width}, model.last_stride {m.last_stride}, model.grid_block "
                f"{m.grid_block}): expected K <= {h * w}")
        joined = [name for name in self.data.video
                  if one_split_joins(name, self.data.video, self.data.splits)]
        if joined and self.schedule != "across_sets":
            raise ParamsError(
                f"data.splits: {', '.join(joined)} {'has' if len(joined) == 1 else 'have'} one "
                f"split, which joins split ids > 0 "
                f"(here {self.data.splits}) only under schedule across_sets (its training "
                f"tracklets in the union of every split index); under {self.schedule} it would "
                "train the same model at every index: run it in an experiment of its own "
                "(data.splits=[0])")
        for dataset in self.data.video:
            available = (self.generated(dataset).train_identities if dataset in SYNTHETIC_SETS
                         else VIDEO_TRAIN_IDENTITIES[dataset])
            for key, cfg in self.video_stages().items():
                _check_batch(key, cfg, available, f"{dataset}'s training identities")
        if self.data.image == ["synthetic"]:
            _check_batch("pretrain", self.pretrain, self.synthetic.image_identities,
                         "synthetic.image_identities")

    def generated(self, name: str) -> SyntheticParams:
        """The params of generated set ``name`` (one of ``SYNTHETIC_SETS``): its own section."""
        return getattr(self, name)

    @property
    def heads_seed(self) -> int:
        """The seed of the attention and joint stages: ``seed + attention.seed``."""
        return self.seed + self.attention.seed

    def video_stages(self) -> dict[str, TrainParams]:
        """The training sections of the stages that train on a video set, by params key."""
        return {"finetune": self.finetune, "attention.spatial": self.attention.spatial,
                "attention.temporal": self.attention.temporal, "joint": self.joint}


def _check_batch(key: str, cfg: TrainParams, available: int, what: str) -> None:
    if cfg.identities_per_batch > available:
        raise ParamsError(f"{key}.identities_per_batch: {cfg.identities_per_batch} identities per "
                          f"batch, but {what} are {available}: expected at most {available}")


def grid_size(height: int, width: int, last_stride: int = 2, backbone: str = "resnet50",
              grid_block: str = "last") -> tuple[int, int]:
    """The (h, w) grid that ``backbone`` gives at ``grid_block`` (``last``: res5c of a ResNet)
    for an input of ``height`` x ``width`` pixels: each stride-2 layer up to it halves a side,
    rounding up (3 x 3 kernels with padding 1, ResNet's 7 x 7 with padding 3)."""
    blocks = GRID_BLOCKS[backbone]
    kept = blocks[:blocks.index(blocks[-1] if grid_block == "last" else grid_block) + 1]
    if backbone == "mobilenet_v2":  # features.0 (the stem), then blocks 2, 4, 7 and 14
        halvings = 1 + sum(f"features.{i}" in kept for i in (2, 4, 7))
        halvings += "features.14" in kept and last_stride == 2
    else:  # conv1 and maxpool, then layer2, layer3 and layer4 (its first block)
        halvings = 2 + ("layer2" in kept) + ("layer3" in kept)
        halvings += "layer4" in kept and last_stride == 2

    def down(size: int) -> int:
        for _ in range(halvings):
            size = (size + 1) // 2
        return size
    return down(height), down(width)


def canonical_grid_block(backbone: str, grid_block: str, where: str = "") -> str:
    """``grid_block`` as caches and exported models record it: ``last`` also for the name of
    ``backbone``'s last block (features.18 and last are the same grid). A name that is not one
    of ``backbone``'s blocks is a ParamsError naming model.grid_block (``where``: whose backbone,
    for the message)."""
    blocks = GRID_BLOCKS.get(backbone, ())
    if grid_block != "last" and grid_block not in blocks:
        raise ParamsError(f"model.grid_block: expected last or a block of {backbone}{where}: "
                          f"{', '.join(blocks)}; got {grid_block!r}")
    return "last" if blocks and grid_block == blocks[-1] else grid_block


def run_name(dataset: str, split: int | str) -> str:
    """The name of one (video set, split) branch of the pipeline, as dvc.yaml's matrix stages name
    their outputs (``${item.dataset}-${item.split}``): ``<set>-<split>``."""
    return f"{dataset}-{split}"


# --- loading and checking ------------------------------------------------------------------------


def load_params(
    path: str | Path = "params.yaml",
    overrides: Mapping[str, Any] | Iterable[str] | None = None,
) -> Params:
    """Read, override and validate the params file.

    Args:
        path: YAML file; every section is optional, missing keys take their defaults.
        overrides: dotted keys to replace, either a mapping (``{"model.K": 8}``) or
            ``"key=value"`` strings whose values are parsed as YAML (``["model.K=8"]``).

    Returns:
        The validated, frozen ``Params``.

    Raises:
        ParamsError: naming the file or the dotted key and what was expected.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    return parse_params(text, str(path), overrides)


def parse_params(text: str, origin: str,
                 overrides: Mapping[str, Any] | Iterable[str] | None = None) -> Params:
    """``load_params`` of a params file's text, e.g. ``git show <rev>:params.yaml``: ``origin``
    names it in the errors (a path, or ``<rev>:params.yaml``)."""
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader) or {}  # a SafeLoader
    except yaml.YAMLError as err:
        raise ParamsError(f"{origin}: not valid YAML: {_yaml_problem(err)}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{origin}: expected a mapping of sections, got {type(raw).__name__}")
    for key, value in _parse_overrides(overrides).items():
        _set_dotted(raw, key, value)
    try:
        return from_dict(Params, raw)
    except ParamsError as err:
        raise ParamsError(f"{origin}: {err}") from None


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error in one line: where (line, column) and what."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(str(problem).split())


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key repeated in one mapping is an error (YAML itself
    keeps the last value silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (YAML would keep the last value only)",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def from_dict(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """Build and validate dataclass ``cls`` from a plain mapping (a params section or the config a
    checkpoint stored). ``prefix`` is the dotted path of ``data``, used in error messages."""
    if not isinstance(data, Mapping):
        raise ParamsError(f"{prefix.rstrip('.') or 'params'}: expected a mapping, "
                          f"got {type(data).__name__} {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ParamsError(f"unknown key {prefix}{unknown[0]!s}; the keys of "
                          f"{prefix.rstrip('.') or 'the top level'} are: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        key = prefix + name
        values[name] = _check(value, hints[name], fields[name].metadata, key)
    return cls(**values)


def to_dict(params: Any) -> dict[str, Any]:
    """Plain nested dict of a params dataclass (for checkpoints and metrics files)."""
    return dataclasses.asdict(params)


def _check(value: Any, tp: Any, rules: Mapping[str, Any], key: str) -> Any:
    """Type-check ``value`` against annotation ``tp`` and the range ``rules`` of its field."""
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, key + ".")
    origin = typing.get_origin(tp)
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"{key}: expected a list, got {_show(value)}")
        if rules.get("nonempty") and not value:
            raise ParamsError(f"{key}: expected a non-empty list")
        repeated = sorted({repr(v) for v in value if value.count(v) > 1})
        if rules.get("unique") and repeated:
            raise ParamsError(f"{key}: expected each item once, got {value} (repeats "
                              f"{', '.join(repeated)})")
        (item_tp,) = typing.get_args(tp)
        return [_check(v, item_tp, rules, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"{key}: union annotations are not supported")  # programming error
    value = _check_scalar(value, tp, key)
    _check_range(value, rules, key)
    return value


def _check_scalar(value: Any, tp: type, key: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ParamsError(f"{key}: expected true or false, got {_show(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ParamsError(f"{key}: expected an integer, got {_show(value)}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ParamsError(f"{key}: expected a finite number, got {value}")
            return float(value)
        hint = ""
        if isinstance(value, str) and _looks_numeric(value) and math.isfinite(float(value)):
            hint = _number_hint(value)
        raise ParamsError(f"{key}: expected a number, got {_show(value)}{hint}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ParamsError(f"{key}: expected a string, got {_show(value)}")
    raise TypeError(f"{key}: unsupported annotation {tp!r}")  # programming error


def _check_range(value: Any, rules: Mapping[str, Any], key: str) -> None:
    if "choices" in rules and value not in rules["choices"]:
        raise ParamsError(f"{key}: unknown value {value!r}; expected one of: "
                          f"{', '.join(map(str, rules['choices']))}")
    bounds = [("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
              ("le", lambda v, b: v <= b, "<="), ("lt", lambda v, b: v < b, "<")]
    for name, ok, _ in bounds:
        if name in rules and not ok(value, rules[name]):
            expected = " and ".join(f"{s} {rules[n]}" for n, _, s in bounds if n in rules)
            # a field whose minimum is not obvious says what a smaller value would break
            why = f" ({rules['why_min']})" if name in ("ge", "gt") and "why_min" in rules else ""
            raise ParamsError(f"{key}: expected a value {expected}, got {value!r}{why}")


def _number_hint(text: str) -> str:
    """Why the number ``text`` reached the params as a string, and how to write it."""
    if isinstance(yaml.safe_load(text), int | float):  # a number to YAML: it was quoted
        return f" (a number in quotes is a string to YAML: write {text} without the quotes)"
    # YAML 1.1 reads a float only with a dot and, with an exponent, its sign: 1.0e-4, 1.0e+5
    mantissa, _, exponent = text.strip().lower().partition("e")
    written = mantissa if "." in mantissa else mantissa + ".0"
    if exponent:
        written += "e" + (exponent if exponent[0] in "+-" else "+" + exponent)
    return (f" (YAML reads a number like {text} as a string: write it as {written})"
            if isinstance(yaml.safe_load(written), float) else "")


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _show(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _parse_overrides(overrides: Mapping[str, Any] | Iterable[str] | None) -> dict[str, Any]:
    if overrides is None:
        return {}
    if isinstance(overrides, Mapping):
        return dict(overrides)
    parsed = {}
    for item in overrides:
        key, sep, text = str(item).partition("=")
        if not sep or not key.strip():
            raise ParamsError(f"override {item!r}: expected KEY=VALUE, like model.K=8")
        parsed[key.strip()] = yaml.safe_load(text)
    return parsed


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set ``raw[a][b][c] = value`` for ``key = "a.b.c"``, creating absent sections."""
    *parents, leaf = key.split(".")
    node = raw
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ParamsError(f"override {key}: {'.'.join(parents[:i + 1])} is not a section")
        node = child
    node[leaf] = value


# --- the paper's setting -------------------------------------------------------------------------

# The image sets the paper pretrains on (§4.2).
PAPER_IMAGE_SETS = ["cuhk01", "cuhk03", "3dpes", "viper", "dukemtmcreid", "cuhksysu"]
# Keys that describe the machine or the synthetic data, not the method: never overridden.
_NOT_METHOD = ("data.video", "data.image", "data.splits", "data.num_workers", "data.bad_frames",
               "synthetic.", "synthetic2.", "runtime.", "cache.", "evaluate.batch_size")


def paper_overrides(current: Params, datasets: str | list[str]) -> list[str]:
    """``key=value`` overrides turning ``current`` into the paper's setting (the dataclass
    defaults: the schedule across sets among them) on the video set(s) ``datasets``, with every
    standard split of the set that has most and the paper's image sets (MARS's one split joins
    every split index of PRID2011 and iLIDS-VID: ``one_split_joins``)."""
    datasets = [datasets] if isinstance(datasets, str) else list(datasets)
    for dataset in datasets:
        if dataset not in VIDEO_SPLITS:
            raise ParamsError(f"unknown video dataset {dataset!r}; expected one of: "
                              f"{', '.join(VIDEO_SPLITS)}")
    splits = max(VIDEO_SPLITS[d] for d in datasets)  # DataParams checks the sets can share them
    paper, mine = flatten(to_dict(Params())), flatten(to_dict(current))
    overrides = [f"{key}={_yaml_value(value)}" for key, value in paper.items()
                 if mine[key] != value and not key.startswith(_NOT_METHOD)]
    return [*overrides, f"data.video={_yaml_value(datasets)}",
            f"data.image={_yaml_value(PAPER_IMAGE_SETS)}",
            f"data.splits={_yaml_value(list(range(splits)))}"]


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """A nested dict as {dotted key: value} (``to_dict(params)`` -> ``{"model.K": 6, ...}``)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def dotted(tree: Any, key: str | Sequence[str], default: Any = None) -> Any:
    """``tree["a"]["b"]`` for the key ``"a.b"`` (or its parts ``("a", "b")``: keys that may hold
    a dot), or ``default`` where a level is absent."""
    for part in key.split(".") if isinstance(key, str) else key:
        if not isinstance(tree, dict) or part not in tree:
            return default
        tree = tree[part]
    return tree


def _yaml_value(value: Any) -> str:
    """A value as YAML flow text that reads back as the same type (floats keep a dot)."""
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        mantissa, e, exponent = text.partition("e")
        return f"{mantissa if '.' in mantissa else mantissa + '.0'}{e}{exponent}"
    return str(value)


# The keys dvc.yaml reads from params.yaml itself (its matrix): the dataclass defaults do not
# reach DVC, so the file must hold them.
DVC_KEYS = ("data.video", "data.splits")
RESTORE = "`git checkout params.yaml` restores the committed file"


def check_dvc_keys(path: str | Path = "params.yaml") -> None:
    """Refuse a params file DVC cannot build dvc.yaml's matrix from: empty, or without one of
    ``DVC_KEYS`` (DVC would fail with "Could not find 'data.video'"); after ``load_params``,
    which names a missing or unreadable file."""
    path = Path(path)
    raw = yaml.safe_load(path.read_text())  # valid YAML: load_params has read it
    if not raw:
        raise ParamsError(f"{path}: empty; dvc.yaml's matrix reads {' and '.join(DVC_KEYS)} from "
                          f"it ({RESTORE})")
    for key in DVC_KEYS:
        section, leaf = key.split(".")
        if not isinstance(raw, dict) or not isinstance(raw.get(section), dict) \
                or leaf not in raw[section]:
            raise ParamsError(f"{path}: {key} missing; dvc.yaml's matrix reads it from this file "
                              f"(the default does not reach DVC): add it, e.g. {key}: "
                              f"{_yaml_value(dotted_default(key))}")


def dotted_default(key: str) -> Any:
    """The default of a dotted params key (``data.splits`` -> [0])."""
    return dotted(to_dict(Params()), key)


def main(argv: list[str] | None = None) -> None:
    """``--check``: check the params file (one line naming the key, exit 1, when it is wrong);
    else print the ``dvc exp run`` options of the paper's setting on ``--dataset``."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="Check the params file, or print the `dvc exp "
                                     "run` options of the paper's setting on its video set(s).")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--check", action="store_true", help="only check the params file")
    parser.add_argument("--dataset", nargs="+", default=["mars"],
                        help="one video set, or several (trained across sets, as the paper)")
    args = parser.parse_args(argv)
    try:
        p = load_params(args.params)
        check_dvc_keys(args.params)
        overrides = None if args.check else paper_overrides(p, args.dataset)
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    if overrides is not None:
        print(" ".join(f"-S '{o}'" for o in overrides))


if __name__ == "__main__":
    main()
