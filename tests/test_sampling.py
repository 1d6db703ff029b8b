"""Tests of pipeline/sampling.py: restricted random sampling (paper §3.1) and the P x M sampler."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from scipy import stats

from pipeline.errors import ParamsError
from pipeline.sampling import IdentityBatchSampler, chunk_bounds, restricted_random_sample

N = 6  # the paper's number of chunks

# (F, N): shorter than N, equal, one more, multiples, a single frame, long tracklets
CASES = [(1, 6), (2, 6), (3, 6), (5, 6), (6, 6), (7, 6), (12, 6), (18, 6), (1000, 6),
         (1, 1), (9, 1), (10, 3), (17, 4)]


# --- chunk_bounds / restricted_random_sample ------------------------------------------------------


@pytest.mark.parametrize(("F", "num_chunks"), CASES)
def test_chunks_follow_the_reference_formula(F, num_chunks):
    """Chunk i is [floor(i*F/N), max(floor((i+1)*F/N), floor(i*F/N)+1)), non-empty, in range."""
    bounds = chunk_bounds(F, num_chunks)
    assert len(bounds) == num_chunks
    for i, (start, stop) in enumerate(bounds):
        b_i, b_next = (i * F) // num_chunks, ((i + 1) * F) // num_chunks
        assert (start, stop) == (b_i, max(b_next, b_i + 1))
        assert 0 <= start < stop <= F


@pytest.mark.parametrize(("F", "num_chunks"), [(f, n) for f, n in CASES if f >= n])
def test_chunks_partition_the_tracklet_when_long_enough(F, num_chunks):
    """With F >= N the chunks are disjoint, contiguous and cover every frame exactly once."""
    frames = [f for start, stop in chunk_bounds(F, num_chunks) for f in range(start, stop)]
    assert frames == list(range(F))


@pytest.mark.parametrize(
    ("F", "num_chunks", "expected"),
    [
        (1, 6, [0, 0, 0, 0, 0, 0]),
        (2, 6, [0, 0, 0, 1, 1, 1]),
        (3, 6, [0, 0, 1, 1, 2, 2]),
        (5, 6, [0, 0, 1, 2, 3, 4]),
        (6, 6, [0, 1, 2, 3, 4, 5]),
        (7, 6, [0, 1, 2, 3, 4, 5]),  # the last chunk is [5, 7)
        (12, 6, [0, 2, 4, 6, 8, 10]),
        (10, 3, [0, 3, 6]),
        (17, 4, [0, 4, 8, 12]),
        (1000, 6, [0, 166, 333, 500, 666, 833]),
        (9, 1, [0]),
    ],
)
def test_test_mode_takes_each_chunks_first_frame(F, num_chunks, expected):
    """Hand-computed test-time indices: floor(i*F/N) for each chunk i."""
    assert restricted_random_sample(F, num_chunks, train=False) == expected


@pytest.mark.parametrize(("F", "num_chunks"), CASES)
@pytest.mark.parametrize("train", [False, True])
def test_indices_are_valid_and_in_temporal_order(F, num_chunks, train):
    """N indices, each a frame of the tracklet, non-decreasing; repeats only when F < N."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = restricted_random_sample(F, num_chunks, train=train, rng=rng)
        assert len(idx) == num_chunks
        assert all(isinstance(i, int) for i in idx)
        assert all(0 <= i < F for i in idx)
        assert idx == sorted(idx)
        if num_chunks <= F:
            assert len(set(idx)) == num_chunks
        else:  # frames repeat instead of padding; every frame is used
            assert set(idx) == set(range(F))


@pytest.mark.parametrize(("F", "num_chunks"), CASES)
def test_train_draws_one_frame_inside_each_chunk(F, num_chunks):
    """Training index i lies in chunk i, and over many draws every chunk is covered entirely."""
    rng = np.random.default_rng(1)
    bounds = chunk_bounds(F, num_chunks)
    seen = [set() for _ in bounds]
    for _ in range(300):
        idx = restricted_random_sample(F, num_chunks, train=True, rng=rng)
        for i, (start, stop) in enumerate(bounds):
            assert start <= idx[i] < stop
            seen[i].add(idx[i])
    if F <= 100:  # at most ~17 frames per chunk: 300 draws see them all
        assert seen == [set(range(start, stop)) for start, stop in bounds]


