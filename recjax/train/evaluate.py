"""Full-ranking evaluation: score every item for each test user, mask the
user's training items, take the top K and compare with the held-out items.

Metrics at each K (binary relevance, averaged over evaluated users):
  recall@K    hits / |test items|                 (LightGCN's Recall)
  precision@K hits / K
  hr@K        1 if any hit
  ndcg@K      DCG / IDCG with IDCG over min(|test|, K) hits
  mrr@K       1 / rank of the first hit (0 if none in the top K)
  coverage@K  fraction of the catalogue in at least one user's top K
The scoring, masking and top-K run jitted in fixed-size user batches (the last
batch padded and masked), so there is one compilation per run.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from recjax.train.distributed import to_host

METRICS = ('recall', 'precision', 'hr', 'ndcg', 'mrr')


def _padded_lists(users: np.ndarray, items: np.ndarray, rows: np.ndarray,
                  num_users: int) -> np.ndarray:
  """Items of each user in `rows`, padded with -1: int32 [len(rows), W]."""
  order = np.lexsort((items, users))
  users, items = users[order], items[order]
  counts = np.bincount(users, minlength=num_users)
  starts = np.r_[0, np.cumsum(counts)[:-1]]
  width = max(1, int(counts[rows].max())) if len(rows) else 1
  out = np.full((len(rows), width), -1, np.int32)
  col = np.arange(width)
  for_rows = counts[rows]
  mask = col[None, :] < for_rows[:, None]
  out[mask] = items[(starts[rows][:, None] + col[None, :])[mask]]
  return out


@functools.partial(jax.jit, static_argnames=('ks', 'num_items'))
def _batch_metrics(user_emb, item_emb, train_pad, test_pad, valid, ks,
                   num_items):
  """Metric sums over one user batch and its top-K item ids.

  Args:
    user_emb: [B, D]; item_emb: [I, D]; train_pad: int32 [B, Wt] (-1 pad);
    test_pad: int32 [B, We] (-1 pad); valid: bool [B] (False for padding).

  Returns:
    (sums [len(ks), len(METRICS)], topk ids int32 [B, max(ks)]).
  """
  scores = user_emb @ item_emb.T                                   # [B, I]
  rows = jnp.arange(scores.shape[0])[:, None]
  # -1 padding maps out of range and is dropped by the scatter.
  cols = jnp.where(train_pad < 0, num_items, train_pad)
  scores = scores.at[rows, cols].set(-jnp.inf, mode='drop')
  kmax = max(ks)
  _, topk = jax.lax.top_k(scores, kmax)                            # [B, K]
  hits = jnp.any((topk[:, :, None] == test_pad[:, None, :])
                 & (test_pad[:, None, :] >= 0), axis=-1)           # [B, K]
  hits = hits.astype(jnp.float32)
  n_test = jnp.sum(test_pad >= 0, axis=-1).astype(jnp.float32)
  discount = 1.0 / jnp.log2(jnp.arange(kmax) + 2.0)
  first_hit = jnp.argmax(hits, axis=-1)
  out = []
  for k in ks:
    h = hits[:, :k]
    nh = h.sum(-1)
    idcg = jnp.cumsum(discount[:k])[jnp.minimum(n_test, k).astype(jnp.int32) - 1]
    per_user = jnp.stack([
        nh / jnp.maximum(n_test, 1.0),
        nh / k,
        (nh > 0).astype(jnp.float32),
        (h * discount[:k]).sum(-1) / idcg,
        jnp.where(nh > 0, 1.0 / (first_hit + 1.0), 0.0),
    ], axis=-1)
    out.append(jnp.sum(per_user * valid[:, None], axis=0))
  return jnp.stack(out), topk


class RankingEvaluator:
  """Full-ranking evaluation over a fixed set of users.

  Args:
    train_users, train_items: training pairs (their items are masked).
    test_users, test_items: held-out pairs (the relevant items).
    num_users, num_items: index space sizes.
    ks: cut-offs.
    batch_size: users per jitted batch.
    exclude_users: users not to evaluate (e.g. cold-start users, which have
      their own slice).
  """

  def __init__(self, train_users, train_items, test_users, test_items,
               num_users: int, num_items: int, ks: Sequence[int] = (20,),
               batch_size: int = 1024, exclude_users=None):
    users = np.unique(test_users)
    if exclude_users is not None and len(exclude_users):
      users = users[~np.isin(users, exclude_users)]
    if not len(users):
      raise ValueError('evaluation has no test users')
    self.users = users.astype(np.int32)
    self.num_items = num_items
    self.ks = tuple(sorted(int(k) for k in ks))
    self.batch_size = min(batch_size, len(users))
    self.train_pad = _padded_lists(np.asarray(train_users),
                                   np.asarray(train_items), self.users,
                                   num_users)
    self.test_pad = _padded_lists(np.asarray(test_users),
                                  np.asarray(test_items), self.users,
                                  num_users)

  def evaluate(self, user_emb: jax.Array, item_emb: jax.Array) -> dict:
    """Returns {'recall@20': ..., 'coverage@20': ..., 'eval_users': n}.

    Args:
      user_emb: [U, D] for all users; item_emb: [I, D] for all items.
    """
    # Arrays spread over other processes' devices are read here first.
    user_emb, item_emb = to_host(user_emb), to_host(item_emb)
    b = self.batch_size
    n = len(self.users)
    sums = np.zeros((len(self.ks), len(METRICS)))
    seen = [np.zeros(self.num_items, bool) for _ in self.ks]
    for start in range(0, n, b):
      sl = slice(start, min(start + b, n))
      pad = b - (sl.stop - sl.start)
      take = lambda a: np.pad(a[sl], [(0, pad)] + [(0, 0)] * (a.ndim - 1))
      valid = np.arange(b) < (sl.stop - sl.start)
      s, topk = _batch_metrics(user_emb[take(self.users)], item_emb,
                               take(self.train_pad), take(self.test_pad),
                               valid, ks=self.ks, num_items=self.num_items)
      sums += np.asarray(s, np.float64)
      topk = np.asarray(topk)[valid]
      for j, k in enumerate(self.ks):
        seen[j][topk[:, :k].ravel()] = True
    out = {}
    for j, k in enumerate(self.ks):
      for m, name in enumerate(METRICS):
        out[f'{name}@{k}'] = float(sums[j, m] / n)
      out[f'coverage@{k}'] = float(seen[j].mean())
    out['eval_users'] = int(n)
    return out
