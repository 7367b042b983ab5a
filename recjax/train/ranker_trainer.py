"""Training the ranker (`recjax.serve.ranker`) on logged impressions.

Impressions (`build_impressions`). Every 'view' row of the training events
is one impression: the user was shown the item. Labels come from the same
events:
  click     the same (user, item) has a click-or-deeper row within
            label_window_s seconds at or after the view;
  purchase  ... a purchase-or-deeper row in that window.
Both are found for all views at once: (pair, time) keys of the views and of
the positive rows are sorted and each view binary-searches the first
positive row of its pair at or after its time. The history of an impression
is the user's events strictly before its time (the last history_len of
them): events are sorted by (user, time) and each impression stores the
half-open row range [hist_start, hist_end) found by `searchsorted` on a
packed (user, time) key, so histories are sliced per batch, never stored as
[M, H] arrays, and can never include the impression itself or anything
later. Context is the row's: local hour, local weekday (the timezone offset
is recovered from the local hour against the UTC hour), device, location.
Sessions (for NDCG) split a user's views at gaps over session_gap_s.

Training (`train_ranker`). Flat batches of impressions, each a B x 1
candidate ranking problem with its own history (the serving model with
C = 1), per-head sigmoid cross-entropy summed over click and purchase,
adam with cosine decay, one jitted step. Side features are gathered inside
the step from device-resident tables. With `svd_init` the item table
starts from a truncated SVD of the user x item matrix of the events
before the held-out sessions: collaborative structure that click labels
alone teach slowly (worth ~+0.005 click AUC on the marketplace).

Evaluation. Impression sessions are split in time: the latest eval_frac of
sessions (by start time) are held out, so the model is graded on later
traffic with histories that include everything before each impression,
as in serving. Metrics: AUC of each head over held-out impressions, and
NDCG@10 of each held-out session's shown items ranked by the combined
score (config head weights), gain = click + purchase, averaged over
sessions with a positive; `ndcg@10_random` is the same for a random order
(sessions are short, so it is far from 0).

Caveats. Views whose click falls after the dataset's train/test cut are
labelled negative (the click is not in `train`); a few minutes of events
per split. The synthetic marketplace has no retrieval stage, so impressions
have retrieval score 0 unless `retrieval_fn` supplies one; the model's
retrieval weight then stays 0 (see the ranker's docstring).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from recjax.data import sequences
from recjax.data.schema import EVENT_INDEX, Dataset, Interactions
from recjax.serve import ranker as ranker_lib
from recjax.serve.ranker import Ranker, RankerConfig

_DAY = 86400
_EVAL_BATCH = 2048


# ---------------------------------------------------------------- impressions

@dataclasses.dataclass
class Impressions:
  """M impressions (sorted by user, then time) and the event log they index.

  Attributes:
    user: int32 [M]; item: int32 [M] 0-based; timestamp: int64 [M].
    click, purchase: float32 [M] labels (0 / 1).
    hour: int32 [M] local hour + 1 (0 = unknown); weekday: int32 [M] local
      weekday (Monday = 0) + 1 (0 = unknown); device, location: int32 [M].
    session: int64 [M] session index, contiguous, in (user, time) order.
    retrieval: float32 [M] retrieval score of the impression (0 if none).
    hist_start, hist_end: int64 [M] the user's events strictly before the
      impression are log rows [hist_start, hist_end).
    log_item: int32 [N] item index + 1 of every event, by (user, time).
    log_event: int32 [N] its EVENT_TYPES index.
    log_timestamp: int64 [N] its time.
  """
  user: np.ndarray
  item: np.ndarray
  timestamp: np.ndarray
  click: np.ndarray
  purchase: np.ndarray
  hour: np.ndarray
  weekday: np.ndarray
  device: np.ndarray
  location: np.ndarray
  session: np.ndarray
  retrieval: np.ndarray
  hist_start: np.ndarray
  hist_end: np.ndarray
  log_item: np.ndarray
  log_event: np.ndarray
  log_timestamp: np.ndarray

  ROW_FIELDS = ('user', 'item', 'timestamp', 'click', 'purchase', 'hour',
                'weekday', 'device', 'location', 'session', 'retrieval',
                'hist_start', 'hist_end')

  def __len__(self) -> int:
    return len(self.user)

  def take(self, rows: np.ndarray) -> 'Impressions':
    """The impressions `rows` (mask or index), sharing the event log."""
    return dataclasses.replace(
        self, **{f: getattr(self, f)[rows] for f in self.ROW_FIELDS})

  def history(self, rows: np.ndarray, width: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-aligned histories of `rows`: item + 1, event int32 and mask
    bool, each [R, width] (the latest event in column width - 1)."""
    end = self.hist_end[rows][:, None]
    src = end - width + np.arange(width)[None, :]
    valid = src >= self.hist_start[rows][:, None]
    src = np.where(valid, src, 0)
    if not len(self.log_item):
      zeros = np.zeros(src.shape, np.int32)
      return zeros, zeros, valid
    item = np.where(valid, self.log_item[src], 0).astype(np.int32)
    event = np.where(valid, self.log_event[src], 0).astype(np.int32)
    return item, event, valid


