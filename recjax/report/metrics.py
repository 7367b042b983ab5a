"""The results table's metrics, computed the same way for every model from
top-K lists over the same users (tools/report.py).

A model is given as a scoring function: user rows -> scores [n, I]. Items a
user already has in their history are masked (full ranking, as in
recjax.train.seq_eval). Figures:
  precision@10     hits in the top 10 / 10, averaged over users
  recall@K, ndcg@K  over each user's held-out targets (K = 20 by default)
  coverage@10      share of the catalogue in at least one user's top 10
  cold_item_recall@10  recall over the targets that are cold-start items
                   (never in training), users with such a target only
  cold_item_within_cold_recall@10  the same targets, with the model's
                   scores ranking the cold items only ("which new
                   product?"; `cold_top`)
  ild@10           intra-list diversity: mean share of pairs in a top 10
                   whose items are in different leaf categories
  latency          p50 / p99 ms of one request (one user's scores + top-k)
"""

from __future__ import annotations

import time
from typing import Callable, Optional, Sequence

import numpy as np

ScoreFn = Callable[[np.ndarray], np.ndarray]   # rows [n] -> scores [n, I]


def top_lists(score_fn: ScoreFn, num_rows: int, seen: Sequence[np.ndarray],
              k: int, batch: int = 512) -> np.ndarray:
  """int [S, k] best items of every row, seen items masked."""
  out = np.zeros((num_rows, k), np.int64)
  for lo in range(0, num_rows, batch):
    rows = np.arange(lo, min(lo + batch, num_rows))
    s = np.array(score_fn(rows), np.float32, copy=True)
    for j, r in enumerate(rows):
      s[j, seen[r]] = -np.inf
    top = np.argpartition(-s, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(s, top, 1), axis=1, kind='stable')
    out[rows] = np.take_along_axis(top, order, 1)
  return out


def _dcg_ideal(n: np.ndarray, k: int) -> np.ndarray:
  disc = 1.0 / np.log2(np.arange(2, k + 2))
  cum = np.r_[0.0, np.cumsum(disc)]
  return cum[np.minimum(n, k)]


def ranking_metrics(top: np.ndarray, targets: np.ndarray, ks=(10, 20)
                    ) -> dict:
  """precision / recall / ndcg @k from top lists [S, >=max k] and targets
  [S, W] (-1 padded); rows without targets are skipped."""
  has = (targets >= 0).any(1)
  if not has.any():
    return {**{f'{m}@{k}': float('nan') for k in ks
               for m in ('precision', 'recall', 'ndcg')}, 'users': 0}
  top, targets = top[has], targets[has]
  n_t = (targets >= 0).sum(1)
  hit = (top[:, :, None] == targets[:, None, :]).any(2)     # [S, K]
  out = {}
  for k in ks:
    h = hit[:, :k]
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    out[f'precision@{k}'] = float(h.sum(1).mean() / k)
    out[f'recall@{k}'] = float((h.sum(1) / np.minimum(n_t, k)).mean())
    out[f'ndcg@{k}'] = float(((h * disc).sum(1) / _dcg_ideal(n_t, k)).mean())
  out['users'] = int(has.sum())
  return out


def coverage(top: np.ndarray, num_items: int, k: int = 10) -> float:
  return float(len(np.unique(top[:, :k])) / num_items)


def intra_list_diversity(top: np.ndarray, category: np.ndarray, k: int = 10
                         ) -> float:
  """Mean share of item pairs of a top-k list in different categories."""
  c = np.asarray(category)[top[:, :k]]
  diff = c[:, :, None] != c[:, None, :]
  return float(diff.sum((1, 2)).mean() / (k * (k - 1)))


def latency_ms(score_one: Callable[[int], np.ndarray], rows: np.ndarray,
               k: int = 10) -> dict:
  """p50 / p99 ms of score_one(row) -> [I] plus its top-k."""
  for r in rows[:3]:
    score_one(int(r))
  times = []
  for r in rows:
    t = time.perf_counter()
    s = np.asarray(score_one(int(r)))
    top = np.argpartition(-s, k - 1)[:k]
    top[np.argsort(-s[top])]
    times.append(time.perf_counter() - t)
  ms = np.asarray(times) * 1e3
  return dict(latency_p50_ms=float(np.percentile(ms, 50)),
              latency_p99_ms=float(np.percentile(ms, 99)))


def cold_top(score_fn: ScoreFn, num_rows: int, cold_items: np.ndarray,
             k: int, batch: int = 512) -> np.ndarray:
  """int [S, k] best cold items of every row (item indices): the model's
  scores of `cold_items` only, every other item out of the running."""
  cold_items = np.asarray(cold_items)
  def only_cold(rows):
    s = np.asarray(score_fn(rows), np.float32)
    out = np.full_like(s, -np.inf)
    out[:, cold_items] = s[:, cold_items]
    return out
  empty = [np.zeros(0, np.int64)] * num_rows
  return top_lists(only_cold, num_rows, empty, min(k, len(cold_items)), batch)


def table_row(top: np.ndarray, targets: np.ndarray, cold_items: np.ndarray,
              num_items: int, category: np.ndarray,
              latency: Optional[dict] = None,
              top_cold: Optional[np.ndarray] = None) -> dict:
  """Every figure of the results table for one model's top lists (and its
  `cold_top` lists, for the among-cold-items recall)."""
  row = ranking_metrics(top, targets, ks=(10, 20))
  cold = np.where(np.isin(targets, cold_items), targets, -1)
  c = ranking_metrics(top, cold, ks=(10, 20))
  row['cold_item_recall@10'] = c['recall@10']
  row['cold_item_recall@20'] = c['recall@20']
  row['cold_item_users'] = c['users']
  if top_cold is not None and top_cold.shape[1] >= 10:
    w = ranking_metrics(top_cold, cold, ks=(10,))
    row['cold_item_within_cold_recall@10'] = w['recall@10']
  row['coverage@10'] = coverage(top, num_items)
  row['ild@10'] = intra_list_diversity(top, category)
  row.update(latency or {})
  return row
