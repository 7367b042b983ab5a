"""Candidate retrieval benchmark: ScaNN (tuned) vs exact search vs faiss.

  python tools/bench_retrieval.py [--items=1000000] [--dim=64] [--queries=1000]
      [--k=10] [--target_recall=0.95] [--faiss_index=ivf|hnsw] [--faiss=False]

Items are synthetic and clustered like a catalogue's embeddings: --clusters
gaussian centres with Zipf-like sizes (popular categories are big), noise
around them, and a log-normal norm per item (popularity-like: inner-product
search favours long vectors). Queries are users near an item they liked: a
random item plus noise of half the embeddings' spread. Tuning queries and
evaluation queries are separate draws.

ScaNN is tuned by `recjax.serve.index.tune_scann` for recall@k >= target on
the tuning queries; faiss (IVFFlat, or HNSWFlat, with inner product) by
raising nprobe / efSearch until its recall@k does the same. build_s and
faiss_build_s include that tuning (and its exact ground truth); the TensorFlow
import ScaNN pulls in is not counted. Single-query QPS runs one query at a
time through each index's serving call (median over --repeats passes; exact
search over the first --exact_single_queries queries only, as it is slow at
1M items); batched QPS sends all queries at once (all cores; one pass for
exact search).

The last stdout line is one JSON object: build_s, recall@10, recall@100,
qps_single, qps_batched, latency_p50_ms, latency_p99_ms, exact_qps_single,
exact_qps_batched, faiss_* (the same), peak_rss_mb, items, dim and the tuned
parameters.
"""

import json
import os
import resource
import sys
import time

from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_ITEMS = flags.DEFINE_integer('items', 1_000_000, 'Catalogue size.')
_DIM = flags.DEFINE_integer('dim', 64, 'Embedding dimension.')
_QUERIES = flags.DEFINE_integer('queries', 1000, 'Evaluation queries.')
_TUNE_QUERIES = flags.DEFINE_integer('tune_queries', 1000, 'Tuning queries.')
_K = flags.DEFINE_integer('k', 10, 'Results per query (tuned and timed).')
_TARGET = flags.DEFINE_float('target_recall', 0.95,
                             'recall@k both ANN indexes are tuned to reach.')
_SEED = flags.DEFINE_integer('seed', 0, 'Data seed.')
_CLUSTERS = flags.DEFINE_integer('clusters', 1000, 'Gaussian item clusters.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timing passes (median kept).')
_EXACT_SINGLE = flags.DEFINE_integer(
    'exact_single_queries', 100, 'Queries timed one by one for exact search.')
_FAISS = flags.DEFINE_bool('faiss', True, 'Also benchmark faiss-cpu.')
_FAISS_INDEX = flags.DEFINE_enum(
    'faiss_index', 'ivf', ['ivf', 'hnsw'],
    'IndexIVFFlat (sqrt(items) lists, tuned nprobe) or IndexHNSWFlat (M=32, '
    'tuned efSearch; builds far slower on few cores).')
_SPHERICAL = flags.DEFINE_bool('spherical', False,
                               'ScaNN tree with spherical k-means.')
_SOAR = flags.DEFINE_float('soar_lambda', None, 'ScaNN SOAR spilling lambda.')


def _data(n, d, clusters, seed):
  """Clustered float32 [n, d] items and a query generator."""
  import numpy as np
  rng = np.random.default_rng(seed)
  centers = rng.standard_normal((clusters, d), np.float32)
  p = 1.0 / np.arange(1, clusters + 1) ** 0.7
  assign = rng.choice(clusters, n, p=p / p.sum())
  items = rng.standard_normal((n, d), np.float32)   # In place: 1M x 64 is big.
  items *= 0.5
  items += centers[assign]
  items *= rng.lognormal(0.0, 0.3, (n, 1)).astype(np.float32)
  spread = float(items[:100_000].std())

  def queries(m, qseed):
    r = np.random.default_rng([seed, qseed])
    noise = r.standard_normal((m, d), np.float32) * (0.5 * spread)
    return items[r.integers(0, n, m)] + noise

  return items, queries


def _qps_single(search, queries, repeats):
  """(median QPS over passes, p50 ms, p99 ms) calling search(q) per query."""
  import numpy as np
  qps, lat = [], []
  for _ in range(repeats):
    start = time.perf_counter()
    for q in queries:
      t = time.perf_counter()
      search(q)
      lat.append(time.perf_counter() - t)
    qps.append(len(queries) / (time.perf_counter() - start))
  lat = np.asarray(lat) * 1e3
  return (round(float(np.median(qps)), 1),
          round(float(np.percentile(lat, 50)), 4),
          round(float(np.percentile(lat, 99)), 4))


def _qps_batched(search, queries, repeats):
  """Median QPS of search(all queries) over passes."""
  import numpy as np
  qps = []
  for _ in range(repeats):
    t = time.perf_counter()
    search(queries)
    qps.append(len(queries) / (time.perf_counter() - t))
  return round(float(np.median(qps)), 1)


