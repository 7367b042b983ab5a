"""Partitions a dataset's training graph into k parts and reports the cost.

  python tools/partition_graph.py --data=../shared/data/gowalla --parts=8
  python tools/partition_graph.py --data=marketplace --parts=8 --method=ldg

--data: 'marketplace' (the synthetic marketplace: users, items, sellers and
categories with every typed relation) or a LightGCN txt directory (the
user-item graph). --method: metis | ldg | hash | all. Edges are taken as
undirected and deduplicated (recjax.graph.partition.undirected_csr).

With --out=DIR (one --method) the partition is written as graph shards
(recjax.graph.shards: per part its CSR rows, halo ids, features and training
pairs, plus manifest.json) for `configs/gnn_shards.py`.

Prints a table per method and, last, one JSON line: per method edge_cut,
balance, halo_fraction, seconds (and the per-part figures), plus the graph
size and build time (and write_s, out with --out).
"""

import json
import os
import sys
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

_DATA = flags.DEFINE_string('data', 'marketplace',
                            "'marketplace' or a LightGCN txt directory.")
_PARTS = flags.DEFINE_integer('parts', 8, 'Number of parts k.')
_METHOD = flags.DEFINE_enum('method', 'all', ['metis', 'ldg', 'hash', 'all'],
                            'Partitioner.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the partitioners.')
_OUT = flags.DEFINE_string('out', None, 'Write the shards of the partition '
                           '(--method, not all) to this directory.')
_PAIR_FILES = flags.DEFINE_integer('pair_files', 4,
                                   'Training-pair files per part.')


def load_graph(data: str, with_dataset: bool = False):
  """(indptr, indices, num_nodes, description) of the training graph
  (+ (NodeGraph, Dataset) with_dataset)."""
  import ml_collections
  import numpy as np
  from recjax.data import registry
  from recjax.graph.nodes import NodeGraph
  from recjax.graph.partition import undirected_csr
  sys.path.insert(0, os.path.join(REPO, 'configs'))
  import common
  cfg = common.base_config().data
  if data == 'marketplace':
    cfg.name = 'marketplace'
  else:
    if not os.path.isdir(data):
      raise app.UsageError(f"--data={data}: not 'marketplace' and not a "
                           'directory holding a LightGCN train.txt')
    cfg.name, cfg.path = 'lightgcn', data
  ds = registry.load_dataset(ml_collections.ConfigDict(cfg))
  g = NodeGraph.from_dataset(ds)
  src = np.repeat(np.arange(g.num_nodes), g.degrees())
  indptr, indices = undirected_csr(src, g.dst, g.num_nodes)
  if with_dataset:
    return indptr, indices, g.num_nodes, ds.name, (g, ds)
  return indptr, indices, g.num_nodes, ds.name


def main(argv):
  del argv
  from recjax.graph import partition as part_lib
  if _OUT.value and _METHOD.value == 'all':
    raise app.UsageError('--out writes one partition: pick --method')
  t = time.perf_counter()
  indptr, indices, n, name, (graph, ds) = load_graph(_DATA.value, True)
  build_s = time.perf_counter() - t
  methods = (part_lib.METHODS if _METHOD.value == 'all'
             else (_METHOD.value,))
  out = dict(data=name, num_nodes=n, num_edges=int(len(indices) // 2),
             parts=_PARTS.value, build_s=round(build_s, 3))
  print(f'{name}: {n} nodes, {len(indices) // 2} undirected edges, '
        f'k = {_PARTS.value}')
  print(f'{"method":8s} {"edge_cut":>9s} {"balance":>8s} {"halo":>7s} '
        f'{"seconds":>8s}')
  for m in methods:
    try:
      p = part_lib.partition(indptr, indices, _PARTS.value, m,
                             seed=_SEED.value)
    except ValueError as e:
      raise app.UsageError(str(e)) from e
    r = p.report(indptr, indices)
    print(f'{m:8s} {r["edge_cut"]:9.4f} {r["balance"]:8.3f} '
          f'{r["halo_fraction"]:7.3f} {r["seconds"]:8.2f}')
    out[m] = r
  if _OUT.value:
    from recjax.graph import shards
    from recjax.graph.nodes import node_features, training_pairs
    t = time.perf_counter()
    shards.write_shards(_OUT.value, graph, p,
                        training_pairs(ds, graph.event_types),
                        node_features(graph, ds), _PAIR_FILES.value,
                        report={k: v for k, v in r.items() if k != 'parts'})
    out.update(out=_OUT.value, write_s=round(time.perf_counter() - t, 3))
    print(f'wrote {p.num_parts} shards to {_OUT.value} in '
          f'{out["write_s"]:.1f}s')
  print(json.dumps(out), flush=True)


if __name__ == '__main__':
  app.run(main)
