"""The scale-out path end to end on this machine: generate a large synthetic
marketplace, partition its graph, write the shards, and train one epoch of
a sampled GNN through the shard pipeline (recjax.train.shard_trainer).

  python tools/bench_scale.py --users=1000000 --items=1000000 \
      --sellers=50000 --edges=50000000
  python tools/bench_scale.py --users=20000 --items=20000 --sellers=1000 \
      --edges=500000 --parts=8                          # a quick check

--edges is the number of distinct edges the graph gets: typed user-item
edges (a (user, item, relation) triple; repeats of it merge into one edge
with its first time) plus the item-seller and item-category edges, each
counted once, not per direction. A pilot marketplace with 1/20 of the users
and events measures distinct edges per generated event, and the run generates enough
events for the target (+4%); `events` and `edges` in the output say what
it got. An epoch is one pass over the distinct training pairs of
--train_events (default carts, purchases and reviews: the strong signals;
views and clicks stay in the graph).

The last stdout line is one JSON object: gen_s, graph_s, partition_s,
write_s, edge_cut, balance, halo_fraction, train_epoch_s, steps,
edges_per_s (training pairs per second), sampled_edges_per_s (neighbour
edges sampled per second), events, edges (distinct, as above),
directed_edges (stored CSR entries, both directions), undirected_edges
(distinct node pairs, what the partitioner sees), train_pairs,
peak_rss_mb.
"""

import json
import os
import resource
import sys
import tempfile
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, 'configs'))

_USERS = flags.DEFINE_integer('users', 1_000_000, 'Users.')
_ITEMS = flags.DEFINE_integer('items', 1_000_000, 'Items.')
_SELLERS = flags.DEFINE_integer('sellers', 50_000, 'Sellers.')
_EDGES = flags.DEFINE_integer('edges', 50_000_000,
                             'Distinct graph edges to generate (see above).')
_PARTS = flags.DEFINE_integer('parts', 8, 'Partitions.')
_METHOD = flags.DEFINE_enum('method', 'metis', ['metis', 'ldg', 'hash'],
                            'Partitioner.')
_MODEL = flags.DEFINE_enum('model', 'graphsage', ['graphsage', 'pinsage',
                                                  'gat'], 'Sampled model.')
_TRAIN_EVENTS = flags.DEFINE_list('train_events', ['cart', 'purchase',
                                                   'review'],
                                  'Event types whose pairs make the epoch.')
_BATCH = flags.DEFINE_integer('batch_size', 2048, 'Training pairs per step.')
_FANOUTS = flags.DEFINE_list('fanouts', ['10', '5'], 'Per-hop fan-outs.')
_DIM = flags.DEFINE_integer('embed_dim', 32, 'Embedding width.')
_STEPS = flags.DEFINE_integer('max_steps', 0, 'Cap on steps (0: one epoch).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Default: a temp dir.')


