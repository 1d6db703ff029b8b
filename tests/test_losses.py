"""Losses: the diversity penalty (eq. 9-10), OIM (§3.5) and the softmax classifier.

Checked against independent loop implementations, closed forms and the invariants of the paper
(0 for disjoint fields, K(K-1) for identical ones), with gradients in float64.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.testing import assert_close

from pipeline.losses import OIMLoss, SoftmaxLoss, build_identity_loss, diversity_penalty
from pipeline.params import LossParams

KINDS = ("hellinger", "sparse")


def random_maps(shape, seed, dtype=torch.float64, sharpness=1.0):
    """Softmax attention maps over the last dim (strictly positive for moderate sharpness)."""
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(sharpness * torch.randn(shape, generator=g, dtype=dtype), dim=-1)


# --- diversity penalty ---------------------------------------------------------------------------


def diversity_reference(S, kind):
    """Q (eq. 9) or Q' (eq. 10) per image by explicit loops over pairs and cells, then the mean."""
    K, L = S.shape[-2:]
    images = S.reshape(-1, K, L).tolist()
    total = 0.0
    for img in images:
        rows = [[math.sqrt(v) for v in row] for row in img] if kind == "hellinger" else img
        q = 0.0
        for k in range(K):
            for k2 in range(K):
                dot = sum(rows[k][cell] * rows[k2][cell] for cell in range(L))
                q += (dot - (1.0 if k == k2 else 0.0)) ** 2
        total += q
    return total / len(images)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(2, 3, 4, 8), (4, 8), (5, 3, 6), (1, 1, 1, 5)])
@pytest.mark.parametrize("sharpness", [1.0, 4.0])
def test_diversity_matches_loops(kind, shape, sharpness):
    """Equals the per-image Frobenius formula, averaged over all leading dims."""
    S = random_maps(shape, seed=sum(shape), sharpness=sharpness)
    value = diversity_penalty(S, kind)
    assert value.dim() == 0
    assert value.item() == pytest.approx(diversity_reference(S, kind), rel=1e-10, abs=1e-12)


def one_hot_maps(K, L, cells):
    S = torch.zeros(K, L)
    S[torch.arange(K), torch.tensor(cells)] = 1.0
    return S


def test_hellinger_is_zero_for_one_hot_disjoint_fields():
    """Heads on different cells do not overlap: Q = 0 (float32, exact zeros in the maps)."""
    S = one_hot_maps(6, 32, [0, 5, 9, 17, 30, 31])
    assert diversity_penalty(S, "hellinger").item() == pytest.approx(0.0, abs=1e-6)
    assert diversity_penalty(S, "sparse").item() == pytest.approx(0.0, abs=1e-6)


def test_hellinger_is_zero_for_disjoint_supports():
    """Spread-out maps with disjoint supports: every Bhattacharyya coefficient is 0, so Q = 0."""
    K, L = 4, 32
    g = torch.Generator().manual_seed(3)
    S = torch.zeros(2, K, L)
    for k in range(K):  # head k lives on cells [8k, 8k + 8)
        S[:, k, 8 * k: 8 * k + 8] = torch.softmax(torch.randn(2, 8, generator=g), dim=-1)
    assert diversity_penalty(S, "hellinger").item() == pytest.approx(0.0, abs=1e-6)
    # the sparse variant also penalises spread within each map, so it is not 0 here
    assert diversity_penalty(S, "sparse").item() > 0.1


@pytest.mark.parametrize("K", [1, 2, 6])
@pytest.mark.parametrize("field", ["random", "uniform", "with_zeros", "one_hot"])
def test_hellinger_is_k_k_minus_1_for_identical_fields(K, field):
    """K copies of any distribution: every Bhattacharyya coefficient is 1, so Q = K(K-1)."""
    L = 12
    p = {
        "random": random_maps((L,), seed=1, dtype=torch.float32),
        "uniform": torch.full((L,), 1.0 / L),
        "with_zeros": torch.tensor([0.5, 0.0, 0.25, 0.0, 0.25] + [0.0] * (L - 5)),
        "one_hot": torch.eye(L)[3],
    }[field]
    S = p.expand(3, K, L)  # three images with the same maps
    assert diversity_penalty(S, "hellinger").item() == pytest.approx(K * (K - 1), abs=1e-4)


