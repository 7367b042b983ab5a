"""Multi-process training: 2 local processes x 2 CPU devices (gloo) give the
metrics of 1 process with 4 simulated devices; bad launch settings fail
with clear errors."""

import json
import os
import subprocess
import sys

import pytest

from recjax.train import distributed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ['--config.train.num_steps=20', '--config.train.checkpoint_every_steps=10']


def _last_json(text: str) -> dict:
  return json.loads(text.strip().splitlines()[-1])


def test_two_processes_match_one_process_with_four_devices(tmp_path):
  env = dict(os.environ, PYTHON=sys.executable, WORKDIR=str(tmp_path / 'mh'))
  env.pop('XLA_FLAGS', None)
  multi = subprocess.run(
      ['bash', os.path.join(REPO, 'launch', 'local_multihost.sh'), '2',
       'configs/tiny.py', *FLAGS], cwd=REPO, env=env, capture_output=True,
      text=True, timeout=600)
  assert multi.returncode == 0, multi.stderr[-3000:]
  env1 = dict(os.environ, JAX_PLATFORMS='cpu',
              XLA_FLAGS='--xla_force_host_platform_device_count=4')
  single = subprocess.run(
      [sys.executable, '-m', 'recjax.main', '--config=configs/tiny.py',
       f'--workdir={tmp_path / "single"}', *FLAGS], cwd=REPO, env=env1,
      capture_output=True, text=True, timeout=600)
  assert single.returncode == 0, single.stderr[-3000:]
  a, b = _last_json(single.stdout), _last_json(multi.stdout)
  assert a['devices'] == b['devices'] == 4
  assert a['steps'] == b['steps'] == 20
  # Both processes checkpointed into the shared workdir.
  assert sorted(os.listdir(tmp_path / 'mh' / 'checkpoints')) == ['10', '20']
  compared = [k for k, v in a.items() if isinstance(v, float)
              and not k.endswith('_s') and k != 'step_s']
  assert 'recall@20' in compared and 'loss' in compared
  for k in compared:
    assert b[k] == pytest.approx(a[k], rel=1e-2, abs=1e-6), k


@pytest.mark.parametrize('args,match', [
    (('127.0.0.1:1234', None, 0), 'must all be set'),
    (('127.0.0.1:1234', 2, 2), 'outside'),
    (('localhost', 2, 0), 'host:port'),
])
def test_initialize_rejects_incomplete_settings(args, match, monkeypatch):
  for k in ('RECJAX_COORDINATOR', 'RECJAX_NUM_PROCESSES', 'RECJAX_PROCESS_ID',
            'RECJAX_DISTRIBUTED'):
    monkeypatch.delenv(k, raising=False)
  with pytest.raises(ValueError, match=match):
    distributed.initialize(*args)


def test_initialize_without_settings_is_single_process(monkeypatch):
  for k in ('RECJAX_COORDINATOR', 'RECJAX_NUM_PROCESSES', 'RECJAX_PROCESS_ID',
            'RECJAX_DISTRIBUTED'):
    monkeypatch.delenv(k, raising=False)
  assert distributed.initialize() is False


def test_launcher_rejects_bad_arguments():
  script = os.path.join(REPO, 'launch', 'local_multihost.sh')
  bad_n = subprocess.run(['bash', script, 'two', 'configs/tiny.py'],
                         cwd=REPO, capture_output=True, text=True)
  assert bad_n.returncode == 2 and 'positive integer' in bad_n.stderr
  bad_cfg = subprocess.run(['bash', script, '2', 'configs/nope.py'],
                           cwd=REPO, capture_output=True, text=True)
  assert bad_cfg.returncode == 2 and 'does not exist' in bad_cfg.stderr


def test_tpu_launcher_dry_run_and_errors():
  script = os.path.join(REPO, 'launch', 'tpu_vm.sh')
  dry = subprocess.run(
      ['bash', script, '--name=rj', '--zone=us-east5-a',
       '--accelerator=v5p-32', '--config=configs/quickstart.py',
       '--workdir=gs://bucket/run', '--create', '--delete', '--dry_run',
       '--', '--config.train.num_epochs=2'],
      cwd=REPO, capture_output=True, text=True)
  assert dry.returncode == 0, dry.stderr
  lines = dry.stdout.splitlines()
  assert lines[0].startswith('gcloud compute tpus tpu-vm create rj')
  assert '--accelerator-type=v5p-32' in lines[0]
  ssh = next(l for l in lines if ' ssh ' in l)
  assert '--worker=all' in ssh and 'RECJAX_DISTRIBUTED=1' in ssh
  assert 'num_epochs=2' in ssh and lines[-1].startswith(
      'gcloud compute tpus tpu-vm delete rj')
  missing = subprocess.run(['bash', script, '--zone=z', '--config=c.py',
                            '--workdir=w'], cwd=REPO, capture_output=True,
                           text=True)
  assert missing.returncode == 2 and '--name is required' in missing.stderr
  assert subprocess.run(['bash', '-n', os.path.join(
      REPO, 'launch', 'slurm_gpu.sbatch')]).returncode == 0
