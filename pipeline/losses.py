"""Losses: the diversity regulariser (paper §3.3), OIM (§3.5) and a softmax classifier.

Tensor letters: B batch, K attention heads, L grid cells, E embedding size, C training identities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline import distributed
from pipeline.params import LossParams

# sqrt has an infinite slope at 0, and float32 softmax maps can underflow to exactly 0: clamp first.
_SQRT_EPS = 1e-12


AUTHORS_EPS = 1e-5  # inside the square root of the authors' batch norm (its gradient at 0)


def diversity_penalty(S: Tensor, kind: str, scale: str = "sum") -> Tensor:
    """Mean over images of the receptive-field overlap penalty.

    Args:
        S: (..., K, L) spatial attention maps, each row a distribution over the L cells.
        kind: ``hellinger`` for Q = ||sqrt(S) sqrt(S)^T - I||_F^2 (eq. 9), whose off-diagonal
            entries are the Bhattacharyya coefficients between two maps; ``sparse`` for
            Q' = ||S S^T - I||_F^2 (eq. 10), the text-embedding variant that also pushes each map
            onto a single cell.
        scale: ``sum``: the norm as written, a sum over the K x K entries; ``pairs``: that sum
            over the K(K-1) ordered pairs of heads (over 1 for K = 1); ``authors``: the authors'
            trainer (their released code): ``sqrt(1e-5 + sum over the images of the batch of
            ||R R^T - I||_F^2)``, the unsquared norm over the whole batch.

    Returns:
        A scalar: 0 for disjoint fields, K(K-1) for K identical fields (``hellinger``; 1 with
        ``pairs``).
    """
    if S.dim() < 2:
        raise ValueError(f"diversity_penalty expects maps (..., K, L), got {tuple(S.shape)}")
    if kind == "hellinger":
        R = S.clamp_min(_SQRT_EPS).sqrt()
    elif kind == "sparse":
        R = S
    else:
        raise ValueError(f"unknown diversity kind {kind!r}; expected 'hellinger' or 'sparse' "
                         "(the caller skips the term for 'none')")
    if scale not in ("sum", "pairs", "authors"):
        raise ValueError(f"unknown diversity scale {scale!r}; expected 'sum', 'pairs' or "
                         "'authors'")
    K = S.shape[-2]
    gram = R @ R.transpose(-1, -2)  # (..., K, K)
    eye = torch.eye(K, dtype=S.dtype, device=S.device)
    per_image = (gram - eye).pow(2).sum(dim=(-1, -2))  # (...)
    if scale == "authors":
        return torch.sqrt(AUTHORS_EPS + per_image.sum())
    Q = per_image.mean()
    return Q / max(K * (K - 1), 1) if scale == "pairs" else Q


class OIMLoss(nn.Module):
    """Online Instance Matching loss (Xiao et al., CVPR 2017), the paper's identity loss.

    A lookup table (LUT) holds one L2-normalised feature per training identity. The loss is the
    cross-entropy of ``scalar * x @ LUT^T`` with the LUT as it was before this batch; no gradient
    flows into the LUT. In training mode the rows of the batch's identities are then moved towards
    the batch features, sample by sample in batch order:
    ``LUT[y] <- normalize(m * LUT[y] + (1 - m) * x)``.

    The LUT is a buffer, so it is saved in ``state_dict`` and a resumed run continues with it.
    Under torch.distributed the features and labels of all ranks are gathered (rank order, then
    batch order) before the update, so every rank keeps the same LUT.
    """

    lut: Tensor

    def __init__(self, num_features: int, num_classes: int, scalar: float = 10.0,
                 momentum: float = 0.5) -> None:
        super().__init__()
        if num_features < 1 or num_classes < 1:
            raise ValueError(f"OIMLoss needs num_features, num_classes >= 1, got "
                             f"{num_features}, {num_classes}")
        self.scalar, self.momentum = scalar, momentum
        self.register_buffer("lut", torch.zeros(num_classes, num_features))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Loss of L2-normalised features ``x`` (B, E) with identity labels ``y`` (B,)."""
        _check_labels(y, self.lut.shape[0], x)
        # The matmul saves the LUT for the backward pass and _update then writes it in place:
        # a copy keeps the pre-batch LUT for backward (else autograd raises a version error).
        lut = self.lut.clone() if self.training else self.lut
        # fp32 for the softmax whatever the autocast state (OIM is prone to overflow in half)
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = self.scalar * x.float() @ lut.t()  # (B, C)
            loss = F.cross_entropy(logits, y)
        if self.training:
            self._update(x.detach().float(), y)
        return loss

    @torch.no_grad()
    def _update(self, x: Tensor, y: Tensor) -> None:
        if distributed.world().distributed:  # every rank applies the whole global batch
            x, y = torch.cat(distributed.all_gather_(x)), torch.cat(distributed.all_gather_(y))
        # Exactly the sequential update: the j-th occurrence of every label is updated in round j,
        # so rounds = the largest multiplicity of a label in the batch (M), not B.
        occurrence = _occurrence_index(y)
        for j in range(int(occurrence.max()) + 1 if len(y) else 0):
            pick = occurrence == j
            rows = y[pick]
            mixed = self.momentum * self.lut[rows] + (1.0 - self.momentum) * x[pick]
            self.lut[rows] = F.normalize(mixed, dim=1)


class SoftmaxLoss(nn.Module):
    """Softmax cross-entropy over a linear classifier of the training identities (the paper's
    stated alternative to OIM). Its weights are trained with the network."""

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(num_features, num_classes)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        _check_labels(y, self.classifier.out_features, x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return F.cross_entropy(self.classifier(x.float()), y)


def build_identity_loss(cfg: LossParams, num_features: int, num_classes: int) -> nn.Module:
    """The identity loss named by ``loss.kind``."""
    if cfg.kind == "oim":
        return OIMLoss(num_features, num_classes, cfg.oim_scalar, cfg.oim_momentum)
    if cfg.kind == "softmax":
        return SoftmaxLoss(num_features, num_classes)
    raise ValueError(f"loss.kind: unknown loss {cfg.kind!r}; expected 'oim' or 'softmax'")


def _check_labels(y: Tensor, num_classes: int, x: Tensor) -> None:
    if y.dim() != 1 or x.dim() != 2 or len(y) != len(x):
        raise ValueError(f"expected features (B, E) and labels (B,), got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"identity labels must lie in [0, {num_classes}), got "
                         f"[{int(y.min())}, {int(y.max())}]")


def _occurrence_index(y: Tensor) -> Tensor:
    """For each position i, how many times ``y[i]`` occurred before i."""
    same = y[:, None] == y[None, :]  # (B, B)
    earlier = torch.ones_like(same).tril(diagonal=-1)
    return (same & earlier).sum(dim=1)
