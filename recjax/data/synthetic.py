"""The synthetic marketplace: recjax's embedded, deterministic default dataset.

The world (`recjax.data.synthetic_world`):
  * a complete category tree (`taxonomy` = children per level; 6 x 4 x 4 gives
    6 roots, 24 mid and 96 leaf categories, named 'c0', 'c0/3', 'c0/3/1');
  * items with exactly one seller (power-law seller sizes, each seller mostly
    in one root) and one leaf; log-normal prices around a per-leaf level,
    margins in (0, 0.5), listing times (a fifth are listed during the window:
    new items); hidden item factors shared along the taxonomy path and the
    seller; a token description (topic words of the path plus words naming
    the item's largest factors) and an image vector (a fixed linear map of the
    factors plus noise), so content predicts preference for cold items;
  * power-law item popularity and power-law user activity; per user: factors,
    a Dirichlet over roots and sparse Gamma tastes over the leaves under each
    root, three favourite sellers, price sensitivity, a home location (with
    its timezone), a preferred device and a daily rhythm.

Events. Users have sessions at random times over `days`; a session has an
intent leaf (from the user's leaf tastes), a home or travel location, a
device, and a candidate pool of `candidates` items, half popularity-weighted
from the intent leaf and half popularity-weighted from the whole catalogue
(O(1) alias sampling). Each candidate scores
  <user factors, item factors> + 0.5 log affinity(user, root)
  + 0.7 [seller is a favourite] - sensitivity * price_z + freshness
(freshness = exp(-age / 7 days)), and items not listed yet are excluded. The
session's 1 + Poisson(2.5) item views are a Gumbel top-k of score + Gumbel
noise over the pool (Plackett-Luce: each view is a softmax choice among what
is left; a pool may hold an item twice, so a session can revisit an item).
Popularity thus decides what users see and preference what they pick, so
popularity is a strong but beatable baseline.

Funnel. Every interaction is a view; it goes on to click, cart, purchase and
review with probabilities that rise with how much the user prefers the item
over the rest of the pool (z-score of its score), giving roughly
view 100 : click 30 : cart 8 : purchase 4 : review 1. One row is emitted per
stage reached, each a few seconds (review: hours to days) after the previous
one, so a purchase also has its view, click and cart rows. Ratings are NaN
except on review rows (1..5, rising with preference).

Rows have distinct (user, item, timestamp) (rare collisions between two
sessions are dropped), are sorted by (timestamp, user, item), and number
exactly `num_events` (the surplus of the last chunk is trimmed from
view-only interactions). Raw ids equal indices: vocabs 'user', 'item' and
'seller' are `Vocab(range(n))`; 'category' holds the names above; 'location'
is ['unknown', 'loc1', ...].

Split (`split_marketplace`): cold users and items are held out of training;
warm rows are cut in time; `train` keeps every event type, `test` holds the
click-or-deeper rows after the cut plus all cold rows (see its docstring).

Everything is vectorised numpy over chunks of sessions, deterministic given
`seed` (bit-identical arrays; the world does not depend on num_events), and
does not import TensorFlow: 10M events (200k users, 100k items) take ~26 s
and ~1.5 GB peak RSS on 2 shared cores (tools/bench_marketplace.py).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional

import numpy as np

from recjax.data import splits
from recjax.data import synthetic_world as W
from recjax.data.schema import (EVENT_INDEX, Catalog, Dataset, Interactions,
                                Vocab)

START_TIME = 1_700_000_000        # 2023-11-14 22:13 UTC, the window start
_CHUNK_CANDIDATES = 1 << 20       # candidates scored per chunk (~64 MB)
_INTENT_SHARE = 0.5               # of a pool, drawn from the intent leaf
# Funnel: P(next stage | this stage) = sigmoid(a + b * z), z = the picked
# item's score z-scored within its pool; a is calibrated for ~30% clicks,
# ~27% carts of clicks, ~50% purchases of carts, ~25% reviews of purchases.
_FUNNEL_A = np.array([-1.95, -2.0, -0.95, -1.95], np.float32)
_FUNNEL_B = np.array([0.9, 0.6, 0.5, 0.4], np.float32)
# Seconds from one stage to the next: minimum + exponential(mean).
_DELAY_MIN = np.array([2, 5, 30, 3600])
_DELAY_MEAN = np.array([20.0, 90.0, 400.0, 2 * W.DAY], np.float32)


@dataclasses.dataclass
class MarketplaceConfig:
  """Sizes and knobs of the synthetic marketplace (defaults: a small run)."""
  num_users: int = 6000
  num_items: int = 3000
  num_sellers: int = 150
  num_events: int = 400_000
  taxonomy: tuple = (6, 4, 4)       # children per level: roots, mid, leaves
  factor_dim: int = 16
  image_dim: int = 32
  text_len: int = 8
  text_vocab: int = 1000
  days: int = 90
  num_locations: int = 50
  candidates: int = 64              # candidate pool per session
  cold_user_frac: float = 0.05
  cold_item_frac: float = 0.05
  test_frac: float = 0.2
  seed: int = 0

  def __post_init__(self):
    self.taxonomy = tuple(int(b) for b in self.taxonomy)
    positive = ('num_users', 'num_items', 'num_sellers', 'num_events',
                'factor_dim', 'image_dim', 'text_len', 'days',
                'num_locations')
    for name in positive:
      if int(getattr(self, name)) <= 0:
        raise ValueError(f'MarketplaceConfig.{name} must be > 0, got '
                         f'{getattr(self, name)}')
    if not self.taxonomy or min(self.taxonomy) < 1:
      raise ValueError(f'MarketplaceConfig.taxonomy must be a non-empty '
                       f'tuple of positive branchings, got {self.taxonomy}')
    if self.num_sellers > self.num_items:
      raise ValueError(f'num_sellers ({self.num_sellers}) must not exceed '
                       f'num_items ({self.num_items}): every seller lists '
                       'an item')
    if self.text_vocab < 2 * self.factor_dim + 2:
      raise ValueError(f'text_vocab must be >= 2 * factor_dim + 2 = '
                       f'{2 * self.factor_dim + 2}, got {self.text_vocab}')
    if self.candidates < 2:
      raise ValueError(f'candidates must be >= 2, got {self.candidates}')
    for name in ('cold_user_frac', 'cold_item_frac'):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ValueError(f'{name} must be in [0, 1), got '
                         f'{getattr(self, name)}')
    if not 0.0 < self.test_frac < 1.0:
      raise ValueError(f'test_frac must be in (0, 1), got {self.test_frac}')

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> 'MarketplaceConfig':
    """A config from overrides of the defaults; unknown keys are an error."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f'unknown MarketplaceConfig field(s) {unknown}; '
                       f'valid fields: {sorted(known)}')
    return cls(**dict(d))

  @classmethod
  def tiny(cls, **overrides) -> 'MarketplaceConfig':
    """~20k events over 300 users and 200 items: for tests, well under 1 s."""
    base = dict(num_users=300, num_items=200, num_sellers=20,
                num_events=20_000, taxonomy=(4, 3, 2), days=30,
                num_locations=10)
    base.update(overrides)
    return cls(**base)


