"""SASRec through recjax.main on 1 device and on 8 simulated CPU devices
(mesh data x model = 4 x 2): the same loss and metrics, the item table
sharded by rows over 'model'. BERT4Rec and the session encoder train in
process, and a checkpoint evaluated again gives the same metrics. The
hybrid's late fusion fits its graph weight on the validation split."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO, env_with, main_cmd

# XLA:CPU's LLVM passes dominate these tiny runs (~4 s per step compile);
# both runs use the same flags, so the comparison is unaffected.
FAST_COMPILE = '--xla_backend_optimization_level=0'


def run_main(workdir, config, overrides, devices):
  env = env_with(devices)
  env['XLA_FLAGS'] = f'{env["XLA_FLAGS"]} {FAST_COMPILE}'.strip()
  proc = subprocess.run(main_cmd(workdir, config, overrides), cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1]), proc

METRICS = ('loss', 'ndcg@10', 'hr@10', 'uniform20_hr@10',
           'popularity20_ndcg@10', 'params_l2')


def write_sasrec_file(path, num_users=48, num_items=60, seed=0):
  """Users walk a ring of items with small random skips: learnable order."""
  rng = np.random.default_rng(seed)
  with open(path, 'w') as f:
    for u in range(1, num_users + 1):
      item = int(rng.integers(num_items))
      for _ in range(int(rng.integers(5, 22))):
        f.write(f'{u} {item + 1}\n')
        item = (item + int(rng.integers(1, 3))) % num_items
  return path


def tiny_overrides(data_path, *extra):
  return [f'--config.data.path={data_path}', '--config.data.buckets=()',
          '--config.model.num_blocks=1',
          '--config.model.max_len=16', '--config.model.embed_dim=16',
          '--config.model.ff_dim=16', '--config.model.num_heads=2',
          '--config.loss.num_negatives=8', '--config.train.batch_size=16',
          '--config.train.num_steps=6', '--config.train.log_every=3',
          '--config.train.budget_minutes=0', '--config.train.tensorboard=False',
          '--config.train.progress=False', '--config.train.eval_every_epochs=0',
          '--config.optimizer.warmup_steps=0', '--config.eval.batch_size=16',
          '--config.eval.sampled_negatives=20', '--config.eval.ks=(10,)',
          *extra]


def test_sasrec_one_vs_eight_devices(tmp_path):
  data = write_sasrec_file(tmp_path / 'toy.txt')
  cfg = 'configs/sasrec_ml1m.py'
  one, _ = run_main(tmp_path / 'one', cfg, tiny_overrides(
      data, '--config.mesh.shape=(1,1)'), devices=1)
  eight, _ = run_main(tmp_path / 'eight', cfg, tiny_overrides(
      data, '--config.mesh.shape=(4,2)'), devices=8)
  assert one['devices'] == 1 and eight['devices'] == 8
  assert eight['mesh'] == {'data': 4, 'model': 2}
  assert one['steps'] == 6 and one['selected_on'] == 'valid'
  for k in METRICS:
    np.testing.assert_allclose(eight[k], one[k], rtol=1e-5, atol=1e-6,
                               err_msg=k)
  table = eight['sharding']["['item_embedding']"]
  assert table['spec'] == "('model', None)"
  rows = one['sharding']["['item_embedding']"]['shard_shape'][0]
  assert table['shard_shape'][0] * 2 == rows



def test_sasrec_paper_variant_is_bce_and_trains(tmp_path):
  """configs/sasrec_ml1m.py:paper is SASRec's own recipe (BCE, one
  negative per position, D=50) with SASRec's PyTorch blocks (post-LN,
  dropout on attention weights) and positions weighed alike across
  length buckets; with every window of the histories it trains through
  the launcher."""
  sys.path.insert(0, os.path.join(REPO, 'configs'))
  import sasrec_ml1m  # pylint: disable=g-import-not-at-top
  c = sasrec_ml1m.get_config('paper')
  assert (c.loss.name, c.loss.num_negatives, c.loss.negatives) == (
      'bce', 1, 'position')
  assert c.loss.exclude_seen and not sasrec_ml1m.get_config().loss.exclude_seen
  assert c.model.embed_dim == 50 and c.optimizer.learning_rate == 1e-3
  assert (c.model.layout, c.model.attention_dropout, c.loss.average,
          c.optimizer.b2) == ('post_ln', 'weights', 'epoch', 0.98)
  assert sasrec_ml1m.get_config().loss.name == 'full_softmax'
  # 'uniform100' is 'paper' with its loss alone swapped for sampled softmax
  # over 16 uniform negatives per position.
  u = sasrec_ml1m.get_config('uniform100')
  assert (u.loss.name, u.loss.num_negatives, u.loss.negatives) == (
      'sampled_softmax', 16, 'position')
  u.loss.name, u.loss.num_negatives = c.loss.name, c.loss.num_negatives
  assert u.to_dict() == c.to_dict()
  with pytest.raises(ValueError, match='sasrec_ml1m.py:bpr'):
    sasrec_ml1m.get_config('bpr')
  data = write_sasrec_file(tmp_path / 'toy.txt')
  r, _ = run_main(tmp_path / 'paper', 'configs/sasrec_ml1m.py:paper',
                  tiny_overrides(
                      data, '--config.eval.select_metric=uniform20_ndcg@10',
                      '--config.data.train_windows=all'),
                  devices=1)
  assert r['steps'] == 6 and np.isfinite(r['loss'])
  assert 0.0 <= r['ndcg@10'] <= 1.0
  # A selection metric validation does not compute fails before training.
  bad = subprocess.run(main_cmd(
      tmp_path / 'bad', 'configs/sasrec_ml1m.py:paper',
      tiny_overrides(data, '--config.eval.select_metric=uniform20_ndcg@7')),
      cwd=REPO, env=env_with(1), capture_output=True, text=True, timeout=600)
  assert bad.returncode != 0
  assert "eval.select_metric='uniform20_ndcg@7'" in bad.stderr
  assert not (tmp_path / 'bad' / 'checkpoints').exists()


# BERT4Rec on a toy SASRec file (train, then evaluate the checkpoint again)
# and the session encoder on a tiny marketplace, in one fresh process.
_IN_PROCESS = """
import json, sys
sys.path.insert(0, 'configs')
import session_marketplace
from recjax.data.synthetic import MarketplaceConfig
from recjax.train import seq_trainer

