"""`train_and_evaluate` for sampled graph models (config.task == 'graph').

GraphSAGE, PinSAGE, relational GAT and TGAT (recjax.models.gnn) learn from
sampled neighbourhoods (recjax.graph.samplers), so no step touches the whole
graph. A batch is B training (user, item) pairs: the seeds are the B users,
their B items, M shared uniform negative items and, for PinSAGE, H hard
negatives per pair from random-walk ranks (a curriculum: epoch e uses
min(e, H) of them). The loss is the sampled softmax over those candidates.

Batches are pure functions of (seed, step), so resumes and 1-vs-N-device
runs see the same data. Evaluation embeds every user and item by sampling
their neighbourhoods (fixed seed), then ranks fully like LightGCN; cold users
are embedded from a few revealed edges added to the graph, cold items from
content, both without retraining (recjax.train.cold_start).
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from recjax.data import registry
from recjax.data.sampling import _epoch_permutation
from recjax.data.schema import Dataset, check_event_types
from recjax.graph import samplers as samplers_lib
from recjax.graph.nodes import NodeGraph, node_features, training_pairs
from recjax.models.gnn import NodeEncoder, SampledGNN
from recjax.train import checkpoint, cold_start, mesh as mesh_lib
from recjax.train.evaluate import RankingEvaluator
from recjax.train.state import TrainState, make_optimizer, scheduled_lr
from recjax.train.trainer import StepLogger, target_events
from recjax.train.writers import MetricWriter

DEFAULT_SAMPLER = dict(graphsage='uniform', gat='uniform',
                       pinsage='random_walk', tgat='temporal')


def eval_fanouts(config) -> tuple:
  """graph.eval_fanouts, checked: positive, one per hop of graph.fanouts;
  () when unset (evaluation samples like training)."""
  g = config.graph
  f = tuple(int(x) for x in (g.get('eval_fanouts', ()) or ()))
  if f and (len(f) != len(g.fanouts) or min(f) < 1):
    raise ValueError(f'graph.eval_fanouts={f}: expected positive fan-outs, '
                     f'one per hop of graph.fanouts {tuple(g.fanouts)}')
  return f


def make_sampler(config, graph: NodeGraph, fanouts=()):
  """The model's sampler over `graph` with per-hop `fanouts` (default:
  graph.fanouts)."""
  g = config.graph
  fanouts = tuple(fanouts or g.fanouts)
  kind = g.sampler or DEFAULT_SAMPLER.get(config.model.name)
  weighting = check_neighbor_weight(config)
  if kind == 'uniform':
    return samplers_lib.NeighborSampler(graph, fanouts, weighting)
  if kind == 'random_walk':
    return samplers_lib.RandomWalkSampler(
        graph, fanouts, num_walks=g.num_walks, walk_length=g.walk_length,
        seed=config.seed)
  if kind == 'temporal':
    return samplers_lib.TemporalSampler(graph, fanouts,
                                        strategy=g.temporal_strategy)
  raise ValueError(f'graph.sampler={kind!r} is not one of uniform, '
                   'random_walk, temporal')


def check_neighbor_weight(config, name: str = 'graph.neighbor_weight') -> str:
  """graph.neighbor_weight (default 'uniform'), checked: anything else is
  read only by graphsage's 'mean' aggregator over the uniform sampler.
  Raises ValueError naming `name`."""
  weighting = config.graph.get('neighbor_weight', 'uniform')
  kind = config.graph.sampler or DEFAULT_SAMPLER.get(config.model.name)
  if weighting != 'uniform' and (
      kind != 'uniform' or config.model.name != 'graphsage'
      or config.model.aggregator != 'mean'):
    raise ValueError(f'{name}={weighting}: only graphsage with the mean '
                     'aggregator and the uniform sampler reads neighbour '
                     f"weights; model {config.model.name} does not")
  return weighting


def content_sizes(feats: dict) -> dict:
  """Vocabulary sizes of the content inputs (0 without a catalog)."""
  has_content = 'text' in feats
  return dict(
      text_vocab=int(feats['text'].max()) + 1 if has_content else 0,
      price_buckets=int(feats['price_bucket'].max()) + 1 if has_content
      else 0)


def check_eval_every(config) -> int:
  """train.eval_every_epochs, checked: an integer >= 0 (0: evaluate only
  at the end). train.patience is refused: this trainer records the curve
  but does not stop early (it would select on the test split)."""
  every = config.train.get('eval_every_epochs', 0)
  if isinstance(every, bool) or not isinstance(every, int) or every < 0:
    raise ValueError(f'train.eval_every_epochs={every!r}: want an integer '
                     '>= 0 (0: evaluate only at the end)')
  if config.train.get('patience', 0):
    raise ValueError(f'train.patience={config.train.patience!r}: the sampled '
                     'models do not stop early; set it to 0')
  return every


def check_activation(config) -> str:
  """model.activation, checked: 'relu', or 'linear' for graphsage and
  pinsage. Raises ValueError naming it."""
  m = config.model
  activation = m.get('activation', 'relu')
  if activation not in ('relu', 'linear') or (
      activation != 'relu' and m.name not in ('graphsage', 'pinsage')):
    raise ValueError(f'model.activation={activation!r}: want relu, or linear '
                     'for graphsage and pinsage')
  return activation


def check_dropouts(config) -> float:
  """Checks model.id_dropout and model.dropout (default 0), probabilities
  in [0, 1); returns model.dropout. Raises ValueError naming the field."""
  m = config.model
  for key in ('id_dropout', 'dropout'):
    p = m.get(key, 0.0)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not (
        0.0 <= p < 1.0):
      raise ValueError(f'model.{key}={p!r}: want a probability in [0, 1)')
  return float(m.get('dropout', 0.0))


def build_model(config, graph: NodeGraph, feats: dict, sampler,
                pad_to: int = 128, sizes: dict | None = None) -> SampledGNN:
  """The configured SampledGNN; `sizes` (content_sizes) default to feats'."""
  m = config.model
  dropout = check_dropouts(config)
  activation = check_activation(config)
  sizes = sizes or content_sizes(feats)
  enc = NodeEncoder(
      num_nodes=graph.num_nodes, embed_dim=m.embed_dim,
      item_offset=graph.offsets['item'], num_items=graph.counts['item'],
      text_vocab=sizes['text_vocab'], price_buckets=sizes['price_buckets'],
      id_dropout=m.id_dropout, init_std=m.init_std, pad_to=pad_to)
  return SampledGNN(kind=m.name, encoder=enc, num_layers=len(
      config.graph.fanouts), num_relations=sampler.num_relations,
                    aggregator=m.aggregator, combine=m.combine, heads=m.heads,
                    normalize=config.loss.get('normalize', True),
                    residual=bool(m.get('residual', False)),
                    activation=activation, dropout=dropout)


