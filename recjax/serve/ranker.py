"""The ranker: ~10,000 retrieved candidates of one request -> scores.

Pipeline position: retrieval (ScaNN over item embeddings) hands the ranker
about 10,000 candidates with their retrieval scores; the ranker scores them
all, the server keeps the top ~500 for the re-ranker (`rerank.py`). The
whole request has a p99 budget of 50 ms, so the ranker is built around a
cheap per-candidate path.

Model (`Ranker`, target attention in the style of DIN, Zhou et al., KDD
2018, computed as transformer cross-attention):

  history  each of the user's last H events is an item vector (item +
           seller + leaf category + price bucket embeddings, the same
           tables the candidates use) + its event type + its position from
           the end; optionally `layers` bidirectional self-attention blocks
           (`models.attention.Block`) contextualise it. Per request, O(H^2).
  context  hour, weekday, device, location embeddings, summed; with the
           mean of the history it forms a per-request user vector.
  target   each candidate (same item vector) is a query over the history:
           one jax.nn.dot_product_attention call, 1 head of width
           attn_dim, padding masked. This is the only per-candidate
           attention: O(C H attn_dim).
  head     relu(W_c cand + W_a att + W_m [q * att, q * u_q] + W_u user
           + w_r retrieval) -> 2 logits (click, purchase), where q is the
           candidate's query and u_q a projection of the user vector (the
           elementwise products give the head bilinear candidate-history
           and candidate-user terms). Dropout (training only) on item-id
           embeddings and the hidden layer.

Serving cost: the candidate-only part (embeddings, q, W_c cand) depends on
the item alone, so `RankerServer` precomputes it for every item into one
table; the user part is computed once per request. Per candidate that
leaves one table-row gather, the [C, H] attention, two [C, attn_dim] x
[attn_dim, mlp_dim]-sized matmuls and the 2-logit output.

The retrieval-score weight starts at zero: logged impressions carry no
retrieval score unless the trainer is given one, and a zero weight that
never sees a nonzero input stays zero, so the feature is inert rather than
random at serving time.

Multi-task scores (`combine`): P(click) and P(purchase) per impression,
  'log'   combined = sum_h w_h * log sigmoid(logit_h)   (a weighted
          product of probabilities: w = (1, 2) is P(click) P(purchase)^2)
  'prob'  combined = sum_h w_h * sigmoid(logit_h)
with weights from the config, overridable per request.

Serving (`RankerServer`): one AOT-compiled XLA executable per candidate
bucket (`buckets`, default 512 / 2048 / 10240). A request's candidates are
padded to the smallest bucket that holds them (more than the largest are
scored in largest-bucket chunks), so there are never compilations on the
request path, and `warmup()` compiles every bucket at start-up. Measured
per `score` call on 2 CPU cores shared with a running benchmark (trained
default config, 3,000 items): median ~0.7-1.3 ms for 500 candidates, ~1.9
ms for 2,048 and ~6.5-8 ms for 10,000 (best ~4.5 ms; p99 12-16 ms under
that contention).

Ids: the model sees item ids as index + 1 (0 = padding), like SASRec, and
side-feature tables with the same layout (`sequences.item_side_features`,
or `side_tables` from 0-based per-item arrays such as a bundle's
items.npz). `RankerServer.score` takes 0-based item indices.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Mapping, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from recjax.data.schema import DEVICES, EVENT_TYPES
from recjax.models.attention import Block, Dropout

HEADS = ('click', 'purchase')
COMBINE = ('log', 'prob')
NUM_HOURS = 25            # local hour + 1; 0 = unknown
NUM_WEEKDAYS = 8          # weekday (Monday = 0) + 1; 0 = unknown
SIDE = ('seller', 'category', 'price')
CONTEXT = ('hour', 'weekday', 'device', 'location')


@dataclasses.dataclass
class RankerConfig:
  """Sizes, architecture, serving buckets and training knobs of the ranker.

  JSON round-trips through `to_json` / `from_json`; `from_dict` takes
  ml_collections-style overrides (unknown keys are an error).

  Attributes:
    num_items, num_sellers, num_categories, num_locations: index-space
      sizes (tables get one extra row, 0, for padding / unknown).
    num_price_buckets: price quantile buckets (sequences.item_side_features).
    num_devices: len(schema.DEVICES).
    history_len: H, events of history attended over.
    embed_dim: D of every embedding table.
    heads, layers: the history self-attention blocks (layers = 0: none).
    attn_dim: width of the 1-head candidate -> history cross-attention.
    mlp_dim: hidden units of the scoring head.
    dropout: training dropout on item vectors and the head's hidden layer.
    head_weights: default per-head weights of the combined score.
    combine: 'log' (sum w log sigmoid) or 'prob' (sum w sigmoid).
    buckets: candidate counts the server compiles for.
    learning_rate, batch_size, weight_decay: training (ranker_trainer).
    eval_frac: share of impression sessions, the latest, held out.
    label_window_s: a click / purchase of the viewed item within this many
      seconds after the view labels the impression.
    session_gap_s: views further apart start a new session (NDCG lists).
    svd_init: start the item table from SVD factors of the training
      events (ranker_trainer.svd_item_init).
  """
  num_items: int = 1
  num_sellers: int = 1
  num_categories: int = 1
  num_locations: int = 1
  num_price_buckets: int = 10
  num_devices: int = len(DEVICES)
  history_len: int = 100
  embed_dim: int = 32
  heads: int = 2
  layers: int = 1
  attn_dim: int = 16
  mlp_dim: int = 64
  dropout: float = 0.1
  head_weights: dict = dataclasses.field(
      default_factory=lambda: {'click': 1.0, 'purchase': 2.0})
  combine: str = 'log'
  buckets: tuple = (512, 2048, 10240)
  learning_rate: float = 2e-3
  batch_size: int = 256
  weight_decay: float = 0.0
  eval_frac: float = 0.2
  label_window_s: int = 3600
  session_gap_s: int = 1800
  svd_init: bool = True

  def __post_init__(self):
    self.head_weights = {str(k): float(v)
                         for k, v in dict(self.head_weights).items()}
    self.buckets = tuple(sorted(int(b) for b in self.buckets))
    unknown = sorted(set(self.head_weights) - set(HEADS))
    if unknown:
      raise ValueError(f'RankerConfig.head_weights: unknown head(s) '
                       f'{unknown}; heads are {list(HEADS)}')
    if self.combine not in COMBINE:
      raise ValueError(f'RankerConfig.combine={self.combine!r} is not one of '
                       f'{list(COMBINE)}')
    if not self.buckets or self.buckets[0] < 1:
      raise ValueError(f'RankerConfig.buckets must be positive, got '
                       f'{self.buckets}')
    if self.layers > 0 and self.embed_dim % self.heads:
      raise ValueError(f'embed_dim {self.embed_dim} is not divisible by '
                       f'heads {self.heads}')
    for name in ('num_items', 'history_len', 'embed_dim', 'attn_dim',
                 'mlp_dim', 'batch_size'):
      if int(getattr(self, name)) < 1:
        raise ValueError(f'RankerConfig.{name} must be >= 1, got '
                         f'{getattr(self, name)}')

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> 'RankerConfig':
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f'unknown RankerConfig field(s) {unknown}; valid '
                       f'fields: {sorted(known)}')
    return cls(**{k: (dict(v) if k == 'head_weights' else v)
                  for k, v in d.items()})

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d['buckets'] = list(self.buckets)
    return d

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=1, sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> 'RankerConfig':
    return cls.from_dict(json.loads(text))

  def weight_vector(self, weights: Optional[Mapping[str, float]] = None
                    ) -> np.ndarray:
    """float32 [len(HEADS)] head weights: `weights` if given, else defaults.

    A given mapping replaces the defaults entirely (heads it leaves out
    weigh 0), so a request says exactly what it optimises for.
    """
    w = self.head_weights if weights is None else dict(weights)
    unknown = sorted(set(w) - set(HEADS))
    if unknown:
      raise ValueError(f'unknown ranker head(s) {unknown}; heads are '
                       f'{list(HEADS)}')
    out = np.array([float(w.get(h, 0.0)) for h in HEADS], np.float32)
    if not np.isfinite(out).all():
      raise ValueError(f'ranker head weights must be finite, got {w}')
    return out


def combine_scores(logits: jax.Array, weights: jax.Array, mode: str = 'log'
                   ) -> jax.Array:
  """Combined score [...] from per-head logits [..., 2] and weights [2]."""
  per_head = (jax.nn.log_sigmoid(logits) if mode == 'log'
              else jax.nn.sigmoid(logits))
  return per_head @ weights


def side_tables(seller: np.ndarray, category: np.ndarray,
                price_bucket: np.ndarray) -> dict:
  """Side-feature tables int32 [I + 1] (row 0 = padding) from 0-based [I].

  The layout of `sequences.item_side_features`, built from per-item arrays
  such as a serving bundle's items.npz (seller, category, price_bucket).
  """
  pad = lambda a: np.r_[0, np.asarray(a, np.int64) + 1].astype(np.int32)
  return dict(seller=pad(seller), category=pad(category),
              price=pad(price_bucket))


def gather_side(side: Optional[Mapping[str, Any]], ids, prefix: str) -> dict:
  """{prefix_seller, prefix_category, prefix_price} of item ids (index+1).

  Works on numpy (trainer batches) and jnp (inside the serving executable).
  Without side features every item gets the padding row 0.
  """
  xp = jnp if isinstance(ids, jax.Array) else np
  if side is None:
    return {f'{prefix}_{f}': xp.zeros_like(ids) for f in SIDE}
  return {f'{prefix}_{f}': xp.take(side[f], ids, axis=0) for f in SIDE}


def context_ids(hour=None, weekday=None, device=None, location=None,
                num_locations: Optional[int] = None) -> np.ndarray:
  """int32 [4] model ids (hour + 1, weekday + 1, device, location).

  None means unknown (id 0). `device` may be a DEVICES name or index;
  locations outside [0, num_locations] map to 0 (unknown).
  """
  if isinstance(device, str):
    device = DEVICES.index(device) if device in DEVICES else 0
  h = 0 if hour is None or not 0 <= int(hour) <= 23 else int(hour) + 1
  w = 0 if weekday is None or not 0 <= int(weekday) <= 6 else int(weekday) + 1
  d = 0 if device is None or not 0 <= int(device) < len(DEVICES) else int(
      device)
  loc = 0 if location is None else int(location)
  if loc < 0 or (num_locations is not None and loc > num_locations):
    loc = 0
  return np.array([h, w, d, loc], np.int32)


class Ranker(nn.Module):
  """Target-attention ranker; see the module docstring.

  Inputs (a dict; B requests, H history positions, C candidates):
    hist_item: int32 [B, H] item index + 1, 0 = padding (right-aligned:
      the latest event in column H - 1).
    hist_event: int32 [B, H] index into EVENT_TYPES.
    hist_mask: bool [B, H], True for real events (default hist_item > 0);
      masked positions may hold anything.
    hist_seller, hist_category, hist_price: int32 [B, H] side ids
      (`gather_side`, 0 = padding).
    hour, weekday, device, location: int32 [B] (`context_ids` layout).
    cand_item: int32 [B, C] item index + 1 (0 = padding candidate).
    cand_seller, cand_category, cand_price: int32 [B, C].
    retrieval: float32 [B, C] retrieval score (0 where unknown).

  Returns:
    logits float32 [B, C, 2] (click, purchase). Each candidate's logits
    depend only on itself, the history and the context, so padding
    candidates never change real ones.
  """
  config: RankerConfig

  def setup(self):
    cfg, d = self.config, self.config.embed_dim
    init = nn.initializers.normal(0.05)
    emb = lambda n, name: nn.Embed(n, d, embedding_init=init, name=name)
    self.item_emb = emb(cfg.num_items + 1, 'item')
    self.seller_emb = emb(cfg.num_sellers + 1, 'seller')
    self.category_emb = emb(cfg.num_categories + 1, 'category')
    self.price_emb = emb(cfg.num_price_buckets + 1, 'price')
    self.event_emb = emb(len(EVENT_TYPES), 'event')
    self.pos_emb = self.param('position', init, (cfg.history_len, d))
    self.hour_emb = emb(NUM_HOURS, 'hour')
    self.weekday_emb = emb(NUM_WEEKDAYS, 'weekday')
    self.device_emb = emb(cfg.num_devices, 'device')
    self.location_emb = emb(cfg.num_locations + 1, 'location')
    self.blocks = [Block(cfg.heads, 2 * d, 0.0, 'full', False, 64, 64,
                         name=f'block{i}') for i in range(cfg.layers)]
    self.hist_norm = nn.LayerNorm(name='hist_norm')
    self.query = nn.Dense(cfg.attn_dim, name='query')
    self.key = nn.Dense(cfg.attn_dim, use_bias=False, name='key')
    self.value = nn.Dense(cfg.attn_dim, name='value')
    # The first layer of the head over [cand, attended, query * attended,
    # user, retrieval], one Dense per part: the candidate part depends on
    # the item alone (the server precomputes it per item) and the user part
    # on the request alone (computed once, broadcast over candidates).
    self.cand_hidden = nn.Dense(cfg.mlp_dim, name='cand_hidden')
    self.att_hidden = nn.Dense(cfg.mlp_dim, use_bias=False, name='att_hidden')
    self.match_hidden = nn.Dense(cfg.mlp_dim, use_bias=False,
                                 name='match_hidden')
    self.user_hidden = nn.Dense(cfg.mlp_dim, use_bias=False,
                                name='user_hidden')
    self.user_query = nn.Dense(cfg.attn_dim, name='user_query')
    self.score_hidden = nn.Dense(cfg.mlp_dim, use_bias=False,
                                 kernel_init=nn.initializers.zeros,
                                 name='retrieval_hidden')
    self.out = nn.Dense(len(HEADS), name='out')
    self.drop = Dropout(cfg.dropout, deterministic=False)

  def item_vectors(self, inputs: Mapping[str, jax.Array], prefix: str,
                   train: bool = False) -> jax.Array:
    """Summed item + side embeddings [..., D] of `prefix` ('hist'/'cand').

    Dropout falls on the item-id embedding only: ids are what the model
    memorises, while seller / category / price generalise across items.
    """
    item = self.item_emb(inputs[f'{prefix}_item'])
    item = self.drop(item) if train else item
    return (item + self.seller_emb(inputs[f'{prefix}_seller'])
            + self.category_emb(inputs[f'{prefix}_category'])
            + self.price_emb(inputs[f'{prefix}_price']))

  def encode_history(self, inputs: Mapping[str, jax.Array],
                     train: bool = False) -> tuple[jax.Array, jax.Array]:
    """(history states [B, H, D] with padding rows 0, mask bool [B, H])."""
    items = inputs['hist_item']
    mask = inputs.get('hist_mask')
    mask = items > 0 if mask is None else mask.astype(bool)
    h = items.shape[1]
    # Positions count from the end, so a narrower window computes the same.
    x = (self.item_vectors(inputs, 'hist', train)
         + self.event_emb(inputs['hist_event'])
         + self.pos_emb[self.config.history_len - h:])
    x = x * mask[..., None]
    for block in self.blocks:
      x = block(x, mask, False)
    return self.hist_norm(x) * mask[..., None], mask

  def user_vector(self, inputs: Mapping[str, jax.Array], hist: jax.Array,
                  mask: jax.Array) -> jax.Array:
    """Per-request [B, 2D]: summed context embeddings, mean history."""
    ctx = (self.hour_emb(inputs['hour']) + self.weekday_emb(inputs['weekday'])
           + self.device_emb(inputs['device'])
           + self.location_emb(inputs['location']))
    count = jnp.maximum(mask.sum(1, keepdims=True), 1).astype(hist.dtype)
    return jnp.concatenate([ctx, hist.sum(1) / count], axis=-1)

  def candidate_part(self, inputs: Mapping[str, jax.Array],
                     train: bool = False) -> jax.Array:
    """Per-item [..., attn_dim + mlp_dim]: the query, the head's item term.

    Depends on the candidate's item and side ids only, so the server
    computes it once for every item (`RankerServer.item_table`).
    """
    cand = self.item_vectors(inputs, 'cand', train)
    return jnp.concatenate([self.query(cand), self.cand_hidden(cand)], -1)

  def request_part(self, inputs: Mapping[str, jax.Array],
                   train: bool = False) -> tuple:
    """Per-request (keys [B, H, a], values [B, H, a], mask [B, H], user
    query [B, a], user term of the head [B, mlp_dim])."""
    hist, mask = self.encode_history(inputs, train)
    user = self.user_vector(inputs, hist, mask)
    return (self.key(hist), self.value(hist), mask, self.user_query(user),
            self.user_hidden(user))

  def head(self, cand_part: jax.Array, request: tuple, retrieval: jax.Array,
           train: bool = False) -> jax.Array:
    """Logits [B, C, 2] from `candidate_part` [B, C, a + m], `request_part`
    and retrieval [B, C]; the only per-candidate work of serving."""
    k, v, mask, user_q, user_h = request
    a = self.config.attn_dim
    q, cand_h = cand_part[..., :a], cand_part[..., a:]
    b, c = q.shape[:2]
    att = jax.nn.dot_product_attention(
        q[:, :, None, :], k[:, :, None, :], v[:, :, None, :],
        mask=mask[:, None, None, :], implementation='xla').reshape(b, c, a)
    # A user without history has no key at all: the softmax over all-masked
    # logits is a uniform average of padding; zero it instead.
    att = att * mask.any(1)[:, None, None]
    # Elementwise products give the head bilinear (dot-product) terms of
    # the candidate with what it attended to and with the whole user.
    match = jnp.concatenate([q * att, q * user_q[:, None, :]], -1)
    x = (cand_h + self.att_hidden(att) + self.match_hidden(match)
         + user_h[:, None, :] + self.score_hidden(retrieval[..., None]))
    x = nn.relu(x)
    return self.out(self.drop(x) if train else x)

  def __call__(self, inputs: Mapping[str, jax.Array], train: bool = False
               ) -> jax.Array:
    return self.head(self.candidate_part(inputs, train),
                     self.request_part(inputs, train), inputs['retrieval'],
                     train)


def example_inputs(config: RankerConfig, batch: int = 1,
                   candidates: int = 1) -> dict:
  """All-padding inputs of the given shape (for init and tracing)."""
  h, c = config.history_len, candidates
  z = lambda *s: np.zeros(s, np.int32)
  out = dict(hist_item=z(batch, h), hist_event=z(batch, h),
             hist_mask=np.zeros((batch, h), bool), hour=z(batch),
             weekday=z(batch), device=z(batch), location=z(batch),
             cand_item=z(batch, c), retrieval=np.zeros((batch, c), np.float32))
  for p, shape in (('hist', (batch, h)), ('cand', (batch, c))):
    out.update({f'{p}_{f}': z(*shape) for f in SIDE})
  return out


def init_params(config: RankerConfig, seed: int = 0) -> dict:
  """Fresh parameters {'params': ...} (plain arrays, no partitioning)."""
  # Jitted: eager init runs (and compiles) every op on its own, ~10x slower.
  variables = jax.jit(Ranker(config).init)(jax.random.key(seed),
                                           example_inputs(config, 2, 3))
  return nn.meta.unbox(variables)


def pad_history(items: Sequence[int], events: Sequence[int], width: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Right-aligned (item + 1, event, mask) [width] of the last `width` events.

  Args:
    items: 0-based item indices, oldest first.
    events: their EVENT_TYPES indices.
  """
  items = np.asarray(items, np.int64).reshape(-1)
  events = np.asarray(events, np.int64).reshape(-1)
  if len(items) != len(events):
    raise ValueError(f'history items ({len(items)}) and events '
                     f'({len(events)}) differ in length')
  if len(events) and (events.min() < 0 or events.max() >= len(EVENT_TYPES)):
    raise ValueError(f'history event types must be in [0, '
                     f'{len(EVENT_TYPES)})')
  items, events = items[len(items) - width:], events[len(events) - width:]
  n = len(items)
  out_i = np.zeros(width, np.int32)
  out_e = np.zeros(width, np.int32)
  out_i[width - n:] = items + 1
  out_e[width - n:] = events
  mask = np.zeros(width, bool)
  mask[width - n:] = True
  return out_i, out_e, mask


