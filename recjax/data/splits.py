"""Train/test splits: random per-user holdout, leave-last-out, temporal cut-off,
and held-out cold-start users and items.

All functions are deterministic given their seed and return `Interactions`
views (copies of the selected rows). "Ordered" means by (timestamp, original
row) so ties keep file order, which is what SASRec-style data relies on.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from recjax.data.schema import Interactions


def _order_by_user_time(inter: Interactions) -> np.ndarray:
  """Row order sorted by user, then timestamp, then original position."""
  return np.lexsort((np.arange(len(inter)), inter.timestamp, inter.user))


def random_holdout(inter: Interactions, test_frac: float = 0.2,
                   seed: int = 0, min_train: int = 1
                   ) -> tuple[Interactions, Interactions]:
  """LightGCN/NGCF style: per user, a random `test_frac` of rows go to test.

  Each user keeps at least `min_train` training rows (users with fewer rows
  than that stay entirely in train).

  Returns:
    (train, test) interactions.
  """
  if not 0.0 < test_frac < 1.0:
    raise ValueError(f'test_frac must be in (0, 1), got {test_frac}')
  rng = np.random.default_rng(seed)
  # Random key per row, then rank rows within each user by that key.
  order = np.lexsort((rng.random(len(inter)), inter.user))
  users = inter.user[order]
  starts = np.r_[0, np.flatnonzero(np.diff(users)) + 1]
  counts = np.diff(np.r_[starts, len(users)])
  rank = np.arange(len(users)) - np.repeat(starts, counts)
  n_test = np.floor(counts * test_frac).astype(np.int64)
  n_test = np.minimum(n_test, np.maximum(counts - min_train, 0))
  is_test = np.zeros(len(inter), bool)
  is_test[order] = rank < np.repeat(n_test, counts)
  return inter.take(~is_test), inter.take(is_test)


def leave_last_out(inter: Interactions, num_valid: int = 1,
                   min_history: int = 3, valid_users: int = 0,
                   seed: int = 0
                   ) -> tuple[Interactions, Optional[Interactions],
                              Interactions]:
  """SASRec style: each user's last event is test, the one before valid.

  Users with fewer than `min_history` events keep everything in train (as in
  SASRec's `data_partition`). `valid_users` > 0 holds out validation events
  for only that many eligible users (drawn with `seed`); every other user
  trains on all but the test event. That is gSASRec's and Petrov &
  Macdonald's BERT4Rec protocol (512 users): the event right before the
  test one is then in training for most users, as it would be in
  production.

  Returns:
    (train, valid or None when num_valid == 0, test).
  """
  order = _order_by_user_time(inter)
  users = inter.user[order]
  last = np.r_[np.flatnonzero(np.diff(users)), len(users) - 1]
  counts = np.diff(np.r_[-1, last])
  pos_from_end = np.repeat(last, counts) - np.arange(len(users))
  eligible = np.repeat(counts >= min_history, counts)
  test = eligible & (pos_from_end == 0)
  valid = eligible & (pos_from_end >= 1) & (pos_from_end <= num_valid)
  if valid_users < 0:
    raise ValueError(f'valid_users must be >= 0, got {valid_users}')
  if valid_users and num_valid:
    candidates = users[last[counts >= min_history]]
    chosen = np.random.default_rng(seed).choice(
        candidates, min(valid_users, len(candidates)), replace=False)
    valid &= np.isin(users, chosen)
  train = ~(test | valid)
  split = lambda mask: inter.take(order[mask])
  return (split(train), split(valid) if num_valid else None, split(test))


def temporal_split(inter: Interactions, cutoff: Optional[int] = None,
                   test_frac: float = 0.2) -> tuple[Interactions, Interactions]:
  """Global time cut-off: rows at or after `cutoff` are test.

  Args:
    cutoff: timestamp; if None, the (1 - test_frac) quantile of timestamps.

  Returns:
    (train, test) interactions.
  """
  if cutoff is None:
    cutoff = int(np.quantile(inter.timestamp, 1.0 - test_frac))
  is_test = inter.timestamp >= cutoff
  return inter.take(~is_test), inter.take(is_test)


def hold_out_cold(inter: Interactions, num_users: int, num_items: int,
                  cold_user_frac: float = 0.0, cold_item_frac: float = 0.0,
                  seed: int = 0
                  ) -> tuple[Interactions, Interactions, np.ndarray,
                             np.ndarray]:
  """Removes a random set of users and items from training entirely.

  Returns:
    (warm, cold, cold_users, cold_items): `warm` has no row touching a cold
    user or item; `cold` has every row that does (its evaluation slice);
    cold ids are sorted int32 arrays.
  """
  rng = np.random.default_rng(seed)
  pick = lambda n, frac: np.sort(rng.choice(
      n, size=int(round(n * frac)), replace=False)).astype(np.int32)
  cold_users, cold_items = pick(num_users, cold_user_frac), pick(
      num_items, cold_item_frac)
  is_cold = np.isin(inter.user, cold_users) | np.isin(inter.item, cold_items)
  return inter.take(~is_cold), inter.take(is_cold), cold_users, cold_items


def drop_seen(test: Interactions, train: Interactions) -> Interactions:
  """Test rows whose (user, item) pair is not in train, first occurrence only.

  Full-ranking evaluation masks training items, so a test pair already seen in
  training could never be retrieved; duplicates would count a hit twice.
  """
  key = lambda x: x.user.astype(np.int64) << 32 | x.item
  test_key = key(test)
  _, first = np.unique(test_key, return_index=True)
  keep = np.zeros(len(test), bool)
  keep[first] = True
  keep &= ~np.isin(test_key, key(train))
  return test.take(keep)
