"""Load test of the real HTTP server: latency percentiles under concurrency.

  python tools/bench_serving.py --bundle=DIR --concurrency=2 --seconds=60
  python tools/bench_serving.py --build_items=1000000 --bundle=DIR \
      --concurrency=2 --seconds=60 [--sweep=1,2,4,8]

Starts `python -m recjax.serve --bundle=DIR` as a subprocess on a free
port, waits for /healthz, then C client threads (persistent HTTP
connections) POST /v1/recommend for random known users (and a share of
unknown users, the cold-start path) for S seconds; every request goes
through all three stages (10,000 -> 500 -> k). With --build_items=N it
first builds a bundle of an N-item synthetic marketplace at --bundle:
LightGCN for --build_epochs epochs, the ranker, ScaNN tuned to 0.95 recall.
--sweep also runs each listed concurrency and reports the highest whose p99
stays within --p99_target_ms. The last stdout line is one JSON object: qps,
p50_ms, p95_ms, p99_ms, errors (non-2xx or failed), plus the sweep.
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_BUNDLE = flags.DEFINE_string('bundle', None, 'Bundle directory.')
_CONC = flags.DEFINE_integer('concurrency', 2, 'Concurrent clients.')
_SECONDS = flags.DEFINE_float('seconds', 30.0, 'Seconds per load level.')
_K = flags.DEFINE_integer('k', 50, 'k per request.')
_COLD = flags.DEFINE_float('cold_share', 0.05,
                           'Share of requests for unknown users.')
_SWEEP = flags.DEFINE_list('sweep', [], 'Extra concurrency levels.')
_TARGET = flags.DEFINE_float('p99_target_ms', 50.0, 'p99 target for sweep.')
_BUILD = flags.DEFINE_integer('build_items', 0, 'Build a bundle of an '
                              'N-item synthetic marketplace first.')
_BUILD_USERS = flags.DEFINE_integer('build_users', 200_000, 'Users then.')
_BUILD_EVENTS = flags.DEFINE_integer('build_events', 4_000_000, 'Events.')
_BUILD_EPOCHS = flags.DEFINE_integer('build_epochs', 1, 'LightGCN epochs.')
_RANKER_STEPS = flags.DEFINE_integer('ranker_steps', 600, 'Ranker steps.')
flags.mark_flag_as_required('bundle')


def build(path: str) -> dict:
  """Trains and exports a bundle of an N-item marketplace at `path`."""
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), 'configs'))
  import quickstart
  from recjax.serve import export
  from recjax.train import trainer
  n = _BUILD.value
  c = quickstart.get_config()
  c.data.marketplace.num_items = n
  c.data.marketplace.num_users = _BUILD_USERS.value
  c.data.marketplace.num_sellers = max(150, n // 20)
  c.data.marketplace.num_events = _BUILD_EVENTS.value
  c.train.num_epochs = _BUILD_EPOCHS.value
  c.train.batch_size = 8192
  c.train.progress = False
  c.train.checkpoint_every_steps = 10**9
  c.eval.final = False           # full ranking of 1M items: not needed
  c.serve.ranker_steps = _RANKER_STEPS.value
  c.serve.index_kind = 'scann' if n >= 20_000 else 'exact'
  work = path.rstrip('/') + '.work'
  t = time.perf_counter()
  res = trainer.train_and_evaluate(c, work)
  summary = export.export(c, work, path)
  return dict(build_s=round(time.perf_counter() - t, 1),
              build_recall20=res.get('recall@20'),
              index=summary['index'].get('report'))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def load(url: str, users: list, conc: int, seconds: float, k: int,
         cold_share: float) -> dict:
  """C threads POSTing for `seconds`; latency percentiles and errors."""
  import numpy as np
  import requests
  lat, errors, lock = [], [0], threading.Lock()
  stop = time.perf_counter() + seconds

  def worker(seed):
    rng = np.random.default_rng(seed)
    s = requests.Session()
    mine, bad = [], 0
    while time.perf_counter() < stop:
      if rng.random() < cold_share:
        body = dict(user_id=f'new-{rng.integers(1 << 30)}', k=k,
                    context=dict(device='mobile'))
      else:
        body = dict(user_id=users[rng.integers(len(users))], k=k,
                    context=dict(device='desktop', hour=int(rng.integers(24))))
      t = time.perf_counter()
      try:
        r = s.post(url + '/v1/recommend', json=body, timeout=10)
        ok = r.status_code == 200
      except requests.RequestException:
        ok = False
      mine.append(time.perf_counter() - t)
      bad += not ok
    with lock:
      lat.extend(mine)
      errors[0] += bad

  t0 = time.perf_counter()
  threads = [threading.Thread(target=worker, args=(i,)) for i in range(conc)]
  for th in threads:
    th.start()
  for th in threads:
    th.join()
  wall = time.perf_counter() - t0
  ms = np.asarray(lat) * 1e3
  pct = lambda q: round(float(np.percentile(ms, q)), 2) if len(ms) else None
  return dict(concurrency=conc, requests=len(ms),
              qps=round(len(ms) / wall, 1), p50_ms=pct(50), p95_ms=pct(95),
              p99_ms=pct(99), errors=errors[0])


def main(argv):
  del argv
  import requests
  out = {}
  if _BUILD.value:
    out.update(build(_BUNDLE.value))
  port = _free_port()
  url = f'http://127.0.0.1:{port}'
  server = subprocess.Popen(
      [sys.executable, '-m', 'recjax.serve', f'--bundle={_BUNDLE.value}',
       f'--port={port}'], stdout=subprocess.DEVNULL)
  try:
    t = time.perf_counter()
    while True:
      if server.poll() is not None:
        sys.exit(f'server exited with status {server.returncode}')
      try:
        health = requests.get(url + '/healthz', timeout=1).json()
        break
      except requests.RequestException:
        time.sleep(0.5)
      if time.perf_counter() - t > 600:
        sys.exit('server did not come up in 10 minutes')
    out['startup_s'] = round(time.perf_counter() - t, 1)
    out['items'] = health['dims']['num_items']
    from recjax.serve.bundle import load_bundle
    vocab = load_bundle(_BUNDLE.value).vocabs['user']
    users = [vocab.raw(i) for i in range(0, len(vocab),
                                         max(1, len(vocab) // 5000))]
    load(url, users, _CONC.value, min(3.0, _SECONDS.value), _K.value,
         _COLD.value)                                     # warm caches
    main_run = load(url, users, _CONC.value, _SECONDS.value, _K.value,
                    _COLD.value)
    print(json.dumps(main_run), flush=True)
    sweep = []
    for c in sorted({int(x) for x in _SWEEP.value}):
      r = main_run if c == _CONC.value else load(
          url, users, c, _SECONDS.value, _K.value, _COLD.value)
      print(json.dumps(r), flush=True)
      sweep.append(r)
    ok = [r['concurrency'] for r in sweep + [main_run]
          if r['p99_ms'] is not None and r['p99_ms'] <= _TARGET.value
          and r['errors'] == 0]
    metrics = requests.get(url + '/metrics', timeout=5).text
    stage_lines = [l for l in metrics.splitlines()
                   if l.startswith('recjax_stage_seconds_sum')]
    out.update(main_run)
    out.update(sweep=sweep, max_concurrency_p99_ok=max(ok) if ok else None,
               stage_seconds_sum=stage_lines)
  finally:
    server.terminate()
    server.wait(timeout=30)
  print(json.dumps(out), flush=True)


if __name__ == '__main__':
  app.run(main)