class PairStream:
  """Training pairs (user, item, first time) by epoch permutation.

  `batch(step)` -> dict of numpy: user [B], pos [B], time [B], neg [M]
  (shared uniform items), and hard [B, H] / hard_mask [B, H] when a hard
  negative table is given (the curriculum: min(epoch, H) active columns).
  """

  def __init__(self, ds: Dataset, event_types, batch_size: int,
               num_negatives: int, seed: int, hard_table=None,
               num_hard: int = 0):
    self.users, self.items, self.times = training_pairs(ds, event_types)
    if len(self.users) < batch_size:
      raise ValueError(f'batch_size {batch_size} exceeds the '
                       f'{len(self.users)} training pairs')
    self.num_items, self.batch_size = ds.num_items, batch_size
    self.num_negatives, self.seed = num_negatives, seed
    self.hard_table, self.num_hard = hard_table, num_hard
    self._perm_epoch, self._perm = -1, None

  @property
  def steps_per_epoch(self) -> int:
    return len(self.users) // self.batch_size

  def batch(self, step: int) -> dict:
    epoch, offset = divmod(step, self.steps_per_epoch)
    perm = _epoch_permutation(self, epoch, len(self.users))
    idx = perm[offset * self.batch_size:(offset + 1) * self.batch_size]
    rng = np.random.default_rng([self.seed, epoch, offset, 3])
    out = dict(user=self.users[idx], pos=self.items[idx],
               time=self.times[idx],
               neg=rng.integers(0, self.num_items, self.num_negatives,
                                dtype=np.int32))
    if self.num_hard:
      cand = self.hard_table[out['pos']]                    # [B, W]
      col = rng.integers(0, cand.shape[1], (len(idx), self.num_hard))
      hard = np.take_along_axis(cand, col, 1)
      ok = hard >= 0
      hard = np.where(ok, hard, rng.integers(0, self.num_items, hard.shape))
      active = np.arange(self.num_hard)[None, :] < min(epoch, self.num_hard)
      out['hard'] = hard.astype(np.int32)
      out['hard_mask'] = np.broadcast_to(active, hard.shape).copy()
    return out


