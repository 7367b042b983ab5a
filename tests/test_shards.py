"""Partitioning (METIS, streaming LDG, hash), graph shards on disk and the
shard training path, including a resume after SIGKILL mid-epoch."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from recjax.data import registry
from recjax.data.schema import DataError
from recjax.graph import partition as P
from recjax.graph import shards
from recjax.graph.nodes import NodeGraph, node_features, training_pairs
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'configs'))
import tiny  # noqa: E402  pylint: disable=g-import-not-at-top


def _two_communities(n=40, seed=0):
  """Two dense random communities joined by 3 edges."""
  rng = np.random.default_rng(seed)
  half = n // 2
  src, dst = [], []
  for lo in (0, half):
    a = rng.integers(lo, lo + half, 300)
    b = rng.integers(lo, lo + half, 300)
    src.append(a), dst.append(b)
  src.append(np.array([0, 1, 2])), dst.append(np.array([half, half + 1,
                                                        half + 2]))
  return P.undirected_csr(np.concatenate(src), np.concatenate(dst), n)


def test_undirected_csr_is_symmetric_and_simple():
  ip, ix = P.undirected_csr([0, 0, 1, 2, 2], [1, 1, 0, 2, 3], 4)
  pairs = {(r, int(c)) for r in range(4) for c in ix[ip[r]:ip[r + 1]]}
  assert pairs == {(0, 1), (1, 0), (2, 3), (3, 2)}


@pytest.mark.parametrize('method', P.METHODS)
def test_partitioners_cover_every_node_and_report(method):
  ip, ix = _two_communities()
  part = P.partition(ip, ix, 2, method)
  assert part.parts.shape == (40,) and set(np.unique(part.parts)) == {0, 1}
  r = part.report(ip, ix)
  assert r['num_edges'] == len(ix) // 2 and 0 <= r['edge_cut'] <= 1
  assert len(r['parts']) == 2
  assert sum(p['nodes'] for p in r['parts']) == 40
  # Halo of a part: outside nodes adjacent to it, as counted in the report.
  for p in range(2):
    halo = part.halo(ip, ix, p)
    assert (part.parts[halo] != p).all()
    assert len(halo) == r['parts'][p]['halo_nodes']


def test_metis_and_ldg_find_the_communities_hash_does_not():
  ip, ix = _two_communities()
  cut = {m: P.partition(ip, ix, 2, m).report(ip, ix)['edge_cut']
         for m in P.METHODS}
  assert cut['metis'] < 0.02            # only the 3 bridges
  assert cut['ldg'] < cut['hash'] and cut['hash'] > 0.3


def test_partition_rejects_bad_arguments():
  ip, ix = _two_communities()
  with pytest.raises(ValueError, match='not one of'):
    P.partition(ip, ix, 2, 'spectral')
  with pytest.raises(ValueError, match='must be in'):
    P.partition(ip, ix, 0, 'metis')


@pytest.fixture(scope='module')
def tiny_shards(tmp_path_factory):
  ds = registry.load_dataset(tiny.get_config().data)
  out = str(tmp_path_factory.mktemp('shards') / 'sh')
  manifest, part = shards.write_dataset_shards(out, ds, 4, 'metis')
  return out, ds, manifest, part


def test_shards_round_trip_rows_features_and_pairs(tiny_shards):
  out, ds, manifest, part = tiny_shards
  g = NodeGraph.from_dataset(ds)
  feats = node_features(g, ds)
  users, items, _ = training_pairs(ds, g.event_types)
  assert sum(p['pairs'] for p in manifest['parts']) == len(users)
  assert sum(p['nodes'] for p in manifest['parts']) == g.num_nodes
  local = shards.LocalGraph.load(out, [1, 3])
  own = np.flatnonzero(np.isin(part.parts, [1, 3]))
  np.testing.assert_array_equal(local.own, own)
  deg = np.diff(local.graph.indptr)
  np.testing.assert_array_equal(deg[own], g.degrees()[own])
  assert deg.sum() == deg[own].sum()            # other rows are empty
  for v in own[::7]:
    a = slice(g.indptr[v], g.indptr[v + 1])
    b = slice(local.graph.indptr[v], local.graph.indptr[v + 1])
    for f in ('dst', 'rel', 'time'):
      np.testing.assert_array_equal(getattr(g, f)[a],
                                    getattr(local.graph, f)[b])
  assert not np.isin(local.halo, own).any()
  for f in ('known', 'item_seller', 'item_category', 'price_bucket', 'text'):
    np.testing.assert_array_equal(local.feats[f], feats[f], err_msg=f)


def test_pair_stream_is_seeded_per_epoch_and_skips(tiny_shards):
  out, _, manifest, _ = tiny_shards
  steps = shards.steps_per_epoch(manifest, 2, 16)
  read = lambda epoch, skip=0: [b['user'] for b in shards.pair_batches(
      out, [0, 2], 16, seed=3, epoch=epoch, steps=steps,
      skip=skip).as_numpy_iterator()]
  a, again, other, resumed = read(0), read(0), read(1), read(0, skip=5)
  assert len(a) == steps and all(x.shape == (16,) for x in a)
  assert all((x == y).all() for x, y in zip(a, again))
  assert any((x != y).any() for x, y in zip(a, other))
  assert len(resumed) == steps - 5
  assert all((x == y).all() for x, y in zip(a[5:], resumed))
  # An epoch reads each of these parts' pairs at most once, and only theirs.
  both = [b for b in shards.pair_batches(out, [0, 2], 16, seed=3, epoch=0,
                                         steps=steps).as_numpy_iterator()]
  users = np.concatenate([b['user'] for b in both])
  items = np.concatenate([b['item'] for b in both])
  keys = users.astype(np.int64) * 10**6 + items
  assert len(np.unique(keys)) == len(keys) == steps * 16
  part = tiny_shards[3].parts
  g_users = NodeGraph.from_dataset(tiny_shards[1]).ids('user', users)
  assert np.isin(part[g_users], [0, 2]).all()


def test_pair_files_hold_exactly_the_training_pairs(tiny_shards):
  out, ds, manifest, _ = tiny_shards
  total = sum(p['pairs'] for p in manifest['parts'])
  got = next(shards.pair_batches(out, range(4), total, seed=0, epoch=0,
                                 steps=1).as_numpy_iterator())
  users, items, times = training_pairs(ds, NodeGraph.from_dataset(
      ds).event_types)
  want = sorted(zip(users.tolist(), items.tolist(), times.tolist()))
  assert sorted(zip(got['user'].tolist(), got['item'].tolist(),
                    got['time'].tolist())) == want


def test_parts_of_process_split_every_part_once():
  got = [shards.parts_of_process(8, i, 3) for i in range(3)]
  assert sorted(sum(got, [])) == list(range(8))
  with pytest.raises(ValueError, match='at least as many parts'):
    shards.parts_of_process(2, 0, 4)


def test_manifest_problems_are_named(tiny_shards, tmp_path):
  import shutil
  out = str(tmp_path / 'copy')
  shutil.copytree(tiny_shards[0], out)
  m = shards.load_manifest(out, verify=True)
  victim = os.path.join(out, m['parts'][2]['files'][0]['path'])
  with open(victim, 'r+b') as f:
    f.truncate(10)
  with pytest.raises(DataError, match='truncated'):
    shards.load_manifest(out)
  os.remove(victim)
  with pytest.raises(DataError, match='missing'):
    shards.load_manifest(out)
  os.remove(os.path.join(out, 'manifest.json'))
  with pytest.raises(DataError, match='no manifest'):
    shards.load_manifest(out)


# ------------------------------------------------------------ training

TRAIN_FLAGS = ['--config.model.embed_dim=16', '--config.graph.fanouts=(4, 3)',
               '--config.loss.num_negatives=32', '--config.train.batch_size=32',
               '--config.train.log_every=4',
               '--config.train.checkpoint_every_steps=6',
               '--config.train.tensorboard=False',
               '--config.train.progress=False']


def _train(shard_dir, workdir, *flags, fault_at=0):
  cmd = [sys.executable, '-m', 'recjax.main',
         '--config=configs/gnn_shards.py:graphsage', f'--workdir={workdir}',
         f'--config.data.shards={shard_dir}', *TRAIN_FLAGS, *flags]
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             RECJAX_FAULT_AT_STEP=str(fault_at))
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)


def test_sharded_trainer_refuses_what_needs_the_whole_graph(tmp_path):
  # Named before any shard is read: evaluation during training and
  # PinSAGE's hard negatives need the whole graph, a process has its parts.
  import gnn_shards
  from recjax.train import shard_trainer
  c = gnn_shards.get_config('graphsage')
  c.data.shards = str(tmp_path / 'absent')
  c.train.eval_every_epochs = 1
  with pytest.raises(ValueError, match='train.eval_every_epochs'):
    shard_trainer.train_and_evaluate(c, str(tmp_path / 'w'))
  c.train.eval_every_epochs = 0
  c.graph.num_hard_negatives = 2
  with pytest.raises(ValueError, match='graph.num_hard_negatives'):
    shard_trainer.train_and_evaluate(c, str(tmp_path / 'w'))


def _log(workdir):
  with open(os.path.join(workdir, 'batches.jsonl')) as f:
    return [json.loads(l) for l in f if l.strip()]


def test_resume_after_sigkill_continues_the_epoch(tiny_shards, tmp_path):
  out, _, manifest, _ = tiny_shards
  spe = shards.steps_per_epoch(manifest, 1, 32)
  steps = 24                 # all inside the first epoch
  assert spe > steps, spe
  ref_dir, run_dir = str(tmp_path / 'ref'), str(tmp_path / 'run')
  ref = _train(out, ref_dir, f'--config.train.num_steps={steps}')
  assert ref.returncode == 0, ref.stderr[-3000:]
  reference = {r['step']: r['pairs'] for r in _log(ref_dir)}
  assert sorted(reference) == list(range(steps))

  # SIGKILL after step 9: checkpoint 6 has landed, steps 6-8 are lost.
  killed = _train(out, run_dir, f'--config.train.num_steps={steps}',
                  fault_at=9)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  first = _log(run_dir)
  assert [r['step'] for r in first] == list(range(9))

  resumed = _train(out, run_dir, f'--config.train.num_steps={steps}')
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  result = json.loads(resumed.stdout.strip().splitlines()[-1])
  assert result['resumed_from'] == 6
  second = _log(run_dir)[len(first):]
  # The resumed run starts at its checkpoint, not at the epoch's start ...
  assert [r['step'] for r in second] == list(range(6, steps))
  # ... and trains exactly the batches the uninterrupted run trained there,
  # none of those it had trained on before the checkpoint.
  assert all(r['pairs'] == reference[r['step']] for r in second)
  assert not {reference[s] for s in range(6)} & {r['pairs'] for r in second}
  assert result['steps'] == steps and result['epochs'] < 1


def test_two_processes_train_their_own_parts_with_history(tiny_shards,
                                                          tmp_path):
  out = tiny_shards[0]
  env = dict(os.environ, PYTHON=sys.executable, WORKDIR=str(tmp_path / 'mh'))
  env.pop('XLA_FLAGS', None)
  run = subprocess.run(
      ['bash', os.path.join(REPO, 'launch', 'local_multihost.sh'), '2',
       'configs/gnn_shards.py', f'--config.data.shards={out}', *TRAIN_FLAGS,
       '--config.train.num_steps=6', '--config.graph.history_every=3'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  r = json.loads(run.stdout.strip().splitlines()[-1])
  assert r['processes'] == 2 and r['parts'] == [0, 2] and r['steps'] == 6
  assert np.isfinite(r['loss'])
  h = r['history']
  assert h['refreshes'] == 2 and h['boundary_nodes'] > 0
  # Both processes' boundary rows reached process 0's cache, and every halo
  # node its blocks met had a cached state.
  assert h['rows'] > h['boundary_nodes'] and h['halo_hit_rate'] == 1.0