@pytest.mark.parametrize("F", [1, 3, 6])
def test_train_equals_test_when_chunks_are_single_frames(F):
    """F <= N: every chunk holds one frame, so the random draw has no choice."""
    rng = np.random.default_rng(2)
    assert restricted_random_sample(F, N, True, rng) == restricted_random_sample(F, N, False)


def test_train_is_reproducible_with_a_seed():
    """The same seed gives the same indices; other seeds differ on a long tracklet."""
    def draws(seed):
        rng = np.random.default_rng(seed)
        return [restricted_random_sample(1000, N, True, rng) for _ in range(5)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)
    assert draws(8) != draws(9)


def test_train_draw_is_uniform_within_each_chunk():
    """Chi-square test of the frame counts per chunk (fixed seed: deterministic)."""
    F, draws = 60, 6000  # chunks of 10 frames: each frame expected 600 times
    rng = np.random.default_rng(3)
    counts = Counter()
    for _ in range(draws):
        counts.update(restricted_random_sample(F, N, True, rng))
    for start, stop in chunk_bounds(F, N):
        observed = np.array([counts[f] for f in range(start, stop)])
        assert observed.sum() == draws
        assert observed.min() > 0
        expected = draws / (stop - start)
        assert np.all(np.abs(observed - expected) < 0.2 * expected)
        assert stats.chisquare(observed).pvalue > 1e-3


@pytest.mark.parametrize(
    ("F", "num_chunks", "match"), [(0, 6, "num_frames"), (-1, 6, "num_frames"),
                                   (5, 0, "num_chunks"), (5, -2, "num_chunks")])
@pytest.mark.parametrize("train", [False, True])
def test_bad_sizes_are_rejected(F, num_chunks, match, train):
    """An empty tracklet or a non-positive number of chunks is an error, not an empty list."""
    with pytest.raises(ValueError, match=match):
        restricted_random_sample(F, num_chunks, train=train, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=match):
        chunk_bounds(F, num_chunks)


def test_train_without_rng_is_rejected():
    """Training draws need an explicit Generator (reproducibility): no hidden global RNG."""
    with pytest.raises(ValueError, match="rng"):
        restricted_random_sample(10, N, train=True)


# --- IdentityBatchSampler -------------------------------------------------------------------------


def toy_pids(num_identities=10, seed=0):
    """Identity i has i + 1 samples (1 to 10), listed in a shuffled dataset order."""
    pids = np.repeat(np.arange(num_identities) * 10 + 100, np.arange(1, num_identities + 1))
    return np.random.default_rng(seed).permutation(pids).tolist()


