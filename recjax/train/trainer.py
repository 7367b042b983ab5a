"""`train_and_evaluate(config, workdir)`: the training loop for embedding
retrieval models (LightGCN today) on a device mesh.

Phases: data -> graph -> mesh & sharded state -> restore -> loop (jit step,
logging, periodic eval, checkpoints) -> final evaluation. The step is a pure
function `(state, batch, graph) -> (state, metrics)` compiled once with
explicit in/out shardings and the state donated.
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
from recjax.data import registry
from recjax.data.sampling import PairSampler, UserSampler
from recjax.data.schema import EVENT_INDEX, Dataset, check_event_types
from recjax.graph import HeteroGraph
from recjax.ops.spmm import CsrMatrix
from recjax.train import checkpoint, cold_start, distributed, losses
from recjax.train import mesh as mesh_lib
from recjax.train.evaluate import RankingEvaluator
from recjax.train.state import (TrainState, make_optimizer,
                                scheduled_lr)
from recjax.train.writers import MetricWriter


class NanLossError(FloatingPointError):
  """Training diverged: the loss became NaN or infinite."""


def mean_logs(pending: list, step: int, mgr, workdir: str) -> dict:
  """Host means of the steps' metric dicts since the last log step.

  One device_get per log step; metrics stay on device in between. Raises
  NanLossError (after the in-flight checkpoint lands) if any is non-finite.
  """
  logs = jax.device_get(pending)
  mean = {k: float(np.mean([l[k] for l in logs])) for k in logs[0]}
  if not all(np.isfinite(v) for v in mean.values()):
    mgr.wait_until_finished()
    figures = ', '.join(f'{k}={v}' for k, v in mean.items())
    raise NanLossError(
        f'non-finite training metrics at step {step} ({figures}): loss is NaN '
        'or infinite; training stopped. Lower optimizer.learning_rate or '
        'check the data; the last good checkpoint is kept in '
        f'{os.path.join(workdir, "checkpoints")}')
  return mean


class StepLogger:
  """What every training loop does after a step: keep at most two steps in
  flight (enough to overlap host batching with device work, and it keeps
  XLA:CPU's multi-device collectives from piling up and deadlocking), and
  every `log_every` steps write the mean of the steps' metrics (which
  raises NanLossError on a non-finite loss, see mean_logs).
  """

  def __init__(self, writer, mgr, workdir: str, log_every: int,
               steps_per_epoch: int, bar=None):
    self.writer, self.mgr, self.workdir = writer, mgr, workdir
    self.log_every, self.spe, self.bar = log_every, steps_per_epoch, bar
    self.pending, self.last_loss, self.losses = [], None, []

  def add(self, aux, step: int, total: int, lr: float) -> None:
    """`aux`: the metrics of the step that brought the count to `step`."""
    self.pending.append(aux)
    if len(self.pending) >= 2:
      jax.block_until_ready(self.pending[-2])
    if step % self.log_every == 0 or step == total:
      mean = mean_logs(self.pending, step, self.mgr, self.workdir)
      self.pending = []
      mean.update(epoch=step / self.spe, learning_rate=lr)
      self.last_loss = mean['loss']
      self.losses.append(self.last_loss)
      self.writer.write(step, mean, prefix='train/')
      if self.bar is not None:
        self.bar.set_postfix(loss=f'{self.last_loss:.4f}')
    if self.bar is not None:
      self.bar.update(1)

  def flush(self, step: int) -> None:
    """Checks and reports the steps since the last log (a budget stop)."""
    if self.pending:
      self.last_loss = mean_logs(self.pending, step, self.mgr,
                                 self.workdir)['loss']
      self.pending = []


def target_events(data_config) -> tuple[str, ...]:
  """Event types whose (user, item) pairs are the training positives:
  data.target_events, or the graph's data.event_types when unset. A graph
  can carry weak evidence (views) as edges while training on clicks."""
  if data_config.get('target_events'):
    return check_event_types(data_config.target_events, 'data.target_events')
  return check_event_types(data_config.event_types, 'data.event_types')


def _positive_pairs(ds: Dataset, event_types) -> tuple[np.ndarray, np.ndarray]:
  tr = ds.train
  mask = np.isin(tr.event, [EVENT_INDEX[e] for e in event_types])
  key = np.unique(tr.user[mask].astype(np.int64) << 32 | tr.item[mask])
  return (key >> 32).astype(np.int32), (key & 0xFFFFFFFF).astype(np.int32)


# bpr: per-example negatives; softmax, ccl: negatives shared by the batch;
# multinomial: batches of users with all their positives, full softmax.
LOSSES = ('bpr', 'softmax', 'ccl', 'multinomial')


def _make_loss_fn(model, cfg):
  """Returns loss(params, batch, adj) -> (loss, aux metrics)."""
  name = cfg.loss.name
  if name not in LOSSES:
    raise ValueError(f'loss.name={name!r} is not one of {list(LOSSES)}')

  def loss_fn(params, batch, adj):
    variables = {'params': params}
    users, items = model.apply(variables, adj)
    if name == 'multinomial':
      main = losses.multinomial(users[batch['user']], items, batch['pos'],
                                batch['pos_mask'], cfg.loss.temperature)
      e_u, e_p = model.apply(variables, batch['user'], batch['pos'],
                             method='layer0')
      reg = 0.5 * (jnp.sum(e_u**2) +
                   jnp.sum(e_p**2 * batch['pos_mask'][..., None]))
      reg = reg / jnp.sum(batch['pos_mask'])
      return main + cfg.loss.l2 * reg, dict(loss=main, reg=reg)
    u, p, n = users[batch['user']], items[batch['pos']], items[batch['neg']]
    if name == 'bpr':
      main = losses.bpr(u, p, n)
    elif name == 'ccl':
      main = losses.cosine_contrastive(
          u, p, n, margin=cfg.loss.margin,
          negative_weight=cfg.loss.negative_weight, pos_ids=batch['pos'],
          neg_ids=batch['neg'])
    else:
      main = losses.sampled_softmax(
          u, p, n, temperature=cfg.loss.temperature,
          normalize=cfg.loss.normalize, pos_ids=batch['pos'],
          neg_ids=batch['neg'])
    e_u, e_p = model.apply(variables, batch['user'], batch['pos'],
                           method='layer0')
    _, e_n = model.apply(variables, batch['user'][:1], batch['neg'],
                         method='layer0')
    # LightGCN's L2: squared norms of the batch's layer-0 rows / batch size.
    reg = 0.5 * (jnp.sum(e_u**2) + jnp.sum(e_p**2) + jnp.sum(e_n**2))
    reg = reg / batch['user'].shape[0]
    return main + cfg.loss.l2 * reg, dict(loss=main, reg=reg)

  return loss_fn


def _prepare(config, ds: Dataset, mesh):
  """Graph, model and sampler for a retrieval model on `ds`."""
  events = check_event_types(config.data.event_types, 'data.event_types')
  graph = HeteroGraph.from_dataset(ds, event_types=events)
  # Pad the node table to a multiple that does not depend on the device
  # count (up to 128 devices), so 1 and N devices build the same model.
  pad_to = math.lcm(128, mesh.size)
  rows, cols, w, n = graph.normalized_bipartite(events, pad_to=pad_to)
  adj = CsrMatrix.from_coo(rows, cols, w, (n, n))
  adj = (distributed.to_global(adj, mesh_lib.replicated(mesh))
         if distributed.multi_process()
         else jax.device_put(adj, mesh_lib.replicated(mesh)))
  sizes = dict(num_users=ds.num_users, num_items=ds.num_items, num_nodes=n)
  model = models.get(config.model.name)(config.model, sizes)
  users, items = _positive_pairs(ds, target_events(config.data))
  if config.loss.name == 'multinomial':
    sampler = UserSampler(users, items, config.train.batch_size,
                          seed=config.seed)
    return graph, adj, model, sampler
  shared = config.loss.name in ('softmax', 'ccl')
  sampler = PairSampler(users, items, ds.num_items, config.train.batch_size,
                        num_negatives=config.loss.num_negatives,
                        shared_negatives=shared, seed=config.seed)
  return graph, adj, model, sampler


def _evaluator(config, ds: Dataset) -> RankingEvaluator:
  # Every training pair is masked, whatever its event type: the test split
  # never contains a pair seen in training (splits.drop_seen).
  return RankingEvaluator(
      ds.train.user, ds.train.item, ds.test.user, ds.test.item,
      ds.num_users, ds.num_items, ks=tuple(config.eval.ks),
      batch_size=config.eval.batch_size, exclude_users=ds.cold_users)


def _cold_start_figures(config, ds: Dataset, train_items, users, items
                        ) -> dict:
  """Cold-start slices for a transductive model: a cold user is folded in as
  the mean of their revealed items' final embeddings (one propagation step
  from the new node's edges, no retraining); cold items keep their rows,
  which training never pulled towards any user (LightGCN has no content)."""
  cs = cold_start.make_cold_start(ds, config.eval.get('cold_reveal', 3),
                                  tuple(config.eval.ks),
                                  config.eval.batch_size)
  if cs is None:
    return {}
  users, items = np.array(users), np.asarray(items)
  r = cs.revealed
  sums = np.zeros_like(users)
  np.add.at(sums, r.user, items[r.item])
  cnt = np.bincount(r.user, minlength=len(users))
  cold = cs.revealed_users
  users[cold] = sums[cold] / cnt[cold, None]
  return {**cold_start.evaluate(cs, users, items),
          **cold_start.popularity(cs, ds, train_items)}


def _init_fn(model, tx):
  """rng -> a fresh TrainState (init needs no propagation: layer 0 only)."""
  def init_fn(rng):
    ids = jnp.zeros((1,), jnp.int32)
    params = model.init(rng, ids, ids, method='layer0')['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params))
  return init_fn


def load_embeddings(config: Any, workdir: str):
  """The trained model's embeddings, for export and serving.

  Returns:
    (ds, users float32 [U, d], items float32 [I, d], step, params) from the
    latest checkpoint in `workdir` (propagated through the training graph).

  Raises:
    FileNotFoundError: `workdir` holds no checkpoint.
  """
  ds = registry.load_dataset(config.data)
  mesh = mesh_lib.make_mesh(config.mesh.shape, config.mesh.axes)
  rules = tuple(tuple(r) for r in config.sharding_rules)
  _, adj, model, _ = _prepare(config, ds, mesh)
  tx = make_optimizer(config.optimizer)

  state, _, mgr, step = checkpoint.init_or_restore(
      _init_fn(model, tx), jax.random.key(config.seed), mesh, rules, workdir,
      config.train.keep_checkpoints)
  mgr.close()
  if step is None:
    raise FileNotFoundError(f'{workdir}: no checkpoint to export (train '
                            'first with --mode=train)')
  users, items = jax.jit(lambda p, a: model.apply({'params': p}, a))(
      state.params, adj)
  return (ds, np.asarray(users, np.float32), np.asarray(items, np.float32),
          step, jax.device_get(state.params))


def train_and_evaluate(config: Any, workdir: str, mode: str = 'train') -> dict:
  """Trains (resuming from the latest checkpoint) and evaluates.

  Args:
    config: ml_collections ConfigDict (see configs/quickstart.py).
    workdir: where checkpoints, metrics.jsonl, TensorBoard events and
      config.json go.
    mode: 'train' (train, then evaluate) or 'eval' (evaluate the latest
      checkpoint).

  Returns:
    A flat dict of summary figures (devices, mesh, steps, train_s and the
    evaluation metrics), what recjax.main prints as its last line.
  """
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))

  # ---------------------------------------------------------------- data
  t0 = time.perf_counter()
  ds = registry.load_dataset(config.data)
  mesh = mesh_lib.make_mesh(config.mesh.shape, config.mesh.axes)
  rules = tuple(tuple(r) for r in config.sharding_rules)
  graph, adj, model, sampler = _prepare(config, ds, mesh)
  evaluator = _evaluator(config, ds)
  data_s = time.perf_counter() - t0
  logging.info('data %s graph %s in %.1fs', ds.summary(), graph.summary(),
               data_s)

  spe = sampler.steps_per_epoch
  total = (config.train.num_steps if config.train.num_steps > 0
           else config.train.num_epochs * spe)
  tx = make_optimizer(config.optimizer)

  # ---------------------------------------------------- sharded state
  rng = jax.random.key(config.seed)
  state, shardings, mgr, restored_step = checkpoint.init_or_restore(
      _init_fn(model, tx), rng, mesh, rules, workdir,
      config.train.keep_checkpoints)
  start = int(jax.device_get(state.step))

  # ------------------------------------------------------------ step
  loss_fn = _make_loss_fn(model, config)

  def train_step(state, batch, adj, lr):
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (_, aux), grads = grad_fn(state.params, batch, adj)
    opt_state = state.opt_state
    opt_state.hyperparams['learning_rate'] = lr
    updates, opt_state = tx.update(grads, opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(state.step + 1, params, opt_state), aux

  bs = mesh_lib.batch_sharding(mesh, rules)
  rep = mesh_lib.replicated(mesh)
  neg_sharding = rep if config.loss.name in ('softmax', 'ccl') else bs
  if config.loss.name == 'multinomial':
    batch_shardings = dict(user=bs, pos=bs, pos_mask=bs)
  else:
    batch_shardings = dict(user=bs, pos=bs, neg=neg_sharding)
  step_fn = jax.jit(train_step,
                    in_shardings=(shardings, batch_shardings, rep, rep),
                    out_shardings=(shardings, rep), donate_argnums=0)
  # Several processes: replicated outputs, so each can read what it scores.
  embed_fn = jax.jit(lambda params, adj: model.apply({'params': params}, adj),
                     out_shardings=rep if distributed.multi_process()
                     else None)

  def evaluate(state):
    t = time.perf_counter()
    users, items = embed_fn(state.params, adj)
    out = evaluator.evaluate(users, items)
    out['eval_s'] = time.perf_counter() - t
    return out

  # ------------------------------------------------------------ loop
  writer = MetricWriter(workdir, tensorboard=config.train.tensorboard)
  budget_s = config.train.budget_minutes * 60.0
  eval_every = config.train.eval_every_epochs * spe
  metric = config.eval.select_metric
  best = dict(value=-math.inf, step=start)
  history, bad_evals, train_s, last_loss = [], 0, 0.0, None
  step = start
  if mode == 'train' and step < total:
    bar = tqdm.tqdm(total=total, initial=step, desc='train', unit='step',
                    disable=not config.train.progress or
                    jax.process_index() != 0, mininterval=2.0)
    t_loop = time.perf_counter()
    logger = StepLogger(writer, mgr, workdir, config.train.log_every, spe,
                        bar)
    while step < total:
      # Every process draws the same global batch (the sampler depends only
      # on the seed and step) and feeds its own devices' rows.
      batch = distributed.to_global(sampler.batch(step), batch_shardings)
      lr = scheduled_lr(config.optimizer, step, total, train_s, budget_s)
      state, aux = step_fn(state, batch, adj,
                           distributed.to_global(np.float32(lr), rep))
      step += 1
      logger.add(aux, step, total, lr)
      if step % config.train.checkpoint_every_steps == 0:
        checkpoint.save(mgr, step, state)
      # One clock for every process: the schedule and the budget stop.
      train_s = distributed.agreed(time.perf_counter() - t_loop)
      if eval_every and step % eval_every == 0 and step < total:
        t_eval = time.perf_counter()
        ev = evaluate(state)
        t_loop += time.perf_counter() - t_eval   # Eval time is not train time.
        writer.write(step, ev, prefix='eval/')
        history.append(dict(step=step, epoch=step / spe, **{
            k: ev[k] for k in (metric, 'ndcg@20') if k in ev}))
        logging.info('step %d eval %s', step, json.dumps(ev))
        if ev[metric] > best['value']:
          best, bad_evals = dict(value=ev[metric], step=step), 0
        else:
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
  if config.eval.get('final', True):
    final = evaluate(state)
    # The same split scored by item popularity (training pairs counted), so
    # every run says how much the model adds over the simplest baseline.
    pop = np.bincount(sampler.items, minlength=ds.num_items).astype(
        np.float32)
    baseline = evaluator.evaluate(np.ones((ds.num_users, 1), np.float32),
                                  pop[:, None])
    final.update({f'popularity_{k}': baseline[k] for k in
                  ('recall@20', 'ndcg@20') if k in baseline})
    final.update(_cold_start_figures(config, ds, sampler.items,
                                     *embed_fn(state.params, adj)))
  else:   # e.g. building a serving benchmark's bundle: no split to score
    final = {metric: math.nan}
  writer.write(step, final, prefix='eval/')
  writer.close()
  if final[metric] > best['value']:
    best = dict(value=final[metric], step=step)
  params_l2 = float(jax.jit(lambda p: sum(jnp.sum(jnp.square(x)) for x in
                                           jax.tree.leaves(p)),
                            out_shardings=rep)(state.params))
  placement = {
      jax.tree_util.keystr(path): dict(
          spec=str(tuple(x.sharding.spec)),
          shard_shape=list(x.sharding.shard_shape(x.shape)))
      for path, x in jax.tree_util.tree_leaves_with_path(state.params)}
  return dict(
      model=config.model.name, data=ds.name,
      devices=jax.device_count(), mesh=mesh_lib.describe(mesh),
      steps=step, epochs=round(step / spe, 3), steps_per_epoch=spe,
      resumed_from=restored_step, train_s=round(train_s, 3),
      step_s=round(train_s / max(step - start, 1), 5), data_s=round(data_s, 3),
      **{k: round(v, 6) if isinstance(v, float) else v
         for k, v in final.items()},
      **{f'best_{metric}': round(best['value'], 6), 'best_step': best['step']},
      loss=last_loss, history=history, params_l2=params_l2,
      sharding=placement)
