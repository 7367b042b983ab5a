"""Tiny CPU config for tests and smoke runs: a small marketplace, a few
hundred steps, seconds on a laptop.

  python -m recjax.main --config=configs/tiny.py --workdir=/tmp/tiny
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top


def get_config():
  c = common.base_config()
  c.data.name = 'marketplace'
  c.data.marketplace.num_users = 400
  c.data.marketplace.num_items = 240
  c.data.marketplace.num_sellers = 20
  c.data.marketplace.num_events = 30000
  c.model.embed_dim = 16
  c.model.num_layers = 2
  c.loss.name = 'softmax'
  c.loss.num_negatives = 64
  c.loss.temperature = 0.2
  c.train.batch_size = 128
  c.train.num_steps = 60
  c.train.log_every = 10
  c.train.checkpoint_every_steps = 20
  c.train.tensorboard = False   # tests; main configs write events
  c.train.progress = False
  c.eval.batch_size = 128
  return c
