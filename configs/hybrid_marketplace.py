"""Hybrid graph + transformer on the synthetic marketplace: the feature-rich
session encoder and a LightGCN trained on the same training events
(recjax.models.hybrid). Temporal split, full ranking.

Default fusion: 'score', late fusion of the two models' logits, the graph
side scoring with LightGCN's own user vector ('node'); the graph logit
stays out of the training loss (LightGCN's user vectors have seen every
training target) and gets the base logits' spread ('balanced': the
marketplace split has no validation period to fit a weight on). Every run
reports its parts on the same users: base_* (the session encoder alone,
the same trained half) and graph_* (LightGCN alone).

  python -m recjax.main --config=configs/hybrid_marketplace.py \
      --workdir=/tmp/hybrid
  # cross-attention between the sequence and the graph neighbourhood,
  # trained end to end (graph embeddings fine-tuned too):
  python -m recjax.main --config=configs/hybrid_marketplace.py \
      --config.model.fusion=cross --config.model.graph_user=history \
      --config.model.graph_trainable=True ...

The graph part trains once into WORKDIR/graph (config.graph.workdir to
share one between runs) and is frozen unless model.graph_trainable.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quickstart  # pylint: disable=g-import-not-at-top
import session_marketplace  # pylint: disable=g-import-not-at-top


def get_config():
  c = session_marketplace.get_config()
  c.model.name = 'hybrid'
  c.model.base = 'session'         # 'session' | 'sasrec'
  c.model.fusion = 'score'         # | 'cross' | 'concat' | 'gated'
  c.model.graph_trainable = False  # True: fine-tune the graph embeddings
  c.model.graph_user = 'node'      # | 'history' (mean of the window's rows)
  c.model.graph_weight = 'balanced'  # 'score' fusion: | 'valid' | 'learned'
  c.graph = quickstart.get_config()   # its data is replaced by c.data
  c.graph.workdir = ''             # '' -> WORKDIR/graph
  c.graph.event_types = ('view', 'click', 'cart', 'purchase', 'review')
  c.graph.eval.final = True
  return c