def seed_block(graph: NodeGraph, sampler, pairs: dict, rng) -> dict:
  """The sampled Block of one batch: seeds users | pos | neg | hard."""
  u = graph.ids('user', pairs['user'])
  p = graph.ids('item', pairs['pos'])
  n = graph.ids('item', pairs['neg'])
  parts, times, excl = [u, p, n], [pairs['time']] * 2, [p, u]
  times.append(rng.choice(pairs['time'], len(n)))
  excl.append(np.full(len(n), -1, np.int32))
  if 'hard' in pairs:
    h = graph.ids('item', pairs['hard'].reshape(-1))
    parts.append(h)
    times.append(np.repeat(pairs['time'], pairs['hard'].shape[1]))
    excl.append(np.full(len(h), -1, np.int32))
  block = sampler.sample(np.concatenate(parts), rng,
                         times=np.concatenate(times),
                         exclude=np.concatenate(excl))
  return block.as_dict()


SAMPLED_LOSSES = ('softmax', 'ccl')
# The figures kept per evaluation during training (`history`).
CURVE_KEYS = ('recall@20', 'ndcg@20', 'cold_user_recall@20',
              'cold_item_recall@20')


class LossOptions(NamedTuple):
  """The checked loss options of the sampled models (`check_loss`)."""
  name: str
  in_batch: bool
  output_l2: float
  logq_weight: float
  id_l2: float
  margin: float            # ccl only
  negative_weight: float   # ccl only


def check_loss(cfg) -> LossOptions:
  """The sampled models' loss options, checked. Raises ValueError naming
  the bad key."""
  name = cfg.loss.get('name', 'softmax')
  if name not in SAMPLED_LOSSES:
    raise ValueError(f'loss.name={name!r}: the sampled models train with '
                     f'one of {SAMPLED_LOSSES}')
  in_batch = bool(cfg.loss.get('in_batch_negatives', False))
  out_l2 = float(cfg.loss.get('output_l2', 0.0))
  id_l2 = float(cfg.loss.get('id_l2', 0.0))
  logq_w = float(cfg.loss.get('logq_weight', 1.0))
  for key, v in (('output_l2', out_l2), ('id_l2', id_l2),
                 ('logq_weight', logq_w)):
    if not (math.isfinite(v) and v >= 0.0):
      raise ValueError(f'loss.{key}={v!r}: want a finite value >= 0')
  if logq_w != 1.0 and not in_batch:
    raise ValueError(f'loss.logq_weight={logq_w!r} scales the correction of '
                     'the in-batch negatives; set loss.in_batch_negatives '
                     'too, or leave it at 1')
  margin = float(cfg.loss.get('margin', 0.9))
  weight = float(cfg.loss.get('negative_weight', 150.0))
  if name == 'ccl':
    for key, on in (('in_batch_negatives', in_batch),
                    ('output_l2', out_l2)):
      if on:
        raise ValueError(f'loss.{key} is a softmax option; unset it for '
                         'loss.name=ccl')
    if not cfg.loss.get('normalize', True):
      raise ValueError('loss.name=ccl scores cosines; set loss.normalize '
                       'True')
    if not -1.0 <= margin < 1.0:
      raise ValueError(f'loss.margin={margin!r}: want a cosine in [-1, 1)')
    if not (math.isfinite(weight) and weight >= 0):
      raise ValueError(f'loss.negative_weight={weight!r}: want a finite '
                       'value >= 0')
  return LossOptions(name, in_batch, out_l2, logq_w, id_l2, margin, weight)


