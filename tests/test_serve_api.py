"""Serving: bundle export/validation and the HTTP API contract.

One tiny marketplace run is trained, exported through
`python -m recjax.main --mode=export`, and served in-process through
FastAPI's TestClient (the same app uvicorn runs).
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO

fastapi_testclient = pytest.importorskip('fastapi.testclient')


def _serve_config():
  sys.path.insert(0, os.path.join(REPO, 'configs'))
  import tiny  # pylint: disable=g-import-not-at-top
  c = tiny.get_config()
  c.serve.ranker_steps = 40
  c.serve.ranker.buckets = (64, 256)
  c.serve.history_len = 20
  return c


@pytest.fixture(scope='module')
def bundle_dir(tmp_path_factory):
  from recjax.train import trainer
  work = str(tmp_path_factory.mktemp('serve') / 'run')
  trainer.train_and_evaluate(_serve_config(), work)
  out = os.path.join(work, 'bundle')
  overrides = ['--config.serve.ranker_steps=40',
               '--config.serve.listwise_steps=30',
               '--config.serve.ranker.buckets=(64, 256)',
               '--config.serve.history_len=20']
  r = subprocess.run(
      [sys.executable, '-m', 'recjax.main',
       f'--config={REPO}/configs/tiny.py', f'--workdir={work}',
       '--mode=export', f'--bundle={out}'] + overrides,
      capture_output=True, text=True, cwd=REPO, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  summary = json.loads(r.stdout.strip().splitlines()[-1])
  assert summary['bundle'] == out
  return out


@pytest.fixture(scope='module')
def rec(bundle_dir):
  from recjax.serve.recommender import Recommender
  r = Recommender.load(bundle_dir, num_candidates=200, rank_top=100)
  r.warmup()
  return r


@pytest.fixture(scope='module')
def client(rec):
  from recjax.serve.app import create_app
  return fastapi_testclient.TestClient(create_app(rec))


# ---------------------------------------------------------------- bundle

def test_bundle_manifest_and_checks(bundle_dir, tmp_path):
  from recjax.serve import bundle as B
  b = B.load_bundle(bundle_dir, verify_hashes=True)
  m = b.manifest
  assert m['format'] == B.FORMAT and m['dims']['embed_dim'] == 16
  assert m['models']['retrieval']['name'] == 'lightgcn'
  assert 'ranker/ranker.json' in m['files'] or any(
      f.startswith('ranker/') for f in m['files'])
  with pytest.raises(B.BundleError, match='manifest mismatch'):
    B.load_bundle(bundle_dir, expect={'data_fingerprint': 'other'})
  # Truncated file, missing file, missing manifest: each refused by name.
  for breakage, pattern in (('truncate', 'bytes'), ('remove', 'missing'),
                            ('manifest', 'manifest.json')):
    copy = str(tmp_path / breakage)
    shutil.copytree(bundle_dir, copy)
    if breakage == 'truncate':
      with open(os.path.join(copy, 'item_embeddings.npy'), 'r+b') as f:
        f.truncate(100)
    elif breakage == 'remove':
      os.remove(os.path.join(copy, 'items.npz'))
    else:
      os.remove(os.path.join(copy, 'manifest.json'))
    with pytest.raises(B.BundleError, match=pattern):
      B.load_bundle(copy)


def test_bundle_write_is_atomic(tmp_path, bundle_dir):
  from recjax.serve import bundle as B
  b = B.load_bundle(bundle_dir)

  def boom(path):
    raise RuntimeError('disk full')

  out = str(tmp_path / 'new')
  kw = dict(models={}, user_emb=b.user_emb, item_emb=b.item_emb,
            items=b.items, history=b.history,
            context_popularity=b.context_popularity, vocabs=b.vocabs,
            index_config=b.index_config, data_fingerprint='x')
  with pytest.raises(RuntimeError):
    B.write_bundle(out, extra_dirs={'ranker': boom}, **kw)
  assert os.listdir(tmp_path) == []          # nothing half-written
  B.write_bundle(out, **kw)
  with pytest.raises(B.BundleError, match='already exists'):
    B.write_bundle(out, **kw)


def test_server_refuses_bad_bundle(tmp_path):
  r = subprocess.run([sys.executable, '-m', 'recjax.serve',
                      f'--bundle={tmp_path}/nope'], capture_output=True,
                     text=True, cwd=REPO, timeout=300)
  assert r.returncode == 2 and 'error:' in r.stderr
  assert 'Traceback' not in r.stderr


# ---------------------------------------------------------------- pipeline

def test_recommend_known_user(rec):
  b = rec.bundle
  u = int(np.argmax(np.diff(b.history['seen_indptr'])))
  out = rec.recommend(u, k=10, exclude=[3, 5])
  items = [x['item_id'] for x in out['items']]
  assert out['path'] == 'personal' and len(items) == 10
  # Trained at export; on the request path when it beat the served order.
  lw = rec.bundle.manifest['models']['ranker']['metrics']['listwise']
  assert (rec.listwise is not None) == lw['shipped']
  assert len(set(items)) == 10
  assert not set(items) & (set(b.seen(u).tolist()) | {3, 5})
  sellers = [x['seller'] for x in out['items']]
  assert max(np.bincount(sellers)) <= rec.rerank_config.max_per_seller
  assert out['stages']['retrieved'] >= out['stages']['ranked'] >= 10
  assert all(isinstance(x['reasons'], list) for x in out['items'])
  assert set(out['timings_ms']) == {'retrieval', 'ranking', 'listwise',
                                    'rerank', 'total'}


def test_cold_start_paths(rec):
  a = rec.recommend('somebody-new', k=5)
  assert a['path'] == 'cold_start' and len(a['items']) == 5
  b = rec.recommend('somebody-new', k=5, recent_items=[1, 2, 3])
  assert b['path'] == 'cold_start' and b['stages']['history'] == 3
  assert not {1, 2, 3} & {x['item_id'] for x in b['items']}


def test_seller_personalised_and_seller_recommendations(rec):
  b = rec.bundle
  u = int(np.argmax(np.diff(b.history['seen_indptr'])))
  seller = int(np.argmax(np.bincount(rec.meta.seller)))
  raw = b.vocabs['seller'].raw(seller)
  out = rec.recommend(u, k=5, seller_id=raw)
  assert out['path'] == 'personal_seller' and out['items']
  assert {x['seller'] for x in out['items']} == {seller}
  # The seller's best items for this user, by the user's vector.
  mine = np.flatnonzero((rec.meta.seller == seller) & rec.meta.in_stock)
  mine = mine[~np.isin(mine, b.seen(u))]
  assert len(out['items']) == min(5, len(mine))
  with pytest.raises(ValueError, match='unknown seller_id'):
    rec.recommend(u, k=5, seller_id='no-such-seller')
  s = rec.recommend_sellers(u, k=4)
  assert s['path'] == 'personal' and len(s['sellers']) == 4
  emb, pop = rec.sellers()
  from recjax.train import sellers as sellers_lib
  h = b.history
  own = np.bincount(rec.meta.seller[h['item'][h['indptr'][u]:
                                              h['indptr'][u + 1]]],
                    minlength=len(pop))
  score = sellers_lib.seller_scores((emb @ b.user_emb[u])[None],
                                    own[None].astype(float), pop)[0]
  best = np.argsort(-score, kind='stable')[:4]
  assert [x['seller_id'] for x in s['sellers']] == [
      b.vocabs['seller'].raw(int(i)) for i in best]
  cold = rec.recommend_sellers('somebody-new', k=3)
  assert cold['path'] == 'popular'
  assert cold['sellers'][0]['seller_id'] == b.vocabs['seller'].raw(
      int(np.argmax(pop)))


# ---------------------------------------------------------------- HTTP

def test_api_good_requests(client):
  r = client.post('/v1/recommend', json={
      'user_id': 1, 'k': 7, 'context': {'device': 'mobile', 'hour': 20},
      'weights': {'click': 1.0, 'purchase': 3.0},
      'rerank': {'max_per_seller': 1}})
  assert r.status_code == 200, r.text
  body = r.json()
  assert len(body['items']) == 7
  assert len({x['seller'] for x in body['items']}) == 7
  assert client.post('/v1/recommend', json={'user_id': 'new-person'}
                     ).json()['path'] == 'cold_start'
  assert client.get('/healthz').json()['status'] == 'ok'
  sim = client.get('/v1/similar/4?k=5')
  assert sim.status_code == 200 and len(sim.json()['items']) == 5
  assert 4 not in [x['item_id'] for x in sim.json()['items']]
  metrics = client.get('/metrics').text
  assert 'recjax_requests_total' in metrics
  assert 'recjax_stage_seconds' in metrics
  assert '/v1/recommend' in client.get('/openapi.json').json()['paths']
  r = client.post('/v1/recommend', json={'user_id': 1, 'k': 3,
                                         'seller_id': 0})
  assert r.status_code == 200, r.text
  assert {x['seller'] for x in r.json()['items']} <= {0}
  r = client.get('/v1/sellers/recommend?user_id=1&k=3')
  assert r.status_code == 200 and len(r.json()['sellers']) == 3
  for bad in ('/v1/sellers/recommend?k=3', '/v1/sellers/recommend?user_id=1'
              '&k=0', '/v1/sellers/recommend?user_id=1&k=x'):
    assert client.get(bad).status_code == 422, bad
  r = client.post('/v1/recommend', json={'user_id': 1, 'seller_id': 'nope'})
  assert r.status_code == 422 and 'seller_id' in r.json()['detail']


@pytest.mark.parametrize('body', [
    {'user_id': 1, 'k': 0},
    {'user_id': 1, 'k': -3},
    {'user_id': 1, 'k': 10**12},
    {'user_id': 1, 'k': 'ten'},
    {'user_id': [1, 2]},
    {'user_id': None},
    {'k': 5},
    {'user_id': 1, 'surprise': True},
    {'user_id': 1, 'context': {'device': 'toaster'}},
    {'user_id': 1, 'context': {'hour': 25}},
    {'user_id': 1, 'rerank': {'max_per_seller': -1}},
    {'user_id': 1, 'rerank': {'no_such_rule': 1}},
    {'user_id': 1, 'weights': {'dwell': 1.0}},
    {'user_id': 1, 'exclude': 'all'},
])
def test_api_bad_requests_are_4xx(client, body):
  r = client.post('/v1/recommend', json=body)
  assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
  assert r.json()['detail']


def test_api_malformed_json_and_unknown_item(client):
  r = client.post('/v1/recommend', content=b'{"user_id": 1,',
                  headers={'content-type': 'application/json'})
  assert r.status_code == 422
  assert client.get('/v1/similar/no-such-item').status_code == 404
  assert client.get('/v1/similar/4?k=0').status_code == 422
  assert client.get('/v1/similar/4?k=1000').status_code == 422


def test_api_key(rec):
  from recjax.serve.app import create_app
  c = fastapi_testclient.TestClient(create_app(rec, api_key='s3cret'))
  assert c.post('/v1/recommend', json={'user_id': 1}).status_code == 401
  assert c.post('/v1/recommend', json={'user_id': 1},
                headers={'X-API-Key': 'wrong'}).status_code == 401
  assert c.post('/v1/recommend', json={'user_id': 1},
                headers={'X-API-Key': 's3cret'}).status_code == 200
  assert c.get('/healthz').status_code == 200     # probes need no key
