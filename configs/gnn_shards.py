"""A sampled GNN trained from graph shards, each process reading its own.

  python tools/partition_graph.py --data=marketplace --parts=8 \
      --method=metis --out=/tmp/shards
  python -m recjax.main --config=configs/gnn_shards.py:graphsage \
      --workdir=/tmp/sage_shards --config.data.shards=/tmp/shards
  launch/local_multihost.sh 2 configs/gnn_shards.py \
      --config.data.shards=/tmp/shards      # 2 processes, parts 0,2,.. / 1,3,..

The model settings are configs/gnn_marketplace.py's (graphsage, gat or
tgat; PinSAGE's hard negatives need the whole graph and are off).
Training only: evaluation needs the whole graph (gnn_trainer).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gnn_marketplace  # pylint: disable=g-import-not-at-top


def get_config(model: str = 'graphsage'):
  c = gnn_marketplace.get_config(model or 'graphsage')
  c.task = 'graph_shards'
  c.data.shards = ''                  # a directory from partition_graph --out
  c.graph.num_hard_negatives = 0
  # Several processes: halo nodes' layer states come from a cache that each
  # process refreshes for its boundary nodes every this many steps (0: off).
  c.graph.history_every = 50
  c.graph.history_chunk = 1024        # boundary nodes embedded per call
  c.train.num_epochs = 1
  c.train.checkpoint_every_steps = 200
  return c