def _loss_fn(model, cfg, b: int, m: int, groups: int = 1,
             item_counts: np.ndarray | None = None):
  """Sampled softmax of each user's item against the shared negatives
  (loss.name 'softmax'), or SimpleX's cosine contrastive loss over them
  (loss.name 'ccl': loss.margin, loss.negative_weight; see `_ccl`).

  The block's seeds are `groups` consecutive runs of [b users | b items |
  m negatives (| b x H hard)]: one run per process when each process
  samples its own rows (recjax.train.shard_trainer), else one. Every user
  scores against the negatives of all runs and, with
  loss.in_batch_negatives, against every other pair's item too (free: those
  embeddings are already computed; pairs sharing the user's item are masked).

  In-batch items are drawn by popularity, not uniformly, so with them every
  logit gets the logQ correction (Yi et al., RecSys 2019): minus the log of
  the item's expected count among the candidates, m/N + G*b*p(item) with p
  the share of training pairs (`item_counts` [N]). Without it, popular
  items are over-penalised as negatives. PinSAGE's hard negatives are left
  uncorrected. loss.logq_weight (default 1) scales the correction: below 1
  it keeps part of the in-batch popularity penalty, above 1 it turns into a
  popularity bonus.

  loss.output_l2 (default 0) adds output_l2 * 0.5 * the sum of the squared
  norms of the step's user, item and shared-negative embeddings (not
  PinSAGE's hard ones) / the number of users (G*b). With dot-product scores
  (loss.normalize False) it penalises their norms, as LightGCN's loss.l2
  does its layer-0 rows; with unit vectors it is a constant.

  loss.id_l2 (default 0) is LightGCN's loss.l2 itself: id_l2 * 0.5 * the
  sum of the squared id-table rows (NodeEncoder 'embedding') of the step's
  users, items and shared negatives / G*b. It holds back the id rows, the
  bulk of the parameters, which otherwise keep growing on dot-product
  scores; unlike output_l2 it also works with the ccl loss. It takes each
  seed's own row, also for items without training edges (which read their
  type's 'unknown' row instead) and for ids hidden by id_dropout: an L2 on
  a row the step does not read only shrinks it.
  """
  tau = cfg.loss.temperature
  opts = check_loss(cfg)
  in_batch, out_l2, logq_w = opts.in_batch, opts.output_l2, opts.logq_weight
  if in_batch:
    if item_counts is None:
      raise ValueError('loss.in_batch_negatives needs the training pairs\' '
                       'item counts for its logQ correction; this trainer '
                       'does not provide them')
    share = np.asarray(item_counts, np.float64) / max(np.sum(item_counts), 1)
    log_q = jnp.asarray(logq_w * np.log(
        m * groups / len(share) + groups * b * share + 1e-12), jnp.float32)

  def loss_fn(params, batch, feats, rng):
    emb = model.apply({'params': params}, batch['block'], feats, train=True,
                      history=batch.get('history'), rngs={'dropout': rng})
    d = emb.shape[-1]
    emb = emb.reshape(groups, -1, d)
    u = emb[:, :b].reshape(-1, d)
    p = emb[:, b:2 * b].reshape(-1, d)
    n = emb[:, 2 * b:2 * b + m].reshape(-1, d)
    if opts.name == 'ccl':
      loss, aux = _ccl(u, p, n, emb, batch, b, m, opts.margin,
                       opts.negative_weight)
      return _with_id_l2(loss, aux, params, batch, opts.id_l2, b, m, groups)
    s_pos = jnp.sum(u * p, -1, keepdims=True) / tau
    s_neg = u @ n.T / tau
    if in_batch:
      s_pos = s_pos - log_q[batch['pos']][:, None]
      s_neg = s_neg - log_q[batch['neg']][None, :]
    s_neg = jnp.where(batch['pos'][:, None] == batch['neg'][None, :], -1e9,
                      s_neg)
    logits = [s_pos, s_neg]
    if in_batch:
      s_in = u @ p.T / tau - log_q[batch['pos']][None, :]   # [Gb, Gb]
      logits.append(jnp.where(
          batch['pos'][:, None] == batch['pos'][None, :], -1e9, s_in))
    if 'hard' in batch:
      hard = emb[:, 2 * b + m:].reshape(groups * b, -1, d)
      s_hard = jnp.einsum('bd,bhd->bh', u, hard) / tau
      logits.append(jnp.where(batch['hard_mask'] & (
          batch['hard'] != batch['pos'][:, None]), s_hard, -1e9))
    logits = jnp.concatenate(logits, -1)
    loss = jnp.mean(jax.nn.logsumexp(logits, -1) - s_pos[:, 0])
    aux = dict(loss=loss)
    if out_l2:
      reg = 0.5 * (jnp.sum(u**2) + jnp.sum(p**2) + jnp.sum(n**2)) / u.shape[0]
      loss, aux['reg'] = loss + out_l2 * reg, reg
    return _with_id_l2(loss, aux, params, batch, opts.id_l2, b, m, groups)

  return loss_fn