@pytest.mark.parametrize("K", [1, 2, 6])
def test_sparse_identical_one_hot_is_k_k_minus_1(K):
    """Q' = K(K-1) for identical one-hot fields (all entries of S S^T are 1)."""
    S = one_hot_maps(K, 10, [4] * K)
    assert diversity_penalty(S, "sparse").item() == pytest.approx(K * (K - 1), abs=1e-6)


@pytest.mark.parametrize(("K", "L"), [(1, 4), (6, 32), (3, 5)])
def test_sparse_uniform_fields(K, L):
    """Uniform maps: S S^T = 1/L everywhere, so Q' = K (1 - 1/L)^2 + K(K-1) / L^2."""
    S = torch.full((2, K, L), 1.0 / L, dtype=torch.float64)
    expected = K * (1 - 1 / L) ** 2 + K * (K - 1) / L**2
    assert diversity_penalty(S, "sparse").item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hellinger_pair_is_bhattacharyya(seed):
    """Two heads p, q: the off-diagonal entry is BC = 1 - H^2 (Hellinger), so Q = 2 (1 - H^2)^2."""
    p, q = random_maps((2, 9), seed=seed, sharpness=2.0)
    hellinger_sq = 0.5 * ((p.sqrt() - q.sqrt()) ** 2).sum()
    expected = 2 * (1 - hellinger_sq) ** 2
    assert_close(diversity_penalty(torch.stack([p, q]), "hellinger"), expected)


@pytest.mark.parametrize("kind", KINDS)
def test_diversity_gradients_finite_with_exact_zeros(kind):
    """float32 maps with exact zeros (underflowed softmax) still give finite gradients."""
    g = torch.Generator().manual_seed(0)
    logits = (200.0 * torch.randn(2, 3, 4, 32, generator=g)).requires_grad_()
    S = torch.softmax(logits, dim=-1)
    assert (S == 0).any()  # the case being tested: sqrt has an infinite slope at 0
    diversity_penalty(S, kind).backward()
    assert torch.isfinite(logits.grad).all()

    S = one_hot_maps(4, 8, [0, 0, 3, 7]).requires_grad_()
    diversity_penalty(S, kind).backward()
    assert torch.isfinite(S.grad).all()
    assert S.grad.abs().sum() > 0  # the two heads on cell 0 are pushed apart


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(2, 3, 5), (3, 4)])
def test_diversity_gradcheck(kind, shape):
    """Analytic gradients equal finite differences (float64, strictly positive maps)."""
    S = random_maps(shape, seed=7).requires_grad_()
    assert torch.autograd.gradcheck(lambda s: diversity_penalty(s, kind), (S,))


@pytest.mark.parametrize(("S", "kind", "match"), [
    (torch.rand(4, 5), "none", "unknown diversity kind 'none'"),
    (torch.rand(4, 5), "euclidean", "unknown diversity kind"),
    (torch.rand(5), "hellinger", r"expects maps \(\.\.\., K, L\)"),
    (torch.tensor(0.5), "sparse", r"expects maps \(\.\.\., K, L\)"),
])
def test_diversity_rejects_bad_input(S, kind, match):
    with pytest.raises(ValueError, match=match):
        diversity_penalty(S, kind)


