"""`load_dataset(config.data)`: one entry point from a config to a Dataset.

Sources, by `config.data.name`:
  marketplace  the synthetic marketplace (config.data.marketplace overrides
               MarketplaceConfig fields)
  lightgcn     LightGCN txt directory (train.txt / test.txt) at data.path
  sasrec       SASRec txt file ("user item" per line) at data.path
  csv, parquet event log at data.path with optional data.catalog
  dir          a Dataset saved with recjax.data.io.save_dataset at data.path
"""

from __future__ import annotations

import os
from typing import Any, Callable


def _get(cfg: Any, key: str, default=None):
  return cfg.get(key, default) if hasattr(cfg, 'get') else getattr(
      cfg, key, default)


def _need_path(cfg) -> str:
  path = _get(cfg, 'path')
  if not path:
    raise ValueError(f"config.data.path is required for data.name="
                     f"{_get(cfg, 'name')!r}")
  if not os.path.exists(path):
    raise FileNotFoundError(f'config.data.path: {path} does not exist')
  return path


def _marketplace(cfg):
  from recjax.data import synthetic
  overrides = _get(cfg, 'marketplace') or {}
  if hasattr(overrides, 'to_dict'):
    overrides = overrides.to_dict()
  return synthetic.generate_marketplace(
      synthetic.MarketplaceConfig.from_dict(dict(overrides)))


def _lightgcn(cfg):
  from recjax.data import readers
  return readers.read_lightgcn(_need_path(cfg))


def _sasrec(cfg):
  from recjax.data import readers
  return readers.read_sasrec(_need_path(cfg),
                             valid_users=_get(cfg, 'valid_users', 0) or 0,
                             seed=_get(cfg, 'seed', 0))


def _events(cfg):
  from recjax.data import readers
  return readers.read_events_dataset(
      _need_path(cfg), catalog=_get(cfg, 'catalog') or None,
      split=_get(cfg, 'split', 'temporal'),
      test_frac=_get(cfg, 'test_frac', 0.2), seed=_get(cfg, 'seed', 0))


def _dir(cfg):
  from recjax.data import io
  return io.load_dataset_dir(_need_path(cfg))


_SOURCES: dict[str, Callable] = dict(
    marketplace=_marketplace, lightgcn=_lightgcn, sasrec=_sasrec,
    csv=_events, parquet=_events, dir=_dir)


def load_dataset(cfg: Any):
  """Builds the Dataset described by a `config.data` ConfigDict."""
  name = _get(cfg, 'name')
  if name not in _SOURCES:
    raise ValueError(f'config.data.name={name!r} is not one of '
                     f'{sorted(_SOURCES)}')
  return _SOURCES[name](cfg)
