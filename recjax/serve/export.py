"""Export: trained retrieval model + ranker -> a serving bundle.

  python -m recjax.main --config=configs/quickstart.py --workdir=W \
      --mode=export [--bundle=W/bundle]

Reads the latest retrieval checkpoint in the workdir, embeds every user and
item, trains the ranker on the dataset's logged impressions (unless
`config.serve.ranker_steps` is 0), tunes the retrieval index against exact
search, and writes everything the server needs through
`recjax.serve.bundle.write_bundle` (atomic, with a manifest).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from typing import Any, Callable

import numpy as np

from recjax.data import sequences
from recjax.data.schema import Dataset, Vocab
from recjax.serve import bundle as bundle_lib

CONTEXT_TOP = 1000       # cold-start candidates kept per device


def data_fingerprint(ds: Dataset) -> str:
  """A short hash of what the models were trained on (name, sizes, rows)."""
  h = hashlib.sha256()
  h.update(f'{ds.name}:{ds.num_users}:{ds.num_items}'.encode())
  for a in (ds.train.user, ds.train.item, ds.train.timestamp):
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()[:16]


def item_table(ds: Dataset, in_stock: np.ndarray | None = None) -> dict:
  """Per-item metadata for the ranker and re-ranker (see bundle.ITEM_FIELDS).

  Datasets without a catalogue get one seller, one category and neutral
  price/margin, so every stage still runs.
  """
  I = ds.num_items
  pop = np.bincount(ds.train.item, minlength=I).astype(np.float32)
  cat = ds.catalog
  if cat is None:
    seller, category = np.zeros(I, np.int32), np.zeros(I, np.int32)
    created = np.zeros(I, np.int64)
    price, margin = np.ones(I, np.float32), np.zeros(I, np.float32)
  else:
    seller, category = cat.seller, cat.leaf_category
    created, price, margin = cat.created_at, cat.price, cat.margin
  side = sequences.item_side_features(ds)   # the ranker's price deciles
  bucket = side['price'][1:] - 1 if side is not None else np.zeros(I)
  return dict(seller=np.asarray(seller, np.int32),
              category=np.asarray(category, np.int32),
              created_at=np.asarray(created, np.int64),
              price=np.asarray(price, np.float32),
              margin=np.asarray(margin, np.float32),
              in_stock=(np.ones(I, bool) if in_stock is None
                        else np.asarray(in_stock, bool)),
              popularity=pop,
              price_bucket=np.asarray(bucket, np.int32))


def context_popularity(ds: Dataset, top: int = CONTEXT_TOP) -> dict:
  """Most popular training items per device (-1: all devices)."""
  tr = ds.train
  out = {-1: np.argsort(-np.bincount(tr.item, minlength=ds.num_items),
                        kind='stable')[:top]}
  for dev in np.unique(tr.device):
    c = np.bincount(tr.item[tr.device == dev], minlength=ds.num_items)
    out[int(dev)] = np.argsort(-c, kind='stable')[:top]
  return out


def _vocabs(ds: Dataset) -> dict:
  v = dict(ds.vocabs or {})
  v.setdefault('user', Vocab(range(ds.num_users)))
  v.setdefault('item', Vocab(range(ds.num_items)))
  n_sellers = ds.catalog.seller.max() + 1 if ds.catalog is not None else 1
  v.setdefault('seller', Vocab(range(n_sellers)))
  n_cats = len(ds.catalog.category_parent) if ds.catalog is not None else 1
  v.setdefault('category', Vocab(range(n_cats)))
  return v


def export(config: Any, workdir: str, bundle_dir: str,
           log: Callable[[str], None] = print) -> dict:
  """Writes the serving bundle for the run in `workdir`; returns a summary.

  Uses config.serve (see configs/common.py): history_len, index_kind,
  target_recall, ranker_steps, ranker (RankerConfig overrides).
  """
  from recjax.serve import index as index_lib
  from recjax.train import trainer
  sc = config.serve
  t0 = time.perf_counter()
  ds, users, items, step, params = trainer.load_embeddings(config, workdir)
  log(f'export: {config.model.name} step {step}: users {users.shape}, '
      f'items {items.shape}')
  meta = item_table(ds)
  tr = ds.train
  history = bundle_lib.history_csr(tr.user, tr.item, tr.event, tr.timestamp,
                                   ds.num_users, sc.history_len)
  t = time.perf_counter()
  # Tune on user vectors: they are the queries the index will serve.
  rng = np.random.default_rng(config.seed)
  sample = users[rng.choice(len(users), min(len(users), 1000), replace=False)]
  index, index_report = index_lib.build_index(
      items, valid=meta['in_stock'], kind=sc.index_kind,
      target_recall=sc.target_recall, queries=sample)
  index_config = dict(index.to_config(), report=index_report)
  log(f'export: index {index_config.get("kind")} in '
      f'{time.perf_counter() - t:.1f}s: {index_report}')

  extra = {}
  ranker_metrics = {}
  if sc.ranker_steps > 0:
    from recjax.train import ranker_trainer
    t = time.perf_counter()
    rcfg = ranker_trainer.ranker_config(ds, dict(sc.ranker),
                                        history_len=sc.history_len)
    # The ranker sees the retrieval score as a feature at serving time, so
    # it trains with the same one (no train/serve skew).
    retrieval = lambda u, i, t: np.einsum('nd,nd->n', users[u], items[i])
    rparams, ranker_metrics = ranker_trainer.train_ranker(
        ds, rcfg, steps=sc.ranker_steps, seed=config.seed,
        retrieval_fn=retrieval)
    log(f'export: ranker trained in {time.perf_counter() - t:.1f}s: '
        f'{ranker_metrics}')
    extra['ranker'] = lambda p: ranker_trainer.save_ranker(rparams, rcfg, p)
    if sc.listwise_steps > 0:
      from recjax.serve import listwise
      from recjax.serve import rerank as rerank_lib
      t = time.perf_counter()
      lcfg = listwise.ListwiseConfig(top=sc.listwise_top)
      lists = listwise.build_lists(
          ds, users, items, rerank_lib.ItemMeta(**{
              f: meta[f] for f in ('seller', 'category', 'created_at',
                                   'price', 'margin', 'in_stock')}),
          rparams, rcfg, lcfg, seed=config.seed)
      if len(lists['mask']) >= 10:
        lparams, listwise_metrics = listwise.train(lists, lcfg,
                                                   sc.listwise_steps,
                                                   config.seed)
        # Shipped only when it beats the served order on held-out lists.
        shipped = (listwise_metrics['ndcg10_listwise'] >
                   listwise_metrics['ndcg10_served'])
        listwise_metrics['shipped'] = bool(shipped)
        ranker_metrics['listwise'] = listwise_metrics
        log(f'export: listwise re-ranker in {time.perf_counter() - t:.1f}s:'
            f' {listwise_metrics}')
        if shipped:
          extra['listwise'] = lambda p: listwise.save(lparams, lcfg, p)
      else:
        log(f'export: only {len(lists["mask"])} impression lists: no '
            'listwise re-ranker')

  ckpt_dir = os.path.join(workdir, 'checkpoints', str(step))
  if os.path.isdir(ckpt_dir):
    extra['retrieval'] = lambda p: shutil.copytree(ckpt_dir, p)
  models = dict(
      retrieval=dict(name=config.model.name, step=int(step),
                     embed_dim=int(items.shape[1]), workdir=workdir),
      ranker=(dict(name='target_attention_ranker', steps=sc.ranker_steps,
                   metrics=ranker_metrics) if sc.ranker_steps > 0 else None))
  manifest = bundle_lib.write_bundle(
      bundle_dir, models=models, user_emb=users, item_emb=items, items=meta,
      history=history, context_popularity=context_popularity(ds),
      vocabs=_vocabs(ds), index_config=index_config,
      data_fingerprint=data_fingerprint(ds), extra_dirs=extra,
      overwrite=True)
  del params
  return dict(bundle=os.path.abspath(bundle_dir),
              files=len(manifest['files']), dims=manifest['dims'],
              data_fingerprint=manifest['data_fingerprint'],
              index=index_config, ranker=ranker_metrics,
              export_s=round(time.perf_counter() - t0, 3))
