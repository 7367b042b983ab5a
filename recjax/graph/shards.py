"""Graph shards on disk: one directory per partition, streamed by tf.data.

Layout written by `write_shards` (atomically, manifest last):
  assignment.npy           int32 [N]: the part of every node
  manifest.json            format, version, node offsets and counts,
                           relations, feature specs, the partition report
                           and, per part, its counts and files (bytes,
                           sha256)
  part-00003/graph-00000.tfrecord   the part's own nodes in chunks: node
                           ids, degrees and their CSR rows (dst, rel, time)
  part-00003/halo.tfrecord the part's halo ids (neighbours owned elsewhere)
  part-00003/features.tfrecord      node_type / known of own + halo nodes
                           and the content of their items
  part-00003/pairs-00001.tfrecord   training pairs (user, item, time) whose
                           user the part owns, 256 per tf.train.Example,
                           split over several files so readers can mix them

Reading (`LocalGraph.load`, `pair_batches`): a process reads only the parts
`parts_of_process` gives it. Its graph holds the CSR rows of its own nodes
in the global id space; halo nodes are present with empty rows, so a
sampled neighbourhood stops at the partition boundary (their embeddings
come from `recjax.graph.cache.HistoricalCache` instead of a fetch). The
pair stream is a pure function of (seed, epoch): file order and shuffle are
seeded, interleave is deterministic, so a resumed run rebuilds the epoch
and skips the batches its checkpoint says it trained.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional, Sequence

import numpy as np

from recjax.data.io import sha256_file, write_directory
from recjax.data.schema import DataError
from recjax.graph import partition as partition_lib
from recjax.graph.nodes import (NODE_TYPES, NodeGraph, node_features,
                                training_pairs)
from recjax.graph.partition import Partition, gather_ranges

FORMAT = 'recjax.graph_shards'
VERSION = 1
_CHUNK = 8192                 # nodes per graph / feature record
_PAIRS = 256                  # training pairs per record


# ------------------------------------------------------------- encoding

def _tf():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf


def _example(**arrays) -> bytes:
  tf = _tf()
  feature = {}
  for k, v in arrays.items():
    v = np.asarray(v).ravel()
    if v.dtype == bool:
      v = v.astype(np.int64)
    if v.dtype.kind == 'f':
      feature[k] = tf.train.Feature(float_list=tf.train.FloatList(value=v))
    else:
      feature[k] = tf.train.Feature(int64_list=tf.train.Int64List(value=v))
  return tf.train.Example(features=tf.train.Features(
      feature=feature)).SerializeToString()


def _write_records(path: str, records) -> int:
  tf = _tf()
  n = 0
  with tf.io.TFRecordWriter(path) as w:
    for r in records:
      w.write(r)
      n += 1
  return n


def _read_records(paths: Sequence[str], spec: dict) -> list[dict]:
  """Every record of `paths` parsed by `spec` (name -> dtype), as numpy."""
  tf = _tf()
  feats = {k: tf.io.VarLenFeature(tf.float32 if np.dtype(d).kind == 'f'
                                  else tf.int64) for k, d in spec.items()}
  out = []
  for raw in tf.data.TFRecordDataset(list(paths)):
    ex = tf.io.parse_single_example(raw, feats)
    out.append({k: tf.sparse.to_dense(v).numpy().astype(spec[k])
                for k, v in ex.items()})
  return out


# -------------------------------------------------------------- writing

def write_shards(out_dir: str, graph: NodeGraph, partition: Partition,
                 pairs: tuple[np.ndarray, np.ndarray, np.ndarray],
                 feats: dict, pair_files_per_part: int = 4,
                 report: Optional[dict] = None) -> dict:
  """Writes one directory per part and the manifest (atomically).

  Args:
    out_dir: the shard directory (replaced if it exists).
    graph: the training graph (global ids; `partition.parts` is [N]).
    partition: the node -> part assignment.
    pairs: (user, item, time) training pairs, local user / item indices.
    feats: `recjax.graph.nodes.node_features(graph, ds)`.
    pair_files_per_part: pair files per part (>= the readers per part).
    report: the partition report to keep in the manifest.

  Returns:
    The manifest (a dict).
  """
  parts, k = partition.parts, partition.num_parts
  if len(parts) != graph.num_nodes:
    raise ValueError(f'partition covers {len(parts)} nodes, the graph has '
                     f'{graph.num_nodes}')
  users, items, times = (np.asarray(a) for a in pairs)
  user_part = parts[graph.ids('user', users)]
  deg = graph.degrees()
  item_off, n_items = graph.offsets['item'], graph.counts['item']
  item_keys = [f for f in ('item_seller', 'item_category', 'price_bucket',
                           'text', 'image') if f in feats]
  feat_spec = {f: dict(dtype=str(np.asarray(feats[f]).dtype),
                       shape=list(np.shape(feats[f])[1:])) for f in item_keys}

  def fill(tmp):
    manifest = dict(
        format=FORMAT, version=VERSION, num_parts=k, method=partition.method,
        num_nodes=graph.num_nodes, num_edges=graph.num_edges,
        offsets=graph.offsets, counts=graph.counts,
        relations=list(graph.relations), event_types=list(graph.event_types),
        item_features=feat_spec, partition=report or {}, parts=[],
        # Model input sizes, so every reader builds the same model.
        content_sizes=dict(
            text_vocab=int(np.max(feats['text'])) + 1 if 'text' in feats
            else 0,
            price_buckets=int(np.max(feats['price_bucket'])) + 1
            if 'price_bucket' in feats else 0))
    # node -> part, for routing (which process owns a halo node).
    np.save(os.path.join(tmp, 'assignment.npy'), parts.astype(np.int32))
    path = os.path.join(tmp, 'assignment.npy')
    manifest['assignment'] = dict(path='assignment.npy',
                                  bytes=os.path.getsize(path),
                                  sha256=sha256_file(path))
    for p in range(k):
      name = f'part-{p:05d}'
      os.makedirs(os.path.join(tmp, name))
      own = np.flatnonzero(parts == p).astype(np.int64)
      files = []

      def add(rel, kind, n):
        path = os.path.join(tmp, rel)
        files.append(dict(path=rel, kind=kind, records=n,
                          bytes=os.path.getsize(path),
                          sha256=sha256_file(path)))

      def graph_records():
        for a in range(0, max(len(own), 1), _CHUNK):
          nodes = own[a:a + _CHUNK]
          sl = gather_ranges(graph.indptr, nodes)
          yield _example(node=nodes, degree=deg[nodes], dst=graph.dst[sl],
                         rel=graph.rel[sl], time=graph.time[sl])
      rel = f'{name}/graph-00000.tfrecord'
      add(rel, 'graph', _write_records(os.path.join(tmp, rel),
                                       graph_records()))
      halo = partition.halo(graph.indptr, graph.dst, p)
      rel = f'{name}/halo.tfrecord'
      add(rel, 'halo', _write_records(os.path.join(tmp, rel), [
          _example(halo=halo[a:a + _CHUNK * 8])
          for a in range(0, max(len(halo), 1), _CHUNK * 8)]))

      local = np.union1d(own, halo)
      def feature_records():
        for a in range(0, max(len(local), 1), _CHUNK):
          nodes = local[a:a + _CHUNK]
          row = dict(node=nodes, known=feats['known'][nodes])
          is_item = (nodes >= item_off) & (nodes < item_off + n_items)
          idx = nodes[is_item] - item_off
          row['item'] = idx
          for f in item_keys:
            row[f] = np.asarray(feats[f])[idx]
          yield _example(**row)
      rel = f'{name}/features.tfrecord'
      add(rel, 'features', _write_records(os.path.join(tmp, rel),
                                          feature_records()))

      # Shuffled once here (seeded): files sorted by user would make the
      # stream's shuffle buffer and its cut to whole steps favour low ids.
      mine = np.random.default_rng([p, 17]).permutation(
          np.flatnonzero(user_part == p))
      for j, chunk in enumerate(np.array_split(mine, pair_files_per_part)):
        rel = f'{name}/pairs-{j:05d}.tfrecord'
        add(rel, 'pairs', _write_records(os.path.join(tmp, rel), (
            _example(user=users[c], item=items[c], time=times[c])
            for c in np.array_split(chunk, max(1, -(-len(chunk) // _PAIRS))))))
      manifest['parts'].append(dict(
          part=p, nodes=int(len(own)), edges=int(deg[own].sum()),
          halo=int(len(halo)), pairs=int(len(mine)), files=files))
    with open(os.path.join(tmp, 'manifest.json'), 'w') as f:
      json.dump(manifest, f, indent=1)
    return manifest

  return write_directory(out_dir, fill)


def write_dataset_shards(out_dir: str, ds, num_parts: int,
                         method: str = 'metis', seed: int = 0,
                         pair_files_per_part: int = 4,
                         event_types: Optional[Sequence[str]] = None
                         ) -> tuple[dict, Partition]:
  """Builds `ds`'s training graph, partitions it and writes its shards.

  Returns:
    (manifest, partition); the manifest keeps the partition report.
  """
  graph = NodeGraph.from_dataset(ds, event_types)
  src = np.repeat(np.arange(graph.num_nodes), graph.degrees())
  indptr, indices = partition_lib.undirected_csr(src, graph.dst,
                                                 graph.num_nodes)
  part = partition_lib.partition(indptr, indices, num_parts, method, seed)
  report = {k: v for k, v in part.report(indptr, indices).items()
            if k != 'parts'}
  manifest = write_shards(out_dir, graph, part,
                          training_pairs(ds, graph.event_types),
                          node_features(graph, ds), pair_files_per_part,
                          report)
  return manifest, part


# -------------------------------------------------------------- reading

def load_manifest(shard_dir: str, verify: bool = False) -> dict:
  """The manifest, after checking every file it lists exists with its size
  (and, with verify=True, its sha256).

  Raises:
    DataError: naming the directory or file and what is wrong.
  """
  path = os.path.join(shard_dir, 'manifest.json')
  if not os.path.exists(path):
    raise DataError(path, None, None, 'no manifest.json: not a shard '
                    'directory, or it was not written completely')
  try:
    with open(path) as f:
      m = json.load(f)
  except json.JSONDecodeError as e:
    raise DataError(path, e.lineno, None, f'not valid JSON ({e.msg})') from e
  if m.get('format') != FORMAT or m.get('version') != VERSION:
    raise DataError(path, None, 'format', f'{m.get("format")!r} version '
                    f'{m.get("version")!r}, expected {FORMAT!r} {VERSION}')
  listed = [f for part in m['parts'] for f in part['files']]
  if 'assignment' in m:
    listed.append(m['assignment'])
  for f in listed:
    fp = os.path.join(shard_dir, f['path'])
    if not os.path.exists(fp):
      raise DataError(fp, None, None, 'listed in the manifest but missing')
    if os.path.getsize(fp) != f['bytes']:
      raise DataError(fp, None, None, f'{os.path.getsize(fp)} bytes, the '
                      f'manifest says {f["bytes"]} (truncated or replaced)')
    if verify and sha256_file(fp) != f['sha256']:
      raise DataError(fp, None, None, 'sha256 differs from the manifest')
  return m


def assignment(shard_dir: str, m: dict) -> np.ndarray:
  """int32 [N] part of every node (memory-mapped)."""
  return np.load(os.path.join(shard_dir, m['assignment']['path']),
                 mmap_mode='r')


def parts_of_process(num_parts: int, process_index: int,
                     process_count: int) -> list[int]:
  """The parts process i reads: i, i + n, i + 2n, ... (every part once)."""
  if num_parts < process_count:
    raise ValueError(f'{num_parts} parts cannot feed {process_count} '
                     'processes: partition into at least as many parts')
  return list(range(process_index, num_parts, process_count))


def _files(m: dict, parts: Sequence[int], kind: str) -> list[str]:
  return [f['path'] for p in parts for f in m['parts'][p]['files']
          if f['kind'] == kind]


@dataclasses.dataclass
class LocalGraph:
  """What one process holds: the CSR rows of its parts' nodes (global ids,
  other rows empty), its halo ids, and node features. Features are read
  from every part by default: they are per node, not per edge (1M items
  with 16 text tokens are ~80 MB), and identical features on every process
  let the model keep them replicated."""
  graph: NodeGraph
  feats: dict
  own: np.ndarray
  halo: np.ndarray

  @classmethod
  def load(cls, shard_dir: str, parts: Sequence[int],
           feature_parts: Optional[Sequence[int]] = None) -> 'LocalGraph':
    """Reads `parts` (and the features of `feature_parts`, default all)."""
    m = load_manifest(shard_dir)
    n = m['num_nodes']
    if feature_parts is None:
      feature_parts = range(m['num_parts'])
    paths = lambda kind, which=parts: [os.path.join(shard_dir, p)
                                       for p in _files(m, which, kind)]
    recs = _read_records(paths('graph'), dict(
        node=np.int64, degree=np.int64, dst=np.int32, rel=np.int8,
        time=np.int64))
    node = np.concatenate([r['node'] for r in recs])
    degree = np.concatenate([r['degree'] for r in recs])
    dst = np.concatenate([r['dst'] for r in recs])
    rel = np.concatenate([r['rel'] for r in recs])
    time = np.concatenate([r['time'] for r in recs])
    # Rows in global order (files hold each part's nodes sorted).
    order = np.argsort(node, kind='stable')
    ptr = np.concatenate([[0], np.cumsum(degree)])
    perm = gather_ranges(ptr, order)
    deg_full = np.zeros(n, np.int64)
    deg_full[node] = degree
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(deg_full, out=indptr[1:])
    graph = NodeGraph(m['offsets'], m['counts'], indptr, dst[perm],
                      rel[perm], time[perm], tuple(m['relations']),
                      tuple(m['event_types']))
    own = np.sort(node).astype(np.int32)
    # A part's halo node may be owned by another part this process reads.
    halo = np.setdiff1d(np.concatenate([r['halo'] for r in _read_records(
        paths('halo'), dict(halo=np.int32))]), own).astype(np.int32)
    spec = dict(node=np.int64, known=np.int64, item=np.int64)
    for f, s in m['item_features'].items():
      spec[f] = np.dtype(s['dtype'])
    frecs = _read_records(paths('features', feature_parts), spec)
    feats = dict(node_type=graph.node_type(), known=np.zeros(n, bool))
    n_items = m['counts']['item']
    for f, s in m['item_features'].items():
      feats[f] = np.zeros([n_items] + s['shape'], np.dtype(s['dtype']))
    for r in frecs:
      feats['known'][r['node']] = r['known'].astype(bool)
      for f, s in m['item_features'].items():
        feats[f][r['item']] = r[f].reshape([-1] + s['shape'])
    feats['known'] |= feats['node_type'] >= NODE_TYPES.index('seller')
    return cls(graph, feats, own, halo)


def pair_count(m: dict, parts: Sequence[int]) -> int:
  return int(sum(m['parts'][p]['pairs'] for p in parts))


def steps_per_epoch(m: dict, process_count: int, local_batch: int) -> int:
  """Steps every process can take per epoch (the least-fed one decides:
  all processes must step together)."""
  per = [pair_count(m, parts_of_process(m['num_parts'], i, process_count))
         for i in range(process_count)]
  steps = min(per) // local_batch
  if steps == 0:
    raise ValueError(f'local batch {local_batch} exceeds the pairs of the '
                     f'least-fed process ({min(per)})')
  return steps


def pair_batches(shard_dir: str, parts: Sequence[int], local_batch: int,
                 seed: int, epoch: int, steps: int, skip: int = 0,
                 shuffle_buffer: int = 65536, cycle_length: int = 4):
  """The epoch's batches of training pairs from `parts`, as tf.data.

  Deterministic in (seed, epoch): the pair files are ordered by a seeded
  permutation, interleaved deterministically, shuffled with a seeded
  buffer and cut into `steps` batches of `local_batch` (static shapes);
  the first `skip` batches are dropped (a resumed epoch: the records are
  read again to rebuild the shuffle, but never trained on).

  Returns:
    tf.data.Dataset of dicts user / item / time, int [local_batch].
  """
  tf = _tf()
  m = load_manifest(shard_dir)
  files = [os.path.join(shard_dir, f) for f in _files(m, parts, 'pairs')]
  rng = np.random.default_rng([seed, epoch, 11])
  files = [files[i] for i in rng.permutation(len(files))]
  spec = {k: tf.io.VarLenFeature(tf.int64) for k in ('user', 'item', 'time')}

  def parse(raw):
    ex = tf.io.parse_single_example(raw, spec)
    return {k: tf.sparse.to_dense(v) for k, v in ex.items()}

  ds = tf.data.Dataset.from_tensor_slices(files).interleave(
      lambda f: tf.data.TFRecordDataset(f).map(parse).unbatch(),
      cycle_length=max(1, min(cycle_length, len(files))), block_length=16,
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.shuffle(shuffle_buffer, seed=int(rng.integers(1 << 31)),
                  reshuffle_each_iteration=False)
  return ds.batch(local_batch, drop_remainder=True).take(steps).skip(
      skip).prefetch(2)
