"""A training process killed with SIGKILL after its first checkpoint and
restarted with the same command ends exactly where an uninterrupted run does."""

import os
import signal
import subprocess
import time

import numpy as np

from helpers import REPO, env_with, main_cmd, run_main

OVERRIDES = ['--config.train.num_steps=400',
             '--config.train.checkpoint_every_steps=10']


def _first_checkpoint(ckpt_dir):
  if not os.path.isdir(ckpt_dir):
    return None
  done = [d for d in os.listdir(ckpt_dir) if d.isdigit()]
  return min(done, key=int) if done else None


def _restore_params(workdir):
  import orbax.checkpoint as ocp
  path = os.path.join(workdir, 'checkpoints')
  mgr = ocp.CheckpointManager(path)
  restored = mgr.restore(mgr.latest_step())
  return restored


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
  ref, _ = run_main(tmp_path / 'ref', overrides=OVERRIDES)

  work = tmp_path / 'killed'
  proc = subprocess.Popen(main_cmd(work, overrides=OVERRIDES), cwd=REPO,
                          env=env_with(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while _first_checkpoint(work / 'checkpoints') is None:
    assert proc.poll() is None, 'run ended before its first checkpoint'
    assert time.time() < deadline, 'no checkpoint within 300 s'
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()

  resumed, _ = run_main(work, overrides=OVERRIDES)
  assert resumed['resumed_from'] is not None
  assert 0 < resumed['resumed_from'] < 400, 'kill came too late to test'
  for k in ('loss', 'recall@20', 'ndcg@20', 'coverage@20', 'params_l2'):
    assert resumed[k] == ref[k], (k, resumed[k], ref[k])
  a, b = _restore_params(tmp_path / 'ref'), _restore_params(work)
  for x, y in zip(jax_leaves(a), jax_leaves(b)):
    np.testing.assert_array_equal(x, y)


def jax_leaves(tree):
  import jax
  return jax.tree.leaves(tree)