def _with_id_l2(loss, aux, params, batch, id_l2: float, b: int, m: int,
                groups: int):
  """loss + id_l2 * 0.5 * sum of the squared id-table rows of the seeds
  [users | items | shared negatives] (not hard ones) of each of the `groups`
  runs / G*b; aux gains 'id_reg'. Unchanged when id_l2 is 0."""
  if not id_l2:
    return loss, aux
  ids = batch['block']['ids'][0].reshape(groups, -1)[:, :2 * b + m]
  ids = ids.reshape(-1)
  rows = params['encoder']['embedding'][jnp.maximum(ids, 0)]
  reg = 0.5 * jnp.sum(jnp.where((ids >= 0)[:, None], rows, 0.0)**2) / (
      groups * b)
  aux['id_reg'] = reg
  return loss + id_l2 * reg, aux


def _ccl(u, p, n, emb, batch, b: int, m: int, margin: float, weight: float):
  """SimpleX's cosine contrastive loss over the shared negatives (and
  PinSAGE's hard ones): relu(1 - cos(u, i+)) + weight * the mean over the
  row's valid negatives of relu(cos(u, j) - margin). u, p [G*b, D] and
  n [G*m, D] are unit vectors. Negatives equal to the row's positive (or
  masked hard slots) leave the mean, where LightGCN's
  `losses.cosine_contrastive` counts them as zeros; with M in the hundreds
  the two differ by well under 1%."""
  cos_neg = u @ n.T                                              # [Gb, Gm]
  valid = batch['pos'][:, None] != batch['neg'][None, :]
  if 'hard' in batch:
    hard = emb[:, 2 * b + m:].reshape(u.shape[0], -1, u.shape[1])
    cos_neg = jnp.concatenate(
        [cos_neg, jnp.einsum('bd,bhd->bh', u, hard)], -1)
    valid = jnp.concatenate([valid, batch['hard_mask'] & (
        batch['hard'] != batch['pos'][:, None])], -1)
  hinge = jnp.sum(jax.nn.relu(cos_neg - margin) * valid, -1) / jnp.maximum(
      jnp.sum(valid, -1), 1)
  loss = jnp.mean(jax.nn.relu(1.0 - jnp.sum(u * p, -1)) + weight * hinge)
  return loss, dict(loss=loss)