def tiny(name):
  c = session_marketplace.get_config()
  c.data.buckets = ()
  c.model.update(dict(name=name, max_len=12, embed_dim=16, ff_dim=16,
                      num_blocks=1, num_heads=2))
  c.loss.num_negatives = 16
  c.train.update(batch_size=16, num_steps=8, log_every=4, tensorboard=False,
                 progress=False)
  c.eval.update(batch_size=32, sampled_negatives=20, ks=(10,))
  return c

tmp, data = sys.argv[1], sys.argv[2]
c = tiny('bert4rec')
c.loss.name = 'full_softmax'
c.data.update(name='sasrec', collapse_repeats=False, path=data)
out = [seq_trainer.train_and_evaluate(c, tmp + '/b4r')]
out.append(seq_trainer.train_and_evaluate(c, tmp + '/b4r', 'eval'))
c = tiny('session')
c.model.update(dict(item_bias=True, item_encoder='multimodal',
                    content_parts=('image', 'attributes')))
m = MarketplaceConfig.tiny()
c.data.marketplace = {f: getattr(m, f) for f in (
    'num_users', 'num_items', 'num_sellers', 'num_events', 'taxonomy',
    'days', 'num_locations')}
c.data.marketplace['cold_item_frac'] = 0.15     # 30 cold items: > K = 10
out.append(seq_trainer.train_and_evaluate(c, tmp + '/session'))
print(json.dumps(out))
"""


def test_bert4rec_and_session_train(tmp_path):
  data = write_sasrec_file(tmp_path / 'toy.txt')
  env = env_with(1)
  env['XLA_FLAGS'] = f'{env["XLA_FLAGS"]} {FAST_COMPILE}'.strip()
  proc = subprocess.run([sys.executable, '-c', _IN_PROCESS, str(tmp_path),
                         str(data)], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  b4r, again, session = json.loads(proc.stdout.strip().splitlines()[-1])
  assert b4r['model'] == 'bert4rec' and b4r['steps'] == 8
  assert np.isfinite(b4r['loss']) and 0 <= b4r['ndcg@10'] <= 1
  assert 'popularity20_hr@10' in b4r
  assert again['resumed_from'] == 8 and again['ndcg@10'] == b4r['ndcg@10']
  assert session['model'] == 'session' and session['selected_on'] is None
  assert session['data'] == 'marketplace' and np.isfinite(session['loss'])
  assert "['seller_embedding']" in session['sharding']
  assert "['item_bias']" in session['sharding']
  # Cold items ranked among all items and among the cold ones, beside the
  # leaf-popularity baseline.
  for k in ('cold_item_recall@10', 'cold_item_within_cold_recall@10',
            'cold_item_within_cold_popularity_recall@10'):
    assert 0 <= session[k] <= 1, k


def test_hybrid_score_fusion_fits_the_graph_weight_on_validation(tmp_path):
  """configs/hybrid_ml1m.py on a toy file: LightGCN trains first, the
  sequence half alone, then the graph logit's weight is fitted on the
  validation split; the run reports the fused model and both halves."""
  from recjax.train.hybrid import WEIGHT_GRID
  data = write_sasrec_file(tmp_path / 'toy.txt')
  out, _ = run_main(tmp_path / 'hyb', 'configs/hybrid_ml1m.py', tiny_overrides(
      data, '--config.graph.train.num_epochs=2',
      '--config.graph.train.batch_size=128', '--config.graph.model.embed_dim=8',
      '--config.graph.loss.num_negatives=32',
      '--config.graph.train.tensorboard=False'), devices=1)
  assert out['model'] == 'hybrid' and out['selected_on'] == 'valid'
  table = {float(c): v for c, v in json.loads(out['graph_weight_fit']).items()}
  assert sorted(table) == sorted(WEIGHT_GRID)
  c = out['graph_weight_multiple']
  assert table[c] == max(table.values())
  for k in ('ndcg@10', 'hr@10'):
    assert 0 <= out[f'base_{k}'] <= 1 and 0 <= out[f'graph_{k}'] <= 1
  if c == 0:       # no graph weight: the fused model is its sequence half
    assert out['ndcg@10'] == out['base_ndcg@10']