def local_weekday(timestamp: np.ndarray, hour: np.ndarray) -> np.ndarray:
  """Local weekday (Monday = 0) int32 [N]; the UTC weekday where hour < 0.

  The whole-hour timezone offset is the local hour minus the UTC hour,
  folded into [-12, 12); half-hour zones can be off within 30 minutes of
  midnight.
  """
  ts = np.asarray(timestamp, np.int64)
  hour = np.asarray(hour, np.int64)
  utc_hour = (ts // 3600) % 24
  offset = (hour - utc_hour + 12) % 24 - 12
  local = ts + np.where(hour >= 0, offset, 0) * 3600
  return ((local // _DAY + 3) % 7).astype(np.int32)   # 1970-01-01: Thursday


def _first_at_or_after(keys_sorted: np.ndarray, queries: np.ndarray,
                       window: int) -> np.ndarray:
  """bool [Q]: some key lies in [query, query + window]."""
  j = np.searchsorted(keys_sorted, queries, side='left')
  found = j < len(keys_sorted)
  j = np.minimum(j, max(len(keys_sorted) - 1, 0))
  return found & (keys_sorted[j] <= queries + window) if len(
      keys_sorted) else np.zeros(len(queries), bool)


def build_impressions(events: Interactions, label_window_s: int = 3600,
                      session_gap_s: int = 1800) -> Impressions:
  """Impressions of every 'view' row of `events`; see the module docstring.

  Args:
    events: the logged events (e.g. Dataset.train), any order.
    label_window_s: click / purchase rows at most this many seconds after
      the view label it.
    session_gap_s: a user's views further apart start a new session.
  """
  n = len(events)
  order = np.lexsort((np.arange(n), events.timestamp, events.user))
  ev = events.take(order)
  views = np.flatnonzero(ev.event == EVENT_INDEX['view'])
  user, item, ts = ev.user[views], ev.item[views], ev.timestamp[views]

  t0 = int(ev.timestamp.min()) if n else 0
  span = (int(ev.timestamp.max()) - t0 + 1 if n else 1) + label_window_s + 1
  # History: rows of the user strictly before the view time, by one
  # searchsorted on the packed (user, time) key of the sorted log.
  if (int(ev.user.max(initial=0)) + 1) * span >= 2**62:
    raise ValueError('timestamps span too wide to pack with user ids')
  log_key = ev.user.astype(np.int64) * span + (ev.timestamp - t0)
  hist_end = np.searchsorted(log_key, user.astype(np.int64) * span
                             + (ts - t0), side='left')
  hist_start = np.searchsorted(log_key, user.astype(np.int64) * span,
                               side='left')

  # Labels: dense (user, item) pair ids over the whole log, packed with
  # time; each view looks up the first positive row of its pair at or
  # after its time.
  pair = ev.user.astype(np.int64) << 32 | ev.item.astype(np.int64)
  _, pair_id = np.unique(pair, return_inverse=True)
  pair_key = pair_id.astype(np.int64) * span + (ev.timestamp - t0)
  view_key = pair_key[views]
  labels = []
  for deepest in ('click', 'purchase'):
    pos = np.sort(pair_key[ev.event >= EVENT_INDEX[deepest]])
    labels.append(_first_at_or_after(pos, view_key, label_window_s)
                  .astype(np.float32))

  # Views are in (user, time) order already: sessions by gaps.
  new = np.r_[True, (user[1:] != user[:-1])
              | (np.diff(ts) > session_gap_s)] if len(views) else np.zeros(
                  0, bool)
  hour = ev.hour[views].astype(np.int32)
  return Impressions(
      user=user.astype(np.int32), item=item.astype(np.int32),
      timestamp=ts.astype(np.int64), click=labels[0], purchase=labels[1],
      hour=np.where(hour >= 0, hour + 1, 0).astype(np.int32),
      weekday=(local_weekday(ts, hour) + 1).astype(np.int32),
      device=ev.device[views].astype(np.int32),
      location=ev.location[views].astype(np.int32),
      session=(np.cumsum(new) - 1).astype(np.int64),
      retrieval=np.zeros(len(views), np.float32),
      hist_start=hist_start.astype(np.int64),
      hist_end=hist_end.astype(np.int64),
      log_item=(ev.item + 1).astype(np.int32),
      log_event=ev.event.astype(np.int32),
      log_timestamp=ev.timestamp.astype(np.int64))


def split_by_time(imp: Impressions, eval_frac: float
                  ) -> tuple[np.ndarray, np.ndarray]:
  """(train rows, eval rows): whole sessions, the latest eval_frac held out
  by session start time."""
  if not len(imp) or eval_frac <= 0:
    return np.arange(len(imp)), np.zeros(0, np.int64)
  first = np.r_[True, imp.session[1:] != imp.session[:-1]]
  start = imp.timestamp[first][imp.session]          # session start per row
  cut = np.quantile(imp.timestamp[first], 1.0 - eval_frac)
  held = start >= cut
  return np.flatnonzero(~held), np.flatnonzero(held)


# ---------------------------------------------------------------- features

def ranker_config(ds: Dataset, overrides: Optional[Mapping[str, Any]] = None,
                  **kwargs) -> RankerConfig:
  """A RankerConfig sized for `ds`, with `overrides` then `kwargs` applied.

  Overrides may be an ml_collections ConfigDict or plain dict of
  RankerConfig fields.
  """
  loc_vocab = (ds.vocabs or {}).get('location')
  num_locations = max(len(loc_vocab) - 1 if loc_vocab is not None else 0,
                      int(ds.train.location.max(initial=0)), 1)
  d = dict(num_items=ds.num_items, num_sellers=max(ds.num_sellers, 1),
           num_categories=max(ds.num_categories, 1),
           num_locations=num_locations)
  d.update(dict(overrides or {}))
  d.update(kwargs)
  return RankerConfig.from_dict(d)


def side_features(ds: Dataset, config: RankerConfig) -> Optional[dict]:
  """Side-feature tables int32 [I + 1] of `ds` (None without a catalog)."""
  return sequences.item_side_features(ds, config.num_price_buckets)


def batch_inputs(imp: Impressions, rows: np.ndarray, config: RankerConfig
                 ) -> dict:
  """Model inputs of impressions `rows`, each a 1-candidate request, minus
  the side features (`ranker.gather_side` adds them on the device)."""
  hi, he, hm = imp.history(rows, config.history_len)
  loc = imp.location[rows]
  loc = np.where((loc >= 0) & (loc <= config.num_locations), loc, 0)
  return dict(hist_item=hi, hist_event=he, hist_mask=hm,
              hour=imp.hour[rows], weekday=imp.weekday[rows],
              device=np.clip(imp.device[rows], 0, config.num_devices - 1),
              location=loc.astype(np.int32),
              cand_item=(imp.item[rows] + 1)[:, None].astype(np.int32),
              retrieval=imp.retrieval[rows][:, None].astype(np.float32))


def _with_side(inputs: dict, side: Optional[dict]) -> dict:
  out = dict(inputs)
  out.update(ranker_lib.gather_side(side, inputs['hist_item'], 'hist'))
  out.update(ranker_lib.gather_side(side, inputs['cand_item'], 'cand'))
  return out


# ---------------------------------------------------------------- metrics

def auc(labels: np.ndarray, scores: np.ndarray) -> Optional[float]:
  """ROC AUC with ties averaged (Mann-Whitney U); None if one class only."""
  labels = np.asarray(labels) > 0
  npos = int(labels.sum())
  nneg = len(labels) - npos
  if npos == 0 or nneg == 0:
    return None
  _, inv, counts = np.unique(np.asarray(scores), return_inverse=True,
                             return_counts=True)
  avg_rank = np.cumsum(counts) - (counts - 1) / 2.0       # 1-based, tied
  r = avg_rank[inv]
  return float((r[labels].sum() - npos * (npos + 1) / 2.0) / (npos * nneg))


def session_ndcg(session: np.ndarray, scores: np.ndarray, gains: np.ndarray,
                 k: int = 10) -> Optional[float]:
  """Mean NDCG@k of per-session rankings by `scores` (linear gains).

  Sessions without a positive gain are skipped; None if none is left.
  """
  if not len(session):
    return None
  def dcg(key):
    order = np.lexsort((-key, session))
    s = session[order]
    start = np.r_[0, np.flatnonzero(s[1:] != s[:-1]) + 1]
    sid = np.cumsum(np.r_[True, s[1:] != s[:-1]]) - 1
    rank = np.arange(len(s)) - start[sid]
    disc = np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0)
    return np.bincount(sid, gains[order] * disc)
  got, ideal = dcg(np.asarray(scores, np.float64)), dcg(gains)
  ok = ideal > 0
  return float(np.mean(got[ok] / ideal[ok])) if ok.any() else None


# ---------------------------------------------------------------- training

def svd_item_vectors(events: Interactions, num_users: int, num_items: int,
                     dim: int) -> np.ndarray:
  """float32 [I, dim] item factors of the user x item event matrix.

  Truncated SVD of log(1 + count) with columns scaled by 1 / sqrt(item
  count) (damping popular items), item side V sqrt(S). Collaborative
  signal that click labels alone teach slowly; users / items without
  events get zeros.
  """
  import scipy.sparse as sp
  import scipy.sparse.linalg as sla
  k = min(dim, num_users - 1, num_items - 1)
  if k < 1 or not len(events):
    return np.zeros((num_items, dim), np.float32)
  m = sp.csr_matrix((np.ones(len(events)), (events.user, events.item)),
                    shape=(num_users, num_items))
  m.data = np.log1p(m.data)
  count = np.asarray(m.sum(0)).ravel()
  m = m @ sp.diags(1.0 / np.sqrt(count + 1.0))
  _, s, vt = sla.svds(m, k=k, random_state=0)
  v = np.zeros((num_items, dim), np.float32)
  v[:, :k] = vt.T * np.sqrt(s)
  return v


def svd_item_init(params: Any, events: Interactions, cfg: RankerConfig
                  ) -> Any:
  """params with the item table's rows 1..I set to scaled SVD factors."""
  v = svd_item_vectors(events, int(events.user.max(initial=0)) + 1,
                       cfg.num_items, cfg.embed_dim)
  table = np.asarray(params['params']['item']['embedding']).copy()
  rms = np.sqrt(np.mean(v[np.abs(v).sum(1) > 0] ** 2)) if v.any() else 1.0
  table[1:] = v * (np.std(table) / rms)   # the init's scale
  new = jax.tree.map(lambda x: x, params)
  new['params']['item']['embedding'] = jnp.asarray(table)
  return new


def _loss(model, params, inputs, click, purchase, rng):
  logits = model.apply(params, inputs, train=True,
                       rngs={'dropout': rng})[:, 0]        # [B, 2]
  per_head = optax.sigmoid_binary_cross_entropy(
      logits, jnp.stack([click, purchase], -1))
  return per_head.mean(0).sum(), per_head.mean(0)


def train_ranker(ds: Dataset, config: Optional[RankerConfig] = None, *,
                 steps: Optional[int] = None, epochs: Optional[float] = None,
                 seed: int = 0,
                 retrieval_fn: Optional[Callable[..., np.ndarray]] = None,
                 log: Optional[Callable[[str], None]] = None
                 ) -> tuple[Any, dict]:
  """Trains a Ranker on `ds.train`'s impressions; returns (params, metrics).

  Args:
    ds: a Dataset whose train split has 'view' rows (the marketplace).
    config: RankerConfig (default `ranker_config(ds)`).
    steps: optimiser steps of config.batch_size impressions; or
    epochs: passes over the training impressions (default 1 if neither).
    seed: initialisation and shuffling seed.
    retrieval_fn: optional f(user int32 [M], item int32 [M], timestamp
      int64 [M]) -> float32 [M] retrieval scores of impressions.
    log: optional progress printer.

  Returns:
    (params {'params': ...}, metrics dict: click_auc, purchase_auc,
    ndcg@10, ndcg@10_random, eval/train logloss per head, sizes, timings).
  """
  cfg = ranker_config(ds) if config is None else config
  t_start = time.perf_counter()
  imp = build_impressions(ds.train, cfg.label_window_s, cfg.session_gap_s)
  if retrieval_fn is not None and len(imp):
    imp.retrieval = np.asarray(retrieval_fn(imp.user, imp.item,
                                            imp.timestamp), np.float32)
  train_rows, eval_rows = split_by_time(imp, cfg.eval_frac)
  bsz = cfg.batch_size
  if len(train_rows) < bsz:
    raise ValueError(f'{len(train_rows)} training impressions, fewer than '
                     f'batch_size {bsz}: the dataset needs view events')
  per_epoch = len(train_rows) // bsz
  if steps is None:
    steps = max(1, int(round((1.0 if epochs is None else epochs)
                             * per_epoch)))
  t_built = time.perf_counter()

  model = Ranker(cfg)
  params = ranker_lib.init_params(cfg, seed)
  if cfg.svd_init:
    # Only events before the held-out sessions: no look at eval traffic.
    cut = imp.timestamp[eval_rows].min() if len(eval_rows) else np.inf
    params = svd_item_init(params, ds.train.take(ds.train.timestamp < cut),
                           cfg)
  side = side_features(ds, cfg)
  side_dev = None if side is None else {k: jnp.asarray(v)
                                        for k, v in side.items()}
  schedule = optax.cosine_decay_schedule(cfg.learning_rate, steps, 0.1)
  tx = (optax.adamw(schedule, weight_decay=cfg.weight_decay)
        if cfg.weight_decay > 0 else optax.adam(schedule))
  opt_state = tx.init(params)

  @jax.jit
  def step_fn(params, opt_state, side, inputs, click, purchase, rng):
    inputs = _with_side(inputs, side)
    (loss, per_head), grads = jax.value_and_grad(
        lambda p: _loss(model, p, inputs, click, purchase, rng),
        has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, per_head

  rng = np.random.default_rng(seed)
  drop_key = jax.random.key(seed + 1)
  perm, recent = None, []
  for step in range(steps):
    epoch, off = divmod(step, per_epoch)
    if off == 0:
      perm = train_rows[rng.permutation(len(train_rows))]
    rows = perm[off * bsz:(off + 1) * bsz]
    params, opt_state, per_head = step_fn(
        params, opt_state, side_dev, batch_inputs(imp, rows, cfg),
        imp.click[rows], imp.purchase[rows],
        jax.random.fold_in(drop_key, step))
    recent.append(per_head)
    if len(recent) > 100:
      recent.pop(0)
    if log and (step + 1) % max(1, steps // 10) == 0:
      lc, lp = np.mean(np.asarray(recent), 0)
      log(f'ranker step {step + 1}/{steps} (epoch {epoch}): loss click '
          f'{lc:.4f} purchase {lp:.4f}')
  train_loss = np.mean(np.asarray(recent), 0)
  t_trained = time.perf_counter()

  metrics = dict(train_impressions=int(len(train_rows)),
                 eval_impressions=int(len(eval_rows)), steps=int(steps),
                 epochs=round(steps / per_epoch, 3),
                 train_logloss_click=float(train_loss[0]),
                 train_logloss_purchase=float(train_loss[1]))
  metrics.update(evaluate(params, cfg, imp, eval_rows, side, seed=seed))
  metrics.update(build_s=round(t_built - t_start, 3),
                 train_s=round(t_trained - t_built, 3),
                 eval_s=round(time.perf_counter() - t_trained, 3))
  return params, metrics


def predict_logits(params: Any, config: RankerConfig, imp: Impressions,
                   rows: np.ndarray, side: Optional[dict]) -> np.ndarray:
  """Logits float32 [R, 2] of impressions `rows` (fixed-size batches)."""
  model = Ranker(config)
  side_dev = None if side is None else {k: jnp.asarray(v)
                                        for k, v in side.items()}
  fwd = jax.jit(lambda p, s, x: model.apply(p, _with_side(x, s))[:, 0])
  out = np.zeros((len(rows), 2), np.float32)
  for start in range(0, len(rows), _EVAL_BATCH):
    part = rows[start:start + _EVAL_BATCH]
    # Pad to one static batch size: a single compilation.
    padded = np.r_[part, np.full(_EVAL_BATCH - len(part), part[0])]
    logits = fwd(params, side_dev, batch_inputs(imp, padded, config))
    out[start:start + len(part)] = np.asarray(logits)[:len(part)]
  return out


def evaluate(params: Any, config: RankerConfig, imp: Impressions,
             rows: np.ndarray, side: Optional[dict], seed: int = 0) -> dict:
  """Held-out metrics of impressions `rows` (see the module docstring)."""
  if not len(rows):
    return {}
  logits = predict_logits(params, config, imp, rows, side)
  click, purchase = imp.click[rows], imp.purchase[rows]
  combined = np.asarray(ranker_lib.combine_scores(
      jnp.asarray(logits), jnp.asarray(config.weight_vector()),
      config.combine))
  logloss = lambda y, z: float(np.mean(np.logaddexp(0, z) - y * z))
  gains = (click + purchase).astype(np.float64)
  session = imp.session[rows]
  noise = np.random.default_rng(seed).random(len(rows))
  return dict(
      click_auc=auc(click, logits[:, 0]),
      purchase_auc=auc(purchase, logits[:, 1]),
      **{'ndcg@10': session_ndcg(session, combined, gains),
         'ndcg@10_random': session_ndcg(session, noise, gains)},
      eval_logloss_click=logloss(click, logits[:, 0]),
      eval_logloss_purchase=logloss(purchase, logits[:, 1]),
      eval_click_rate=float(click.mean()),
      eval_purchase_rate=float(purchase.mean()),
      eval_sessions=int(len(np.unique(session))))


# ---------------------------------------------------------------- saving

_PARAMS_DIR = 'params'
_CONFIG_FILE = 'ranker.json'


def save_ranker(params: Any, config: RankerConfig, path: str) -> None:
  """Writes path/params (orbax) and path/ranker.json (the config)."""
  path = os.path.abspath(path)
  os.makedirs(path, exist_ok=True)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.join(path, _PARAMS_DIR), params, force=True)
  ckptr.wait_until_finished()
  tmp = os.path.join(path, _CONFIG_FILE + '.tmp')
  with open(tmp, 'w') as f:
    f.write(config.to_json())
  os.replace(tmp, os.path.join(path, _CONFIG_FILE))


def load_ranker(path: str) -> tuple[Any, RankerConfig]:
  """(params, config) written by `save_ranker`."""
  path = os.path.abspath(path)
  with open(os.path.join(path, _CONFIG_FILE)) as f:
    config = RankerConfig.from_json(f.read())
  target = jax.eval_shape(lambda: ranker_lib.init_params(config))
  params = ocp.StandardCheckpointer().restore(
      os.path.join(path, _PARAMS_DIR), target)
  return params, config
