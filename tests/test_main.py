"""The launcher: its final JSON line, its workdir outputs, eval mode, and
clear failures (bad config values, a NaN loss)."""

import json
import os
import subprocess

import pytest

from helpers import REPO, env_with, main_cmd, run_main

REQUIRED = ('devices', 'mesh', 'steps', 'train_s', 'recall@20', 'ndcg@20',
            'precision@20', 'hr@20', 'mrr@20', 'coverage@20',
            'popularity_recall@20')


def test_train_then_eval(tmp_path):
  out, _ = run_main(tmp_path)
  for k in REQUIRED:
    assert k in out, k
  assert out['steps'] == 60 and out['devices'] >= 1
  assert out['recall@20'] > 0 and out['popularity_recall@20'] > 0
  for name in ('config.json', 'metrics.jsonl', 'checkpoints'):
    assert os.path.exists(tmp_path / name), name
  records = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert any('train/loss' in r for r in records)
  assert any('eval/recall@20' in r for r in records)

  again, _ = run_main(tmp_path, overrides=['--mode=eval'])
  assert again['resumed_from'] == 60
  for k in ('recall@20', 'ndcg@20', 'coverage@20'):
    assert again[k] == out[k], k


def _fails(tmp_path, *overrides):
  proc = subprocess.run(main_cmd(tmp_path, overrides=overrides), cwd=REPO,
                        env=env_with(), capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
  return proc.stderr


def test_bad_config_value_is_named(tmp_path):
  err = _fails(tmp_path, '--config.optimizer.name=adamx')
  assert "optimizer.name='adamx'" in err


def test_nan_loss_stops_with_clear_message(tmp_path):
  err = _fails(tmp_path, '--config.optimizer.learning_rate=1e30',
               '--config.loss.l2=0')
  assert 'non-finite training metrics' in err
  assert 'loss is NaN or infinite; training stopped' in err


@pytest.mark.parametrize('loss,overrides', [
    ('bpr', ['--config.loss.num_negatives=4']),
    ('ccl', ['--config.loss.margin=0.5', '--config.loss.negative_weight=10']),
    ('multinomial', ['--config.train.batch_size=32']),
])
def test_every_loss_trains(tmp_path, loss, overrides):
  out, _ = run_main(tmp_path, overrides=[f'--config.loss.name={loss}',
                                         *overrides])
  records = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  curve = [r['train/loss'] for r in records if 'train/loss' in r]
  assert len(curve) >= 2 and curve[-1] < curve[0], curve
  assert out['recall@20'] > 0


def test_unknown_loss_is_named(tmp_path):
  err = _fails(tmp_path, '--config.loss.name=hinge')
  assert "loss.name='hinge'" in err and 'multinomial' in err
