"""The feature-rich session encoder on the synthetic marketplace: item,
event type, time gap, device / hour / location and the item's seller,
category and price bucket at every position; histories with a funnel's
repeats of one item collapsed into one position (its deepest event).
Evaluated on the temporal split (targets: the user's click-or-deeper test
items, full ranking).

  python -m recjax.main --config=configs/session_marketplace.py \
      --workdir=/tmp/sess
  # the plain SASRec baseline on the same data:
  python -m recjax.main --config=configs/session_marketplace.py \
      --config.model.name=sasrec --workdir=/tmp/sess_sasrec
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sasrec_ml1m  # pylint: disable=g-import-not-at-top


def get_config():
  c = sasrec_ml1m.sequence_config()
  c.data.name = 'marketplace'
  c.data.path = ''
  c.data.collapse_repeats = True
  c.data.buckets = (16, 32)
  c.model.name = 'session'
  c.model.max_len = 50
  c.model.embed_dim = 64
  c.model.ff_dim = 64
  c.model.dropout = 0.2
  c.model.item_encoder = 'none'    # 'multimodal': text + image + attributes
  c.model.id_dropout = 0.0         # share of item ids dropped in training
  c.model.content_parts = ('text', 'image', 'attributes')
  c.train.num_epochs = 30
  c.train.budget_minutes = 0.0
  c.train.eval_every_epochs = 0
  c.eval.ks = (10, 20)
  return c
