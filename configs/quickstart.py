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
  c.loss.name = 'softmax'
  c.loss.num_negatives = 512
  c.loss.temperature = 0.15
  c.train.batch_size = 1024
  c.train.num_epochs = 20
  c.train.checkpoint_every_steps = 200
  return c