def make_init_fn(model, tx, block, feats):
  """rng -> a fresh TrainState, the model initialised on `block` (any
  Block arrays of the step's shapes)."""
  def init_fn(rng):
    params = model.init(rng, block, feats)['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params))
  return init_fn


def make_train_step(loss_fn, tx, base_key):
  """(state, batch, feats, lr) -> (state, aux): one optimiser step with
  dropout keyed by the step."""
  def train_step(state, batch, feats, lr):
    rng = jax.random.fold_in(base_key, state.step)
    (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, batch, feats, rng)
    opt_state = state.opt_state
    opt_state.hyperparams['learning_rate'] = lr
    updates, opt_state = tx.update(grads, opt_state, state.params)
    return TrainState(state.step + 1, optax.apply_updates(
        state.params, updates), opt_state), aux
  return train_step


class Embedder:
  """Embeds node ids in fixed-size chunks (one compilation)."""

  def __init__(self, model, feats, chunk: int, seed: int):
    self.chunk, self.seed, self.feats = chunk, seed, feats
    self._fn = jax.jit(lambda params, block, feats: model.apply(
        {'params': params}, block, feats, train=False))

  def __call__(self, params, sampler, ids, time=None) -> np.ndarray:
    """Embeddings [len(ids), D] of global ids; `time` (a scalar or one per
    id) is the query time of temporal samplers."""
    out = []
    if time is not None:
      time = np.broadcast_to(np.asarray(time, np.int64), (len(ids),))
    for a in range(0, len(ids), self.chunk):
      part = ids[a:a + self.chunk]
      seeds = np.full(self.chunk, -1, np.int32)
      seeds[:len(part)] = part
      times = None
      if time is not None:
        times = np.zeros(self.chunk, np.int64)
        times[:len(part)] = time[a:a + self.chunk]
      rng = np.random.default_rng([self.seed, 99, a])
      block = sampler.sample(seeds, rng, times=times).as_dict()
      out.append(np.asarray(self._fn(params, block, self.feats))[:len(part)])
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


def train_and_evaluate(config: Any, workdir: str, mode: str = 'train') -> dict:
  """Trains a sampled GNN (resuming from checkpoints), then evaluates warm
  users, cold users and cold items. Returns a dict of figures; with
  train.eval_every_epochs, 'history' lists the evaluations during training
  (step, epoch, recall@20, ndcg@20 and the cold recalls)."""
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0 and mode == 'train':   # eval keeps the record
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
  t0 = time.perf_counter()
  ds = registry.load_dataset(config.data)
  events = check_event_types(config.data.event_types, 'data.event_types')
  graph = NodeGraph.from_dataset(ds, events)
  feats_np = node_features(graph, ds)
  sampler = make_sampler(config, graph)
  eval_fanouts(config)                 # a bad value fails before training
  check_loss(config)
  every = check_eval_every(config)
  hard_table, num_hard = None, 0
  if config.model.name == 'pinsage' and config.graph.num_hard_negatives:
    hard_table = samplers_lib.hard_negative_table(
        graph, tuple(config.graph.hard_ranks), seed=config.seed)
    num_hard = config.graph.num_hard_negatives
  stream = PairStream(ds, target_events(config.data),
                      config.train.batch_size, config.loss.num_negatives,
                      config.seed, hard_table, num_hard)
  mesh = mesh_lib.make_mesh(config.mesh.shape, config.mesh.axes)
  rules = tuple(tuple(r) for r in config.sharding_rules)
  b, m = config.train.batch_size, config.loss.num_negatives
  seeds = (2 + num_hard) * b + m
  data_size = mesh_lib.describe(mesh).get('data', 1)
  if seeds % data_size or b % data_size:
    raise ValueError(f'seeds per batch (2 + hard) * batch_size + negatives '
                     f'= {seeds} and batch_size {b} must divide over the {data_size} data '
                     'shards; change train.batch_size or loss.num_negatives')
  rep = mesh_lib.replicated(mesh)
  feats = jax.device_put(feats_np, rep)
  # The padding of the id table must not depend on the device count (up to
  # 128), so 1 and N devices build the same model.
  model = build_model(config, graph, feats_np, sampler,
                      pad_to=math.lcm(128, mesh.size))
  data_s = time.perf_counter() - t0
  logging.info('graph %s in %.1fs', graph.summary(), data_s)

  spe = stream.steps_per_epoch
  total = (config.train.num_steps if config.train.num_steps > 0
           else config.train.num_epochs * spe)
  tx = make_optimizer(config.optimizer)
  example = seed_block(graph, sampler, stream.batch(0),
                       np.random.default_rng(0))

  init_fn = make_init_fn(model, tx, example, feats)

  state, shardings, mgr, restored_step = checkpoint.init_or_restore(
      init_fn, jax.random.key(config.seed), mesh, rules, workdir,
      config.train.keep_checkpoints)
  start = int(jax.device_get(state.step))
  loss_fn = _loss_fn(model, config, b, m, item_counts=np.bincount(
      stream.items, minlength=ds.num_items))
  base_key = jax.random.key(config.seed + 1)

  train_step = make_train_step(loss_fn, tx, base_key)

  bs = mesh_lib.batch_sharding(mesh, rules)
  shard_tree = lambda t: jax.tree.map(lambda _: bs, t)
  batch_shardings = dict(block=shard_tree(example), pos=bs, neg=rep)
  if num_hard:
    batch_shardings.update(hard=bs, hard_mask=bs)
  step_fn = jax.jit(train_step,
                    in_shardings=(shardings, batch_shardings, rep, rep),
                    out_shardings=(shardings, rep), donate_argnums=0)

  def make_batch(step):
    pairs = stream.batch(step)
    rng = np.random.default_rng([config.seed, step, 7])
    out = dict(block=seed_block(graph, sampler, pairs, rng), pos=pairs['pos'],
               neg=pairs['neg'])
    if num_hard:
      out.update(hard=pairs['hard'], hard_mask=pairs['hard_mask'])
    return out

  writer = MetricWriter(workdir, tensorboard=config.train.tensorboard)
  budget_s = config.train.budget_minutes * 60.0
  train_s, step, last_loss, losses = 0.0, start, None, []
  # Evaluation during training (train.eval_every_epochs, 0 = none): the
  # learning curve, as the LightGCN trainer records it. Its time is not
  # training time.
  eval_every, history = every * spe, []
  # Built once for every evaluation of the run: the Embedder (one compiled
  # embedding function) and the sampler. Wider neighbourhoods at inference
  # (graph.eval_fanouts) average out more of the sampling noise; the layers
  # are mean-like, so they carry over. (PinSAGE's sampler walks the whole
  # graph when built.)
  embed = Embedder(model, feats, config.eval.embed_chunk, config.seed)
  wide = eval_fanouts(config)
  eval_sampler = make_sampler(config, graph, wide) if wide else sampler
  if mode == 'train' and step < total:
    bar = tqdm.tqdm(total=total, initial=step, desc='train', unit='step',
                    disable=not config.train.progress or
                    jax.process_index() != 0, mininterval=2.0)
    t_loop = time.perf_counter()
    logger = StepLogger(writer, mgr, workdir, config.train.log_every, spe,
                        bar)
    while step < total:
      lr = scheduled_lr(config.optimizer, step, total, train_s, budget_s)
      state, aux = step_fn(state, make_batch(step), feats, np.float32(lr))
      step += 1
      logger.add(aux, step, total, lr)
      if step % config.train.checkpoint_every_steps == 0:
        checkpoint.save(mgr, step, state)
      train_s = time.perf_counter() - t_loop
      if eval_every and step % eval_every == 0 and step < total:
        jax.block_until_ready(state)     # this step's compute is training
        t_eval = time.perf_counter()
        train_s = t_eval - t_loop
        ev = evaluate_all(config, ds, graph, eval_sampler, model, feats,
                          state.params, stream.items, embed)
        t_loop += time.perf_counter() - t_eval
        ev = {k: round(v, 6) for k, v in ev.items() if k in CURVE_KEYS}
        writer.write(step, ev, prefix='eval/')
        history.append(dict(step=step, epoch=round(step / spe, 3), **ev))
        logging.info('step %d eval %s', step, ev)
      if budget_s and train_s > budget_s:
        logging.info('budget reached at step %d', step)
        break
    bar.close()
    logger.flush(step)
    last_loss, losses = logger.last_loss, logger.losses
    if mgr.latest_step() != step:
      checkpoint.save(mgr, step, state, force=True)
  mgr.wait_until_finished()

  # ------------------------------------------------------------ evaluation
  t_eval = time.perf_counter()
  final = evaluate_all(config, ds, graph, eval_sampler, model, feats,
                       state.params, stream.items, embed)
  final['eval_s'] = time.perf_counter() - t_eval
  # A re-evaluation (mode 'eval') is labelled with its fan-outs, so it is
  # not mistaken for the training run's own figures at the same step.
  prefix = 'eval/' if mode == 'train' else 'eval@{}/'.format('x'.join(
      map(str, eval_fanouts(config) or config.graph.fanouts)))
  writer.write(step, {k: v for k, v in final.items()
                      if isinstance(v, float)}, prefix=prefix)
  writer.close()
  steps_run = step - start
  return dict(
      model=config.model.name, data=ds.name, devices=jax.device_count(),
      mesh=mesh_lib.describe(mesh), steps=step, epochs=round(step / spe, 3),
      steps_per_epoch=spe, resumed_from=restored_step,
      train_s=round(train_s, 3), step_s=round(train_s / max(steps_run, 1), 5),
      seeds_per_s=round(steps_run * b / max(train_s, 1e-9), 1),
      data_s=round(data_s, 3), loss=last_loss, loss_curve=losses,
      history=history,
      graph=graph.summary(), compilations=step_fn._cache_size(),
      **{k: round(v, 6) if isinstance(v, float) else v
         for k, v in final.items()})


def evaluate_all(config, ds: Dataset, graph: NodeGraph, sampler, model,
                 feats, params, train_items, embed: Embedder) -> dict:
  """Warm full ranking, popularity, cold users (fold-in) and cold items,
  with the evaluation `sampler` (graph.eval_fanouts) and `embed`, both
  shared by every evaluation of a run.

  Popularity counts `train_items` (the training pairs' items, as the
  LightGCN trainer does), so both trainers report the same baseline.
  """
  ks = tuple(config.eval.ks)
  now = int(ds.train.timestamp.max()) + 1
  tq = now if isinstance(sampler, samplers_lib.TemporalSampler) else None
  users = embed(params, sampler, graph.ids('user', np.arange(ds.num_users)),
                tq)
  items = embed(params, sampler, graph.ids('item', np.arange(ds.num_items)),
                tq)
  evaluator = RankingEvaluator(ds.train.user, ds.train.item, ds.test.user,
                               ds.test.item, ds.num_users, ds.num_items,
                               ks=ks, batch_size=config.eval.batch_size,
                               exclude_users=ds.cold_users)
  out = evaluator.evaluate(users, items)
  pop = np.bincount(train_items, minlength=ds.num_items).astype(np.float32)
  base = evaluator.evaluate(np.ones((ds.num_users, 1), np.float32),
                            pop[:, None])
  out.update({f'popularity_{k}': base[k] for k in ('recall@20', 'ndcg@20')})
  if config.model.name == 'gat':
    out['relation_attention'] = relation_attention(
        graph, sampler, model, feats, params,
        graph.ids('user', np.arange(min(ds.num_users, 2048))), config.seed)
  cs = cold_start.make_cold_start(ds, config.eval.cold_reveal, ks,
                                  config.eval.batch_size)
  if cs is not None:
    # Fold-in: the cold users' revealed edges join the graph; no retraining.
    r = cs.revealed
    g2 = graph.with_edges(r.user, r.item, r.event, r.timestamp)
    s2 = make_sampler(config, g2, eval_fanouts(config))
    cold = cs.revealed_users
    tq2 = None
    if tq is not None:
      # Each cold user is embedded just after their last revealed event:
      # the moment they have those few edges (and no later information).
      last = np.zeros(ds.num_users, np.int64)
      np.maximum.at(last, r.user, r.timestamp)
      tq2 = np.maximum(last[cold] + 1, now)
    users = np.array(users)
    users[cold] = embed(params, s2, graph.ids('user', cold), tq2)
    out.update(cold_start.evaluate(cs, users, items))
    out.update(cold_start.popularity(cs, ds, train_items))
  return out


def relation_attention(graph: NodeGraph, sampler, model, feats, params,
                       seeds: np.ndarray, seed: int = 0) -> dict:
  """GAT's first-layer attention on the seeds' own neighbours, per relation.

  Returns {relation: mean attention of an edge of that relation x the
  number of neighbours}, so 1.0 means "weighted like the average
  neighbour" and a purchase at 2.0 counts twice as much as that.
  """
  block = sampler.sample(seeds, np.random.default_rng([seed, 5])).as_dict()
  _, inter = model.apply({'params': params}, block, feats,
                         mutable=['intermediates'])
  alpha = np.asarray(inter['intermediates']['layer0']['attention'][0])
  n1 = len(block['ids'][1])
  alpha = alpha[:n1].mean(-1)              # seed level (l = 0), mean of heads
  rel, valid = np.asarray(block['rel'][1]), np.asarray(block['ids'][1]) >= 0
  per_seed = np.add.reduceat(valid.astype(np.float64),
                             np.arange(0, n1, n1 // len(seeds)))
  scaled = alpha * np.repeat(per_seed, n1 // len(seeds))
  out = {}
  for r, name in enumerate(graph.relations):
    m = valid & (rel == r)
    if m.any():
      out[name] = round(float(scaled[m].mean()), 4)
  return out