@pytest.mark.parametrize(("P", "M"), [(3, 4), (2, 2), (5, 1), (10, 3), (1, 12)])
def test_batches_hold_p_identities_of_m_samples(P, M):
    """Each batch: exactly P distinct identities, M samples each, indices of that identity;
    identities with >= M samples are drawn without replacement, smaller ones with replacement."""
    pids = toy_pids()
    sampler = IdentityBatchSampler(pids, P, M, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 10 // P
    for batch in batches:
        assert len(batch) == P * M
        assert all(0 <= i < len(pids) for i in batch)
        groups = [batch[j * M:(j + 1) * M] for j in range(P)]  # identity by identity
        ids = [pids[g[0]] for g in groups]
        assert len(set(ids)) == P
        for pid, group in zip(ids, groups, strict=True):
            assert all(pids[i] == pid for i in group)
            size = pids.count(pid)
            if size >= M:
                assert len(set(group)) == M  # no duplicate sample
            else:
                assert len(set(group)) <= size  # with replacement: repeats are unavoidable


def test_small_identities_use_all_their_samples_eventually():
    """With replacement, an identity of 2 samples shows both of them over a few epochs."""
    pids = [0, 0, 1, 1, 1, 1, 1]
    sampler = IdentityBatchSampler(pids, 2, 4, seed=0)
    seen = set()
    for epoch in range(10):
        sampler.set_epoch(epoch)
        for batch in sampler:
            seen.update(i for i in batch if pids[i] == 0)
    assert seen == {0, 1}


def test_each_identity_at_most_once_per_epoch():
    """An epoch is a permutation of the identities cut into groups of P (last group dropped)."""
    pids = toy_pids(num_identities=11)
    sampler = IdentityBatchSampler(pids, 3, 2, seed=5)
    for epoch in range(4):
        sampler.set_epoch(epoch)
        used = [pids[batch[j * 2]] for batch in sampler for j in range(3)]
        assert len(used) == len(set(used)) == 3 * (11 // 3)


def test_epochs_differ_and_seed_epoch_reproduce():
    """set_epoch reshuffles; the same (seed, epoch) gives the same batches in a new sampler."""
    pids = toy_pids()

    def epoch_batches(seed, epoch):
        sampler = IdentityBatchSampler(pids, 3, 4, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert epoch_batches(0, 0) == epoch_batches(0, 0)
    assert epoch_batches(0, 3) == epoch_batches(0, 3)
    assert epoch_batches(0, 0) != epoch_batches(0, 1)
    assert epoch_batches(0, 0) != epoch_batches(1, 0)
    # iterating twice without set_epoch repeats the epoch (as DistributedSampler does)
    sampler = IdentityBatchSampler(pids, 3, 4, seed=0)
    assert list(sampler) == list(sampler)


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_ranks_split_the_global_batch(world_size):
    """Each rank keeps its contiguous share of the same global batch: the shares, in rank order,
    are exactly the world_size=1 batch in its order."""
    pids = toy_pids()
    P, M = 3, 4
    full = IdentityBatchSampler(pids, P, M, seed=2)
    ranks = [IdentityBatchSampler(pids, P, M, seed=2, rank=r, world_size=world_size)
             for r in range(world_size)]
    for sampler in [full, *ranks]:
        sampler.set_epoch(1)
    assert {len(s) for s in ranks} == {len(full)}
    per_rank = [list(s) for s in ranks]
    for step, global_batch in enumerate(full):
        shards = [batches[step] for batches in per_rank]
        assert all(len(shard) == P * M // world_size for shard in shards)
        assert [i for shard in shards for i in shard] == global_batch


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"identities_per_batch": 11, "instances_per_identity": 2}, "identities"),
        ({"identities_per_batch": 3, "instances_per_identity": 3, "world_size": 2},
         "WORLD_SIZE=2"),
        ({"identities_per_batch": 2, "instances_per_identity": 2, "rank": 2, "world_size": 2},
         "rank"),
        ({"identities_per_batch": 2, "instances_per_identity": 2, "rank": -1, "world_size": 2},
         "rank"),
        ({"identities_per_batch": 0, "instances_per_identity": 2}, "identities_per_batch"),
        ({"identities_per_batch": 2, "instances_per_identity": 0}, "instances_per_identity"),
    ],
)
def test_sampler_rejects_bad_settings(kwargs, match):
    """Too few identities for P, a batch that does not split over the ranks, a bad rank."""
    with pytest.raises(ValueError, match=match):
        IdentityBatchSampler(toy_pids(), **kwargs)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"identities_per_batch": 11, "instances_per_identity": 2},
     "finetune.identities_per_batch=11: expected at most 10, the number of identities in the "
     "training set (a batch holds P different identities)"),
    ({"identities_per_batch": 3, "instances_per_identity": 3, "world_size": 2},
     "finetune.identities_per_batch x finetune.instances_per_identity = 3 x 3 = 9 samples per "
     "global batch: expected a multiple of WORLD_SIZE=2, the number of torchrun processes, so "
     "that each gets an equal share; change them or the number of processes"),
])
def test_sampler_errors_name_the_params_keys_of_their_section(kwargs, message):
    """P larger than the identities there are, or P x M not a multiple of the processes: a
    ParamsError naming the keys of the section the sampler serves (and WORLD_SIZE)."""
    with pytest.raises(ParamsError) as caught:
        IdentityBatchSampler(toy_pids(), **kwargs, section="finetune")
    assert str(caught.value) == message


class ToyDataset(torch.utils.data.Dataset):
    """Sample i is (i, pid of i)."""

    def __init__(self, pids):
        self.pids = pids

    def __len__(self):
        return len(self.pids)

    def __getitem__(self, index):
        return index, self.pids[index]


