"""The graph half of the hybrid model (recjax.models.hybrid): a LightGCN
trained on the same training split the sequence model sees, and its
embeddings handed to the sequence trainer.

`config.graph` is a complete retrieval config (configs/quickstart.py's
keys); its `data` is replaced by the hybrid's own `data`, so both halves
train on exactly the same events and neither sees a validation or test
item. The graph model is trained once into `config.graph.workdir` (default
WORKDIR/graph) and reused from its checkpoint afterwards (the retrieval
trainer resumes, so a finished run is only evaluated again). Items the
graph model never saw (cold items) get graph rows imputed from their
seller's and category's items (`impute_cold`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import ml_collections
import numpy as np

from recjax.data.schema import EVENT_TYPES, Dataset


def graph_config(config: Any, ds: Dataset) -> ml_collections.ConfigDict:
  """`config.graph` with the hybrid's data and the event types of ds.train
  (unless config.graph.data.event_types names them)."""
  g = ml_collections.ConfigDict(config.graph.to_dict())
  with g.unlocked():
    g.data = ml_collections.ConfigDict(config.data.to_dict())
    present = tuple(EVENT_TYPES[e] for e in np.unique(ds.train.event))
    g.data.event_types = tuple(config.graph.get('event_types') or present)
    g.task = 'retrieval'
    g.train.progress = False
  return g


def graph_workdir(config: Any, workdir: str) -> str:
  return config.graph.get('workdir') or os.path.join(workdir, 'graph')


def graph_embeddings(config: Any, ds: Dataset, workdir: str
                     ) -> tuple[np.ndarray, np.ndarray, dict]:
  """Trains (or resumes) the graph model and returns its embeddings.

  Returns:
    (users float32 [U, Dg], items float32 [I, Dg], metrics): metrics are the
    graph model's own evaluation (its trainer's protocol).
  """
  from recjax.train import trainer  # pylint: disable=g-import-not-at-top
  g = graph_config(config, ds)
  gdir = graph_workdir(config, workdir)
  logging.info('hybrid: graph model %s in %s', g.model.name, gdir)
  metrics = trainer.train_and_evaluate(g, gdir)
  gds, users, items, _, _ = trainer.load_embeddings(g, gdir)
  if (gds.num_users, gds.num_items) != (ds.num_users, ds.num_items):
    raise ValueError(f'{gdir}: the graph model has {gds.num_users} users and '
                     f'{gds.num_items} items, the data {ds.num_users} and '
                     f'{ds.num_items}; use a fresh config.graph.workdir')
  return users, items, metrics


def impute_cold(items: np.ndarray, seen: np.ndarray,
                groups: list[np.ndarray]) -> np.ndarray:
  """Rows of items the graph model never saw in training (`seen` False:
  cold items, whose rows are untrained initial values) replaced by the mean
  of the seen items in each of their catalogue groups (e.g. the same seller,
  the same leaf category), averaged over the groups that have any: one
  propagation step over the item-seller and item-category edges, which cold
  items do have. Without it a cold item lacks the graph part of its key and
  ranks below every warm item.

  Args:
    items: float [I, Dg]; seen: bool [I]; groups: int [I] arrays.
  """
  out = items.astype(np.float32).copy()
  cold = np.flatnonzero(~seen)
  if not len(cold) or not seen.any():
    return out
  acc = np.zeros((len(cold), items.shape[1]), np.float64)
  n = np.zeros(len(cold))
  for g in groups:
    g = np.asarray(g, np.int64)
    sums = np.zeros((g.max() + 1, items.shape[1]))
    np.add.at(sums, g[seen], items[seen])
    cnt = np.bincount(g[seen], minlength=g.max() + 1)
    has = cnt[g[cold]] > 0
    acc[has] += sums[g[cold][has]] / cnt[g[cold][has], None]
    n += has
  mean = acc / np.maximum(n, 1)[:, None]
  # A mean of many rows is shorter than a row; scaled to the median norm
  # of seen rows, so a dot product does not demote cold items for it.
  norm = np.linalg.norm(mean, axis=1, keepdims=True)
  typical = np.median(np.linalg.norm(items[seen], axis=1))
  mean = mean * (typical / np.maximum(norm, 1e-9))
  out[cold] = np.where(n[:, None] > 0, mean, 0.0)
  return out


def item_table(items: np.ndarray) -> np.ndarray:
  """[I, Dg] by item index -> [I + 1, Dg] by item id (row 0 padding),
  scaled to unit standard deviation: graph models' embedding scales vary a
  lot (LightGCN's grow with training); a uniform scale keeps every dot
  product's order and the fusion layers' inputs near the range they are
  initialised for."""
  items = items.astype(np.float32)
  items = items / max(float(items.std()), 1e-6)
  return np.concatenate([np.zeros((1, items.shape[1]), np.float32), items])


def user_table(users: np.ndarray, items: np.ndarray, known: np.ndarray,
               temperature: float = 1.0) -> tuple[np.ndarray, float]:
  """The graph model's user vectors for the hybrid's user node
  (`model.graph_user='node'`).

  Args:
    users: float [U, Dg] and items: float [I, Dg], the graph model's
      embeddings; known: bool [U], users with training events (the others'
      rows are untrained and become zeros: the model then falls back to
      the mean of the history's graph item rows).
    temperature: the graph model's logit temperature.

  Returns:
    (table float32 [U, Dg] scaled to unit standard deviation like
    `item_table`, scale): scale * <user row, item row> is the graph model's
    own logit, the initial weight of the graph score in 'score' fusion.
  """
  users = np.where(known[:, None], users, 0.0).astype(np.float32)
  su = max(float(users[known].std()) if known.any() else 1.0, 1e-6)
  si = max(float(items.std()), 1e-6)
  return users / su, su * si / float(temperature)


# Multiples of the graph logit's initial weight tried by fit_score_weight.
WEIGHT_GRID = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0)


def fit_score_weight(queries: np.ndarray, keys, evaluate, base_dim: int,
                     metric: str, grid=WEIGHT_GRID) -> tuple[float, dict]:
  """The multiple c of the graph logit's weight that maximises `metric` on
  a held-out split ('score' fusion with graph_weight='valid').

  Args:
    queries: float [S, D + Dg] the split's queries at the current weight
      ([h, a g_u]: scaling columns D: by c scales the graph logit by c).
    keys: [I, D + Dg] item keys.
    evaluate: (queries, keys) -> metrics dict (a SeqEvaluator's
      evaluate_queries).
    base_dim: D, where the graph columns start.
    metric: the key to maximise, e.g. 'ndcg@10'.

  Returns:
    (best c, {c: metric}).
  """
  scores = {}
  for c in grid:
    q = np.array(queries, np.float32, copy=True)
    q[:, base_dim:] *= c
    scores[float(c)] = float(evaluate(q, keys)[metric])
  best = max(scores, key=lambda c: (scores[c], -abs(c - 1.0)))
  return best, scores


def balanced_score_weight(queries: np.ndarray, keys: np.ndarray,
                          base_dim: int, max_items: int = 20000) -> float:
  """The multiple c of the graph logit's weight that gives the graph logits
  the standard deviation of the base model's logits over these queries
  and every item ('score' fusion with graph_weight='balanced': equal say
  for both halves, with no held-out split needed; a z-score sum).

  Args:
    queries: float [S, D + Dg]; keys: float [I, D + Dg]; base_dim: D;
    max_items: at most this many items (a uniform sample) are scored, so
      the [S, I] score matrices stay small for large catalogues.
  """
  if len(keys) > max_items:   # a sample of items estimates a spread
    keys = keys[np.random.default_rng(0).choice(len(keys), max_items,
                                                replace=False)]
  base = queries[:, :base_dim] @ keys[:, :base_dim].T
  graph = queries[:, base_dim:] @ keys[:, base_dim:].T
  # Each row's mean is removed: a constant per user changes no ranking.
  spread = lambda x: float((x - x.mean(1, keepdims=True)).std())
  return spread(base) / max(spread(graph), 1e-12)
