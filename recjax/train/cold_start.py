"""Cold-start evaluation slices, shared by every retrieval trainer.

Cold users and items are held out of training entirely (Dataset.cold_users,
Dataset.cold_items). Two slices:

  cold users  each cold user reveals their first `reveal` test interactions
              (the "few edges" a new user brings); a model embeds the user
              from them without retraining, and is scored on the user's
              remaining test items by full ranking (revealed items masked).
  cold items  warm users' test interactions with cold items, ranked among
              the cold items only (the question is "which new product?");
              a model must embed the items from content alone.

Baselines on the same slices: item popularity for cold users; for cold
items (which have no interactions) the popularity of their leaf category in
training, or a constant (an arbitrary order) without a catalog.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from recjax.data.schema import Dataset, Interactions
from recjax.train.evaluate import RankingEvaluator


@dataclasses.dataclass
class ColdStart:
  """The two slices. Either evaluator may be None when its slice is empty.

  Attributes:
    revealed: the cold users' revealed interactions (fold-in edges).
    user_eval: evaluator over all items for the cold users.
    cold_items: int32 [Ic] local ids of cold items (item_eval's index space).
    item_eval: evaluator over the cold items for warm users.
  """
  revealed: Interactions
  user_eval: Optional[RankingEvaluator]
  cold_items: np.ndarray
  item_eval: Optional[RankingEvaluator]

  @property
  def revealed_users(self) -> np.ndarray:
    return np.unique(self.revealed.user)


def make_cold_start(ds: Dataset, reveal: int = 3, ks: Sequence[int] = (20,),
                    batch_size: int = 1024) -> Optional[ColdStart]:
  """Builds the slices from ds.test; None when the dataset has no cold ids."""
  if not len(ds.cold_users) and not len(ds.cold_items):
    return None
  test = ds.test
  order = np.lexsort((test.timestamp, test.user))
  t = test.take(order)
  is_cold_user = np.isin(t.user, ds.cold_users)
  first = np.r_[0, np.flatnonzero(t.user[1:] != t.user[:-1]) + 1]
  rank = np.arange(len(t)) - np.repeat(first, np.diff(np.r_[first, len(t)]))
  revealed = t.take(is_cold_user & (rank < reveal))
  rest = t.take(is_cold_user & (rank >= reveal))
  user_eval = None
  if len(rest):
    user_eval = RankingEvaluator(revealed.user, revealed.item, rest.user,
                                 rest.item, ds.num_users, ds.num_items, ks=ks,
                                 batch_size=batch_size)
  cold_items = np.asarray(ds.cold_items, np.int32)
  item_eval = None
  on_cold = np.isin(test.item, cold_items) & ~np.isin(test.user,
                                                      ds.cold_users)
  item_ks = tuple(k for k in ks if k <= len(cold_items))
  if on_cold.any() and item_ks:   # K >= the candidate count is meaningless.
    local = np.searchsorted(cold_items, test.item[on_cold])
    no_train = np.zeros(0, np.int32)
    item_eval = RankingEvaluator(no_train, no_train, test.user[on_cold],
                                 local, ds.num_users, len(cold_items),
                                 ks=item_ks,
                                 batch_size=batch_size)
  return ColdStart(revealed, user_eval, cold_items, item_eval)


def evaluate(cs: ColdStart, user_emb, item_emb, prefix: str = '',
             keys: Sequence[str] = ('recall@20', 'ndcg@20')) -> dict:
  """Scores the slices. user_emb [U, D] must hold the cold users' fold-in
  embeddings; item_emb [I, D] the cold items' content embeddings."""
  out = {}
  if cs.user_eval is not None:
    r = cs.user_eval.evaluate(user_emb, item_emb)
    out.update({f'{prefix}cold_user_{k}': r[k] for k in keys if k in r})
    out[f'{prefix}cold_user_eval_users'] = r['eval_users']
  if cs.item_eval is not None:
    r = cs.item_eval.evaluate(user_emb, np.asarray(item_emb)[cs.cold_items])
    out.update({f'{prefix}cold_item_{k}': r[k] for k in keys if k in r})
    out[f'{prefix}cold_item_eval_users'] = r['eval_users']
  return out


def leaf_popularity(ds: Dataset, train_items: np.ndarray) -> np.ndarray:
  """float32 [I]: the training interactions of each item's leaf category,
  what a popularity baseline can say about an item with none of its own
  (zeros without a catalog: an arbitrary order)."""
  if ds.catalog is None:
    return np.zeros(ds.num_items, np.float32)
  leaf = ds.catalog.leaf_category
  return np.bincount(leaf[train_items], minlength=int(leaf.max()) + 1)[
      leaf].astype(np.float32)


def popularity(cs: ColdStart, ds: Dataset, train_items: np.ndarray,
               keys: Sequence[str] = ('recall@20', 'ndcg@20')) -> dict:
  """The popularity baselines on both slices, keys 'popularity_cold_*'."""
  item_pop = np.bincount(train_items, minlength=ds.num_items).astype(
      np.float32)
  cold_score = leaf_popularity(ds, train_items)
  ones = np.ones((ds.num_users, 1), np.float32)
  out = {}
  if cs.user_eval is not None:
    r = cs.user_eval.evaluate(ones, item_pop[:, None])
    out.update({f'popularity_cold_user_{k}': r[k] for k in keys if k in r})
  if cs.item_eval is not None:
    r = cs.item_eval.evaluate(ones, cold_score[cs.cold_items][:, None])
    out.update({f'popularity_cold_item_{k}': r[k] for k in keys if k in r})
  return out