def test_works_as_a_dataloader_batch_sampler():
    """DataLoader(batch_sampler=...) yields the sampler's batches, P x M labels each."""
    pids = toy_pids()
    P, M = 2, 3
    sampler = IdentityBatchSampler(pids, P, M, seed=4)
    sampler.set_epoch(2)
    loader = torch.utils.data.DataLoader(ToyDataset(pids), batch_sampler=sampler)
    assert len(loader) == len(sampler) == 5
    batches = list(loader)
    assert len(batches) == 5
    for (index, labels), expected in zip(batches, sampler, strict=True):
        assert index.tolist() == expected
        labels = labels.view(P, M)  # (P identities, M samples)
        assert (labels == labels[:, :1]).all()
        assert labels[:, 0].unique().numel() == P


# --- batches of the union of several sets ---------------------------------------------------------

def union_pids() -> tuple[list[int], list[str]]:
    """A union of a large set (40 identities, 0-39) and a small one (8 identities, 40-47), 3
    samples per identity: the labels of pipeline.tables.pool_sets."""
    pids = [p for p in range(48) for _ in range(3)]
    return pids, ["big" if p < 40 else "small" for p in pids]


def set_shares(sampler: IdentityBatchSampler, sets: list[str], epochs: int) -> Counter:
    counts = Counter()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for batch in sampler:
            counts.update(sets[i] for i in batch)
    return counts


def test_union_batches_balance_the_sets_or_the_identities():
    """balance="set": every batch gives each set P / S identities (M samples each), all distinct,
    so the small set fills half of the samples; balance="identity" (the default, and what a single
    set gets): the small set's share is its share of the identities, 8 / 48. The epoch length is
    the same either way."""
    pids, sets = union_pids()
    balanced = IdentityBatchSampler(pids, 8, 2, seed=3, sets=sets, balance="set")
    plain = IdentityBatchSampler(pids, 8, 2, seed=3)
    assert len(balanced) == len(plain) == 48 // 8
    for epoch in range(5):
        balanced.set_epoch(epoch)
        for batch in balanced:
            identities = [pids[i] for i in batch]
            assert len(batch) == 16 and len(set(identities)) == 8
            assert Counter(sets[i] for i in batch) == {"big": 8, "small": 8}
            assert all(identities.count(p) == 2 for p in identities)
    shares = set_shares(plain, sets, 50)
    assert shares["small"] / sum(shares.values()) == pytest.approx(8 / 48, abs=0.03)
    small_ids = Counter()
    for epoch in range(50):
        balanced.set_epoch(epoch)
        small_ids.update(pids[i] for batch in balanced for i in batch if sets[i] == "small")
    assert set(small_ids) == set(range(40, 48))  # the small set's identities in turn, evenly
    assert max(small_ids.values()) - min(small_ids.values()) <= 2 * 2 * 2


def test_union_batches_with_an_odd_share_and_under_several_processes():
    """P = 5 over 2 sets: 2 or 3 of each, the extra one to a set drawn at random; the ranks'
    shares of a balanced batch are the single-process batch, as for one set."""
    pids, sets = union_pids()
    one = IdentityBatchSampler(pids, 5, 2, seed=1, sets=sets, balance="set")
    counts = Counter()
    for batch in one:
        per_set = Counter(sets[i] for i in batch)
        assert sorted(per_set.values()) == [4, 6]
        counts[max(per_set, key=per_set.get)] += 1
    assert set(counts) == {"big", "small"}
    ranks = [IdentityBatchSampler(pids, 5, 2, seed=1, rank=r, world_size=2, sets=sets,
                                  balance="set") for r in range(2)]
    for whole, *shares in zip(one, *ranks, strict=True):
        assert [i for share in shares for i in share] == whole


def test_union_batches_refuse_a_set_too_small_for_its_share_and_unpooled_labels():
    pids, sets = union_pids()
    with pytest.raises(ParamsError, match=r"^finetune.identities_per_batch=20: batches that give "
                                          r"each of 2 sets an equal share need 10 identities of "
                                          r"each, but small has 8$"):
        IdentityBatchSampler(pids, 20, 2, sets=sets, balance="set", section="finetune")
    with pytest.raises(ValueError, match="identity 0 has samples in more than one set"):
        IdentityBatchSampler(pids, 4, 2, sets=["a", *sets[1:]], balance="set")
    with pytest.raises(ValueError, match="balance: expected one of"):
        IdentityBatchSampler(pids, 4, 2, sets=sets, balance="sets")
