"""Sampled GNN training from graph shards (config.task == 'graph_shards').

The scale-out path of recjax.train.gnn_trainer: instead of one in-memory
graph, each process reads only its partitions (recjax.graph.shards):

  process i of n  reads parts i, i + n, ... : their CSR rows, halo ids and
                  training pairs (features come from every part)
  per step        its tf.data stream yields B / n pairs; it draws M / n
                  negatives and samples their neighbourhoods in its own
                  graph (a neighbourhood stops at the partition boundary);
                  jax.make_array_from_process_local_data joins the n local
                  batches into one global batch over the mesh
  the loss        gnn_trainer's sampled softmax, every user against all
                  processes' negatives
  halo nodes      (several processes) take their intermediate states from a
                  historical cache (recjax.graph.cache) that every process
                  refreshes for its boundary nodes each graph.history_every
                  steps, instead of fetching their subtrees
  checkpoints     orbax saves the train state, whose step is the input
                  position: a resumed run rebuilds the epoch's stream (a
                  pure function of seed and epoch) and skips the batches
                  the checkpoint has trained on

Every step's pair batch is fingerprinted in WORKDIR/batches.jsonl (process
0's rows), the record of which data each step saw; it is appended to, so
after a resume the steps between the checkpoint and the crash appear twice
(trained twice: the crash lost their updates).

Limits: an item seed (a positive or negative) owned by another process
has an empty row here, so it is embedded from its id and content only, and
the historical cache is not checkpointed (a resumed run refreshes it before
its first step).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import signal
import time
from typing import Any

import jax
import numpy as np

from recjax.graph import cache as cache_lib
from recjax.graph import shards
from recjax.train import checkpoint, distributed, mesh as mesh_lib
from recjax.train.gnn_trainer import (_loss_fn, build_model, make_init_fn,
                                      make_sampler, make_train_step,
                                      seed_block)
from recjax.train.state import make_optimizer, scheduled_lr
from recjax.train.trainer import StepLogger
from recjax.train.writers import MetricWriter


def _fingerprint(pairs: dict) -> str:
  h = hashlib.blake2b(digest_size=8)
  for k in ('user', 'item', 'time'):
    h.update(np.ascontiguousarray(pairs[k], np.int64).tobytes())
  return h.hexdigest()


def train_and_evaluate(config: Any, workdir: str, mode: str = 'train') -> dict:
  """Trains from `config.data.shards`; returns figures (no evaluation: a
  process holds only its partitions, see tools/bench_scale.py)."""
  if mode != 'train':
    raise ValueError(f'graph_shards supports --mode=train only, got {mode!r}')
  if config.graph.get('num_hard_negatives', 0):
    raise ValueError('graph.num_hard_negatives needs random-walk ranks over '
                     'the whole graph; set it to 0 to train from shards')
  if config.train.get('eval_every_epochs', 0):
    raise ValueError('train.eval_every_epochs: a process holds only its '
                     'partitions, so the sharded trainer does not evaluate; '
                     'set it to 0')
  os.makedirs(workdir, exist_ok=True)
  pi, pc = jax.process_index(), jax.process_count()
  if pi == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
  t0 = time.perf_counter()
  shard_dir = config.data.shards
  manifest = shards.load_manifest(shard_dir)
  parts = shards.parts_of_process(manifest['num_parts'], pi, pc)
  local = shards.LocalGraph.load(shard_dir, parts)
  graph = local.graph
  sampler = make_sampler(config, graph)
  mesh = mesh_lib.make_mesh(config.mesh.shape, config.mesh.axes)
  rules = tuple(tuple(r) for r in config.sharding_rules)
  b, m = config.train.batch_size, config.loss.num_negatives
  if b % pc or m % pc:
    raise ValueError(f'train.batch_size {b} and loss.num_negatives {m} must '
                     f'divide over the {pc} processes')
  b_l, m_l = b // pc, m // pc
  nd = jax.local_device_count()
  chunk = int(config.graph.get('history_chunk', 1024))
  for what, n in (('train.batch_size / processes', b_l),
                  ('loss.num_negatives / processes', m_l),
                  ('graph.history_chunk', chunk)):
    if n % nd:
      raise ValueError(f'{what} = {n} must divide over the {nd} devices of '
                       'each process')
  spe = shards.steps_per_epoch(manifest, pc, b_l)
  total = (config.train.num_steps if config.train.num_steps > 0
           else config.train.num_epochs * spe)
  rep = mesh_lib.replicated(mesh)
  bs = mesh_lib.batch_sharding(mesh, rules)
  feats = distributed.to_global(local.feats, rep) if pc > 1 else (
      jax.device_put(local.feats, rep))
  model = build_model(config, graph, local.feats, sampler,
                      pad_to=math.lcm(128, mesh.size),
                      sizes=manifest['content_sizes'])
  data_s = time.perf_counter() - t0
  logging.info('process %d: parts %s, %d own + %d halo nodes, %d steps per '
               'epoch, loaded in %.1fs', pi, parts, len(local.own),
               len(local.halo), spe, data_s)
  n_items = graph.counts['item']

  # Historical embeddings of halo nodes (multi-process runs of models with
  # at least 2 layers): refreshed every `history_every` steps.
  layers = len(config.graph.fanouts) - 1
  history_every = int(config.graph.get('history_every', 0))
  use_history = pc > 1 and layers > 0 and history_every > 0
  cache = is_halo = boundary = None
  if use_history:
    is_halo = np.ones(graph.num_nodes, bool)
    is_halo[local.own] = False
    owner = shards.assignment(shard_dir, manifest) % pc
    src = np.repeat(np.arange(graph.num_nodes), graph.degrees())
    # Own nodes with a neighbour owned elsewhere: the rows others need.
    boundary = np.unique(src[owner[graph.dst] != pi]).astype(np.int32)
    cache = cache_lib.HistoricalCache(graph.num_nodes, layers,
                                      config.model.embed_dim)

  def make_local(step, pairs):
    rng = np.random.default_rng([config.seed, step, pi, 7])
    batch = dict(user=pairs['user'].astype(np.int32),
                 pos=pairs['item'].astype(np.int32), time=pairs['time'],
                 neg=rng.integers(0, n_items, m_l, dtype=np.int32))
    out = dict(block=seed_block(graph, sampler, batch, rng),
               pos=batch['pos'], neg=batch['neg'])
    if use_history:
      out['history'] = cache_lib.block_history(cache, out['block'], is_halo)
    return out

  def to_global(local_batch):
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
        bs, np.asarray(x), (pc * x.shape[0],) + x.shape[1:]), local_batch)

  local_example = make_local(0, dict(
      user=np.zeros(b_l, np.int64), item=np.zeros(b_l, np.int64),
      time=np.zeros(b_l, np.int64)))
  # Host arrays of the global shapes for init (only shapes matter there).
  init_block = jax.tree.map(
      lambda x: np.zeros((pc * x.shape[0],) + x.shape[1:], x.dtype),
      local_example['block'])
  tx = make_optimizer(config.optimizer)
  distributed.check_process_major(bs, b_l)

  state, shardings, mgr, restored = checkpoint.init_or_restore(
      make_init_fn(model, tx, init_block, feats),
      jax.random.key(config.seed), mesh, rules, workdir,
      config.train.keep_checkpoints)
  start = int(distributed.to_host(state.step))
  loss_fn = _loss_fn(model, config, b_l, m_l, groups=pc)
  base_key = jax.random.key(config.seed + 1)

  train_step = make_train_step(loss_fn, tx, base_key)

  batch_shardings = jax.tree.map(lambda _: bs, local_example)
  step_fn = jax.jit(train_step,
                    in_shardings=(shardings, batch_shardings, rep, rep),
                    out_shardings=(shardings, rep), donate_argnums=0)

  hidden_fn = jax.jit(
      lambda params, block, feats, history: model.apply(
          {'params': params}, block, feats, history=history,
          return_hidden=True)[1], out_shardings=rep)
  refreshes, history_hits = 0, []

  def refresh(state, step):
    """Every process embeds its boundary nodes; all receive all rows."""
    from jax.experimental import multihost_utils
    counts = multihost_utils.process_allgather(np.int64(len(boundary)))
    rounds = -(-int(np.max(counts)) // chunk)
    for r in range(rounds):
      ids = np.full(chunk, -1, np.int32)
      part = boundary[r * chunk:(r + 1) * chunk]
      ids[:len(part)] = part
      rng = np.random.default_rng([config.seed, step, pi, 13, r])
      block = sampler.sample(ids, rng).as_dict()
      local_in = dict(block=block, history=cache_lib.block_history(
          cache, block, is_halo))
      g = to_global(local_in)
      hidden = distributed.to_host(hidden_fn(state.params, g['block'], feats,
                                             g['history']))
      all_ids = multihost_utils.process_allgather(ids, tiled=True)
      cache.push(all_ids, hidden, step)

  writer = MetricWriter(workdir, tensorboard=config.train.tensorboard)
  log = open(os.path.join(workdir, 'batches.jsonl'), 'a') if pi == 0 else None
  budget_s = config.train.budget_minutes * 60.0
  logger = StepLogger(writer, mgr, workdir, config.train.log_every, spe)
  fault_at = int(os.environ.get('RECJAX_FAULT_AT_STEP', '0') or 0)
  train_s, step, sample_s = 0.0, start, 0.0
  t_loop = time.perf_counter()
  while step < total:
    epoch, offset = divmod(step, spe)
    stream = shards.pair_batches(shard_dir, parts, b_l, config.seed, epoch,
                                 spe, skip=offset).as_numpy_iterator()
    for pairs in stream:
      if use_history and (step % history_every == 0 or refreshes == 0):
        refresh(state, step)
        refreshes += 1
      t_s = time.perf_counter()
      local_batch = make_local(step, pairs)
      if use_history:
        m_ = local_batch['history']['mask']
        # Levels 1 .. L-1: the ones whose layer states the model reads.
        halo_entries = sum(int(is_halo[np.maximum(ids, 0)][ids >= 0].sum())
                           for ids in local_batch['block']['ids'][1:-1])
        history_hits.append(sum(int(x.sum()) for x in m_) /
                            max(halo_entries, 1))
      batch = to_global(local_batch)
      sample_s += time.perf_counter() - t_s
      lr = scheduled_lr(config.optimizer, step, total, train_s, budget_s)
      state, aux = step_fn(state, batch, feats,
                           distributed.to_global(np.float32(lr), rep))
      if log:
        log.write(json.dumps(dict(step=step, epoch=epoch,
                                  pairs=_fingerprint(pairs))) + '\n')
        log.flush()
      step += 1
      logger.add(aux, step, total, lr)
      if step == fault_at:
        # Fault injection (tests): die like a preempted host, after the
        # last checkpoint has landed, in the middle of an epoch.
        mgr.wait_until_finished()
        os.kill(os.getpid(), signal.SIGKILL)
      if step % config.train.checkpoint_every_steps == 0:
        checkpoint.save(mgr, step, state)
      train_s = distributed.agreed(time.perf_counter() - t_loop)
      if step >= total or (budget_s and train_s > budget_s):
        break
    if budget_s and train_s > budget_s:
      logging.info('budget reached at step %d', step)
      break
  logger.flush(step)
  if mgr.latest_step() != step:
    checkpoint.save(mgr, step, state, force=True)
  mgr.wait_until_finished()
  writer.close()
  if log:
    log.close()
  run = max(step - start, 1)
  return dict(
      model=config.model.name, data=shard_dir, devices=jax.device_count(),
      processes=pc, parts=parts, mesh=mesh_lib.describe(mesh), steps=step,
      epochs=round(step / spe, 3), steps_per_epoch=spe,
      resumed_from=restored, train_s=round(train_s, 3),
      step_s=round(train_s / run, 5),
      train_epoch_s=round(train_s / run * spe, 3),
      edges_per_s=round(run * b / max(train_s, 1e-9), 1),
      sample_s=round(sample_s, 3), data_s=round(data_s, 3),
      own_nodes=int(len(local.own)), halo_nodes=int(len(local.halo)),
      history=dict(refreshes=refreshes, boundary_nodes=int(len(boundary)),
                   rows=int((cache.step >= 0).sum()),
                   halo_hit_rate=round(float(np.mean(history_hits)), 4)
                   if history_hits else None)
      if use_history else None,
      loss=logger.last_loss)