class _World:
  """Per-item and per-user arrays the session simulation gathers from."""

  def __init__(self, cfg: MarketplaceConfig, catalog: Catalog, truth: dict):
    self.cfg = cfg
    self.item_f = truth['item_factors']
    self.item_seller = catalog.seller
    self.item_root = catalog.taxonomy[:, 0]
    self.item_created = catalog.created_at
    self.price_z = truth['price_z']
    self.user_f = truth['user_factors']
    self.user_root = truth['user_root_log_affinity']
    self.user_sellers = truth['user_sellers']
    self.user_ps = truth['user_price_sensitivity']
    self.user_cdf = truth['user_leaf_cdf']
    self.user_top_leaf = truth['user_top_leaf']
    self.leaf_size = truth['leaf_size']
    pop = truth['item_popularity']
    self.pop_prob, self.pop_alias = W.alias_tables(pop, np.zeros(1, int))
    # Items grouped by leaf, one alias table per leaf segment.
    leaf = catalog.leaf_category - (len(catalog.category_parent)
                                    - len(self.leaf_size))
    self.leaf_order = np.argsort(leaf, kind='stable').astype(np.int32)
    self.leaf_start = np.r_[0, np.cumsum(self.leaf_size)[:-1]]
    nonempty = self.leaf_start[self.leaf_size > 0]
    self.leaf_prob, self.leaf_alias = W.alias_tables(
        pop[self.leaf_order], nonempty)
    self.user_prob, self.user_alias = W.alias_tables(
        truth['user_activity'], np.zeros(1, int))
    self.loc_tz = truth['location_tz']
    self.loc_cum = np.cumsum(truth['location_p'])


