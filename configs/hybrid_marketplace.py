"""Hybrid graph + transformer on the synthetic marketplace: the feature-rich
session encoder fused by cross-attention with a LightGCN trained on the
same training events (recjax.models.hybrid). Temporal split, full ranking.

  python -m recjax.main --config=configs/hybrid_marketplace.py \
      --workdir=/tmp/hybrid
  # late fusion instead of cross-attention; graph embeddings fine-tuned:
  python -m recjax.main --config=configs/hybrid_marketplace.py \
      --config.model.fusion=gated --config.model.graph_trainable=True ...
  # its parts: the session encoder alone (the graph part's figures come
  # with every hybrid run as graph_recall@20 etc., same protocol):
  python -m recjax.main --config=configs/session_marketplace.py ...

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
  c.model.fusion = 'cross'         # 'cross' | 'concat' | 'gated'
  c.model.graph_trainable = False  # True: fine-tune the graph embeddings
  c.graph = quickstart.get_config()   # its data is replaced by c.data
  c.graph.workdir = ''             # '' -> WORKDIR/graph
  c.graph.event_types = ('view', 'click', 'cart', 'purchase', 'review')
  c.graph.eval.final = True
  return c