def _faiss(items, q_tune, gt_tune, q_eval, gt_eval, k, target, kind, repeats):
  """Builds and tunes a faiss index; returns its figures."""
  import faiss
  import numpy as np
  from recjax.serve.index import recall_at_k
  n, d = items.shape
  t0 = time.perf_counter()
  if kind == 'ivf':
    nlist = max(1, min(n, int(round(np.sqrt(n)))))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist,
                               faiss.METRIC_INNER_PRODUCT)
    index.train(items)
    index.add(items)
    name, steps = 'nprobe', sorted({min(nlist, s) for s in
                                    (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64,
                                     96, 128, 192, 256, 384, 512, 768, 1024,
                                     nlist)})

    def set_param(v):
      index.nprobe = v
  else:
    index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
    index.add(items)
    name, steps = 'ef_search', [16, 24, 32, 48, 64, 96, 128, 192, 256, 384,
                                512, 768, 1024, 2048, 4096]

    def set_param(v, kk=k):
      index.hnsw.efSearch = max(v, kk)   # HNSW needs efSearch >= k.
  train_s = time.perf_counter() - t0
  value, recall = steps[-1], 0.0
  for v in steps:
    set_param(v)
    recall = recall_at_k(index.search(q_tune, k)[1], gt_tune, k)
    logging.info('faiss %s=%d recall@%d=%.4f', name, v, k, recall)
    if recall >= target:
      value = v
      break
  set_param(value)
  build_s = time.perf_counter() - t0
  out = {'faiss_index': kind, f'faiss_{name}': value,
         'faiss_train_s': round(train_s, 3), 'faiss_build_s': round(build_s, 3),
         'faiss_tune_recall': round(recall, 4)}
  out['faiss_recall@10'] = recall_at_k(index.search(q_eval, 10)[1], gt_eval, 10)
  if kind == 'hnsw':
    set_param(value, 100)
  out['faiss_recall@100'] = recall_at_k(index.search(q_eval, 100)[1], gt_eval,
                                        100)
  set_param(value)
  single = _qps_single(lambda q: index.search(q[None], k), q_eval, repeats)
  out['faiss_qps_single'], out['faiss_latency_p50_ms'], \
      out['faiss_latency_p99_ms'] = single
  out['faiss_qps_batched'] = _qps_batched(lambda q: index.search(q, k),
                                          q_eval, repeats)
  return out


def main(argv):
  del argv
  import numpy as np
  # ScaNN's import loads TensorFlow; do it before any clock starts.
  # pylint: disable-next=unused-import
  from scann.scann_ops.py import scann_ops_pybind
  from recjax.serve import index as index_lib
  n, d, k = _ITEMS.value, _DIM.value, _K.value
  kmax = max(k, 100)
  out = {'items': n, 'dim': d, 'k': k, 'queries': _QUERIES.value,
         'target_recall': _TARGET.value}

  t = time.perf_counter()
  items, make_queries = _data(n, d, _CLUSTERS.value, _SEED.value)
  q_tune = make_queries(_TUNE_QUERIES.value, 1)
  q_eval = make_queries(_QUERIES.value, 2)
  out['data_s'] = round(time.perf_counter() - t, 3)
  logging.info('data: %d x %d in %.1fs', n, d, out['data_s'])

  # Exact search: the ground truth, and the baseline.
  exact = index_lib.ExactIndex(items)
  gt_eval, _ = exact.search(q_eval, kmax)
  out['exact_qps_batched'] = _qps_batched(lambda q: exact.search(q, k),
                                          q_eval, 1)
  out['exact_qps_single'], out['exact_latency_p50_ms'], _ = _qps_single(
      lambda q: exact.search_one(q, k), q_eval[:_EXACT_SINGLE.value],
      _REPEATS.value)
  logging.info('exact: %s', {x: y for x, y in out.items() if 'exact' in x})

  # ScaNN, tuned.
  t = time.perf_counter()
  scann, report = index_lib.tune_scann(
      items, target_recall=_TARGET.value, k=k, queries=q_tune,
      num_queries=_TUNE_QUERIES.value, seed=_SEED.value,
      spherical=_SPHERICAL.value, soar_lambda=_SOAR.value)
  out['build_s'] = round(time.perf_counter() - t, 3)
  logging.info('scann tuning: %s', report)
  out.update({'scann_' + x: report[x] for x in
              ('num_leaves', 'leaves_to_search', 'reorder_k', 'reached')})
  out['scann_searcher_build_s'] = report['build_s']
  out['scann_spherical'], out['scann_soar_lambda'] = (_SPHERICAL.value,
                                                      _SOAR.value)
  out['recall@10'] = index_lib.recall_at_k(scann.search(q_eval, 10)[0],
                                           gt_eval, 10)
  out['recall@100'] = index_lib.recall_at_k(scann.search(q_eval, 100)[0],
                                            gt_eval, 100)
  out['qps_single'], out['latency_p50_ms'], out['latency_p99_ms'] = (
      _qps_single(lambda q: scann.search_one(q, k), q_eval, _REPEATS.value))
  out['qps_batched'] = _qps_batched(lambda q: scann.search(q, k), q_eval,
                                    _REPEATS.value)
  logging.info('scann: %s', out)

  if _FAISS.value:
    t = time.perf_counter()
    # faiss's tuning needs exact neighbours of the tuning queries, as ScaNN's
    # did inside tune_scann: count them in its build time too.
    gt_tune, _ = exact.search(q_tune, k)
    gt_s = time.perf_counter() - t
    f = _faiss(items, q_tune, gt_tune, q_eval, gt_eval, k, _TARGET.value,
               _FAISS_INDEX.value, _REPEATS.value)
    f['faiss_build_s'] = round(f['faiss_build_s'] + gt_s, 3)
    out.update(f)
  else:
    out.update({x: None for x in ('faiss_qps_single', 'faiss_qps_batched',
                                  'faiss_recall@10', 'faiss_build_s')})
  out['peak_rss_mb'] = round(
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
  print(json.dumps(out), flush=True)


if __name__ == '__main__':
  app.run(main)
