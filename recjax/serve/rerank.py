"""Re-ranking: the ranker's top N (~500) -> the K (~50) items a page shows.

Two parts:

`constrain` is the business-rule layer, plain numpy on one request. It
  1. drops ineligible candidates: excluded ids, out-of-stock items and
     repeated ids (the first occurrence, i.e. the better-ranked one, stays);
  2. z-scores the ranker's scores over the eligible items, so the weights
     below mean the same thing whatever the ranker's scale;
  3. adds per-item terms to that relevance:
       freshness  + w_f * exp(-age_days * ln 2 / half_life_days)
       margin     + w_m * margin * price / max |margin * price| in the list
                  (or + w_m * margin with margin_by_price=False)
       fairness   - w_x * exposure[seller] / max(exposure)   (the server's
                  running exposure counts, so a seller that already got the
                  most exposure pays the whole weight)
  4. picks K items greedily by MMR over leaf categories,
       objective = lambda * relevance - (1 - lambda) * [category shown]
     skipping sellers that already have `max_per_seller` items.
The category similarity is 0/1, so an item's objective only ever drops once
(when its category is first shown); the loop keeps the objective vector and
updates it in place: K iterations of a few O(N) numpy ops (~0.5 ms for
500 -> 50). The objective at pick time is non-increasing down the list and
is the returned `score`.

Every returned item lists why it sits where it does (`reasons`), in this
order, each only when it applies (boosts only when visible at 2 decimals):
  'freshness +0.12'                       relevance terms, z-score units
  'margin +0.03'
  'fairness -0.04 (seller 17)'
  'diversity -0.20 (category 5 already shown)'   objective units, 1 - lambda
  'seller_cap: skipped 2 items of seller 17'     capped items that would
                                          have outranked it (each skipped
                                          item is reported once, on the
                                          first item that took its place)
  'up 5' / 'down 3'                       rank vs the input position

`ListwiseReranker` is the learned alternative (or a feature for the rules):
a small bidirectional transformer over the ranked list, so an item's score
can depend on what else is in the list (near-duplicates, a list short of a
category). Each item token is a projection of [item embedding, ranker
score, log rank position, freshness, margin, ...] (`listwise_features`
builds the numeric part); a projected user embedding is prepended as token
0, so attention personalises every position. It trains with the listwise
softmax cross-entropy (ListNet top-1) against labels normalised to sum to
one per list. Serving pads lists to a fixed bucket (e.g. N = 500) so there
is one compilation.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from recjax.models.attention import Encoder

_DAY = 86400.0


# ----------------------------------------------------------------------------
# Item metadata and configuration.


@dataclasses.dataclass
class ItemMeta:
  """Per-item arrays, row i = item id i (I rows).

  Attributes:
    seller: int32 [I] seller id (>= 0).
    category: int32 [I] leaf category id.
    created_at: int64 [I] listing time, seconds since the epoch.
    price: float32 [I].
    margin: float32 [I] margin as a fraction of the price.
    in_stock: bool [I].
  """
  seller: np.ndarray
  category: np.ndarray
  created_at: np.ndarray
  price: np.ndarray
  margin: np.ndarray
  in_stock: np.ndarray

  _DTYPES = (('seller', np.int32), ('category', np.int32),
             ('created_at', np.int64), ('price', np.float32),
             ('margin', np.float32), ('in_stock', np.bool_))

  def validate(self) -> 'ItemMeta':
    """Checks shapes and dtypes; returns self. Raises ValueError."""
    n = None
    for name, dtype in self._DTYPES:
      a = getattr(self, name)
      if not isinstance(a, np.ndarray):
        raise ValueError(f'ItemMeta.{name} must be a numpy array, got '
                         f'{type(a).__name__}')
      if a.ndim != 1:
        raise ValueError(f'ItemMeta.{name} must be 1-D [I], got shape '
                         f'{a.shape}')
      if a.dtype != dtype:
        raise ValueError(f'ItemMeta.{name} must be {np.dtype(dtype).name}, '
                         f'got {a.dtype.name}')
      if n is None:
        n = len(a)
      elif len(a) != n:
        raise ValueError(f'ItemMeta.{name} has {len(a)} rows, ItemMeta.seller '
                         f'has {n}: every field must have one row per item')
    if n and self.seller.min() < 0:
      raise ValueError('ItemMeta.seller has negative ids')
    return self

  @property
  def num_items(self) -> int:
    return len(self.seller)


def _check_int(name, v, lo):
  if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
    raise ValueError(f'{name} must be an int, got {v!r}')
  if v < lo:
    raise ValueError(f'{name} must be >= {lo}, got {v}')


def _check_float(name, v, lo=None, hi=None, lo_open=False):
  if isinstance(v, bool) or not isinstance(v, (int, float, np.integer,
                                               np.floating)):
    raise ValueError(f'{name} must be a number, got {v!r}')
  if not math.isfinite(v):
    raise ValueError(f'{name} must be finite, got {v}')
  if lo is not None and (v <= lo if lo_open else v < lo):
    raise ValueError(f'{name} must be {">" if lo_open else ">="} {lo}, '
                     f'got {v}')
  if hi is not None and v > hi:
    raise ValueError(f'{name} must be <= {hi}, got {v}')


@dataclasses.dataclass(frozen=True)
class RerankConfig:
  """Re-ranking rules; per-request changes go through `override`.

  Attributes:
    k: items to return (>= 1).
    max_per_seller: most items of one seller in the list; None = no cap.
    mmr_lambda: in [0, 1]; 1 = pure relevance, lower trades relevance for
      leaf-category diversity.
    freshness_weight: weight (>= 0) of the freshness boost in [0, 1].
    freshness_half_life_days: age (> 0) at which the boost halves.
    margin_weight: weight (>= 0) of the margin boost in [-1, 1].
    margin_by_price: boost margin * price (profit per sale) rather than the
      margin fraction.
    fairness_weight: weight (>= 0) of the seller-exposure penalty in [0, 1].
  """
  k: int = 50
  max_per_seller: Optional[int] = 3
  mmr_lambda: float = 0.8
  freshness_weight: float = 0.1
  freshness_half_life_days: float = 7.0
  margin_weight: float = 0.05
  margin_by_price: bool = True
  fairness_weight: float = 0.05

  def __post_init__(self):
    _check_int('k', self.k, 1)
    if self.max_per_seller is not None:
      _check_int('max_per_seller', self.max_per_seller, 1)
    _check_float('mmr_lambda', self.mmr_lambda, 0.0, 1.0)
    for name in ('freshness_weight', 'margin_weight', 'fairness_weight'):
      _check_float(name, getattr(self, name), 0.0)
    _check_float('freshness_half_life_days', self.freshness_half_life_days,
                 0.0, lo_open=True)
    if not isinstance(self.margin_by_price, (bool, np.bool_)):
      raise ValueError(f'margin_by_price must be a bool, got '
                       f'{self.margin_by_price!r}')

  def override(self, mapping: Optional[Mapping[str, Any]]) -> 'RerankConfig':
    """A copy with `mapping`'s fields replaced (e.g. a request's overrides).

    Raises:
      ValueError naming the key for an unknown key or a bad value.
    """
    if not mapping:
      return self
    known = {f.name for f in dataclasses.fields(self)}
    for key in mapping:
      if key not in known:
        raise ValueError(f'unknown re-rank option {key!r}; known: '
                         f'{sorted(known)}')
    return dataclasses.replace(self, **mapping)


# ----------------------------------------------------------------------------
# The constraint layer.


def _freshness(created_at, now, half_life_days):
  """exp(-age ln2 / half_life) in (0, 1]; items from the future count as new."""
  age = np.maximum(now - created_at, 0).astype(np.float64) / _DAY
  return np.exp(-age * (math.log(2.0) / half_life_days))


def _margin_value(meta, items, by_price):
  """Margin boost before its weight, in [-1, 1] over the list."""
  m = meta.margin[items].astype(np.float64)
  if not by_price:
    return m
  m = m * meta.price[items]
  top = np.abs(m).max() if len(m) else 0.0
  return m / top if top > 0 else np.zeros_like(m)


def _eligible(items, meta, exclude):
  """bool [N]: in stock, not excluded, first occurrence of its id."""
  ok = meta.in_stock[items].copy()
  if exclude is not None and len(exclude):
    ok &= ~np.isin(items, np.asarray(exclude))
  _, first = np.unique(items, return_index=True)
  once = np.zeros(len(items), bool)
  once[first] = True
  return ok & once


def _groups(idx):
  """Members of each group of compact ids idx [N] in [0, G).

  Returns (order [N], bounds [G + 1]): group g is order[bounds[g]:bounds[g+1]].
  """
  order = np.argsort(idx, kind='stable')
  bounds = np.r_[0, np.cumsum(np.bincount(idx))]
  return order, bounds


def constrain(items: np.ndarray, scores: np.ndarray, meta: ItemMeta, now: int,
              config: RerankConfig = RerankConfig(),
              exclude: Optional[np.ndarray] = None,
              seller_exposure: Optional[np.ndarray] = None) -> list[dict]:
  """Applies the business rules to one ranked list (see the module doc).

  Args:
    items: int [N] item ids in the ranker's order (ids index `meta`).
    scores: float [N] ranker scores, aligned with `items`.
    meta: item metadata (not re-validated here: validate it once at load).
    now: request time, seconds since the epoch.
    config: the rules.
    exclude: int [E] ids never to return (seen, blocked, ...), or None.
    seller_exposure: float [S] exposure so far per seller id (sellers >= S
      count as 0), or None for no fairness term.

  Returns:
    At most config.k dicts {'item': int, 'score': float, 'rank': int
    (1-based), 'reasons': list[str]}, best first: never an excluded,
    out-of-stock or repeated item, never more than max_per_seller items of
    one seller. Fewer than k only when fewer are eligible under the cap.

  Raises:
    ValueError: mismatched shapes, ids outside meta, non-finite scores,
      negative or non-finite exposure.
  """
  items = np.asarray(items)
  scores = np.asarray(scores)
  if items.ndim != 1 or scores.shape != items.shape:
    raise ValueError(f'items {items.shape} and scores {scores.shape} must be '
                     'equal-length 1-D arrays')
  if not len(items):
    return []
  if not np.issubdtype(items.dtype, np.integer):
    raise ValueError(f'items must be integer ids, got {items.dtype}')
  if items.min() < 0 or items.max() >= meta.num_items:
    raise ValueError(f'item ids must be in [0, {meta.num_items}), got '
                     f'[{items.min()}, {items.max()}]')
  if not np.all(np.isfinite(scores)):
    # A ranker bug; dropping the items silently would hide it.
    raise ValueError('scores must be finite')
  if seller_exposure is not None:
    expo = np.asarray(seller_exposure)
    if expo.ndim != 1 or (len(expo) and not (
        np.all(np.isfinite(expo)) and expo.min() >= 0)):
      raise ValueError('seller_exposure must be a 1-D array of finite '
                       'counts >= 0')

  pos = np.flatnonzero(_eligible(items, meta, exclude))   # input positions
  if not len(pos):
    return []
  ids = items[pos].astype(np.int64)
  s = scores[pos].astype(np.float64)
  rel = (s - s.mean()) / max(s.std(), 1e-9)

  fresh = np.zeros(len(ids))
  if config.freshness_weight > 0:
    fresh = config.freshness_weight * _freshness(
        meta.created_at[ids], now, config.freshness_half_life_days)
  margin = np.zeros(len(ids))
  if config.margin_weight > 0:
    margin = config.margin_weight * _margin_value(meta, ids,
                                                  config.margin_by_price)
  seller = meta.seller[ids]
  fair = np.zeros(len(ids))
  if config.fairness_weight > 0 and seller_exposure is not None:
    expo = np.asarray(seller_exposure, np.float64)
    top = expo.max() if len(expo) else 0.0
    if top > 0:
      share = np.zeros(len(ids))
      known = seller < len(expo)
      share[known] = expo[seller[known]] / top
      fair = config.fairness_weight * share
  rel = rel + fresh + margin - fair

  # Compact seller / category indices, and each group's members as a slice
  # of one argsort, so a step touches only the items whose state changes.
  _, sel_idx = np.unique(seller, return_inverse=True)
  cats, cat_idx = np.unique(meta.category[ids], return_inverse=True)
  sel_order, sel_bounds = _groups(sel_idx)
  cat_order, cat_bounds = _groups(cat_idx)
  lam = config.mmr_lambda
  penalty = 1.0 - lam
  obj = lam * rel                       # updated in place as categories show
  masked = obj.copy()                   # obj, -inf once picked or capped
  shown = np.zeros(len(cats), bool)
  sel_count = np.zeros(len(sel_bounds) - 1, np.int64)
  pending = np.zeros(0, np.int64)       # capped items not yet in a reason
  cap = config.max_per_seller
  picks, pick_score, pick_div, pick_skips = [], [], [], []
  for _ in range(min(config.k, len(ids))):
    j = int(np.argmax(masked))
    v = masked[j]
    if v == -np.inf:
      break                             # everything left is capped
    skips = None
    if len(pending):
      jump = obj[pending] > v
      if jump.any():
        skips = np.unique(seller[pending[jump]], return_counts=True)
        pending = pending[~jump]
    c = cat_idx[j]
    picks.append(j)
    pick_score.append(v)
    pick_div.append(shown[c])
    pick_skips.append(skips)
    masked[j] = -np.inf
    if not shown[c] and penalty > 0:
      shown[c] = True
      same = cat_order[cat_bounds[c]:cat_bounds[c + 1]]
      obj[same] -= penalty
      masked[same] -= penalty           # -inf stays -inf
    sj = sel_idx[j]
    sel_count[sj] += 1
    if cap is not None and sel_count[sj] == cap:
      rest = sel_order[sel_bounds[sj]:sel_bounds[sj + 1]]
      rest = rest[masked[rest] > -np.inf]
      masked[rest] = -np.inf
      pending = np.concatenate([pending, rest])

  # Python lists for the per-item formatting: numpy scalars cost ~us each.
  sel = np.asarray(picks, np.int64)
  cols = zip(ids[sel].tolist(), pick_score, pick_div, pick_skips,
             (pos[sel] - np.arange(len(sel))).tolist(),
             fresh[sel].tolist(), margin[sel].tolist(), fair[sel].tolist(),
             seller[sel].tolist(), cats[cat_idx[sel]].tolist())
  out = []
  for r, (item, v, div, skips, moved, fr, mg, fa, sid, cat) in enumerate(
      cols):
    reasons = []
    if abs(fr) >= 0.005:                # visible at 2 decimals
      reasons.append(f'freshness {fr:+.2f}')
    if abs(mg) >= 0.005:
      reasons.append(f'margin {mg:+.2f}')
    if fa >= 0.005:
      reasons.append(f'fairness {-fa:+.2f} (seller {sid})')
    if div:
      reasons.append(f'diversity {-penalty:+.2f} (category {cat} '
                     'already shown)')
    if skips is not None:
      for s_id, n in zip(*skips):
        reasons.append(f'seller_cap: skipped {n} item{"s" if n > 1 else ""} '
                       f'of seller {s_id}')
    if moved:
      reasons.append(f'up {moved}' if moved > 0 else f'down {-moved}')
    out.append({'item': item, 'score': float(v), 'rank': r + 1,
                'reasons': reasons})
  return out


# ----------------------------------------------------------------------------
# The learned listwise re-ranker.


def listwise_features(items: np.ndarray, scores: np.ndarray, meta: ItemMeta,
                      now: int, half_life_days: float = 7.0) -> np.ndarray:
  """Numeric per-item features of one ranked list: float32 [N, 4].

  Columns: z-scored ranker score, log(1 + input position), freshness in
  (0, 1], margin * price normalised to [-1, 1] over the list.
  """
  items = np.asarray(items)
  s = np.asarray(scores, np.float64)
  z = (s - s.mean()) / max(s.std(), 1e-9) if len(s) else s
  return np.stack([
      z, np.log1p(np.arange(len(items))),
      _freshness(meta.created_at[items], now, half_life_days),
      _margin_value(meta, items, True)], axis=-1).astype(np.float32)


class ListwiseReranker(nn.Module):
  """Bidirectional transformer over a ranked list -> one score per item.

  Attributes:
    dim: model width D.
    num_layers, num_heads, ff_dim: the Encoder's.
  """
  dim: int = 32
  num_layers: int = 2
  num_heads: int = 2
  ff_dim: int = 64

  @nn.compact
  def __call__(self, user_emb, item_emb, feats, mask):
    """Scores [B, N] (-inf at padding).

    Args:
      user_emb: [B, d]; item_emb: [B, N, d]; feats: [B, N, F];
      mask: bool [B, N], True for real items.
    """
    mask = mask.astype(bool)
    x = jnp.concatenate([item_emb, feats], axis=-1).astype(jnp.float32)
    x = nn.Dense(self.dim, name='item_in')(x)                     # [B, N, D]
    u = nn.Dense(self.dim, name='user_in')(user_emb.astype(jnp.float32))
    x = jnp.concatenate([u[:, None], x], axis=1)                  # [B, 1+N, D]
    m = jnp.concatenate([jnp.ones_like(mask[:, :1]), mask], axis=1)
    h = Encoder(self.num_layers, self.num_heads, self.ff_dim, dropout=0.0,
                kind='full', causal=False, name='encoder')(x, m)
    out = nn.Dense(1, name='score')(h[:, 1:])[..., 0]
    return jnp.where(mask, out, -jnp.inf)


def listwise_softmax_loss(logits, labels, mask):
  """ListNet top-1 cross-entropy, mean over lists with a positive.

  Args:
    logits, labels, mask: [B, N]; labels >= 0, normalised per list here.
  """
  mask = mask.astype(bool)
  labels = jnp.where(mask, labels, 0.0)
  total = labels.sum(-1, keepdims=True)
  target = labels / jnp.maximum(total, 1e-9)
  logp = jax.nn.log_softmax(jnp.where(mask, logits, -1e9), axis=-1)
  per_list = -jnp.sum(jnp.where(mask, target * logp, 0.0), axis=-1)
  has = (total[:, 0] > 0).astype(jnp.float32)
  return jnp.sum(per_list * has) / jnp.maximum(has.sum(), 1.0)


@functools.partial(jax.jit, static_argnames=('model',))
def _scores(model, params, user_emb, item_emb, feats, mask):
  return model.apply({'params': params}, user_emb, item_emb, feats, mask)


def train_listwise(user_emb, item_emb, feats, labels, mask, steps: int = 200,
                   lr: float = 3e-3, seed: int = 0,
                   batch_size: Optional[int] = None,
                   model: ListwiseReranker = ListwiseReranker()):
  """Fits a ListwiseReranker with Adam on the listwise softmax loss.

  Args:
    user_emb: [B, d]; item_emb: [B, N, d]; feats: [B, N, F];
    labels: [B, N] relevance (0/1, or graded >= 0); mask: bool [B, N].
    steps: optimiser steps.
    lr: Adam learning rate.
    seed: init and minibatch seed.
    batch_size: lists per step (sampled with replacement); None = all.
    model: the architecture; pass the same one to `listwise_scores`.

  Returns:
    params (an unboxed parameter pytree).
  """
  arrays = [jnp.asarray(a, jnp.float32) for a in
            (user_emb, item_emb, feats, labels)] + [jnp.asarray(mask, bool)]
  return _fit(model, int(steps), float(lr), batch_size,
              jax.random.PRNGKey(seed), arrays)


@functools.partial(jax.jit, static_argnames=('model', 'steps', 'lr',
                                             'batch_size'))
def _fit(model, steps, lr, batch_size, key, data):
  """Init and every step in one program: one compilation (a few seconds
  on CPU, against milliseconds per step for small lists)."""
  u, it, f, _, m = data
  b = u.shape[0]
  key, init_key = jax.random.split(key)
  params = nn.meta.unbox(model.init(init_key, u, it, f, m))['params']
  opt = optax.adam(lr)

  def step(carry, key):
    params, opt_state = carry
    batch = data
    if batch_size is not None and batch_size < b:
      idx = jax.random.randint(key, (batch_size,), 0, b)
      batch = [a[idx] for a in data]
    u, it, f, y, m = batch
    def loss_fn(p):
      return listwise_softmax_loss(model.apply({'params': p}, u, it, f, m),
                                   y, m)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  (params, _), _ = jax.lax.scan(step, (params, opt.init(params)),
                                jax.random.split(key, steps))
  return params


def listwise_scores(params, user_emb, item_emb, feats, mask,
                    model: ListwiseReranker = ListwiseReranker()) -> jax.Array:
  """Scores [B, N] of a trained re-ranker (-inf at padding).

  Args:
    params: from `train_listwise`.
    user_emb: [B, d]; item_emb: [B, N, d]; feats: [B, N, F];
    mask: bool [B, N]. Pad N to a fixed bucket to reuse the compilation.
    model: the architecture `params` were trained with.
  """
  return _scores(model, params, jnp.asarray(user_emb, jnp.float32),
                 jnp.asarray(item_emb, jnp.float32),
                 jnp.asarray(feats, jnp.float32), jnp.asarray(mask, bool))