@pytest.mark.parametrize("kind", ["hellinger", "sparse"])
def test_pairs_scale_is_the_sum_over_the_ordered_pairs(kind):
    """Two maps overlapping on one cell: Hellinger Q = 2 x 0.5^2 = 0.5 (Bhattacharyya 0.5), 0.25
    per ordered pair; Q' = 2 x 0.25^2 + 2 x (0.5 - 1)^2 = 0.625, 0.3125 per pair; K identical
    maps: K(K-1) summed, 1 per pair; one map: no pair, the sum itself. (Up to the 1e-12 floor
    under the square root of empty cells.)"""
    S = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.5, 0.5, 0.0]], dtype=torch.float64)
    total = {"hellinger": 0.5, "sparse": 0.625}[kind]
    assert diversity_penalty(S, kind).item() == pytest.approx(total, rel=1e-4)
    assert diversity_penalty(S, kind, "sum").item() == diversity_penalty(S, kind).item()
    assert diversity_penalty(S, kind, "pairs").item() == pytest.approx(total / 2, rel=1e-4)
    same = torch.eye(5, dtype=torch.float64)[:1].expand(4, 5)  # K = 4 maps on one cell
    assert diversity_penalty(same, kind, "sum").item() == pytest.approx(12.0, rel=1e-4)
    assert diversity_penalty(same, kind, "pairs").item() == pytest.approx(1.0, rel=1e-4)
    one = S[:1]
    assert diversity_penalty(one, kind, "pairs").item() == diversity_penalty(one, kind).item()
    with pytest.raises(ValueError, match="unknown diversity scale 'mean'"):
        diversity_penalty(S, kind, "mean")


# --- OIM -----------------------------------------------------------------------------------------


def oim_with_random_lut(num_features=8, num_classes=5, seed=0, **kwargs):
    loss = OIMLoss(num_features, num_classes, **kwargs)
    g = torch.Generator().manual_seed(seed)
    loss.lut.copy_(F.normalize(torch.randn(num_classes, num_features, generator=g), dim=1))
    return loss


def unit_features(batch, num_features, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(batch, num_features, generator=g), dim=1)


def sequential_update(lut, x, y, momentum):
    """The OIM update, one sample at a time in batch order."""
    lut = lut.clone()
    for xi, yi in zip(x, y.tolist(), strict=True):
        lut[yi] = F.normalize(momentum * lut[yi] + (1 - momentum) * xi, dim=0)
    return lut


@pytest.mark.parametrize("scalar", [1.0, 10.0, 30.0])
@pytest.mark.parametrize("training", [True, False])
def test_oim_loss_value_uses_lut_before_batch(scalar, training):
    """loss = cross_entropy(scalar * x @ LUT^T, y) with the LUT as it was before the batch."""
    loss_fn = oim_with_random_lut(scalar=scalar).train(training)
    lut_before = loss_fn.lut.clone()
    x, y = unit_features(6, 8, seed=1), torch.tensor([0, 2, 2, 4, 1, 2])
    value = loss_fn(x, y)
    assert_close(value, F.cross_entropy(scalar * x @ lut_before.T, y))
    if training:  # the LUT did move, so the check above could tell the two apart
        assert not torch.allclose(loss_fn.lut, lut_before)
        assert not torch.allclose(value, F.cross_entropy(scalar * x @ loss_fn.lut.T, y))


@pytest.mark.parametrize("scalar", [1.0, 10.0, 30.0])
@pytest.mark.parametrize("training", [True, False])
def test_oim_gradient_closed_form(scalar, training):
    """d loss / d x = scalar (softmax(scalar x LUT^T) - onehot(y)) LUT / B, LUT before the batch.

    In training mode this also checks that the in-place LUT update after the forward does not
    break the backward pass.
    """
    loss_fn = oim_with_random_lut(num_features=8, num_classes=5, scalar=scalar).train(training)
    lut = loss_fn.lut.clone()
    x = unit_features(7, 8, seed=2).requires_grad_()
    y = torch.tensor([0, 1, 1, 3, 4, 4, 4])
    loss_fn(x, y).backward()
    probs = torch.softmax(scalar * x.detach() @ lut.T, dim=1)
    expected = scalar * (probs - F.one_hot(y, 5).float()) @ lut / len(y)
    assert_close(x.grad, expected)


def test_oim_lut_is_a_buffer_without_gradient():
    """The LUT is state, not a parameter: no gradient, saved in state_dict."""
    loss_fn = oim_with_random_lut()
    assert not loss_fn.lut.requires_grad
    assert "lut" in dict(loss_fn.named_buffers())
    assert list(loss_fn.parameters()) == []
    x = unit_features(4, 8, seed=3).requires_grad_()
    loss_fn(x, torch.tensor([0, 1, 2, 3])).backward()
    assert loss_fn.lut.grad is None
    assert x.grad is not None