class RankerServer:
  """Scores one request's candidates with per-bucket compiled executables.

  At construction the per-item part of the model (`Ranker.candidate_part`:
  side-feature gathers, embeddings, the query projection and the head's
  item term) is computed once for every item into `item_table` [I + 1,
  attn_dim + mlp_dim]; a request then costs the history encoder once plus,
  per candidate, one table row gather, the cross-attention and the head.

  Args:
    params: {'params': ...} of a trained `Ranker`.
    config: its RankerConfig.
    side: side-feature tables int32 [I + 1] ('seller', 'category', 'price';
      `side_tables` or `sequences.item_side_features`), or None.
  """

  def __init__(self, params: Any, config: RankerConfig,
               side: Optional[Mapping[str, np.ndarray]] = None):
    self.config = config
    self.model = Ranker(config)
    self.params = jax.device_put(params)
    if side is not None:
      for f in SIDE:
        if len(side[f]) != config.num_items + 1:
          raise ValueError(f'side[{f!r}] has {len(side[f])} rows, want '
                           f'num_items + 1 = {config.num_items + 1}')
      side = {f: jnp.asarray(side[f], jnp.int32) for f in SIDE}
    self.side = side
    ids = jnp.arange(config.num_items + 1, dtype=jnp.int32)
    self.item_table = jax.jit(self._table)(self.params, self.side, ids)
    self._compiled = {}
    self.compile_seconds = {}

  def _table(self, params, side, ids):
    inputs = dict(cand_item=ids, **gather_side(side, ids, 'cand'))
    return self.model.apply(params, inputs, method=Ranker.candidate_part)

  def _fn(self, params, table, side, hist_item, hist_event, hist_mask, ctx,
          cand_item, retrieval, weights):
    """Combined scores [Cb] of one request (B = 1)."""
    inputs = dict(hist_item=hist_item[None], hist_event=hist_event[None],
                  hist_mask=hist_mask[None], hour=ctx[0:1],
                  weekday=ctx[1:2], device=ctx[2:3], location=ctx[3:4])
    inputs.update(gather_side(side, inputs['hist_item'], 'hist'))
    request = self.model.apply(params, inputs, method=Ranker.request_part)
    cand = jnp.take(table, cand_item, axis=0)[None]          # [1, Cb, a+m]
    logits = self.model.apply(params, cand, request, retrieval[None],
                              method=Ranker.head)[0]         # [Cb, 2]
    return combine_scores(logits, weights, self.config.combine)

  def _executable(self, bucket: int):
    exe = self._compiled.get(bucket)
    if exe is None:
      h = self.config.history_len
      spec = jax.ShapeDtypeStruct
      i32 = lambda *s: spec(s, jnp.int32)
      args = (self.params, self.item_table, self.side, i32(h), i32(h),
              spec((h,), jnp.bool_), i32(4), i32(bucket),
              spec((bucket,), jnp.float32), spec((len(HEADS),), jnp.float32))
      t = time.perf_counter()
      exe = jax.jit(self._fn).lower(*args).compile()
      self.compile_seconds[bucket] = time.perf_counter() - t
      self._compiled[bucket] = exe
    return exe

  def _run(self, bucket: int, hi, he, hm, ctx, ids, r, w) -> jax.Array:
    return self._executable(bucket)(self.params, self.item_table, self.side,
                                    hi, he, hm, ctx, ids, r, w)

  def warmup(self) -> dict:
    """Compiles (and runs once) every bucket; returns {bucket: seconds}."""
    h = self.config.history_len
    for b in self.config.buckets:
      out = self._run(b, np.zeros(h, np.int32), np.zeros(h, np.int32),
                      np.zeros(h, bool), np.zeros(4, np.int32),
                      np.zeros(b, np.int32), np.zeros(b, np.float32),
                      np.ones(len(HEADS), np.float32))
      jax.block_until_ready(out)
    return dict(self.compile_seconds)

  def bucket_for(self, n: int) -> int:
    """The smallest bucket holding n candidates (the largest if none)."""
    for b in self.config.buckets:
      if n <= b:
        return b
    return self.config.buckets[-1]

  def score(self, history_items: Sequence[int], history_events: Sequence[int],
            context: Optional[Mapping[str, Any]], candidates: Sequence[int],
            retrieval_scores: Optional[Sequence[float]] = None,
            weights: Optional[Union[Mapping[str, float], np.ndarray]] = None
            ) -> np.ndarray:
    """Combined scores float32 [C] of one request's candidates.

    Args:
      history_items: 0-based item indices of the user's recent events,
        oldest first (any length; the last history_len are used).
      history_events: their EVENT_TYPES indices.
      context: {'hour', 'weekday', 'device', 'location'}, any missing or
        None (see `context_ids`); other keys (e.g. 'now') are ignored.
      candidates: int [C] 0-based item indices (C >= 0). More than the
        largest bucket are scored in largest-bucket chunks.
      retrieval_scores: float [C] or None (zeros).
      weights: {'click': w, 'purchase': w} replacing the config's
        head_weights for this request (`RankerConfig.weight_vector`), a
        float32 [2] vector, or None.

    Returns:
      float32 [C], higher is better, in the order of `candidates`.

    Raises:
      ValueError: ids out of range, mismatched lengths, unknown heads.
    """
    cfg = self.config
    cand = np.asarray(candidates, np.int64).reshape(-1)
    n = len(cand)
    if n and (cand.min() < 0 or cand.max() >= cfg.num_items):
      raise ValueError(f'candidate ids must be in [0, {cfg.num_items}), got '
                       f'[{cand.min()}, {cand.max()}]')
    rs = (np.zeros(n, np.float32) if retrieval_scores is None
          else np.asarray(retrieval_scores, np.float32).reshape(-1))
    if len(rs) != n:
      raise ValueError(f'{len(rs)} retrieval scores for {n} candidates')
    w = (np.asarray(weights, np.float32) if isinstance(weights, np.ndarray)
         else cfg.weight_vector(weights))
    hist_items = np.asarray(history_items, np.int64)
    if len(hist_items) and (hist_items.min() < 0
                            or hist_items.max() >= cfg.num_items):
      raise ValueError(f'history item ids must be in [0, {cfg.num_items})')
    hi, he, hm = pad_history(hist_items, history_events, cfg.history_len)
    context = dict(context or {})
    ctx = context_ids(*(context.get(k) for k in CONTEXT),
                      num_locations=cfg.num_locations)
    out = np.empty(n, np.float32)
    largest = cfg.buckets[-1]
    for start in range(0, n, largest):
      part = cand[start:start + largest]
      m = len(part)
      b = self.bucket_for(m)
      ids = np.zeros(b, np.int32)
      ids[:m] = part + 1
      r = np.zeros(b, np.float32)
      r[:m] = rs[start:start + m]
      out[start:start + m] = np.asarray(self._run(b, hi, he, hm, ctx, ids, r,
                                                  w))[:m]
    return out
