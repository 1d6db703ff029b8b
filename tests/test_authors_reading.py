"""The authors' own reading, offered as params beside the paper's: their released scorer
(``model.scorer: authors``) and their diversity term (``loss.diversity_scale: authors``), each
checked against a direct transcription of their code on a fixed input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from pipeline.losses import AUTHORS_EPS, diversity_penalty
from pipeline.model import DRSA, AuthorsSpatialAttention
from tests.test_model import random_grids, small_cfg


def transcribed_scorer(att: AuthorsSpatialAttention, grids: torch.Tensor, training: bool):
    """Their module on (B', D, H, W) grids, written as they wrote it: a 1 x 1 conv D -> d without
    bias, BatchNorm2d, ReLU, a 1 x 1 conv d -> K without bias, BatchNorm2d on the K scores,
    softmax over the H*W cells, the maps weighting the cells."""
    h = F.conv2d(grids, att.hidden.weight[:, :, None, None])  # (B', d, H, W)
    h = F.relu(F.batch_norm(h, att.hidden_bn.running_mean.clone(),
                            att.hidden_bn.running_var.clone(), att.hidden_bn.weight,
                            att.hidden_bn.bias, training=training))
    e = F.conv2d(h, att.score.weight[:, :, None, None])  # (B', K, H, W)
    e = F.batch_norm(e, att.score_bn.running_mean.clone(), att.score_bn.running_var.clone(),
                     att.score_bn.weight, att.score_bn.bias, training=training)
    s = torch.softmax(e.flatten(2), dim=-1)  # (B', K, L)
    return s @ grids.flatten(2).transpose(1, 2), s  # (B', K, D), (B', K, L)


@pytest.mark.parametrize("training", [True, False])
def test_the_authors_scorer_is_their_module(training):
    torch.manual_seed(0)
    att = AuthorsSpatialAttention(D=16, K=3, d=8).double()
    with torch.no_grad():  # non-trivial statistics and affine parameters
        for bn in (att.hidden_bn, att.score_bn):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
    att.train(training)
    grids = random_grids(B=2, N=3, D=16, H=3, W=2).double().flatten(0, 1)  # (B', D, H, W)
    expected_x, expected_s = transcribed_scorer(att, grids, training)
    x, s = att(grids.flatten(2).transpose(1, 2))  # (B', L, D) cells, row-major
    assert_close(s, expected_s)
    assert_close(x, expected_x)


def test_the_authors_scorer_shares_one_hidden_layer_and_has_no_biases():
    att = AuthorsSpatialAttention(D=16, K=3, d=8)
    assert att.hidden.weight.shape == (8, 16) and att.hidden.bias is None
    assert att.score.weight.shape == (3, 8) and att.score.bias is None
    head = DRSA(small_cfg(scorer="authors", K=3, d=8), in_channels=16)
    assert isinstance(head.spatial, AuthorsSpatialAttention)
    out = head(random_grids(B=2, N=3, D=16, H=3, W=2))
    assert_close(out.spatial.sum(-1), torch.ones(2, 3, 3))


def test_the_authors_diversity_term_is_their_batch_norm():
    """sqrt(1e-5 + sum over the images of the batch of ||sqrt(S) sqrt(S)^T - I||_F^2)."""
    torch.manual_seed(0)
    S = torch.softmax(torch.randn(5, 3, 6, dtype=torch.float64), dim=-1)  # (images, K, L)
    total = 0.0
    for maps in S:  # their loop, image by image
        R = maps.sqrt()
        total = total + ((R @ R.T - torch.eye(3, dtype=S.dtype)) ** 2).sum()
    assert_close(diversity_penalty(S, "hellinger", "authors"), torch.sqrt(AUTHORS_EPS + total))
    # disjoint maps: only the epsilon is left
    disjoint = torch.eye(3, 6, dtype=torch.float64).expand(4, -1, -1)
    assert_close(diversity_penalty(disjoint, "hellinger", "authors"),
                 torch.tensor(AUTHORS_EPS, dtype=torch.float64).sqrt())
