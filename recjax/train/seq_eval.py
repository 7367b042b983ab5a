"""Evaluation of sequence models: full ranking, and labelled sampled metrics.

Full ranking (the default, unprefixed keys): every item is scored for each
user's history, the items already in the user's history are masked, and the
held-out targets are looked up in the top K (recjax.train.evaluate's
RankingEvaluator: recall, precision, hr, ndcg, mrr, coverage @K).

Sampled (only to compare with papers that use it; keys carry the label,
e.g. 'uniform100_hr@10'): the next target is ranked among N negatives the
user never interacted with, drawn once per evaluator (fixed seed) uniformly
('uniform', SASRec's protocol) or in proportion to training popularity
('popularity', BERT4Rec's). rank = number of negatives scoring strictly
higher; hr@K = [rank < K], ndcg@K = [rank < K] / log2(rank + 2),
mrr = 1 / (rank + 1) over all N + 1 candidates.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from recjax.data.sequences import EvalSet, Sequences, bucket_widths
from recjax.train.evaluate import METRICS, RankingEvaluator

PROTOCOLS = ('uniform', 'popularity')


def _in_sorted(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
  if not len(sorted_keys):
    return np.zeros(keys.shape, bool)
  at = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
  return sorted_keys[at] == keys


def sample_negatives(rng: np.random.Generator, exclude: Sequence[np.ndarray],
                     n: int, num_items: int,
                     p: Optional[np.ndarray] = None) -> np.ndarray:
  """n distinct items per row, none of them in the row's `exclude`.

  Rows draw 2n candidates (i.i.d., uniform or by `p`), keep the first n
  that are new and allowed (sequential sampling without replacement), and
  redraw with twice as many while short.

  Returns:
    int32 [len(exclude), n].

  Raises:
    ValueError: a row has fewer than n allowed items.
  """
  rows = len(exclude)
  ex_rows = np.repeat(np.arange(rows), [len(e) for e in exclude])
  ex_keys = np.sort(ex_rows.astype(np.int64) * num_items
                    + np.concatenate([np.asarray(e, np.int64)
                                      for e in exclude] or [[]]))
  ex_keys = ex_keys[np.r_[True, ex_keys[1:] != ex_keys[:-1]][:len(ex_keys)]]
  drawable = np.ones(num_items, bool) if p is None else np.asarray(p) > 0
  allowed = drawable.sum() - np.bincount(
      ex_keys // num_items, weights=drawable[ex_keys % num_items],
      minlength=rows)
  if rows and allowed.min() < n:
    raise ValueError(f'a user has only {allowed.min()} items to draw {n} '
                     'sampled-evaluation negatives from; lower '
                     'eval.sampled_negatives')
  out = np.zeros((rows, n), np.int32)
  todo, m = np.arange(rows), 2 * n
  while len(todo):
    if p is None:
      cand = rng.integers(0, num_items, (len(todo), m))
    else:
      cand = rng.choice(num_items, (len(todo), m), p=p)
    key = todo[:, None].astype(np.int64) * num_items + cand
    ok = ~_in_sorted(key, ex_keys)
    # Repeats within a row: a stable sort keeps each value's first draw.
    order = np.argsort(cand, axis=1, kind='stable')
    srt = np.take_along_axis(cand, order, axis=1)
    repeat = np.zeros(cand.shape, bool)
    np.put_along_axis(repeat, order, np.c_[
        np.zeros((len(cand), 1), bool), srt[:, 1:] == srt[:, :-1]], axis=1)
    ok &= ~repeat
    done = ok.sum(1) >= n
    pick = np.argsort(~ok[done], axis=1, kind='stable')[:, :n]
    out[todo[done]] = np.take_along_axis(cand[done], pick, axis=1)
    todo, m = todo[~done], 2 * m
  return out


@functools.partial(jax.jit, static_argnames=('ks',))
def _sampled_metrics(queries, keys, cand, ks):
  """Per-row (hr@k..., ndcg@k..., mrr) of candidate 0 among cand [S, 1+N]."""
  scores = jnp.einsum('sd,snd->sn', queries, keys[cand])
  rank = jnp.sum(scores[:, 1:] > scores[:, :1], axis=1)
  out = [rank < k for k in ks]
  out += [jnp.where(rank < k, 1.0 / jnp.log2(rank + 2.0), 0.0) for k in ks]
  out.append(1.0 / (rank + 1.0))
  return jnp.stack([o.astype(jnp.float32) for o in out], axis=1)


def compute_queries(query_fn: Callable, params, history: Sequences,
                    batch_size: int, buckets: Sequence[int] = (),
                    extra: int = 0) -> np.ndarray:
  """query_fn(params, inputs) [B, D'] over every history row -> [S, D'].

  Rows are sorted by length and cut into batches of `batch_size` (the last
  one padded), each as wide as the bucket of its longest row + `extra`
  (BERT4Rec's appended mask token needs one more column).
  """
  s = len(history.users)
  widths = bucket_widths(history.width, buckets)
  order = np.argsort(history.length, kind='stable')
  out = None
  for start in range(0, s, batch_size):
    rows = order[start:start + batch_size]
    need = min(int(history.length[rows].max()) + extra, history.width)
    w = widths[np.searchsorted(widths, need)]
    rows = np.pad(rows, (0, batch_size - len(rows)), mode='edge')
    q = np.asarray(query_fn(params, history.features(rows, w)))
    if out is None:
      out = np.zeros((s, q.shape[-1]), np.float32)
    n = min(batch_size, s - start)
    out[order[start:start + n]] = q[:n]
  return out


class SeqEvaluator:
  """Full-ranking and sampled metrics of one EvalSet.

  Args:
    evalset: histories and targets.
    num_items: I.
    num_users: size of the user index space.
    ks: cut-offs.
    protocols: sampled protocols to add ('uniform', 'popularity').
    popularity: float [I] item weights for 'popularity' (training counts).
    num_negatives: N sampled negatives per user.
    seed: fixes the sampled candidates.
    batch_size: users per jitted full-ranking batch.
  """

  def __init__(self, evalset: EvalSet, num_items: int, num_users: int,
               ks: Sequence[int] = (10, 20),
               protocols: Sequence[str] = PROTOCOLS,
               popularity: Optional[np.ndarray] = None,
               num_negatives: int = 100, seed: int = 0,
               batch_size: int = 1024):
    hist, targets = evalset.history, evalset.targets
    self.evalset, self.ks = evalset, tuple(sorted(int(k) for k in ks))
    self.num_users, self.num_negatives = num_users, num_negatives
    self.batch_size = min(batch_size, len(hist.users))
    seen_users = np.repeat(hist.users, [len(x) for x in hist.seen])
    seen_items = np.concatenate(hist.seen)
    valid = targets >= 0
    self.full = RankingEvaluator(
        seen_users, seen_items, np.repeat(hist.users, valid.sum(1)),
        targets[valid], num_users, num_items, ks=self.ks,
        batch_size=batch_size)
    self.candidates = {}
    for k, proto in enumerate(protocols):
      if proto not in PROTOCOLS:
        raise ValueError(f'eval.sampled={proto!r} is not one of '
                         f'{list(PROTOCOLS)}')
      p = None
      if proto == 'popularity':
        w = np.asarray(popularity, np.float64)
        p = w / w.sum()
      exclude = [np.r_[s, t[t >= 0]] for s, t in zip(hist.seen, targets)]
      neg = sample_negatives(np.random.default_rng([seed, k]), exclude,
                             num_negatives, num_items, p)
      self.candidates[proto] = np.concatenate([targets[:, :1], neg], axis=1)

  def _label(self, proto: str) -> str:
    """Key prefix of a sampled protocol's metrics, e.g. 'uniform100'."""
    return f'{proto}{self.num_negatives}'

  def metric_names(self) -> set[str]:
    """The metric keys evaluate_queries returns (e.g. 'ndcg@10',
    'uniform100_hr@10'), so a config can be checked before training."""
    names = {f'{m}@{k}' for m in (*METRICS, 'coverage') for k in self.ks}
    for proto in self.candidates:
      label = self._label(proto)
      names |= {f'{label}_{m}@{k}' for m in ('hr', 'ndcg') for k in self.ks}
      names.add(f'{label}_mrr')
    return names

  def evaluate_queries(self, queries: np.ndarray, keys: jax.Array) -> dict:
    """Metrics from query vectors [S, D'] (rows of the EvalSet) and all
    items' keys [I, D']."""
    user_emb = np.zeros((self.num_users, queries.shape[1]), np.float32)
    user_emb[self.evalset.history.users] = queries
    out = self.full.evaluate(user_emb, keys)
    s, b = len(queries), self.batch_size
    for proto, cand in self.candidates.items():
      # Fixed-size chunks: one compilation, and [b, 1 + N, D'] gathered keys
      # at a time rather than all users' at once.
      sums = 0.0
      for start in range(0, s, b):
        n = min(b, s - start)
        pad = lambda a: np.pad(a[start:start + n], [(0, b - n), (0, 0)])
        per = _sampled_metrics(pad(queries), keys, pad(cand), ks=self.ks)
        sums = sums + np.asarray(per)[:n].sum(axis=0, dtype=np.float64)
      mean = sums / s
      label = self._label(proto)
      for j, k in enumerate(self.ks):
        out[f'{label}_hr@{k}'] = float(mean[j])
        out[f'{label}_ndcg@{k}'] = float(mean[len(self.ks) + j])
      out[f'{label}_mrr'] = float(mean[-1])
    return out
