"""Hybrid graph + transformer on ml-1m (SASRec's leave-last-out split, full
ranking): SASRec fused with a LightGCN trained on the same training
items (recjax.models.hybrid) by late fusion of the two
models' logits, the graph logit's weight fitted on the validation split.
Every run also reports its parts on the same test users: base_* (SASRec
alone, the same trained half) and graph_* (LightGCN alone).

  python -m recjax.main --config=configs/hybrid_ml1m.py --workdir=/tmp/hyb1m
  # cross-attention fusion, trained end to end:
  python -m recjax.main --config=configs/hybrid_ml1m.py \
      --config.model.fusion=cross --config.model.graph_user=history ...
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top
import sasrec_ml1m  # pylint: disable=g-import-not-at-top


def graph_config():
  """LightGCN for ml-1m's 6k users and 3.4k items: sampled softmax over
  2048 shared negatives; a propagation costs the same at any batch size,
  so big batches (60 steps per epoch) keep it to a few minutes."""
  g = common.base_config()
  g.loss.name = 'softmax'
  g.loss.num_negatives = 2048
  g.loss.temperature = 1.0
  g.loss.normalize = False
  g.loss.l2 = 1e-2
  g.optimizer.learning_rate = 5e-3
  g.optimizer.schedule = 'cosine'
  g.train.batch_size = 16384
  g.train.num_epochs = 20
  g.train.checkpoint_every_steps = 2000
  return g


def get_config():
  c = sasrec_ml1m.get_config()
  c.model.name = 'hybrid'
  c.model.base = 'sasrec'
  c.model.fusion = 'score'           # | 'cross' | 'concat' | 'gated'
  c.model.graph_user = 'node'        # the graph model's user vector
  c.model.graph_weight = 'valid'     # fitted on the validation split
  # ... of every user: the fitted weight and the figures in the docstring
  # use SASRec's split, not gSASRec's 512-user one.
  c.data.valid_users = 0
  c.optimizer.learning_rate = 1e-3   # what the docstring's figures used
  c.data.train_windows = 'last'       # ... and each user's last window
  c.model.dropout = 0.2              # ... and SASRec's dropout then
  c.model.graph_trainable = False
  c.graph = graph_config()
  c.graph.workdir = ''
  c.graph.event_types = ()          # () -> the event types in the data
  return c
