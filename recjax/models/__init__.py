"""Flax models, looked up by `config.model.name` through `get`."""

from __future__ import annotations

from typing import Callable

from recjax.models.lightgcn import LightGCN

# name -> constructor(model_config, dataset_sizes) -> flax module
_REGISTRY: dict[str, Callable] = {
    'lightgcn': lambda cfg, sizes: LightGCN(
        num_users=sizes['num_users'], num_items=sizes['num_items'],
        num_nodes=sizes['num_nodes'], embed_dim=cfg.embed_dim,
        num_layers=cfg.num_layers, init_std=cfg.init_std,
        spmm_backend=cfg.spmm_backend),
}


def get(name: str) -> Callable:
  """Returns the constructor registered under `name`."""
  if name not in _REGISTRY:
    raise ValueError(f'unknown model {name!r}; known: {sorted(_REGISTRY)}')
  return _REGISTRY[name]
