"""Frame and batch sampling.

- ``restricted_random_sample``: the paper's restricted random sampling (RRS, §3.1), which turns a
  tracklet of any length into N frames spread over its whole duration.
- ``IdentityBatchSampler``: P identities x M samples per batch, the composition OIM and
  identity-level losses train best with; shards each global batch across data-parallel ranks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from pipeline.errors import ParamsError


def chunk_bounds(num_frames: int, num_chunks: int) -> list[tuple[int, int]]:
    """Half-open frame ranges of the ``num_chunks`` equal-duration chunks of a tracklet.

    Chunk i is ``[b_i, max(b_{i+1}, b_i + 1))`` with ``b_i = floor(i * F / N)``: every chunk holds
    at least one frame, so a tracklet shorter than N repeats frames instead of padding.
    """
    if num_frames < 1:
        raise ValueError(f"a tracklet needs at least one frame, got num_frames={num_frames}")
    if num_chunks < 1:
        raise ValueError(f"num_chunks must be >= 1, got {num_chunks}")
    starts = [i * num_frames // num_chunks for i in range(num_chunks + 1)]
    return [(starts[i], max(starts[i + 1], starts[i] + 1)) for i in range(num_chunks)]


def restricted_random_sample(
    num_frames: int, num_chunks: int, train: bool, rng: np.random.Generator | None = None
) -> list[int]:
    """Indices of the N frames that represent a tracklet (paper §3.1).

    Args:
        num_frames: F, frames in the tracklet (in temporal order).
        num_chunks: N, chunks of equal duration = frames returned.
        train: draw one frame uniformly at random from each chunk; otherwise take each chunk's
            first frame (the paper's test-time rule, deterministic).
        rng: the generator used in training (required when ``train``).

    Returns:
        N frame indices in increasing (temporal) order.
    """
    bounds = chunk_bounds(num_frames, num_chunks)
    if not train:
        return [start for start, _ in bounds]
    if rng is None:
        raise ValueError("restricted_random_sample(train=True) needs a numpy Generator rng")
    lows = np.array([start for start, _ in bounds])
    highs = np.array([stop for _, stop in bounds])
    return [int(i) for i in rng.integers(lows, highs)]


BALANCES = ("identity", "set")  # what a batch of the union of several sets keeps equally likely


class IdentityBatchSampler:
    """Batches of P identities x M samples, for ``DataLoader(batch_sampler=...)``.

    Each epoch shuffles the identities, cuts them into groups of P (the incomplete last group is
    dropped, so every batch has the same composition) and draws M samples of each identity:
    without replacement when it has at least M, otherwise with replacement.

    Over the union of several sets (``sets``: each sample's set) the identities can be drawn so
    that each set is equally likely (``balance="set"``) instead of each identity
    (``balance="identity"``, the above): every batch then gives each set P / S of its identities
    (the remainder to sets drawn at random), taken from that set's own shuffled order and
    reshuffled when it runs out, so a set of 89 identities is not a tenth of every batch beside
    one of 625. The epoch has as many batches either way (identities // P).

    Under data-parallel training every rank builds the same global batches (same seed, same epoch)
    and keeps its contiguous share of each (rank r: items ``[r * B / W, (r + 1) * B / W)``), so the
    global batch size is P x M whatever the number of GPUs, and the shares gathered in rank order
    are the single-process batch in its order (what keeps the OIM lookup table identical). Call
    ``set_epoch`` before each epoch, as with DistributedSampler.
    """

    def __init__(
        self,
        pids: Sequence[int],
        identities_per_batch: int,
        instances_per_identity: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        section: str = "",
        sets: Sequence[str] | None = None,
        balance: str = "identity",
    ) -> None:
        """``section``: the params section of P and M (``finetune``, ...), named in errors."""
        p_key, m_key = (f"{section}.{key}" if section else key
                        for key in ("identities_per_batch", "instances_per_identity"))
        P, M = identities_per_batch, instances_per_identity
        if P < 1 or M < 1:
            raise ParamsError(f"{p_key} and {m_key}: expected values >= 1, got {P} and {M}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if (P * M) % world_size:
            raise ParamsError(f"{p_key} x {m_key} = {P} x {M} = {P * M} samples per global "
                              f"batch: expected a multiple of WORLD_SIZE={world_size}, the "
                              "number of torchrun processes, so that each gets an equal share; "
                              "change them or the number of processes")
        pids = np.asarray(pids)
        self.identities = np.unique(pids)
        if len(self.identities) < P:
            raise ParamsError(f"{p_key}={P}: expected at most "
                              f"{len(self.identities)}, the number of identities in the training "
                              "set (a batch holds P different identities)")
        # sample indices of each identity, in dataset order
        self.members = {int(p): np.flatnonzero(pids == p) for p in self.identities}
        self.P, self.M, self.p_key = P, M, p_key
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0
        self.by_set = self._sets(pids, sets, balance)

    def _sets(self, pids: np.ndarray, sets: Sequence[str] | None,
              balance: str) -> dict[str, np.ndarray] | None:
        """Each set's identities when batches balance the sets, else None (``sets`` None: one
        set, nothing to balance)."""
        if balance not in BALANCES:
            raise ValueError(f"balance: expected one of {BALANCES}, got {balance!r}")
        if balance == "identity" or sets is None:
            return None
        if len(sets) != len(pids):
            raise ValueError(f"balance='set' needs the set of every sample: {len(sets)} sets "
                             f"for {len(pids)} samples")
        sets = np.asarray(sets)
        by_set = {str(name): np.unique(pids[sets == name]) for name in np.unique(sets)}
        for pid in self.identities:
            if sum(int(pid) in members for members in by_set.values()) != 1:
                raise ValueError(f"identity {pid} has samples in more than one set: pool the "
                                 "sets first (pipeline.tables.pool_sets)")
        need = -(-self.P // len(by_set))  # a set's largest share of a batch
        small = {name: len(members) for name, members in by_set.items() if len(members) < need}
        if small:
            raise ParamsError(f"{self.p_key}={self.P}: batches that give each of {len(by_set)} "
                              f"sets an equal share need {need} identities of each, but "
                              + ", ".join(f"{n} has {c}" for n, c in small.items()))
        return by_set

    def _batch_identities(self, rng: np.random.Generator) -> Iterator[np.ndarray]:
        """The P identities of each batch of the epoch, in order."""
        if self.by_set is None:
            order = rng.permutation(self.identities)
            for b in range(len(self)):
                yield order[b * self.P:(b + 1) * self.P]
            return
        names = sorted(self.by_set)
        queues = {name: [] for name in names}
        for _ in range(len(self)):
            share = np.full(len(names), self.P // len(names))
            share[rng.choice(len(names), self.P % len(names), replace=False)] += 1
            batch = []
            for name, count in zip(names, share, strict=True):
                members = self.by_set[name]
                taken = []
                while len(taken) < count:  # (every set holds at least its share: _sets)
                    if not queues[name]:
                        queues[name] = list(rng.permutation(members))
                    pid = queues[name].pop()
                    if pid not in taken:
                        taken.append(pid)
                batch.extend(taken)
            yield np.array(batch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.identities) // self.P

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        for identities in self._batch_identities(rng):
            batch = []
            for pid in identities:
                members = self.members[int(pid)]
                replace = len(members) < self.M
                batch.extend(int(i) for i in rng.choice(members, self.M, replace=replace))
            share = len(batch) // self.world_size
            yield batch[self.rank * share:(self.rank + 1) * share]
