"""`train_and_evaluate(config, workdir)` for sequence models: SASRec,
BERT4Rec, the feature-rich session encoder and the graph + transformer
hybrid (whose graph part `recjax.train.hybrid` trains first), on a device
mesh.

Phases: data (padded histories, evaluation sets) -> mesh & sharded state
(the item table sharded by rows by the config's rules) -> restore -> loop
(jitted donated step per length bucket, logging, NaN guard, periodic
validation keeping the best parameters, checkpoints, time budget) -> final
evaluation on the test split: full ranking plus the labelled sampled
protocols.

Objectives (by model): 'next' (SASRec, session, hybrid): every position predicts
the next item; 'cloze' (BERT4Rec): a `loss.mask_ratio` share of each
history is replaced by the mask token and predicted. Negatives are drawn
inside the step (uniform over the items seen in training, per position or
per row), so batches are just the padded id arrays.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from recjax import models
from recjax.data import registry, sequences
from recjax.data.schema import Interactions
from recjax.models import item_encoder
from recjax.report import metrics as report_metrics
from recjax.train import checkpoint, cold_start, mesh as mesh_lib, seq_losses
from recjax.train.seq_eval import SeqEvaluator, compute_queries
from recjax.train.state import (TrainState, make_optimizer,
                                scheduled_lr)
from recjax.train.trainer import StepLogger
from recjax.train.writers import MetricWriter

OBJECTIVE = dict(sasrec='next', session='next', bert4rec='cloze',
                 hybrid='next')
INPUTS = dict(sasrec=('item',), bert4rec=('item',),
              session=sequences.FEATURES)


def inputs_of(config) -> tuple[str, ...]:
  """The feature arrays the configured model reads."""
  if config.model.name == 'hybrid':
    node = config.model.get('graph_user', 'history') == 'node'
    return INPUTS[config.model.get('base', 'sasrec')] + ('user',) * node
  return INPUTS[config.model.name]


# ------------------------------------------------------------ objectives

# Batch key of loss.exclude_seen: bool [B, I + 1], each row's user's
# training items (SequenceBatcher.seen_mask).
SEEN = 'seen'
# Draws per negative under loss.exclude_seen: a user who saw a fraction f
# of the catalog keeps a seen negative (masked out) with probability f ** 4.
_SEEN_TRIES = 4
# The mask is host-built each step: at 2M items and 128 rows, 256 MB.
_SEEN_MAX_ITEMS = 1 << 21


def check_exclude_seen(cfg, num_items: int) -> bool:
  """Whether loss.exclude_seen is on; raises when it cannot apply."""
  if not cfg.loss.get('exclude_seen', False):
    return False
  if cfg.loss.name == 'full_softmax' or cfg.loss.negatives != 'position':
    raise ValueError('loss.exclude_seen needs sampled negatives per position '
                     f'(loss.negatives=position), got loss.name='
                     f'{cfg.loss.name!r}, loss.negatives='
                     f'{cfg.loss.negatives!r}')
  if num_items > _SEEN_MAX_ITEMS:
    raise ValueError(f'loss.exclude_seen builds a [batch, items] mask per '
                     f'step; {num_items} items exceed {_SEEN_MAX_ITEMS}')
  return True


def _negatives(rng, cfg, target, pool, seen=None):
  """Ids drawn uniformly from `pool` [P]: [B, T, N] per position or [B, N]
  per row, and a float mask of the usable ones (None: all of them).

  With `seen` (bool [B, I + 1]) a position's negative is redrawn, up to
  _SEEN_TRIES draws, while it is one of the user's training items or the
  position's target, as SASRec's sampler does; one that stays so is masked.
  Without it a negative equal to its position's target is masked.
  """
  if cfg.loss.negatives not in ('position', 'row'):
    raise ValueError(f"loss.negatives={cfg.loss.negatives!r} is not one of "
                     "['position', 'row']")
  b, t = target.shape
  n = cfg.loss.num_negatives
  if cfg.loss.negatives == 'row':
    # Row negatives are not masked, as in gSASRec: one equals a position's
    # target with probability 1 / I, and masking costs a [B, T, N] pass.
    return pool[jax.random.randint(rng, (b, n), 0, pool.shape[0])], None
  tries = 1 if seen is None else _SEEN_TRIES
  cand = pool[jax.random.randint(rng, (b, t, n, tries), 0, pool.shape[0])]
  bad = cand == target[..., None, None]
  if seen is not None:
    bad |= jnp.take_along_axis(seen, cand.reshape(b, -1), axis=1
                               ).reshape(cand.shape)
  first = jnp.argmin(bad, axis=-1)[..., None]      # the first usable draw
  neg = jnp.take_along_axis(cand, first, axis=-1)[..., 0]
  ok = ~jnp.take_along_axis(bad, first, axis=-1)[..., 0]
  return neg, ok.astype(jnp.float32)


AVERAGES = ('batch', 'epoch')


def _epoch_normalizer(cfg, objective: str, batcher) -> float | None:
  """loss.average: 'batch' (None here) averages over the batch's own
  positions; 'epoch' divides their sum by the positions an average batch
  of the epoch holds. Length buckets make batches of short histories and
  of long ones; under 'batch' a short history's positions weigh several
  times a long one's, under 'epoch' every position weighs the same, as in
  batches that mix lengths (SASRec's code). Next-item objectives only."""
  average = cfg.loss.get('average', 'batch')
  if average not in AVERAGES:
    raise ValueError(f'loss.average={average!r} is not one of '
                     f'{list(AVERAGES)}')
  if average == 'batch':
    return None
  if objective != 'next':
    raise ValueError("loss.average='epoch' weighs next-item positions; "
                     f"model.name={cfg.model.name!r} trains by Cloze")
  targets = np.maximum(batcher.seqs.length - 1, 0)
  return float(targets.mean() * batcher.batch_size)


def _score_and_loss(module, q, target, mask, rng, cfg, pool, seen=None):
  """Loss of queries q [B, T, D'] against target ids [B, T] (module bound);
  sampled negatives come from the ids in `pool` (and avoid `seen`, see
  `_negatives`)."""
  name = cfg.loss.name
  if name == 'full_softmax':
    logits = q @ module.all_keys().T
    return seq_losses.full_softmax(logits, target - 1, mask)
  neg, neg_mask = _negatives(rng, cfg, target, pool, seen)
  pos = jnp.sum(q * module.keys(target), axis=-1)
  if neg.ndim == 3:
    logits = jnp.einsum('btd,btnd->btn', q, module.keys(neg))
  else:
    logits = jnp.einsum('btd,bnd->btn', q, module.keys(neg))
  return seq_losses.sampled(name, pos, logits, mask, num_items=pool.shape[0],
                            t=cfg.loss.gbce_t, neg_mask=neg_mask)


def _next_item(module, batch, rng, cfg, pool, seen=None, per_batch=None):
  """Every position predicts the next item of the window. `per_batch`
  (loss.average='epoch', `_epoch_normalizer`): the loss is the positions'
  sum over that count instead of their mean."""
  inputs = {f: x[:, :-1] for f, x in batch.items()}
  target = batch['item'][:, 1:]
  mask = ((target > 0) & (inputs['item'] > 0)).astype(jnp.float32)
  h = module(inputs, train=True)
  loss = _score_and_loss(module, module.query(h), target, mask, rng, cfg,
                         pool, seen)
  return loss if per_batch is None else loss * jnp.sum(mask) / per_batch


def cloze_positions(rng, items, ratio: float):
  """Which positions BERT4Rec masks: round(ratio * length), at least one.

  Args:
    rng: key; items: int [B, T] ids (0 = padding); ratio: the mask ratio.

  Returns:
    (pos int [B, K], chosen bool [B, K], is_masked bool [B, T]): K =
    ceil(ratio * T) candidate positions per row (a static shape), of which
    `chosen` are masked; is_masked marks them in the window.
  """
  b, t = items.shape
  k_max = max(1, math.ceil(ratio * t))
  valid = items > 0
  n_valid = valid.sum(1)
  n_mask = jnp.clip(jnp.round(ratio * n_valid), 1, k_max)
  # The K smallest random keys among real positions (padding keys are 2).
  key = jnp.where(valid, jax.random.uniform(rng, (b, t)), 2.0)
  _, pos = jax.lax.top_k(-key, k_max)
  chosen = (jnp.arange(k_max)[None] < n_mask[:, None]) & (n_valid[:, None] > 0)
  is_masked = jnp.zeros((b, t), bool).at[jnp.arange(b)[:, None], pos].max(
      chosen)
  return pos, chosen, is_masked


def _cloze(module, batch, rng, cfg, pool, seen=None, per_batch=None):
  """Masked items predicted from both sides (module bound). per_batch is
  always None: `_epoch_normalizer` refuses loss.average='epoch' here."""
  del per_batch
  items = batch['item']
  pick_rng, neg_rng = jax.random.split(rng)
  pos, chosen, is_masked = cloze_positions(pick_rng, items,
                                           cfg.loss.mask_ratio)
  inputs = dict(batch, item=jnp.where(is_masked, module.mask_id, items))
  h = module(inputs, train=True)
  q = module.query(jnp.take_along_axis(h, pos[..., None], axis=1))
  target = jnp.take_along_axis(items, pos, axis=1)
  return _score_and_loss(module, q, target, chosen.astype(jnp.float32),
                         neg_rng, cfg, pool, seen)


def _queries(module, inputs, objective):
  """Query vectors [B, D'] for the item after each history window."""
  if objective == 'cloze':
    # BERT4Rec's inference: the window shifts left and a mask token is
    # appended where the next item would be.
    inputs = {f: jnp.concatenate([x[:, 1:], jnp.zeros_like(x[:, :1])], 1)
              for f, x in inputs.items()}
    items = inputs['item']
    inputs['item'] = items.at[:, -1].set(module.mask_id)
  h = module(inputs, train=False)
  return module.query(h[:, -1])


# ----------------------------------------------------------------- data

def _prepare(config, mesh, workdir: str):
  """Dataset, objective, model, training batcher, evaluation sets and
  evaluators, the pool of negative ids, and the graph part's embeddings
  and metrics (hybrid only, else None)."""
  name = config.model.name
  if name not in OBJECTIVE:
    raise ValueError(f'model.name={name!r} is not a sequence model; one of '
                     f'{sorted(OBJECTIVE)}')
  objective = OBJECTIVE[name]
  if config.loss.name not in seq_losses.LOSSES:
    raise ValueError(f'loss.name={config.loss.name!r} is not one of '
                     f'{list(seq_losses.LOSSES)}')
  ds = registry.load_dataset(config.data)
  L = config.model.max_len
  collapse = config.data.get('collapse_repeats', False)
  windows = config.data.get('train_windows', 'last')
  if windows not in ('last', 'all'):
    raise ValueError(f"data.train_windows={windows!r} is not one of "
                     "['last', 'all']")
  width = L + 1 if objective == 'next' else L
  # 'all': earlier windows of long histories too, each event a target once
  # (next-item windows overlap by the one event that is input and target).
  train = sequences.train_sequences(
      ds, width, collapse_repeats=collapse,
      stride=None if windows == 'last' else width - (objective == 'next'))
  evalsets = {w: sequences.eval_set(ds, L, w, collapse_repeats=collapse)
              for w in ('valid', 'test')}
  pad_to = math.lcm(128, mesh.size)
  sizes = dict(num_items=ds.num_items, num_users=ds.num_users, max_len=L,
               vocab_size=-(-(ds.num_items + 2) // pad_to) * pad_to,
               item_side=sequences.item_side_features(ds),
               num_locations=1 + max(int(x.location.max(initial=0)) for x in (
                   ds.train, ds.valid, ds.test) if x is not None))
  if config.model.get('item_bias', False):
    # Which ids have a trained bias (id = index + 1): the rest get the
    # expected bias of an item of unknown popularity (models.session).
    seen = np.zeros(sizes['vocab_size'], bool)
    seen[1:ds.num_items + 1] = np.bincount(ds.train.item,
                                           minlength=ds.num_items) > 0
    sizes['item_seen'] = seen
  if config.model.get('item_encoder', 'none') == 'multimodal':
    sizes['item_content'] = item_encoder.content_tables(
        ds, parts=tuple(config.model.get('content_parts',
                                         tuple(item_encoder.PARTS))))
  graph = None
  if name == 'hybrid':
    from recjax.train import hybrid  # pylint: disable=g-import-not-at-top
    g_users, g_items, g_metrics = hybrid.graph_embeddings(config, ds, workdir)
    if ds.catalog is not None:
      g_items = hybrid.impute_cold(
          g_items, np.bincount(ds.train.item, minlength=ds.num_items) > 0,
          [ds.catalog.seller, ds.catalog.leaf_category])
    sizes['graph_item'] = hybrid.item_table(g_items)
    if config.model.get('graph_user', 'history') == 'node':
      sizes['graph_user'], sizes['graph_scale'] = hybrid.user_table(
          g_users, g_items,
          np.bincount(ds.train.user, minlength=ds.num_users) > 0,
          config.graph.loss.get('temperature', 1.0))
    graph = dict(users=g_users, items=g_items, metrics=g_metrics)
  weight = config.model.get('graph_weight', 'learned')
  if name == 'hybrid' and weight not in ('learned', 'valid', 'balanced'):
    raise ValueError(f'model.graph_weight={weight!r} is not one of '
                     "['learned', 'valid', 'balanced']")
  if name == 'hybrid' and weight == 'valid' and evalsets['valid'] is None:
    raise ValueError("model.graph_weight='valid' fits the graph logit's "
                     f'weight on the validation split; data {ds.name!r} has '
                     "none: use model.graph_weight='balanced'")
  model = models.get(name)(config.model, sizes)
  history = ds.train if ds.valid is None else Interactions.concat(
      [ds.train, ds.valid])
  pop = np.bincount(history.item, minlength=ds.num_items).astype(np.float64)
  evaluators = {
      w: SeqEvaluator(es, ds.num_items, ds.num_users, ks=config.eval.ks,
                      protocols=tuple(config.eval.sampled), popularity=pop,
                      num_negatives=config.eval.sampled_negatives,
                      seed=config.eval.seed,
                      batch_size=config.eval.batch_size)
      for w, es in evalsets.items() if es is not None}
  # Cold-start items (held out of training, marketplace only): a full-
  # ranking slice of the test targets, reported as cold_item_*.
  cold = (sequences.restrict_targets(evalsets['test'], ds.cold_items)
          if len(ds.cold_items) else None)
  if cold is not None:
    evalsets['cold_item'] = cold
    evaluators['cold_item'] = SeqEvaluator(
        cold, ds.num_items, ds.num_users, ks=config.eval.ks, protocols=(),
        batch_size=config.eval.batch_size)
    # The same targets ranked among the cold items only ("which new
    # product?", as the graph trainers' cold_item_* slice): what content
    # adds without the question of how new items compete with the warm
    # head. Reported as cold_item_within_cold_*, with the training
    # popularity of each item's leaf category as its baseline.
    # (Cut-offs beyond the number of cold items would be trivial: left out.)
    within_ks = tuple(k for k in config.eval.ks if k < len(ds.cold_items))
    if within_ks:
      evalsets['cold_within'] = sequences.among(cold, ds.cold_items)
      evaluators['cold_within'] = SeqEvaluator(
          evalsets['cold_within'], len(ds.cold_items), ds.num_users,
          ks=within_ks, protocols=(), batch_size=config.eval.batch_size)
  batcher = sequences.SequenceBatcher(train, config.train.batch_size,
                                      buckets=config.data.get('buckets', ()),
                                      seed=config.seed)
  # Negatives come from the items seen in training unless configured
  # otherwise: pushing down ids that never occur as positives would bury
  # cold items, whose keys a feature-rich model builds from the catalog.
  source = config.loss.get('negatives_from', 'train')
  if source not in ('train', 'all'):
    raise ValueError(f"loss.negatives_from={source!r} is not one of "
                     "['train', 'all']")
  pool = np.arange(1, ds.num_items + 1, dtype=np.int32)
  if source == 'train':
    pool = np.flatnonzero(np.bincount(ds.train.item,
                                      minlength=ds.num_items)) + 1
  return (ds, objective, model, batcher, evalsets, evaluators,
          jnp.asarray(pool, jnp.int32), graph)


def _save_vectors(workdir, es, query_fn, keys_fn, params, inputs_used,
                  config, objective) -> None:
  """workdir/vectors.npz: users int32 [S] (the test EvalSet's rows),
  queries float32 [S, D'] and keys float32 [I, D'] (item index order), for
  tools that rank outside the trainer (tools/report.py)."""
  q = compute_queries(
      lambda p, x: query_fn(p, {f: x[f] for f in inputs_used}), params,
      es.history, config.eval.batch_size, config.data.get('buckets', ()),
      extra=int(objective == 'cloze'))
  path = os.path.join(workdir, 'vectors.npz')
  with open(path + '.tmp', 'wb') as f:
    np.savez(f, users=es.history.users, queries=np.asarray(q, np.float32),
             keys=np.asarray(keys_fn(params), np.float32))
  os.replace(path + '.tmp', path)


def _latency(history, query_fn, keys_fn, params, inputs_used, objective,
             n: int, ks, buckets) -> dict:
  """p50 / p99 milliseconds of one request: one user's history -> query
  (jitted, compiled beforehand) -> scores over every item -> top-k."""
  keys = np.asarray(keys_fn(params))
  k = max(ks)
  rows = np.random.default_rng(0).choice(len(history.users),
                                         min(n, len(history.users)),
                                         replace=False)
  extra = int(objective == 'cloze')
  widths = np.asarray(sequences.bucket_widths(history.width, buckets))

  def feats(r, w=None):
    if w is None:      # the narrowest bucket that holds the history
      need = min(int(history.length[r]) + extra, history.width)
      w = int(widths[np.searchsorted(widths, need)])
    return {f: x for f, x in history.features([r], w).items()
            if f in inputs_used}

  for w in widths:                       # compile every width first
    np.asarray(query_fn(params, feats(rows[0], int(w))))
  out = report_metrics.latency_ms(
      lambda r: keys @ np.asarray(query_fn(params, feats(r)))[0], rows, k)
  return dict(out, latency_requests=len(rows))


def _fit_graph_weight(params, shardings, query_fn, keys_fn, ds, valid,
                      evaluator, inputs_used, config) -> tuple[Any, dict]:
  """The hybrid's graph-logit weight after training ('score' fusion;
  recjax.train.hybrid): 'valid' fits it on the validation split,
  'balanced' gives the graph logits the spread of the base logits over
  training users' histories. Returns params with that weight, and what
  the fit saw."""
  from recjax.train import hybrid  # pylint: disable=g-import-not-at-top
  run = lambda p, x: query_fn(p, {f: x[f] for f in inputs_used})
  buckets = config.data.get('buckets', ())
  keys = keys_fn(params)
  d = config.model.embed_dim
  if config.model.graph_weight == 'valid':
    q = compute_queries(run, params, valid.history, config.eval.batch_size,
                        buckets)
    c, table = hybrid.fit_score_weight(q, keys, evaluator.evaluate_queries,
                                       d, config.eval.select_metric)
    fit = dict(graph_weight_fit=json.dumps(table))
  else:
    users = np.unique(ds.train.user)
    users = np.random.default_rng(config.seed).choice(
        users, min(len(users), 2048), replace=False)
    hist = sequences.build(ds.train, ds.num_users, config.model.max_len,
                           np.sort(users),
                           config.data.get('collapse_repeats', False))
    q = compute_queries(run, params, hist, config.eval.batch_size, buckets)
    c = hybrid.balanced_score_weight(q, np.asarray(keys), d)
    fit = {}
  w = float(jax.device_get(params['graph_score_weight'])) * c
  logging.info('graph logit weight x%.4g = %.4g (%s)', c, w,
               config.model.graph_weight)
  params = dict(params, graph_score_weight=jax.device_put(
      jnp.float32(w), shardings.params['graph_score_weight']))
  return params, dict(graph_weight=round(w, 6),
                      graph_weight_multiple=round(float(c), 6), **fit)


def _placement(params) -> dict:
  return {jax.tree_util.keystr(path): dict(
      spec=str(tuple(x.sharding.spec)),
      shard_shape=list(x.sharding.shard_shape(x.shape)))
          for path, x in jax.tree_util.tree_leaves_with_path(params)}


# ----------------------------------------------------------------- main

def train_and_evaluate(config: Any, workdir: str, mode: str = 'train') -> dict:
  """Trains a sequence model (resuming from the latest checkpoint), then
  evaluates it on the test split.

  Args:
    config: ml_collections ConfigDict (see configs/sasrec_ml1m.py).
    workdir: where checkpoints, metrics.jsonl, TensorBoard events and
      config.json go.
    mode: 'train' (train, then evaluate) or 'eval' (evaluate the latest
      checkpoint).

  Returns:
    A flat dict: devices, mesh, steps, epochs, train_s, epoch_s, the test
    metrics (full ranking unprefixed, sampled ones prefixed by their label,
    e.g. 'uniform100_hr@10'), the best validation figure and history.
  """
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))

  # ---------------------------------------------------------------- data
  t0 = time.perf_counter()
  mesh = mesh_lib.make_mesh(config.mesh.shape, config.mesh.axes)
  rules = tuple(tuple(r) for r in config.sharding_rules)
  (ds, objective, model, batcher, evalsets, evaluators,
   pool, graph) = _prepare(config, mesh, workdir)
  inputs_used = inputs_of(config)
  if 'valid' in evaluators:
    names = evaluators['valid'].metric_names()
    if config.eval.select_metric not in names:
      raise ValueError(f'eval.select_metric={config.eval.select_metric!r} is '
                       f'not one of the validation metrics {sorted(names)}')
  exclude_seen = check_exclude_seen(config, ds.num_items)
  positions_per_batch = _epoch_normalizer(config, objective, batcher)
  data_s = time.perf_counter() - t0
  logging.info('data %s, %d training sequences, widths %s in %.1fs',
               ds.summary(), len(batcher.seqs.users), batcher.widths, data_s)

  spe = batcher.steps_per_epoch
  total = (config.train.num_steps if config.train.num_steps > 0
           else config.train.num_epochs * spe)
  tx = make_optimizer(config.optimizer)

  # ---------------------------------------------------- sharded state
  def init_fn(rng):
    dummy = {f: jnp.zeros((1, 2), jnp.int32) for f in inputs_used}
    params = model.init(rng, dummy, method='init_all')['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params))

  state, shardings, mgr, restored_step = checkpoint.init_or_restore(
      init_fn, jax.random.key(config.seed), mesh, rules, workdir,
      config.train.keep_checkpoints)
  start = int(jax.device_get(state.step))

  # ------------------------------------------------------------ step
  objective_fn = _next_item if objective == 'next' else _cloze
  base_rng = jax.random.key(config.seed + 1)

  def loss_fn(params, batch, rng):
    drop_rng, obj_rng = jax.random.split(rng)
    batch = dict(batch)
    seen = batch.pop(SEEN, None)
    loss = model.apply({'params': params}, batch, obj_rng, config,
                       pool, seen, positions_per_batch, method=objective_fn,
                       rngs={'dropout': drop_rng})
    return loss, dict(loss=loss)

  def train_step(state, batch, lr):
    rng = jax.random.fold_in(base_rng, state.step)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (_, aux), grads = grad_fn(state.params, batch, rng)
    opt_state = state.opt_state
    opt_state.hyperparams['learning_rate'] = lr
    updates, opt_state = tx.update(grads, opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(state.step + 1, params, opt_state), aux

  bs = mesh_lib.batch_sharding(mesh, rules)
  rep = mesh_lib.replicated(mesh)
  batch_shardings = {f: bs for f in inputs_used}
  step_shardings = dict(batch_shardings)
  if exclude_seen:
    step_shardings[SEEN] = bs
  step_fn = jax.jit(train_step, in_shardings=(shardings, step_shardings, rep),
                    out_shardings=(shardings, rep), donate_argnums=0)
  # One executable per bucket width, compiled up front: the loop never
  # compiles, and train_s is training time only.
  t_compile = time.perf_counter()
  executables = {}
  if mode == 'train' and start < total:
    n = config.train.batch_size
    for w in np.asarray(batcher.widths)[np.unique(batcher.bucket)]:
      spec = {f: jax.ShapeDtypeStruct(
          (n, int(w)), getattr(batcher.seqs, 'users' if f == 'user' else f
                               ).dtype, sharding=bs)
              for f in inputs_used}
      if exclude_seen:
        spec[SEEN] = jax.ShapeDtypeStruct((n, ds.num_items + 1), bool,
                                          sharding=bs)
      executables[int(w)] = step_fn.lower(state, spec,
                                          np.float32(0)).compile()
  compile_s = time.perf_counter() - t_compile
  query_fn = jax.jit(
      lambda params, inputs: model.apply(
          {'params': params}, inputs, objective, method=_queries),
      in_shardings=(shardings.params, batch_shardings), out_shardings=rep)
  keys_fn = jax.jit(lambda params: model.apply({'params': params},
                                               method='all_keys'))

  def evaluate(params, which):
    t = time.perf_counter()
    q = compute_queries(
        lambda p, x: query_fn(p, {f: x[f] for f in inputs_used}), params,
        evalsets[which].history, config.eval.batch_size,
        config.data.get('buckets', ()),
        extra=int(objective == 'cloze'))
    keys = keys_fn(params)
    if which == 'cold_within':
      keys = keys[jnp.asarray(ds.cold_items)]
    out = evaluators[which].evaluate_queries(q, keys)
    out['eval_s'] = time.perf_counter() - t
    return out

  # ------------------------------------------------------------ loop
  writer = MetricWriter(workdir, tensorboard=config.train.tensorboard)
  budget_s = config.train.budget_minutes * 60.0
  eval_every = config.train.eval_every_epochs * spe
  metric = config.eval.select_metric
  select_on = 'valid' if 'valid' in evaluators else None
  best = dict(value=-math.inf, step=start)
  best_params = None
  history, bad_evals, train_s, last_loss = [], 0, 0.0, None

  def record(step, which, ev, **extra):
    """Writes an evaluation and keeps its headline figures in `history`."""
    writer.write(step, ev, prefix=f'{which}/')
    history.append(dict(step=step, epoch=round(step / spe, 3), split=which,
                        **extra, **{k: round(ev[k], 5) for k in (
                            metric, 'uniform100_hr@10') if k in ev}))

  step = start
  if mode == 'train' and step < total:
    bar = tqdm.tqdm(total=total, initial=step, desc='train', unit='step',
                    disable=not config.train.progress or
                    jax.process_index() != 0, mininterval=2.0)
    t_loop = time.perf_counter()
    logger = StepLogger(writer, mgr, workdir, config.train.log_every, spe,
                        bar)
    while step < total:
      batch = batcher.batch(step)
      batch = {f: batch[f] for f in inputs_used}
      if exclude_seen:
        batch[SEEN] = batcher.seen_mask(step, ds.num_items)
      lr = scheduled_lr(config.optimizer, step, total, train_s, budget_s)
      run = executables[batch['item'].shape[1]]
      state, aux = run(state, batch, np.float32(lr))
      step += 1
      logger.add(aux, step, total, lr)
      if step % config.train.checkpoint_every_steps == 0:
        checkpoint.save(mgr, step, state)
      train_s = time.perf_counter() - t_loop
      if eval_every and step % eval_every == 0 and step < total:
        t_eval = time.perf_counter()
        which = select_on or 'test'
        ev = evaluate(state.params, which)
        t_loop += time.perf_counter() - t_eval   # Eval time is not train time.
        record(step, which, ev)
        logging.info('step %d %s %s', step, which, json.dumps(ev))
        if select_on and ev[metric] > best['value']:
          best, bad_evals = dict(value=ev[metric], step=step), 0
          if config.train.get('keep_best', True):
            best_params = jax.device_get(state.params)
        elif select_on:
          bad_evals += 1
        if config.train.patience and bad_evals >= config.train.patience:
          logging.info('early stop at step %d (best %s)', step, best)
          break
      if budget_s and train_s > budget_s:
        logging.info('budget of %.1f min reached at step %d',
                     config.train.budget_minutes, step)
        break
    bar.close()
    last_loss = logger.last_loss
    if mgr.latest_step() != step:
      checkpoint.save(mgr, step, state, force=True)
  mgr.wait_until_finished()

  # ------------------------------------------------------- final eval
  params = state.params
  if select_on:
    ev = evaluate(params, select_on)
    record(step, select_on, ev, final=True)
    if ev[metric] > best['value'] or best_params is None:
      best = dict(value=ev[metric], step=step)
    else:
      params = jax.device_put(best_params, shardings.params)
  graph_fit = {}
  if graph is not None and model.fusion == 'score' and \
      model.graph_weight != 'learned':
    params, graph_fit = _fit_graph_weight(params, shardings, query_fn,
                                          keys_fn, ds, evalsets.get('valid'),
                                          evaluators.get('valid'),
                                          inputs_used, config)
  final = evaluate(params, 'test')
  if graph_fit:
    # The sequence half alone (graph logit weight 0), same protocol: with
    # graph_<metric> below, both parts of the fused score.
    alone = evaluate(dict(params, graph_score_weight=jax.device_put(
        jnp.float32(0), shardings.params['graph_score_weight'])), 'test')
    graph_fit.update({f'base_{k}': round(float(v), 6) for k, v in
                      alone.items() if k.startswith(('recall@', 'ndcg@',
                                                     'hr@', 'mrr'))})
  if config.eval.get('save_vectors', False) and jax.process_index() == 0:
    _save_vectors(workdir, evalsets['test'], query_fn, keys_fn, params,
                  inputs_used, config, objective)
  if config.eval.get('latency_requests', 0) and mesh.size == 1:
    # One request = one row, which a multi-device batch axis cannot split.
    final.update(_latency(evalsets['test'].history, query_fn, keys_fn,
                          params, inputs_used, objective,
                          config.eval.latency_requests, config.eval.ks,
                          config.data.get('buckets', ())))
  if 'cold_item' in evaluators:
    cold = evaluate(params, 'cold_item')
    final.update({f'cold_item_{k}': v for k, v in cold.items()
                  if k != 'eval_s'})
  if 'cold_within' in evaluators:
    within = evaluators['cold_within']
    final.update({f'cold_item_within_cold_{k}': v for k, v in evaluate(
        params, 'cold_within').items() if k.startswith(('recall@', 'ndcg@'))})
    if ds.catalog is not None:
      score = cold_start.leaf_popularity(ds, ds.train.item)[ds.cold_items]
      base = within.evaluate_queries(
          np.ones((len(evalsets['cold_within'].history.users), 1), np.float32),
          jnp.asarray(score[:, None]))
      final.update({f'cold_item_within_cold_popularity_{k}': v
                    for k, v in base.items()
                    if k.startswith(('recall@', 'ndcg@'))})
  graph_part = {}
  if graph is not None:
    graph_part['graph_train_s'] = graph['metrics'].get('train_s')
    # The graph part alone, on exactly this protocol: its user embeddings
    # as queries against its item embeddings.
    for which, prefix in (('test', 'graph_'), ('cold_item',
                                                'graph_cold_item_')):
      if which not in evaluators:
        continue
      g = evaluators[which].evaluate_queries(
          graph['users'][evalsets[which].history.users],
          jnp.asarray(graph['items']))
      graph_part.update({f'{prefix}{k}': round(float(v), 6)
                         for k, v in g.items()
                         if k.startswith(('recall@', 'ndcg@', 'hr@', 'mrr'))})
  if not select_on:
    best = dict(value=final[metric], step=step)
  writer.write(step, final, prefix='test/')
  writer.close()
  params_l2 = float(sum(jnp.sum(jnp.square(x))
                        for x in jax.tree.leaves(state.params)))
  epochs = step / spe
  return dict(
      model=config.model.name, data=ds.name, attention=config.model.attention,
      loss_name=config.loss.name, devices=jax.device_count(),
      mesh=mesh_lib.describe(mesh), steps=step, epochs=round(epochs, 3),
      steps_per_epoch=spe, resumed_from=restored_step,
      # Rows and next-item / Cloze targets the epochs draw from (how much
      # of the training split data.train_windows lets an epoch see).
      train_sequences=len(batcher.seqs.users),
      train_targets=int(np.maximum(batcher.seqs.length - 1, 0).sum()
                        if objective == 'next' else batcher.seqs.length.sum()),
      train_s=round(train_s, 3),
      step_s=round(train_s / max(step - start, 1), 5),
      epoch_s=round(train_s / max((step - start) / spe, 1e-9), 3),
      data_s=round(data_s, 3), compile_s=round(compile_s, 3),
      **{k: round(v, 6) if isinstance(v, float) else v
         for k, v in final.items()},
      selected_on=select_on, **{f'best_{select_on or "test"}_{metric}':
                                round(best['value'], 6)},
      best_step=best['step'], loss=last_loss, history=history, **graph_part,
      **graph_fit,
      params_l2=params_l2, sharding=_placement(state.params))
