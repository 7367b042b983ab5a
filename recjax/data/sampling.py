"""Training-pair samplers for implicit feedback (numpy, deterministic by step).

A batch is a pure function of (seed, step): epoch e is a fresh permutation of
the positive pairs and step s takes slice s % steps_per_epoch of it. So a run
resumed from a checkpoint at step s continues the same epoch with the same
batches, with no iterator state to save.
"""

from __future__ import annotations

import numpy as np


def _epoch_permutation(sampler, epoch: int, n: int) -> np.ndarray:
  """The sampler's permutation of n rows for `epoch`, cached for one epoch."""
  if epoch != sampler._perm_epoch:
    rng = np.random.default_rng([sampler.seed, epoch])
    sampler._perm, sampler._perm_epoch = rng.permutation(n), epoch
  return sampler._perm


class PairSampler:
  """Samples (user, positive item, negatives) batches of static shape.

  Args:
    users, items: int arrays [P] of positive training pairs.
    num_items: size of the item index space.
    batch_size: B (the last partial batch of an epoch is dropped, so every
      batch has the same shape and the step compiles once).
    num_negatives: M.
    shared_negatives: if True, one set of M uniform negatives per batch
      (`neg` [M], for sampled softmax); else M per example, rejected if they
      are positives of that user (`neg` [B, M], or [B] when M == 1, for BPR).
    seed: base seed.
  """

  def __init__(self, users: np.ndarray, items: np.ndarray, num_items: int,
               batch_size: int, num_negatives: int = 1,
               shared_negatives: bool = False, seed: int = 0):
    if len(users) < batch_size:
      raise ValueError(f'batch_size {batch_size} exceeds the {len(users)} '
                       'training pairs; lower train.batch_size')
    self.users = np.asarray(users, np.int32)
    self.items = np.asarray(items, np.int32)
    self.num_items = num_items
    self.batch_size = batch_size
    self.num_negatives = num_negatives
    self.shared = shared_negatives
    self.seed = seed
    self._keys = np.unique(self.users.astype(np.int64) << 32 | self.items)
    self._perm_epoch, self._perm = -1, None

  @property
  def steps_per_epoch(self) -> int:
    return len(self.users) // self.batch_size

  def _is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    key = users.astype(np.int64) << 32 | items
    pos = np.searchsorted(self._keys, key)
    return self._keys[np.minimum(pos, len(self._keys) - 1)] == key

  def batch(self, step: int) -> dict:
    """The batch for global step `step`: dict of int32 arrays."""
    epoch, offset = divmod(step, self.steps_per_epoch)
    perm = _epoch_permutation(self, epoch, len(self.users))
    idx = perm[offset * self.batch_size:(offset + 1) * self.batch_size]
    users, pos = self.users[idx], self.items[idx]
    rng = np.random.default_rng([self.seed, epoch, offset, 1])
    m = self.num_negatives
    if self.shared:
      neg = rng.integers(0, self.num_items, size=m, dtype=np.int32)
    else:
      neg = rng.integers(0, self.num_items, size=(len(idx), m), dtype=np.int32)
      rep_users = np.repeat(users[:, None], m, 1)
      for _ in range(10):  # Resample the few negatives that are positives.
        bad = self._is_positive(rep_users, neg)
        if not bad.any():
          break
        neg[bad] = rng.integers(0, self.num_items, size=int(bad.sum()))
      else:
        # Very active users: draw exactly from their complement (rare path).
        for r, c in zip(*np.nonzero(self._is_positive(rep_users, neg))):
          seen = self._keys[(self._keys >> 32) == users[r]] & 0xFFFFFFFF
          free = np.setdiff1d(np.arange(self.num_items), seen)
          if len(free):
            neg[r, c] = free[rng.integers(len(free))]
      if m == 1:
        neg = neg[:, 0]
    return dict(user=users, pos=pos, neg=neg)


class UserSampler:
  """Samples batches of users with all their training positives.

  For full-softmax (multinomial) losses: one row of logits over every item
  serves all of a user's positives, so an epoch costs num_users rows instead
  of num_pairs.

  Args:
    users, items: int arrays [P] of positive training pairs.
    batch_size: B users per batch (users are permuted per epoch; the last
      partial batch is dropped).
    max_positives: L, the padded width; a user with more positives gets a
      fresh random L of them each epoch. Default: the largest degree.
    seed: base seed.

  `batch(step)` returns user [B], pos [B, L] and pos_mask [B, L] (float32).
  """

  def __init__(self, users: np.ndarray, items: np.ndarray, batch_size: int,
               max_positives: int | None = None, seed: int = 0):
    order = np.lexsort((items, users))
    users, items = np.asarray(users)[order], np.asarray(items)[order]
    self.ids, starts, counts = np.unique(users, return_index=True,
                                         return_counts=True)
    if len(self.ids) < batch_size:
      raise ValueError(f'batch_size {batch_size} exceeds the {len(self.ids)} '
                       'training users; lower train.batch_size')
    self.items, self.starts, self.counts = items.astype(np.int32), starts, counts
    self.width = int(max_positives or counts.max())
    self.batch_size, self.seed = batch_size, seed
    self._perm_epoch, self._perm = -1, None

  @property
  def steps_per_epoch(self) -> int:
    return len(self.ids) // self.batch_size

  def batch(self, step: int) -> dict:
    epoch, offset = divmod(step, self.steps_per_epoch)
    perm = _epoch_permutation(self, epoch, len(self.ids))
    rows = perm[offset * self.batch_size:(offset + 1) * self.batch_size]
    rng = np.random.default_rng([self.seed, epoch, offset, 2])
    b, l = len(rows), self.width
    n = np.minimum(self.counts[rows], l)
    # Column j of row r reads positive j (or a random subset when the user
    # has more than L: random keys, take the L smallest).
    col = np.arange(l)[None, :]
    mask = col < n[:, None]
    over = self.counts[rows] > l
    pick = np.broadcast_to(col, (b, l)).copy()
    for r in np.nonzero(over)[0]:
      pick[r] = np.sort(rng.choice(self.counts[rows[r]], l, replace=False))
    idx = self.starts[rows][:, None] + np.where(mask, pick, 0)
    pos = np.where(mask, self.items[idx], 0).astype(np.int32)
    return dict(user=self.ids[rows].astype(np.int32), pos=pos,
                pos_mask=mask.astype(np.float32))
