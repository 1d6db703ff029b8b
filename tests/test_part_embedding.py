"""``model.part_embedding: per_part``, the authors' released reading of the DRSA output: each
frame's part feature through one FC + BatchNorm shared by the K parts, each part L2-normalised,
temporal pooling on the embedded parts, the K parts side by side at unit norm (K x E)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from pipeline.model import DRSA
from pipeline.params import ModelParams
from tests.test_model import open_gates, random_grids, small_cfg


def per_part(**changes) -> ModelParams:
    return small_cfg(part_embedding="per_part", **changes)


def with_running_stats(head: DRSA) -> DRSA:
    """Non-trivial BatchNorm statistics and affine parameters, then eval mode (each clip's
    embedding is its own)."""
    bn = head.embed.bn
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
    return head.eval()


def embed_part(head: DRSA, x: torch.Tensor) -> torch.Tensor:
    """The shared FC, BatchNorm on running statistics and L2 norm, written out: (..., D) -> E."""
    bn = head.embed.bn
    z = x @ head.embed.fc.weight.T + head.embed.fc.bias
    z = (z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    return z / z.norm(dim=-1, keepdim=True)


def test_the_embedding_size_is_k_parts_of_embed_dim():
    assert small_cfg().embedding_size == 8
    assert per_part(K=3).embedding_size == 3 * 8
    head = DRSA(per_part(K=3), in_channels=16)
    assert head.embed.fc.in_features == 16 and head.embed.fc.out_features == 8  # shared FC
    assert head.temporal.weight.shape == (3, 8)  # temporal attention on the embedded parts


@pytest.mark.parametrize("pooling", ["attention", "avg", "max"])
def test_per_part_head_composes_the_components_clip_by_clip(pooling):
    """spatial attention, E on the D-channel parts, the shared FC + BatchNorm + L2 per frame and
    part, temporal pooling of the embedded parts, the K parts concatenated at unit norm."""
    torch.manual_seed(0)
    head = with_running_stats(open_gates(DRSA(per_part(N=3, K=2, temporal_pooling=pooling),
                                              in_channels=16)))
    grids = random_grids(B=2, N=3, D=16, H=3, W=2)
    out = head(grids)
    assert out.embedding.shape == (2, 2 * 8)
    assert_close(out.embedding.norm(dim=1), torch.ones(2))
    for b in range(2):
        cells = grids[b].flatten(2).transpose(1, 2)  # (N, L, D)
        x, s = head.spatial(cells)  # (N, K, D), (N, K, L)
        assert_close(out.spatial[b], s)
        parts = embed_part(head, head.enhance(x[None])[0])  # (N, K, E), each part unit norm
        assert_close(parts.norm(dim=-1), torch.ones(3, 2))
        pooled, t = head.temporal(parts[None])  # (1, K, E), (1, N, K)
        assert_close(out.temporal[b], t[0])
        assert_close(out.embedding[b], F.normalize(pooled.flatten(), dim=0))


def test_uniform_maps_give_k_copies_of_the_averages_embedding():
    """With every map uniform over the cells (score weights and biases 0) each head reads the
    frame's average cell: the K parts of the video are K copies of the average's part embedding,
    pooled over the frames."""
    torch.manual_seed(0)
    cfg = per_part(N=3, K=4, score_init="zero", enhancement="identity", temporal_pooling="avg")
    head = with_running_stats(DRSA(cfg, in_channels=16))
    grids = random_grids(B=2, N=3, D=16, H=3, W=2)
    out = head(grids)
    assert_close(out.spatial, torch.full((2, 3, 4, 6), 1 / 6))
    average = embed_part(head, grids.mean(dim=(3, 4))).mean(dim=1)  # (B, E): frames pooled
    expected = F.normalize(average.repeat(1, 4), dim=1)  # K copies side by side
    assert_close(out.embedding, expected)
    blocks = out.embedding.view(2, 4, 8)
    assert_close(blocks, blocks[:, :1].expand(-1, 4, -1))


def test_a_still_clip_gives_parts_of_equal_norm():
    """N copies of one frame: each pooled part is a unit vector, so each of the K blocks of the
    embedding has norm 1/sqrt(K), whatever the maps (one part never outweighs another)."""
    torch.manual_seed(0)
    head = open_gates(DRSA(per_part(N=4, K=3), in_channels=16)).eval()
    frame = random_grids(B=2, N=1, D=16, H=3, W=2)
    out = head(frame.expand(-1, 4, -1, -1, -1))
    assert_close(out.embedding.view(2, 3, 8).norm(dim=-1), torch.full((2, 3), 3 ** -0.5))


def test_concat_stays_the_default_and_per_part_trains_every_parameter():
    assert ModelParams().part_embedding == "concat"
    torch.manual_seed(0)
    head = open_gates(DRSA(dataclasses.replace(per_part(), enhancement="second_order"), 16))
    head(random_grids()).embedding.sum().backward()
    missing = [name for name, p in head.named_parameters() if p.grad is None]
    assert missing == []


def test_a_per_part_model_records_its_embedding_and_rebuilds(tmp_path):
    """An exported per_part head records part_embedding (a concat one does not: its bytes stay
    those of the models made before the key existed) and loads back to the same outputs."""
    from pipeline.checkpoints import export_model, load_exported

    torch.manual_seed(0)
    head = with_running_stats(open_gates(DRSA(per_part(), in_channels=16)))
    export_model(tmp_path / "heads.pt", head, head.cfg, "drsa")
    rebuilt, payload = load_exported(tmp_path / "heads.pt")
    assert payload["model_params"]["part_embedding"] == "per_part"
    grids = random_grids()
    assert torch.equal(rebuilt(grids).embedding, head(grids).embedding)
    export_model(tmp_path / "concat.pt", DRSA(small_cfg(), 16), small_cfg(), "drsa")
    assert "part_embedding" not in load_exported(tmp_path / "concat.pt")[1]["model_params"]


@pytest.mark.parametrize("embedding", ["concat", "per_part"])
def test_uniform_maps_are_the_control_of_the_learned_ones(embedding):
    """``model.maps: uniform``: no spatial parameters, every map 1/L, every part the frame's
    average cell, whatever the embedding; the rest of the head (E, pooling, embedding) as with
    learned maps."""
    from pipeline.model import UniformMaps

    torch.manual_seed(0)
    cfg = small_cfg(maps="uniform", part_embedding=embedding, K=3)
    head = DRSA(cfg, in_channels=16).eval()
    assert isinstance(head.spatial, UniformMaps) and not list(head.spatial.parameters())
    grids = random_grids(B=2, N=3, D=16, H=3, W=2)
    out = head(grids)
    assert_close(out.spatial, torch.full((2, 3, 3, 6), 1 / 6))
    cells = grids.flatten(3).transpose(2, 3).flatten(0, 1)  # (B*N, L, D)
    x, _ = head.spatial(cells)
    assert_close(x, cells.mean(dim=1, keepdim=True).expand(-1, 3, -1))
    learned = DRSA(dataclasses.replace(cfg, maps="learned", score_init="zero"), in_channels=16)
    learned.load_state_dict(head.state_dict(), strict=False)  # the same E, pooling, embedding
    assert_close(learned.eval()(grids).embedding, out.embedding)