def _rss_mb() -> float:
  return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def main(argv):
  del argv
  import numpy as np
  from recjax.data import synthetic
  from recjax.graph import partition as part_lib
  from recjax.graph import shards
  from recjax.graph.nodes import NodeGraph, node_features, training_pairs
  import gnn_shards

  work = _WORKDIR.value or tempfile.mkdtemp(prefix='bench_scale_')
  out = dict(users=_USERS.value, items=_ITEMS.value, sellers=_SELLERS.value,
             edges_target=_EDGES.value, parts=_PARTS.value,
             method=_METHOD.value)

  def config(user_scale: float, events: int):
    return synthetic.MarketplaceConfig(
        num_users=max(int(_USERS.value * user_scale), 100),
        num_items=_ITEMS.value, num_sellers=_SELLERS.value,
        num_events=max(int(events), 1000))

  t = time.perf_counter()
  # Pilot: distinct user-item edges per event, with 1/20 of the users and
  # events (so the same events per user) over the full catalogue.
  pilot_cfg = config(0.05, _EDGES.value * 0.05)
  pilot = synthetic.generate_marketplace(pilot_cfg)
  g = NodeGraph.from_dataset(pilot)
  per_event = (g.num_edges // 2 - 2 * pilot.num_items) / pilot_cfg.num_events
  del pilot, g
  events = int((_EDGES.value - 2 * _ITEMS.value) / per_event * 1.04) + 1
  out['pilot_edges_per_event'] = round(per_event, 4)
  out['pilot_s'] = round(time.perf_counter() - t, 2)

  t = time.perf_counter()
  ds = synthetic.generate_marketplace(config(1.0, events))
  out['events'] = events
  out['gen_s'] = round(time.perf_counter() - t, 2)
  out['rss_after_gen_mb'] = _rss_mb()

  t = time.perf_counter()
  graph = NodeGraph.from_dataset(ds)
  out['graph_s'] = round(time.perf_counter() - t, 2)
  t = time.perf_counter()
  pairs = training_pairs(ds, _TRAIN_EVENTS.value)
  features = node_features(graph, ds)
  del ds                       # the shards need only these from here on
  write_s = time.perf_counter() - t
  out['rss_after_graph_mb'] = _rss_mb()
  out['graph_nodes'] = graph.num_nodes
  out['edges'] = int(graph.num_edges // 2)
  out['directed_edges'] = int(graph.num_edges)
  t = time.perf_counter()
  src = np.repeat(np.arange(graph.num_nodes, dtype=np.int32),
                  graph.degrees())
  indptr, indices = part_lib.undirected_csr(src, graph.dst, graph.num_nodes)
  del src
  out['undirected_s'] = round(time.perf_counter() - t, 2)
  out['undirected_edges'] = int(len(indices) // 2)

  part = part_lib.partition(indptr, indices, _PARTS.value, _METHOD.value)
  report = part.report(indptr, indices)
  del indptr, indices
  out['partition_s'] = round(part.seconds, 2)
  out.update({k: report[k] for k in ('edge_cut', 'balance',
                                     'halo_fraction')})
  out['rss_after_partition_mb'] = _rss_mb()

  t = time.perf_counter()
  shard_dir = os.path.join(work, 'shards')
  out['train_pairs'] = int(len(pairs[0]))
  shards.write_shards(shard_dir, graph, part, pairs, features,
                      report={k: v for k, v in report.items()
                              if k != 'parts'})
  out['write_s'] = round(time.perf_counter() - t + write_s, 2)
  del graph, part, pairs, features
  out['rss_before_train_mb'] = _rss_mb()

  from recjax.train import shard_trainer
  c = gnn_shards.get_config(_MODEL.value)
  c.data.shards = shard_dir
  c.model.embed_dim = _DIM.value
  c.graph.fanouts = tuple(int(f) for f in _FANOUTS.value)
  c.train.batch_size = _BATCH.value
  c.loss.num_negatives = _BATCH.value
  c.train.num_epochs = 1
  c.train.num_steps = _STEPS.value
  c.train.checkpoint_every_steps = 10**9
  c.train.log_every = 50
  c.train.progress = False
  r = shard_trainer.train_and_evaluate(c, os.path.join(work, 'train'))
  sampled = r['steps'] * (2 * _BATCH.value + _BATCH.value) * sum(
      int(np.prod(c.graph.fanouts[:i + 1])) for i in range(len(
          c.graph.fanouts)))
  out.update(
      steps=r['steps'], steps_per_epoch=r['steps_per_epoch'],
      train_s=r['train_s'], step_s=r['step_s'],
      train_epoch_s=r['train_epoch_s'], edges_per_s=r['edges_per_s'],
      sampled_edges_per_s=round(sampled / max(r['train_s'], 1e-9), 1),
      sample_s=r['sample_s'], shard_load_s=r['data_s'], loss=r['loss'],
      model=_MODEL.value, fanouts=list(c.graph.fanouts),
      batch_size=_BATCH.value, embed_dim=_DIM.value, workdir=work)
  out['peak_rss_mb'] = _rss_mb()
  print(json.dumps(out), flush=True)


if __name__ == '__main__':
  app.run(main)
