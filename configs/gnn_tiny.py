"""Tiny CPU variant of configs/gnn_marketplace.py for tests and smoke runs.

  python -m recjax.main --config=configs/gnn_tiny.py:pinsage --workdir=/tmp/t
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gnn_marketplace  # pylint: disable=g-import-not-at-top


def get_config(model: str = 'graphsage'):
  c = gnn_marketplace.get_config(model)
  c.data.marketplace.num_users = 400
  c.data.marketplace.num_items = 240
  c.data.marketplace.num_sellers = 20
  c.data.marketplace.num_events = 30000
  c.data.marketplace.cold_item_frac = 0.1   # 24 cold items: K=20 fits
  c.model.embed_dim = 16
  c.graph.fanouts = (4, 3)
  c.graph.num_walks = 8
  c.loss.num_negatives = 64
  c.train.batch_size = 64
  c.train.num_steps = 30
  c.train.log_every = 10
  c.train.checkpoint_every_steps = 20
  c.train.tensorboard = False
  c.train.progress = False
  c.eval.batch_size = 128
  c.eval.embed_chunk = 256
  return c
