"""How well could any model rank the synthetic marketplace's test split?

Scores every (user, item) by the generator's own hidden model and evaluates
that ranking exactly like a trained model (full ranking, training items
masked, warm users):

  oracle(u, i) = log exposure(u, i) + preference(u, i)
  exposure     = 1/2 taste(u, leaf(i)) pop(i) / pop(leaf(i)) + 1/2 pop(i)
                 (half of each session's pool is drawn from its intent leaf,
                 half from the whole catalogue, both by popularity)
  preference   = <user, item factors> + 1/2 log affinity(u, root(i))
                 + 0.7 [favourite seller] - sensitivity * price_z
                 (freshness, which depends on the session's time, is left out)

A Plackett-Luce choice from the pool picks item i about in proportion to
exposure x exp(preference), so this is close to the best possible ranker;
it bounds what Recall@20 the data can support.

  python tools/marketplace_oracle.py [--users=6000 --items=3000 ...]

It also scores the oracle's exposure term with its parts estimated from
the training split (item counts for pop, the user's leaf counts smoothed
towards the leaves' share, 5 pseudo-events, for taste): what popularity
and category taste alone reach without the hidden preferences.

It also trains EASE (Steck, WWW 2019; closed form, log(1 + count)
inputs): what a strong linear collaborative filter reaches on the split,
on every training row (ease_recall@20) and on click-or-deeper rows only
(ease_click_recall@20; the test split is clicks), and scores popularity
counted on those rows (click_popularity_recall@20).

The last stdout line is one JSON object: oracle_recall@20, oracle_ndcg@20,
popularity_recall@20, their ratio, estimated_exposure_recall@20,
click_popularity_recall@20, ease_recall@20 and ease_click_recall@20.
"""

import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_USERS = flags.DEFINE_integer('users', None, 'Default: MarketplaceConfig.')
_ITEMS = flags.DEFINE_integer('items', None, 'Default: MarketplaceConfig.')
_EVENTS = flags.DEFINE_integer('events', None, 'Default: MarketplaceConfig.')
_EASE_LAMBDA = flags.DEFINE_float('ease_lambda', 200.0, "EASE's L2 weight.")


def main(argv):
  del argv
  import numpy as np
  from recjax.data import synthetic
  from recjax.data.schema import EVENT_INDEX
  from recjax.train.evaluate import RankingEvaluator
  kw = {k: f.value for k, f in (('num_users', _USERS), ('num_items', _ITEMS),
                                ('num_events', _EVENTS)) if f.value}
  cfg = synthetic.MarketplaceConfig(**kw)
  events, catalog, truth = synthetic.generate_events(cfg)
  ds = synthetic.split_marketplace(events, catalog, cfg)
  num_leaves = len(truth['leaf_size'])
  leaf = catalog.leaf_category - (len(catalog.category_parent) - num_leaves)
  pop = truth['item_popularity'].astype(np.float64)
  pop = pop / pop.sum()
  leaf_pop = np.bincount(leaf, weights=pop, minlength=num_leaves)
  cdf = truth['user_leaf_cdf'].astype(np.float64)
  taste = np.diff(np.concatenate([np.zeros((len(cdf), 1)), cdf], 1), axis=1)
  expo = 0.5 * taste[:, leaf] * (pop / np.maximum(leaf_pop[leaf], 1e-30)) \
      + 0.5 * pop[None, :]
  pref = truth['user_factors'] @ truth['item_factors'].T
  pref += 0.5 * truth['user_root_log_affinity'][:, catalog.taxonomy[:, 0]]
  fav = (catalog.seller[None, :, None]
         == truth['user_sellers'][:, None, :]).any(-1)
  pref += 0.7 * fav
  pref -= truth['user_price_sensitivity'][:, None] * truth['price_z'][None, :]
  oracle = (np.log(expo + 1e-30) + pref).astype(np.float32)
  ev = RankingEvaluator(ds.train.user, ds.train.item, ds.test.user,
                        ds.test.item, ds.num_users, ds.num_items, ks=(20,),
                        exclude_users=ds.cold_users)
  # Scores as [U, I] rows: user one-hot x item table = the oracle matrix.
  r = ev.evaluate(np.eye(ds.num_users, dtype=np.float32), oracle.T.copy())

  def popularity(items):
    # Every user gets the same scores: the items' training counts.
    return ev.evaluate(np.ones((ds.num_users, 1), np.float32),
                       np.bincount(items, minlength=ds.num_items)
                       .astype(np.float32)[:, None])

  p = popularity(ds.train.item)
  # The exposure term from training counts alone.
  tu, ti = ds.train.user, ds.train.item
  pop_hat = np.bincount(ti, minlength=ds.num_items) + 1.0
  share = np.bincount(leaf, weights=pop_hat, minlength=num_leaves)
  share /= share.sum()
  counts = np.zeros((ds.num_users, num_leaves))
  np.add.at(counts, (tu, leaf[ti]), 1.0)
  taste_hat = (counts + 5 * share) / (counts.sum(1, keepdims=True) + 5)
  est = np.log(pop_hat)[None, :] + np.log(
      0.5 * taste_hat[:, leaf] / share[leaf] + 0.5)
  e = ev.evaluate(np.eye(ds.num_users, dtype=np.float32),
                  est.T.astype(np.float32).copy())
  # Item popularity counted on click-or-deeper training rows only: the
  # test split holds clicks, which preference decides more than views.
  deep = ds.train.event >= EVENT_INDEX['click']
  pc = popularity(ti[deep])

  def ease(rows):
    # EASE (Steck, WWW 2019) on log(1 + training counts of `rows`): the
    # closed-form item-item model, a strong linear CF reference.
    x = np.zeros((ds.num_users, ds.num_items), np.float64)
    np.add.at(x, (tu[rows], ti[rows]), 1.0)
    x = np.log1p(x)
    p_inv = np.linalg.inv(x.T @ x + _EASE_LAMBDA.value * np.eye(ds.num_items))
    b = -p_inv / np.diag(p_inv)[None, :]
    np.fill_diagonal(b, 0.0)
    return ev.evaluate(np.eye(ds.num_users, dtype=np.float32),
                       (x @ b).T.astype(np.float32).copy())

  ease_all, ease_deep = ease(slice(None)), ease(deep)
  print(json.dumps({
      'oracle_recall@20': round(r['recall@20'], 6),
      'oracle_ndcg@20': round(r['ndcg@20'], 6),
      'popularity_recall@20': round(p['recall@20'], 6),
      'oracle_over_popularity': round(r['recall@20'] / p['recall@20'], 3),
      'estimated_exposure_recall@20': round(e['recall@20'], 6),
      'click_popularity_recall@20': round(pc['recall@20'], 6),
      'ease_recall@20': round(ease_all['recall@20'], 6),
      'ease_click_recall@20': round(ease_deep['recall@20'], 6),
      'ease_lambda': _EASE_LAMBDA.value,
      'eval_users': r['eval_users'], 'marketplace': kw}), flush=True)


if __name__ == '__main__':
  app.run(main)
