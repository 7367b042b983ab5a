"""The mission's results table: traditional baselines vs the graph model,
the transformer and the hybrid, on the synthetic marketplace.

  python tools/report.py --data=marketplace --out=/tmp/report
  python tools/report.py --data=marketplace --out=/tmp/r --quick   # minutes

Trains (into OUT/runs/, resuming what is already there):
  popularity      training counts
  item-kNN        cosine item-item similarity on the training matrix
  graph           LightGCN (configs/quickstart.py)
  SASRec          item ids only (the id-only baseline for cold items)
  transformer     the feature-rich session encoder (configs/session_marketplace.py)
  hybrid          both fused late: the transformer's logit plus LightGCN's
                  (configs/hybrid_marketplace.py), the graph part frozen
                  from the run above
  hybrid (cross)  the transformer attending to the user's graph
                  neighbourhood and back (cross-attention), end to end
  hybrid+content  the hybrid with the multimodal item encoder
then ranks every model for the same users (the temporal split's warm test
users, their history masked; recjax.report.metrics) and writes
OUT/report.html (table, training curves, metric bars), OUT/*.png and
OUT/report.json. Seller recommendations (recjax.train.sellers) are scored
against seller popularity on the same split. The last stdout line is the
JSON of the table.

Screenshot (Debian's chromium package):
  chromium --headless --no-sandbox --screenshot=/tmp/report/report.png \
      --window-size=1280,2200 file:///tmp/report/report.html
"""

import json
import os
import sys

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, 'configs'))

_DATA = flags.DEFINE_enum('data', 'marketplace', ['marketplace'],
                          'Dataset (the synthetic marketplace).')
_OUT = flags.DEFINE_string('out', None, 'Output directory.', required=True)
_QUICK = flags.DEFINE_bool('quick', False, 'Tiny marketplace, few steps: a '
                           'check that everything runs (minutes).')
_SEQ_EPOCHS = flags.DEFINE_integer('seq_epochs', 0, 'Override the sequence '
                                   'models\' epochs (0: their configs).')
_GRAPH_EPOCHS = flags.DEFINE_integer('graph_epochs', 0, 'Override LightGCN\'s '
                                     'epochs (0: its config).')
_LATENCY = flags.DEFINE_integer('latency_requests', 300,
                                'Single-user requests timed per model.')


def _configs():
  import hybrid_marketplace
  import quickstart
  import session_marketplace
  graph, seq, hyb = (quickstart.get_config(), session_marketplace.get_config(),
                     hybrid_marketplace.get_config())
  for c in (seq, hyb):
    c.eval.save_vectors = True
    c.eval.latency_requests = _LATENCY.value
    c.eval.ks = (10, 20)
    c.train.progress = False
  graph.train.progress = False
  if _QUICK.value:
    from recjax.data.synthetic import MarketplaceConfig
    m = MarketplaceConfig.tiny()
    tiny = {f: getattr(m, f) for f in (
        'num_users', 'num_items', 'num_sellers', 'num_events', 'taxonomy',
        'days', 'num_locations')}
    for c in (graph, seq, hyb):
      c.data.marketplace = tiny
    for c in (seq, hyb):
      c.model.update(dict(max_len=16, embed_dim=16, ff_dim=16, num_blocks=1))
      c.data.buckets = ()
      c.train.update(batch_size=32, num_epochs=2, log_every=5)
      c.loss.num_negatives = 32
      c.eval.sampled_negatives = 20
    graph.model.embed_dim = 16
    graph.train.update(num_epochs=2, batch_size=256, log_every=5)
  if _SEQ_EPOCHS.value:
    seq.train.num_epochs = hyb.train.num_epochs = _SEQ_EPOCHS.value
  if _GRAPH_EPOCHS.value:
    graph.train.num_epochs = _GRAPH_EPOCHS.value
  # The hybrid's graph part is the graph run above (main points it there).
  return graph, seq, hyb


def _item_knn(ds, top_n: int = 100):
  """Item-item cosine on the binary training matrix, top_n per item."""
  import numpy as np
  import scipy.sparse as sp
  x = sp.csr_matrix((np.ones(len(ds.train)), (ds.train.user, ds.train.item)),
                    shape=(ds.num_users, ds.num_items))
  x.sum_duplicates()
  x.data[:] = 1.0              # binary: repeats of a pair count once
  norms = np.sqrt(np.asarray(x.sum(0)).ravel())
  sim = (x.T @ x).toarray().astype(np.float32)
  sim /= np.maximum(norms[:, None] * norms[None, :], 1e-9)
  np.fill_diagonal(sim, 0.0)
  if top_n < ds.num_items:
    cut = -np.partition(-sim, top_n - 1, axis=1)[:, top_n - 1:top_n]
    sim[sim < cut] = 0.0
  return sim


