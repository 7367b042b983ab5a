"""Flax models, looked up by `config.model.name` through `get`."""

from __future__ import annotations

from typing import Callable

from recjax.models.bert4rec import BERT4Rec
from recjax.models.hybrid import Hybrid
from recjax.models.lightgcn import LightGCN
from recjax.models.sasrec import SASRec
from recjax.models.session import SessionEncoder


def _sequence_args(cfg, sizes) -> dict:
  """SASRec's constructor arguments from config.model and dataset sizes."""
  return dict(
      num_items=sizes['num_items'], vocab_size=sizes['vocab_size'],
      max_len=sizes['max_len'], embed_dim=cfg.embed_dim,
      num_blocks=cfg.num_blocks, num_heads=cfg.num_heads, ff_dim=cfg.ff_dim,
      dropout=cfg.dropout, attention=cfg.attention, window=cfg.window,
      chunk=cfg.chunk, init_std=cfg.init_std,
      positions=cfg.get('positions', 'from_end'),
      layout=cfg.get('layout', 'pre_ln'),
      attention_dropout=cfg.get('attention_dropout', 'output'),
      pos_init_std=cfg.get('pos_init_std', None))


# name -> constructor(model_config, dataset_sizes) -> flax module
_REGISTRY: dict[str, Callable] = {
    'lightgcn': lambda cfg, sizes: LightGCN(
        num_users=sizes['num_users'], num_items=sizes['num_items'],
        num_nodes=sizes['num_nodes'], embed_dim=cfg.embed_dim,
        num_layers=cfg.num_layers, init_std=cfg.init_std,
        spmm_backend=cfg.spmm_backend),
    'sasrec': lambda cfg, sizes: SASRec(**_sequence_args(cfg, sizes)),
    'bert4rec': lambda cfg, sizes: BERT4Rec(**_sequence_args(cfg, sizes)),
    'session': lambda cfg, sizes: SessionEncoder(
        **_sequence_args(cfg, sizes), item_side=sizes.get('item_side'),
        num_locations=sizes.get('num_locations', 1),
        feature_dim=cfg.feature_dim,
        item_encoder=cfg.get('item_encoder', 'none'),
        item_content=sizes.get('item_content'),
        id_dropout=cfg.get('id_dropout', 0.0),
        item_bias=cfg.get('item_bias', False),
        item_seen=sizes.get('item_seen')),
    'hybrid': lambda cfg, sizes: Hybrid(
        **_sequence_args(cfg, sizes), item_side=sizes.get('item_side'),
        num_locations=sizes.get('num_locations', 1),
        feature_dim=cfg.feature_dim, graph_item=sizes['graph_item'],
        item_encoder=cfg.get('item_encoder', 'none'),
        item_content=sizes.get('item_content'),
        id_dropout=cfg.get('id_dropout', 0.0), base=cfg.get('base', 'sasrec'), fusion=cfg.get('fusion', 'cross'),
        graph_trainable=cfg.get('graph_trainable', False),
        graph_user=cfg.get('graph_user', 'history'),
        graph_user_table=sizes.get('graph_user'),
        graph_scale=sizes.get('graph_scale', 1.0),
        graph_weight=cfg.get('graph_weight', 'learned')),
}


def get(name: str) -> Callable:
  """Returns the constructor registered under `name`."""
  if name not in _REGISTRY:
    raise ValueError(f'unknown model {name!r}; known: {sorted(_REGISTRY)}')
  return _REGISTRY[name]