@pytest.mark.parametrize("momentum", [0.5, 0.0, 0.9])
@pytest.mark.parametrize("labels", [
    [0, 1, 2, 3],  # no repeats
    [3, 1, 3, 3, 0, 1],  # repeats: order within a label matters
    [2, 2, 2, 2, 2],  # one label only
])
def test_oim_update_is_sequential(momentum, labels):
    """After a training forward: LUT[y] <- normalize(m LUT[y] + (1 - m) x), sample by sample."""
    loss_fn = oim_with_random_lut(momentum=momentum).train()
    lut_before = loss_fn.lut.clone()
    y = torch.tensor(labels)
    x = unit_features(len(y), 8, seed=4)
    loss_fn(x, y)
    expected = sequential_update(lut_before, x, y, momentum)
    assert_close(loss_fn.lut, expected)
    untouched = sorted(set(range(5)) - set(labels))
    assert_close(loss_fn.lut[untouched], lut_before[untouched])
    assert_close(loss_fn.lut.norm(dim=1), torch.ones(5))


def test_oim_update_repeated_labels_differs_from_naive_vectorised():
    """The sequential check has teeth: one vectorised write per label gives another LUT."""
    loss_fn = oim_with_random_lut().train()
    lut_before = loss_fn.lut.clone()
    y = torch.tensor([3, 1, 3, 3, 0, 1])
    x = unit_features(6, 8, seed=4)
    loss_fn(x, y)
    naive = lut_before.clone()
    naive[y] = F.normalize(0.5 * lut_before[y] + 0.5 * x, dim=1)
    assert not torch.allclose(naive, loss_fn.lut, atol=1e-3)
    # and the batch order matters: reversing it changes the result
    reversed_order = sequential_update(lut_before, x.flip(0), y.flip(0), 0.5)
    assert not torch.allclose(reversed_order, loss_fn.lut, atol=1e-3)


def test_oim_first_update_from_zero_lut_copies_features():
    """A fresh (zero) LUT row becomes the normalised feature after its first sample."""
    loss_fn = OIMLoss(8, 5).train()
    x = unit_features(2, 8, seed=5)
    loss_fn(x, torch.tensor([1, 4]))
    assert_close(loss_fn.lut[[1, 4]], x)
    assert_close(loss_fn.lut[[0, 2, 3]], torch.zeros(3, 8))


def test_oim_eval_does_not_update():
    loss_fn = oim_with_random_lut().eval()
    lut_before = loss_fn.lut.clone()
    loss_fn(unit_features(4, 8, seed=6), torch.tensor([0, 1, 1, 2]))
    assert torch.equal(loss_fn.lut, lut_before)


def test_oim_state_dict_round_trip(tmp_path):
    """The LUT is saved and restored; the restored loss gives the same value."""
    loss_fn = oim_with_random_lut(scalar=30.0).train()
    loss_fn(unit_features(6, 8, seed=7), torch.tensor([0, 1, 2, 2, 3, 4]))  # move the LUT
    path = tmp_path / "oim.pt"
    torch.save(loss_fn.state_dict(), path)
    fresh = OIMLoss(8, 5, scalar=30.0)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    assert torch.equal(fresh.lut, loss_fn.lut)
    x, y = unit_features(3, 8, seed=8), torch.tensor([4, 0, 2])
    assert_close(fresh.eval()(x, y), loss_fn.eval()(x, y))


@pytest.mark.parametrize("labels", [[0, 5], [-1, 2], [7]])
def test_oim_rejects_labels_out_of_range(labels):
    loss_fn = oim_with_random_lut(num_classes=5)
    with pytest.raises(ValueError, match=r"identity labels must lie in \[0, 5\)"):
        loss_fn(unit_features(len(labels), 8, seed=0), torch.tensor(labels))


