"""Quickstart: LightGCN on the default synthetic marketplace (< 5 min on CPU).

  python -m recjax.main --config=configs/quickstart.py --workdir=/tmp/qs
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top


def get_config():
  c = common.base_config()
  c.data.name = 'marketplace'
  # Views are weak but plentiful evidence; on this sparse catalogue they help.
  c.data.event_types = ('view', 'click', 'cart', 'purchase', 'review')
  c.loss.name = 'softmax'
  c.loss.num_negatives = 512
  c.loss.temperature = 1.0
  c.loss.normalize = False
  c.optimizer.learning_rate = 5e-3
  c.optimizer.schedule = 'cosine'
  c.train.batch_size = 1024
  c.train.num_epochs = 20
  c.train.checkpoint_every_steps = 200
  return c