def _session_context(rng, w: _World, truth: dict, n: int, start: int):
  """Users, lengths, locations, devices, start times, intents of n sessions."""
  cfg = w.cfg
  user = W.alias_draw(rng, w.user_prob, w.user_alias, 0, cfg.num_users, n)
  length = np.minimum(1 + rng.poisson(2.5, n), cfg.candidates // 2)
  travel = rng.random(n) < 0.07
  other = np.searchsorted(w.loc_cum, rng.random(n) * w.loc_cum[-1], 'right')
  loc = np.where(travel, np.minimum(other, len(w.loc_cum) - 1),
                 truth['user_location'][user])
  dev_draw = rng.random(n)
  device = np.where(dev_draw < 0.8, truth['user_device'][user],
                    1 + rng.integers(0, 4, n))
  device = np.where(dev_draw > 0.98, 0, device)        # 2% unknown
  # Local time of day from the user's rhythm, converted to UTC by timezone.
  hour = np.where(rng.random(n) < 0.7,
                  rng.normal(truth['user_peak_hour'][user], 2.5),
                  rng.random(n) * 24) % 24
  tz = w.loc_tz[loc]
  t_rel = (rng.integers(0, cfg.days, n) * W.DAY + (hour * 3600).astype(
      np.int64) - tz * 3600) % (cfg.days * W.DAY)
  r = rng.random(n, dtype=np.float32)
  intent = (w.user_cdf[user] <= r[:, None]).sum(1)
  intent = np.where(w.leaf_size[intent] > 0, intent, w.user_top_leaf[user])
  return user, length, loc, device, start + t_rel, tz, intent


def _pool_scores(rng, w: _World, user, t, intent):
  """Candidate pools [n, C] and their scores [n, C] (-inf: not listed yet)."""
  n, C = len(user), w.cfg.candidates
  c_int = int(round(C * _INTENT_SHARE))
  pos = W.alias_draw(rng, w.leaf_prob, w.leaf_alias,
                     w.leaf_start[intent][:, None],
                     w.leaf_size[intent][:, None], (n, c_int))
  glob = W.alias_draw(rng, w.pop_prob, w.pop_alias, 0, w.cfg.num_items,
                      (n, C - c_int))
  cand = np.concatenate([w.leaf_order[pos], glob], axis=1)
  score = np.matmul(w.item_f[cand], w.user_f[user][:, :, None])[..., 0]
  score += 0.5 * w.user_root[user[:, None], w.item_root[cand]]
  fav = (w.item_seller[cand][:, :, None]
         == w.user_sellers[user][:, None, :]).any(-1)
  score += 0.7 * fav
  score -= w.user_ps[user][:, None] * w.price_z[cand]
  age = (t[:, None] - w.item_created[cand]).astype(np.float32)
  score += np.exp(-np.maximum(age, 0) / np.float32(7 * W.DAY))
  score[age < 0] = -np.inf
  return cand, score


def _pick(rng, cand, score, length):
  """Gumbel top-`length` per pool row; returns (session, rank, item, z)."""
  n = len(cand)
  ok = np.isfinite(score)
  cnt = np.maximum(ok.sum(1), 1)
  s0 = np.where(ok, score, 0)
  mean = s0.sum(1) / cnt
  sd = np.sqrt(np.maximum((s0 * s0).sum(1) / cnt - mean**2, 1e-6))
  # Gumbel noise as -log(Exp(1)); the offset keeps log away from 0.
  key = score - np.log(rng.standard_exponential(score.shape, np.float32)
                       + np.float32(1e-30))
  rows = np.arange(n)
  sess, rank, item, z = [], [], [], []
  for k in range(int(length.max(initial=0))):
    live = rows[length > k]
    j = key[live].argmax(1)
    got = np.isfinite(key[live, j])     # pool exhausted (unlisted items)
    live, j = live[got], j[got]
    key[live, j] = -np.inf
    sess.append(live)
    rank.append(np.full(len(live), k))
    item.append(cand[live, j])
    z.append((score[live, j] - mean[live]) / sd[live])
  cat = lambda parts, dt: np.concatenate(parts).astype(dt) if parts else (
      np.zeros(0, dt))
  return (cat(sess, np.int64), cat(rank, np.int64), cat(item, np.int32),
          cat(z, np.float32))


def _simulate_chunk(rng, w: _World, truth: dict, n: int, start: int) -> dict:
  """Rows (one per funnel stage reached) of n new sessions, unsorted."""
  user, length, loc, device, t0, tz, intent = _session_context(
      rng, w, truth, n, start)
  cand, score = _pool_scores(rng, w, user, t0, intent)
  sess, rank, item, z = _pick(rng, cand, score, length)
  # Views within a session: 5 s + exponential(60 s) apart.
  gaps = 5 + rng.exponential(60.0, (n, int(length.max(initial=1)))).astype(
      np.int64)
  gaps[:, 0] = 0
  t_view = t0[sess] + np.cumsum(gaps, axis=1)[sess, rank]
  m = len(sess)
  go = rng.random((m, 4), dtype=np.float32) < 1 / (1 + np.exp(
      -(_FUNNEL_A + _FUNNEL_B * z[:, None])))
  depth = np.cumprod(go, axis=1).sum(1)
  delays = _DELAY_MIN + rng.exponential(1.0, (m, 4)) * _DELAY_MEAN
  cum = np.concatenate([np.zeros((m, 1), np.int64),
                        np.cumsum(delays.astype(np.int64), axis=1)], axis=1)
  # Expand: one row per stage 0..depth of each interaction.
  reps = depth + 1
  inter = np.repeat(np.arange(m), reps)
  stage = np.arange(len(inter)) - np.repeat(np.cumsum(reps) - reps, reps)
  ts = t_view[inter] + cum[inter, stage]
  s_of = sess[inter]
  rating = np.full(len(inter), np.nan, np.float32)
  rev = np.flatnonzero(stage == EVENT_INDEX['review'])
  # Reviewed items have z ~ 2.3 on average: centre ratings near 4 of 5.
  noise = rng.normal(0, 0.9, len(rev))
  rating[rev] = np.clip(np.round(4.0 + 0.9 * (z[inter[rev]] - 2.3) + noise),
                        1, 5)
  return dict(
      user=user[s_of].astype(np.int32), item=item[inter],
      timestamp=ts, event=stage.astype(np.int8), rating=rating,
      device=device[s_of].astype(np.int8),
      location=loc[s_of].astype(np.int32),
      hour=((ts + tz[s_of] * 3600) // 3600 % 24).astype(np.int8),
      view_only=(depth == 0)[inter])


def _merge(parts: list[dict]) -> dict:
  """Concatenates chunks, sorts by (timestamp, user, item), drops repeats."""
  rows = {}
  for k in list(parts[0]):     # field by field, freeing the chunks' copies
    rows[k] = np.concatenate([p.pop(k) for p in parts])
  ts, user, item = rows['timestamp'], rows['user'], rows['item']
  if not len(ts):
    return rows
  t_rel = ts - ts.min()
  bits = [int(x.max()).bit_length() for x in (t_rel, user, item)]
  if sum(bits) <= 63:          # one packed int64 key: a single argsort
    key = (t_rel << (bits[1] + bits[2])) | (user.astype(np.int64) << bits[2])
    key |= item
    order = np.argsort(key, kind='stable')
    key = key[order]
    dup = key[1:] == key[:-1]
    del key
  else:
    order = np.lexsort((item, user, ts))
    dup = np.ones(len(order) - 1, bool)
    for a in (ts, user, item):   # one sorted copy at a time
      a = a[order]
      dup &= a[1:] == a[:-1]
  del t_rel
  if dup.any():
    order = order[np.r_[True, ~dup]]
  del dup
  for k in rows:               # one field at a time: peak = rows + 1 field
    rows[k] = rows[k][order]
  return rows


def generate_events(cfg: MarketplaceConfig
                    ) -> tuple[Interactions, Catalog, dict]:
  """The raw marketplace: every event, the catalogue and the hidden truth.

  Returns:
    (events, catalog, truth): `events` has exactly cfg.num_events rows sorted
    by (timestamp, user, item); `truth` holds the hidden model (item_factors
    [I, d], user_factors [U, d], item_popularity [I], user_activity [U],
    user_root_log_affinity [U, R], user_leaf_cdf [U, K], user_sellers [U, 3],
    image_map [d, D], category_names [C], start_time, end_time, ...).
  """
  world_rng, event_rng, trim_rng = np.random.default_rng(cfg.seed).spawn(3)
  catalog, truth = W.make_catalog(cfg, world_rng, START_TIME)
  truth.update(W.make_users(cfg, world_rng, catalog, truth))
  truth.update(start_time=START_TIME, end_time=START_TIME + cfg.days * W.DAY)
  w = _World(cfg, catalog, truth)

  # Sessions in chunks of ~1M candidates until the rows reach num_events;
  # each chunk is sized from the rows per session seen so far.
  max_sessions = max(1, _CHUNK_CANDIDATES // cfg.candidates)
  parts, have, sessions, per_session = [], 0, 0, 5.0
  while True:
    while have < cfg.num_events:
      want = math.ceil((cfg.num_events - have) / per_session * 1.01) + 8
      n = min(max_sessions, want)
      parts.append(_simulate_chunk(event_rng, w, truth, n, START_TIME))
      have += len(parts[-1]['user'])
      sessions += n
      per_session = max(have / sessions, 0.5)
    rows = _merge(parts)
    have = len(rows['user'])
    if have >= cfg.num_events:
      break
    parts = [rows]
  surplus = have - cfg.num_events
  if surplus:
    pool = np.flatnonzero(rows['view_only'])
    if len(pool) < surplus:
      pool = np.arange(have)
    keep = np.ones(have, bool)
    keep[trim_rng.choice(pool, surplus, replace=False)] = False
    rows = {k: v[keep] for k, v in rows.items()}
  del rows['view_only']
  return Interactions(**rows), catalog, truth


def split_marketplace(events: Interactions, catalog: Catalog,
                      cfg: MarketplaceConfig, name: str = 'marketplace'
                      ) -> Dataset:
  """The standard split of `generate_events`' output.

  Cold users and items (cold_*_frac) are held out of training entirely; the
  remaining rows are cut in time at the 1 - test_frac quantile. `train` keeps
  every event type (models choose theirs). `test` is the warm rows after the
  cut plus all cold rows, restricted to click-or-deeper events (views are too
  weak a signal to grade a ranking on), sorted by time, minus pairs seen in
  training and repeats (`splits.drop_seen`). Select the cold-start slice
  with np.isin(test.user, ds.cold_users) / np.isin(test.item, ds.cold_items).
  """
  U, I = cfg.num_users, cfg.num_items
  warm, cold, cold_users, cold_items = splits.hold_out_cold(
      events, U, I, cfg.cold_user_frac, cfg.cold_item_frac, seed=cfg.seed)
  train, test = splits.temporal_split(warm, test_frac=cfg.test_frac)
  test = Interactions.concat([test, cold])
  test = test.take(test.event >= EVENT_INDEX['click'])
  test = test.take(np.argsort(test.timestamp, kind='stable'))
  vocabs = dict(
      user=Vocab(range(U)), item=Vocab(range(I)),
      seller=Vocab(range(cfg.num_sellers)),
      category=Vocab(W.taxonomy_tree(cfg.taxonomy)[2]),
      location=Vocab(['unknown'] + [f'loc{k}' for k in
                                    range(1, cfg.num_locations + 1)]))
  return Dataset(name=name, num_users=U, num_items=I, train=train,
                 test=splits.drop_seen(test, train), catalog=catalog,
                 vocabs=vocabs, cold_users=cold_users, cold_items=cold_items)


def heldout_events(cfg: MarketplaceConfig) -> Interactions:
  """Every held-out row of `split_marketplace`'s split, all event types
  and repeats kept (the warm rows after the time cut plus the cold rows,
  sorted by time). ds.test keeps one row per new (user, item) pair, the
  first (usually a click); this keeps what followed it, e.g. for 'the next
  seller a user buys from' (recjax.train.sellers)."""
  events, _, _ = generate_events(cfg)
  warm, cold, _, _ = splits.hold_out_cold(
      events, cfg.num_users, cfg.num_items, cfg.cold_user_frac,
      cfg.cold_item_frac, seed=cfg.seed)
  _, test = splits.temporal_split(warm, test_frac=cfg.test_frac)
  test = Interactions.concat([test, cold])
  return test.take(np.argsort(test.timestamp, kind='stable'))


def generate_marketplace(cfg: Optional[MarketplaceConfig] = None
                         ) -> Dataset:
  """`generate_events` then `split_marketplace` (default config if None)."""
  cfg = MarketplaceConfig() if cfg is None else cfg
  events, catalog, _ = generate_events(cfg)
  return split_marketplace(events, catalog, cfg)
