"""Sampled graph models on the synthetic marketplace's heterogeneous graph
(users, items, sellers, categories; one relation per event type and
catalog link). The argument after ':' picks the model:

  python -m recjax.main --config=configs/gnn_marketplace.py:graphsage \
      --workdir=/tmp/sage
  # pinsage (random-walk neighbourhoods, hard-negative curriculum),
  # gat (attention with per-relation parameters), tgat (temporal attention)

Figures on warm users, cold users (3 revealed edges, no retraining) and cold
items (content only) come with popularity baselines on the same slices.
"""

import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top

MODELS = ('graphsage', 'pinsage', 'gat', 'tgat')


def get_config(model: str = 'graphsage'):
  model = model or 'graphsage'
  if model not in MODELS:
    raise ValueError(f'gnn_marketplace: model {model!r} is not one of '
                     f'{MODELS}')
  c = common.base_config()
  c.task = 'graph'
  c.data.name = 'marketplace'
  c.data.event_types = ('view', 'click', 'cart', 'purchase', 'review')
  c.model.name = model
  c.model.embed_dim = 64
  c.model.aggregator = 'mean'     # graphsage: 'mean' | 'pool'
  c.model.combine = 'concat'      # graphsage: 'concat' | 'skip'
  # graphsage, pinsage: 'relu' | 'linear' (no nonlinearity between layers;
  # graphsage's 'pool' aggregator keeps its ReLU MLP)
  c.model.activation = 'relu'
  c.model.heads = 4               # gat, tgat
  # Hide a node's id with this probability in training, so content and
  # neighbours alone must embed it: what unseen (cold) nodes rely on.
  c.model.id_dropout = 0.2
  # Dropout on every layer's inputs in training (GraphSAGE's regulariser).
  c.model.dropout = 0.0
  # Add each seed's input embedding to the last layer's output.
  c.model.residual = False

  c.graph = ml_collections.ConfigDict()
  c.graph.sampler = ''            # '' = the model's own (see gnn_trainer)
  c.graph.fanouts = (10, 5)       # per hop; the model gets one layer each
  c.graph.eval_fanouts = ()       # at evaluation; () = the same
  # graphsage (mean): 'uniform' | 'symmetric' (LightGCN's normalisation
  # 1 / sqrt(d_parent d_child), estimated: see samplers.NeighborSampler).
  c.graph.neighbor_weight = 'uniform'
  c.graph.num_walks = 32          # pinsage: walks per node
  c.graph.walk_length = 3
  c.graph.temporal_strategy = 'recent'   # tgat: 'recent' | 'uniform'
  c.graph.num_hard_negatives = 2 if model == 'pinsage' else 0
  c.graph.hard_ranks = (10, 60)   # pinsage: walk ranks hard negatives come from

  # 'softmax' (sampled softmax) | 'ccl' (SimpleX's cosine contrastive loss:
  # loss.margin and loss.negative_weight, from configs/common.py)
  c.loss.name = 'softmax'
  c.loss.num_negatives = 512
  c.loss.temperature = 0.1        # embeddings are unit vectors (cosine)
  # Also score each user against the batch's other positives (no extra
  # sampling: their embeddings are computed anyway), logQ-corrected.
  c.loss.in_batch_negatives = False
  c.loss.logq_weight = 1.0        # multiple of their logQ correction applied
  # L2 on the step's output embeddings; penalises their norms when scores
  # are dot products (normalize False). A constant with unit vectors.
  c.loss.output_l2 = 0.0
  # LightGCN's L2 on the id-table rows of the step's users, items and
  # negatives. It replaces common's loss.l2, removed so that setting that
  # key here fails instead of doing nothing.
  c.loss.id_l2 = 0.0
  del c.loss['l2']
  c.optimizer.learning_rate = 2e-3
  c.optimizer.schedule = 'cosine'
  c.train.batch_size = 512
  # GraphSAGE, 15-minute budget, evaluated at 30 x 15: 3 epochs gave
  # Recall@20 0.1066, 8 epochs 0.1014 (cold users 0.178 -> 0.186).
  c.train.num_epochs = 3
  c.train.checkpoint_every_steps = 500
  c.eval.embed_chunk = 2048
  return c
