"""Seller embeddings on the user-product-seller graph, seller
recommendations, and their evaluation.

A seller's vector combines three views (each L2-normalised, then averaged):
  products   the mean embedding of the seller's items        (graph: sold_by)
  buyers     the mean embedding of users who bought from it,
             weighted by purchases                          (behaviour)
  similar    one smoothing step over the seller-seller graph whose edge
             weights count users who bought from both       (similar sellers)
    s <- (1 - beta) s + beta * mean of neighbours' s (weighted)
so a seller with few sales still gets a vector from its catalogue, and one
with a thin catalogue from its buyers and its neighbours. Users and sellers
then share the item space: affinity(user, seller) = <user vector, seller
vector>. The ranking score (`seller_scores`, what GET
/v1/sellers/recommend ranks by) adds what the vectors leave out:
  score = log(1 + the user's events with the seller's items)   (loyalty)
        + z(affinity)                       (taste, standardised per user)
        + z(log(1 + the seller's purchases))                 (popularity)
with unit weights: buyers return to sellers they know, and a dot product
with unit-length seller vectors has no popularity term of its own.

Evaluation (`evaluate_next_seller`): for every user with a purchase after
the training cut, the seller of their first such purchase is the target;
Recall@K = the share of those users whose target is in their top K
sellers. Baselines on the same users: seller popularity (purchases in
training), the user's own most-bought sellers (then popularity) and the
affinity alone.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from recjax.data.schema import EVENT_INDEX


def _unit(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-9)


def _group_mean(keys: np.ndarray, vecs: np.ndarray, n: int,
                weights: Optional[np.ndarray] = None) -> np.ndarray:
  w = np.ones(len(keys)) if weights is None else weights
  out = np.zeros((n, vecs.shape[1]), np.float64)
  np.add.at(out, keys, vecs * w[:, None])
  den = np.bincount(keys, weights=w, minlength=n)
  return out / np.maximum(den, 1e-9)[:, None]


def seller_embeddings(item_emb: np.ndarray, item_seller: np.ndarray,
                      num_sellers: int, user_emb: Optional[np.ndarray] = None,
                      buy_user: Optional[np.ndarray] = None,
                      buy_item: Optional[np.ndarray] = None,
                      beta: float = 0.3) -> np.ndarray:
  """Seller vectors [S, D] from products, buyers and similar sellers.

  Args:
    item_emb: float [I, D] item embeddings.
    item_seller: int [I] seller index of every item.
    num_sellers: S.
    user_emb: float [U, D] user embeddings (same space as the items), or
      None to use the products only.
    buy_user, buy_item: int [P] training purchases (user, item).
    beta: weight of the similar-seller smoothing step (0 = off).
  """
  item_seller = np.asarray(item_seller, np.int64)
  out = _unit(_group_mean(item_seller, item_emb, num_sellers))
  if user_emb is None or buy_user is None or not len(buy_user):
    return out.astype(np.float32)
  buy_user = np.asarray(buy_user, np.int64)
  b_seller = item_seller[np.asarray(buy_item, np.int64)]
  buyers = _group_mean(b_seller, user_emb[buy_user], num_sellers)
  has = np.bincount(b_seller, minlength=num_sellers) > 0
  # The mean of the views a seller has, so having buyers does not by itself
  # lengthen the vector (that would be a popularity boost in disguise).
  out = (out + _unit(buyers) * has[:, None]) / (1.0 + has[:, None])
  if beta > 0:
    # Seller-seller weights: users who bought from both (sparse product of
    # the user-seller incidence with itself, via unique pairs per user).
    pairs = np.unique(buy_user * num_sellers + b_seller)
    u, s = np.divmod(pairs, num_sellers)
    order = np.argsort(u, kind='stable')
    u, s = u[order], s[order]
    starts = np.r_[0, np.flatnonzero(np.diff(u)) + 1, len(u)]
    a, b = [], []
    for lo, hi in zip(starts[:-1], starts[1:]):
      if hi - lo > 1 and hi - lo <= 50:      # skip the very broadest buyers
        ss = s[lo:hi]
        a.append(np.repeat(ss, len(ss)))
        b.append(np.tile(ss, len(ss)))
    if a:
      a, b = np.concatenate(a), np.concatenate(b)
      keep = a != b
      neigh = _group_mean(a[keep], out[b[keep]], num_sellers)
      deg = np.bincount(a[keep], minlength=num_sellers) > 0
      out = np.where(deg[:, None], (1 - beta) * out + beta * neigh, out)
  return out.astype(np.float32)


def purchases(inter, event: str = 'purchase') -> tuple[np.ndarray, np.ndarray]:
  """(user, item) of the rows of `inter` with this event type."""
  keep = inter.event == EVENT_INDEX[event]
  return inter.user[keep], inter.item[keep]


def next_seller_targets(test, item_seller: np.ndarray, users_ok: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
  """(users, seller) of each user's first purchase in `test`, for users
  where users_ok[user] (e.g. users with training history)."""
  keep = (test.event == EVENT_INDEX['purchase']) & users_ok[test.user]
  u, i, t = test.user[keep], test.item[keep], test.timestamp[keep]
  order = np.lexsort((t, u))
  u, i = u[order], i[order]
  if not len(u):
    return u, np.zeros(0, np.int64)
  first = np.r_[True, u[1:] != u[:-1]]
  return u[first], np.asarray(item_seller)[i[first]]


def seller_scores(affinity: np.ndarray, own: np.ndarray,
                  purchases_per_seller: np.ndarray) -> np.ndarray:
  """Ranking scores [n, S] of sellers for n users (see the module doc).

  Args:
    affinity: float [n, S] <user vector, seller vector>.
    own: float [n, S] each user's training events with each seller's items.
    purchases_per_seller: float [S] training purchases of each seller.
  """
  z = lambda x: (x - x.mean(-1, keepdims=True)) / np.maximum(
      x.std(-1, keepdims=True), 1e-9)
  pop = z(np.log1p(np.asarray(purchases_per_seller, np.float64)))
  return np.log1p(own) + z(np.asarray(affinity, np.float64)) + pop[None]


def user_seller_counts(user: np.ndarray, item: np.ndarray,
                       item_seller: np.ndarray, rows: np.ndarray,
                       num_users: int, num_sellers: int) -> np.ndarray:
  """float [len(rows), S]: events of users `rows` with each seller's items
  (user, item: int [E] event arrays)."""
  row = np.full(num_users, -1)
  row[rows] = np.arange(len(rows))
  keep = row[user] >= 0
  out = np.zeros((len(rows), num_sellers))
  np.add.at(out, (row[user[keep]], np.asarray(item_seller)[item[keep]]), 1.0)
  return out


def recall_at(scores: np.ndarray, targets: np.ndarray, k: int) -> float:
  """Share of rows of scores [n, S] whose target [n] is in the top k."""
  if not len(targets):
    return float('nan')
  k = min(k, scores.shape[1])
  top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
  return float((top == targets[:, None]).any(1).mean())


def evaluate_next_seller(user_emb: np.ndarray, seller_emb: np.ndarray,
                         train, test, item_seller: np.ndarray,
                         num_sellers: int, ks=(10,)) -> dict:
  """Recall@K of the next seller a user buys from: the ranking score
  (`seller_scores`), the affinity alone, seller popularity and the user's
  own most-bought sellers, on the same users."""
  num_users = len(user_emb)
  has_hist = np.bincount(train.user, minlength=num_users) > 0
  users, target = next_seller_targets(test, item_seller, has_hist)
  bu, bi = purchases(train)
  b_seller = np.asarray(item_seller)[bi]
  pop = np.bincount(b_seller, minlength=num_sellers).astype(np.float64)
  out = dict(seller_eval_users=int(len(users)))
  own = user_seller_counts(bu, bi, item_seller, users, num_users,
                           num_sellers)
  affinity = user_emb[users] @ seller_emb.T
  events = user_seller_counts(train.user, train.item, item_seller, users,
                              num_users, num_sellers)
  scores = seller_scores(affinity, events, pop)
  for k in ks:
    out[f'seller_recall@{k}'] = recall_at(scores, target, k)
    out[f'seller_affinity_recall@{k}'] = recall_at(affinity, target, k)
    out[f'seller_popularity_recall@{k}'] = recall_at(
        np.broadcast_to(pop, (len(users), num_sellers)), target, k)
    # Repeat purchases: own counts first, popularity breaks ties.
    out[f'seller_own_history_recall@{k}'] = recall_at(
        own + pop[None] / (pop.max() + 1), target, k)
  return out