@pytest.mark.parametrize(("x_shape", "y_shape"), [((4, 8), (3,)), ((8,), (1,)), ((4, 8), (4, 1))])
def test_oim_rejects_bad_shapes(x_shape, y_shape):
    loss_fn = oim_with_random_lut()
    with pytest.raises(ValueError, match="expected features"):
        loss_fn(torch.zeros(x_shape), torch.zeros(y_shape, dtype=torch.long))


def test_oim_rejects_bad_sizes():
    with pytest.raises(ValueError, match="num_features, num_classes >= 1"):
        OIMLoss(0, 5)


# --- softmax classifier and the builder ----------------------------------------------------------


def test_softmax_loss_is_cross_entropy_of_classifier():
    torch.manual_seed(0)
    loss_fn = SoftmaxLoss(8, 5)
    x, y = unit_features(6, 8, seed=9), torch.tensor([0, 1, 4, 4, 2, 3])
    value = loss_fn(x, y)
    assert_close(value, F.cross_entropy(x @ loss_fn.classifier.weight.T + loss_fn.classifier.bias,
                                        y))
    value.backward()
    assert loss_fn.classifier.weight.grad is not None
    assert loss_fn.classifier.weight.grad.abs().sum() > 0
    assert loss_fn.classifier.bias.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="identity labels"):
        loss_fn(x[:1], torch.tensor([5]))


@pytest.mark.parametrize(("cfg", "cls"), [
    (LossParams(kind="oim", oim_scalar=30.0, oim_momentum=0.2), OIMLoss),
    (LossParams(kind="oim"), OIMLoss),
    (LossParams(kind="softmax"), SoftmaxLoss),
])
def test_build_identity_loss(cfg, cls):
    loss_fn = build_identity_loss(cfg, num_features=16, num_classes=7)
    assert type(loss_fn) is cls
    if cls is OIMLoss:
        assert loss_fn.scalar == cfg.oim_scalar
        assert loss_fn.momentum == cfg.oim_momentum
        assert loss_fn.lut.shape == (7, 16)
    else:
        assert (loss_fn.classifier.in_features, loss_fn.classifier.out_features) == (16, 7)


# --- OIM under torch.distributed -----------------------------------------------------------------

# Different batch sizes per rank (exercises the padding of the gather) and shared labels.
DIST_LABELS = ([3, 1, 3, 0, 1], [1, 3, 2])


def _dist_setup():
    """Initial LUT and each rank's batch, identical in the parent and in the workers."""
    loss_fn = oim_with_random_lut(num_features=8, num_classes=5, seed=11)
    batches = [(unit_features(len(y), 8, seed=20 + r), torch.tensor(y))
               for r, y in enumerate(DIST_LABELS)]
    return loss_fn, batches


def _dist_worker(rank: int, world_size: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=rank,
                            world_size=world_size)
    try:
        loss_fn, batches = _dist_setup()
        x, y = batches[rank]
        x = x.clone().requires_grad_()
        loss_fn.train()(x, y).backward()
        torch.save({"lut": loss_fn.lut, "grad": x.grad}, f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_oim_update_under_distributed(tmp_path: Path):
    """world_size 2 (gloo, CPU): both ranks end with the LUT of the sequential update over rank
    0's batch then rank 1's batch; the loss itself stays local to each rank."""
    mp.spawn(_dist_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    loss_fn, batches = _dist_setup()
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    expected = sequential_update(loss_fn.lut, x, y, loss_fn.momentum)
    one_rank = sequential_update(loss_fn.lut, *batches[0], loss_fn.momentum)
    assert not torch.allclose(expected, one_rank, atol=1e-3)  # the gather is needed to pass
    for rank in range(2):
        out = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert_close(out["lut"], expected)
        xr, yr = batches[rank]
        probs = torch.softmax(loss_fn.scalar * xr @ loss_fn.lut.T, dim=1)
        grad = loss_fn.scalar * (probs - F.one_hot(yr, 5).float()) @ loss_fn.lut / len(yr)
        assert_close(out["grad"], grad)
