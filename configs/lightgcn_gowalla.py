"""LightGCN on gowalla (LightGCN txt format; any such dataset via
--config.data.path).

  python -m recjax.main --config=configs/lightgcn_gowalla.py --workdir=/tmp/gw
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top


def get_config():
  c = common.base_config()
  c.data.name = 'lightgcn'
  c.data.path = os.path.join(common.SHARED_DATA, 'gowalla')
  c.data.event_types = ('click',)   # LightGCN txt has one event type
  c.loss.name = 'softmax'
  c.loss.num_negatives = 1024
  c.loss.temperature = 0.1
  c.train.batch_size = 2048
  c.train.num_epochs = 100
  c.train.eval_every_epochs = 10
  c.train.checkpoint_every_steps = 2000
  c.eval.batch_size = 1024
  return c