def main(argv):
  del argv
  import numpy as np
  from recjax.data import registry, sequences
  from recjax.report import html, metrics
  from recjax.train import seq_trainer, sellers, trainer
  from recjax.train import hybrid as hybrid_lib

  out = _OUT.value
  runs = os.path.join(out, 'runs')
  graph_cfg, seq_cfg, hyb_cfg = _configs()
  ds = registry.load_dataset(seq_cfg.data)
  es = sequences.eval_set(ds, seq_cfg.model.max_len, 'test',
                          collapse_repeats=seq_cfg.data.collapse_repeats)
  users, seen, targets = es.history.users, es.history.seen, es.targets
  category = ds.catalog.leaf_category
  lat_rows = np.random.default_rng(0).choice(
      len(users), min(_LATENCY.value, len(users)), replace=False)
  k = 20
  rows, curves, results = {}, {}, {}

  def add(name, score_fn, score_one, latency=None):
    top = metrics.top_lists(score_fn, len(users), seen, k)
    lat = latency or metrics.latency_ms(score_one, lat_rows)
    top_cold = metrics.cold_top(score_fn, len(users), ds.cold_items, 10)
    rows[name] = metrics.table_row(top, targets, ds.cold_items, ds.num_items,
                                   category, lat, top_cold)
    print(name, json.dumps({m: round(v, 4) for m, v in rows[name].items()}),
          flush=True)

  # Traditional baselines.
  pop = np.log1p(np.bincount(ds.train.item, minlength=ds.num_items)).astype(
      np.float32)
  add('popularity', lambda r: np.broadcast_to(pop, (len(r), len(pop))),
      lambda r: pop)
  sim = _item_knn(ds)
  hist = [np.asarray(s, np.int64) for s in seen]
  knn_one = lambda r: sim[hist[r]].sum(0)
  add('item-kNN', lambda rr: np.stack([knn_one(r) for r in rr]), knn_one)

  # Graph alone: LightGCN.
  gdir = os.path.join(runs, 'graph')
  results['graph'] = trainer.train_and_evaluate(graph_cfg, gdir)
  _, g_users, g_items, _, _ = trainer.load_embeddings(graph_cfg, gdir)
  gu = g_users[users]
  add('graph (LightGCN)', lambda r: gu[r] @ g_items.T,
      lambda r: g_items @ gu[r])
  curves['graph (LightGCN)'] = html.read_curve(gdir)

  # Transformer alone, hybrid, hybrid with the multimodal item encoder.
  hyb_cfg.graph = graph_cfg
  hyb_cfg.graph.workdir = gdir
  hyb_cfg.graph.event_types = tuple(graph_cfg.data.event_types)
  content_cfg = hyb_cfg.copy_and_resolve_references()
  content_cfg.model.item_encoder = 'multimodal'
  cross_cfg = hyb_cfg.copy_and_resolve_references()
  cross_cfg.model.update(fusion='cross', graph_user='history')
  ids_cfg = seq_cfg.copy_and_resolve_references()
  ids_cfg.model.name = 'sasrec'
  for name, cfg, sub in (('SASRec (item ids only)', ids_cfg, 'sasrec'),
                         ('transformer (session)', seq_cfg, 'transformer'),
                         ('hybrid', hyb_cfg, 'hybrid'),
                         ('hybrid (cross-attention)', cross_cfg,
                          'hybrid_cross'),
                         ('hybrid + content', content_cfg, 'hybrid_content')):
    wd = os.path.join(runs, sub)
    results[sub] = r = seq_trainer.train_and_evaluate(cfg, wd)
    v = np.load(os.path.join(wd, 'vectors.npz'))
    if not np.array_equal(v['users'], users):
      raise RuntimeError(f'{wd}: evaluated users differ from the report\'s')
    q, keys = v['queries'], v['keys']
    add(name, lambda rr, q=q, keys=keys: q[rr] @ keys.T,
        None, latency=dict(latency_p50_ms=r.get('latency_p50_ms'),
                           latency_p99_ms=r.get('latency_p99_ms')))
    curves[name] = html.read_curve(wd)

  # Sellers: LightGCN's user and item vectors; targets from the held-out
  # rows with their purchases (ds.test keeps only each pair's first row).
  from recjax.data import synthetic
  m = seq_cfg.data.marketplace
  heldout = synthetic.heldout_events(synthetic.MarketplaceConfig.from_dict(
      dict(m.to_dict() if hasattr(m, 'to_dict') else m)))
  bu, bi = sellers.purchases(ds.train)
  s_emb = sellers.seller_embeddings(g_items, ds.catalog.seller,
                                    ds.num_sellers, g_users, bu, bi)
  seller = sellers.evaluate_next_seller(g_users, s_emb, ds.train, heldout,
                                        ds.catalog.seller, ds.num_sellers,
                                        ks=(10,))
  extra = dict(data=ds.summary(), users_ranked=int(len(users)),
               protocol='temporal split, warm test users, full ranking with '
               'history masked; cold-start = test targets that are items '
               'held out of training; latency = one request (query + '
               'scores over all items + top-k) on this CPU',
               **seller,
               graph_own_eval=json.dumps({m: results['graph'].get(m) for m in (
                   'recall@20', 'ndcg@20')}),
               # The hybrid's two halves on the trainer's own protocol.
               hybrid_parts=json.dumps({m: results['hybrid'].get(m) for m in (
                   'recall@20', 'ndcg@20', 'base_recall@20', 'base_ndcg@20',
                   'graph_recall@20', 'graph_ndcg@20', 'graph_weight')}))
  path = html.write_report(out, rows, curves, extra)
  print(f'wrote {path}', flush=True)
  print(json.dumps(dict(rows=rows, **seller)), flush=True)


if __name__ == '__main__':
  app.run(main)
