"""The three-stage recommender behind the API, usable without HTTP.

  retrieval  user vector -> index (ScaNN or exact) -> `num_candidates`
             (10,000) items, minus seen, excluded and out-of-stock ones
  ranking    the transformer ranker scores every candidate against the
             user's last events and the request context; keep `rank_top`
             (500)
  re-ranking the constraint layer (seller cap, category MMR, freshness,
             margin, seller-exposure fairness) picks the k (<= 50) shown,
             each with its reasons

Unknown users take the cold-start path: with `recent_items` their mean item
vector is the query (fold-in, as the trainers evaluate cold users) and those
items are the ranker's history; without, the candidates are the most
popular items for the request's device ("context popularity"), still ranked
and re-ranked. `recommend` returns what each stage kept and its latency.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Optional, Sequence

import numpy as np

from recjax.data.schema import DEVICES
from recjax.serve import bundle as bundle_lib
from recjax.serve import rerank as rerank_lib

NUM_CANDIDATES = 10_000
RANK_TOP = 500


class RequestError(ValueError):
  """A request the pipeline cannot serve as asked (mapped to HTTP 422)."""


def _lookup(vocab, raw) -> int:
  """Index of a raw id given as int or string ('42' finds 42), or -1."""
  if raw in vocab:
    return vocab.index(raw)
  if isinstance(raw, str):
    try:
      as_int = int(raw)
    except ValueError:
      return -1
    return vocab.index(as_int) if as_int in vocab else -1
  return vocab.index(str(raw)) if str(raw) in vocab else -1


class Recommender:
  """Retrieval -> ranking -> re-ranking over one loaded bundle."""

  def __init__(self, b: bundle_lib.Bundle, index, ranker=None,
               rerank_config: rerank_lib.RerankConfig =
               rerank_lib.RerankConfig(),
               num_candidates: int = NUM_CANDIDATES,
               rank_top: int = RANK_TOP, retrieval_weight: float = 2.0):
    self.bundle, self.index, self.ranker = b, index, ranker
    self.retrieval_weight = retrieval_weight
    self.use_listwise = True
    self.rerank_config = rerank_config
    self.num_candidates, self.rank_top = num_candidates, rank_top
    it = b.items
    self.meta = rerank_lib.ItemMeta(
        seller=it['seller'], category=it['category'],
        created_at=it['created_at'], price=it['price'], margin=it['margin'],
        in_stock=it['in_stock']).validate()
    self.now = int(b.history['timestamp'].max()) + 1 if len(
        b.history['timestamp']) else int(time.time())
    # Running exposure per seller, for the fairness term (approximate under
    # concurrency: a lost increment only nudges a soft penalty).
    self.exposure = np.zeros(int(it['seller'].max()) + 1, np.float64)
    self._lock = threading.Lock()
    self._item_unit = None
    self.listwise = None      # a ListwiseServer when the bundle has one
    self._sellers = None      # (embeddings [S, D], popularity [S]), lazily

  @classmethod
  def load(cls, path: str, verify_hashes: bool = False, **kw
           ) -> 'Recommender':
    """Loads a bundle, rebuilds its index and ranker."""
    from recjax.serve import index as index_lib
    b = bundle_lib.load_bundle(path, verify_hashes=verify_hashes)
    index = index_lib.from_config(b.item_emb, b.items['in_stock'],
                                  b.index_config)
    ranker = None
    if b.ranker_dir:
      from recjax.serve import ranker as ranker_lib
      from recjax.train import ranker_trainer
      params, rcfg = ranker_trainer.load_ranker(b.ranker_dir)
      if rcfg.num_items != len(b.item_emb):
        raise bundle_lib.BundleError(
            f'{b.ranker_dir}: ranker built for {rcfg.num_items} items, '
            f'bundle has {len(b.item_emb)}')
      it = b.items
      ranker = ranker_lib.RankerServer(params, rcfg, ranker_lib.side_tables(
          it['seller'], it['category'], it['price_bucket']))
    rec = cls(b, index, ranker, **kw)
    lw_dir = os.path.join(b.path, 'listwise')
    if os.path.isdir(lw_dir):
      from recjax.serve import listwise
      lparams, lcfg = listwise.load(lw_dir, b.item_emb.shape[1])
      rec.listwise = listwise.ListwiseServer(lparams, lcfg, b.item_emb,
                                             rec.meta)
    return rec

  # ------------------------------------------------------------ helpers
  def warmup(self) -> None:
    """Compiles every ranker bucket and touches the index once."""
    if self.ranker is not None:
      self.ranker.warmup()
    if self.listwise is not None:
      self.listwise.warmup()
    q = self.bundle.user_emb[:1] if len(self.bundle.user_emb) else \
        self.bundle.item_emb[:1]
    self.index.search_one(q[0], min(self.num_candidates,
                                    len(self.bundle.item_emb)))

  def _items(self, raw_ids: Sequence[Any]) -> np.ndarray:
    idx = [_lookup(self.bundle.vocabs['item'], r) for r in raw_ids]
    return np.asarray([i for i in idx if i >= 0], np.int64)

  def _context(self, context: Optional[dict]) -> dict:
    c = dict(context or {})
    dev = c.get('device')
    if dev is None:
      c['device'] = 0
    elif dev in DEVICES:
      c['device'] = DEVICES.index(dev)
    else:
      raise RequestError(f'context.device {dev!r} is not one of {DEVICES}')
    now = c.get('now') or self.now
    c['now'] = int(now)
    if c.get('hour') is None:
      c['hour'] = int(now // 3600 % 24)
    if c.get('weekday') is None:
      c['weekday'] = int((now // 86400 + 3) % 7)     # 1970-01-01: Thursday
    c['location'] = int(c.get('location') or 0)
    return c

  # ------------------------------------------------------------ serving
  def _seller_index(self, seller_id) -> int:
    s = _lookup(self.bundle.vocabs['seller'], seller_id)
    if s < 0:
      raise KeyError(seller_id)
    return s

  def _seller_scores(self, u: int, emb: np.ndarray, pop: np.ndarray
                     ) -> np.ndarray:
    """float [S]: recjax.train.sellers.seller_scores for user row u."""
    from recjax.train import sellers as sellers_lib
    h = self.bundle.history
    items = h['item'][h['indptr'][u]:h['indptr'][u + 1]]
    own = np.bincount(self.meta.seller[items], minlength=len(pop))
    return sellers_lib.seller_scores((emb @ self.bundle.user_emb[u])[None],
                                     own[None].astype(np.float64), pop)[0]

  def sellers(self) -> tuple[np.ndarray, np.ndarray]:
    """(seller embeddings [S, D], training purchases per seller [S]),
    built once from the bundle (recjax.train.sellers)."""
    if self._sellers is None:
      from recjax.data.schema import EVENT_INDEX
      from recjax.train import sellers as sellers_lib
      b, h = self.bundle, self.bundle.history
      n = len(b.vocabs['seller'])
      buy = h['event'] == EVENT_INDEX['purchase']
      user_of_row = np.repeat(np.arange(len(h['indptr']) - 1),
                              np.diff(h['indptr']))
      emb = sellers_lib.seller_embeddings(
          b.item_emb, self.meta.seller, n, b.user_emb, user_of_row[buy],
          h['item'][buy])
      pop = np.bincount(self.meta.seller[h['item'][buy]], minlength=n)
      self._sellers = (emb, pop.astype(np.float64))
    return self._sellers

  def recommend_sellers(self, user_id, k: int = 10) -> dict:
    """Top-k sellers for a user by recjax.train.sellers.seller_scores
    (their events with each seller, <user vector, seller vector>, seller
    popularity); unknown users get the sellers with the most purchases."""
    emb, pop = self.sellers()
    b = self.bundle
    u = _lookup(b.vocabs['user'], user_id)
    if u >= 0:
      score, path = self._seller_scores(u, emb, pop), 'personal'
    else:
      score, path = np.log1p(pop), 'popular'
    k = min(int(k), len(score))
    top = np.argsort(-score, kind='stable')[:k]
    counts = np.bincount(self.meta.seller, minlength=len(score))
    vocab = b.vocabs['seller']
    return dict(user_id=user_id, path=path, sellers=[
        dict(seller_id=vocab.raw(int(s)), score=float(score[s]),
             items=int(counts[s])) for s in top])

  def recommend(self, user_id, k: int = 20, context: Optional[dict] = None,
                exclude: Sequence[Any] = (), recent_items: Sequence[Any] = (),
                weights: Optional[dict] = None,
                rerank: Optional[dict] = None, seller_id=None) -> dict:
    """Top-k items for one user with reasons, stage sizes and timings.

    With `seller_id`, only that seller's items: every in-stock item of the
    seller is scored exactly against the user's vector (a seller's
    catalogue is small; an ANN top-10k might hold none of it), then ranked
    and re-ranked as usual without the per-seller cap.
    """
    t0 = time.perf_counter()
    seller = None
    if seller_id is not None:
      try:
        seller = self._seller_index(seller_id)
      except KeyError:
        raise RequestError(f'unknown seller_id {seller_id!r}') from None
      rerank = dict(rerank or {}, max_per_seller=None)
    try:
      cfg = self.rerank_config.override(dict(rerank or {}, k=int(k)))
    except (ValueError, TypeError) as e:
      raise RequestError(f'rerank: {e}') from None
    ctx = self._context(context)
    b = self.bundle
    u = _lookup(b.vocabs['user'], user_id)
    excl = self._items(exclude)
    if u >= 0:
      path = 'personal'
      h_items, h_events, _ = b.user_history(u)
      query = b.user_emb[u]
      seen = np.union1d(b.seen(u), excl)
    else:
      recent = self._items(recent_items)
      h_items = recent
      h_events = np.zeros(len(recent), np.int8)
      query = b.item_emb[recent].mean(0) if len(recent) else None
      seen = np.union1d(recent, excl)
      path = 'cold_start'

    t = time.perf_counter()
    if seller is not None:
      cand = np.flatnonzero((self.meta.seller == seller) & self.meta.in_stock)
      cand = cand[~np.isin(cand, seen)]
      if query is not None:
        cscore = (b.item_emb[cand] @ query).astype(np.float32)
      else:
        cscore = np.log1p(b.items['popularity'][cand]).astype(np.float32)
    elif query is not None:
      cand, cscore = self.index.search_one(query, self.num_candidates,
                                           exclude=seen)
      keep = cand >= 0
      cand, cscore = cand[keep], cscore[keep]
    else:
      pop = b.context_popularity.get(ctx['device'],
                                     b.context_popularity[-1])
      cand = pop[~np.isin(pop, seen) & self.meta.in_stock[pop]]
      cscore = np.log1p(b.items['popularity'][cand]).astype(np.float32)
    t_retrieval = time.perf_counter() - t

    t = time.perf_counter()
    if self.ranker is not None and len(cand):
      try:
        rscore = self.ranker.score(h_items, h_events, ctx, cand, cscore,
                                   weights=weights)
      except ValueError as e:    # e.g. a weight for a head that is not there
        raise RequestError(f'weights: {e}') from None
      # The ranker predicts engagement given an impression (log P(click |
      # shown), from logged impressions); retrieval's logit stands for how
      # likely the user is to consider the item at all. Their sum ranks by
      # log P(shown) + log P(click | shown): the ranker alone would push
      # items that are clicked when shown but rarely relevant.
      rscore = rscore + self.retrieval_weight * cscore
    else:
      rscore = cscore
    top = np.argsort(-rscore, kind='stable')[:self.rank_top]
    ranked, rscore = cand[top], np.asarray(rscore)[top]
    t_ranking = time.perf_counter() - t

    t = time.perf_counter()
    if self.listwise is not None and self.use_listwise:
      ranked, rscore = self.listwise.rerank(query, ranked, rscore,
                                            ctx['now'])
    t_listwise = time.perf_counter() - t

    t = time.perf_counter()
    picked = rerank_lib.constrain(ranked, rscore, self.meta, ctx['now'], cfg,
                                  exclude=seen,
                                  seller_exposure=self.exposure)
    with self._lock:
      for p in picked:
        self.exposure[self.meta.seller[p['item']]] += 1.0
    t_rerank = time.perf_counter() - t

    vocab = b.vocabs['item']
    items = [dict(item_id=vocab.raw(int(p['item'])), score=float(p['score']),
                  rank=int(p['rank']), reasons=p['reasons'],
                  seller=int(self.meta.seller[p['item']]),
                  category=int(self.meta.category[p['item']]))
             for p in picked]
    ms = lambda s: round(s * 1e3, 3)
    if seller is not None:
      path += '_seller'
    return dict(
        user_id=user_id, path=path, items=items,
        stages=dict(retrieved=int(len(cand)), ranked=int(len(ranked)),
                    returned=len(items), history=int(len(h_items))),
        timings_ms=dict(retrieval=ms(t_retrieval), ranking=ms(t_ranking),
                        listwise=ms(t_listwise), rerank=ms(t_rerank),
                        total=ms(time.perf_counter() - t0)))

  def similar(self, item_id, k: int = 20) -> dict:
    """Nearest items to `item_id` by cosine of the item embeddings.

    Raises:
      KeyError: unknown item id.
    """
    i = _lookup(self.bundle.vocabs['item'], item_id)
    if i < 0:
      raise KeyError(item_id)
    if self._item_unit is None:
      e = self.bundle.item_emb
      self._item_unit = e / np.maximum(np.linalg.norm(e, axis=1,
                                                      keepdims=True), 1e-9)
    s = self._item_unit @ self._item_unit[i]
    s[i] = -np.inf
    s[~self.meta.in_stock] = -np.inf
    k = min(k, len(s) - 1)
    top = np.argpartition(-s, k - 1)[:k] if k > 0 else np.zeros(0, int)
    top = top[np.argsort(-s[top], kind='stable')]
    top = top[np.isfinite(s[top])]
    vocab = self.bundle.vocabs['item']
    return dict(item_id=item_id, items=[
        dict(item_id=vocab.raw(int(j)), score=float(s[j]),
             seller=int(self.meta.seller[j]),
             category=int(self.meta.category[j])) for j in top])

  def health(self) -> dict:
    m = self.bundle.manifest
    return dict(status='ok', bundle=self.bundle.path,
                created_at=m['created_at'],
                data_fingerprint=m['data_fingerprint'], dims=m['dims'],
                models={k: (v or {}).get('name') for k, v in
                        m['models'].items()},
                index=self.bundle.index_config.get('kind'),
                ranker=self.ranker is not None)
