"""The serving bundle: one versioned, self-describing directory per export.

  DIR/
    manifest.json          format, version, created_at, models, dims, data
                           fingerprint, and {file: {bytes, sha256}} for
                           every other file (written last)
    user_embeddings.npy    float32 [U, d] retrieval-model user vectors
    item_embeddings.npy    float32 [I, d] retrieval-model item vectors
    items.npz              per-item metadata the ranker and re-ranker read:
                           seller, category (leaf), created_at, price, margin,
                           in_stock, popularity, price_bucket
    history.npz            each user's last H training events as CSR:
                           indptr [U+1], item, event, timestamp
    context_popularity.npz top items per device (cold-start path)
    vocabs/{user,item,seller,category}.json
    index.json             retrieval index kind and tuned parameters
    ranker/                orbax checkpoint of the ranker + ranker.json
    retrieval/             orbax checkpoint of the retrieval model params

Writing goes through `recjax.data.io.write_directory` (a temporary sibling
renamed into place only when complete), so a crash never leaves a
half-written bundle at DIR.
Loading checks the manifest (format, version, every listed file present
with its size, optionally its hash, and array shapes against the declared
dims) and raises `BundleError` naming the first problem.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Optional

import numpy as np

from recjax.data.io import sha256_file, write_directory
from recjax.data.schema import Vocab

FORMAT = 'recjax-bundle'
VERSION = 1
ITEM_FIELDS = ('seller', 'category', 'created_at', 'price', 'margin',
               'in_stock', 'popularity', 'price_bucket')
VOCABS = ('user', 'item', 'seller', 'category')


class BundleError(ValueError):
  """A bundle directory that cannot be served, with the reason."""


@dataclasses.dataclass
class Bundle:
  """A loaded bundle (numpy arrays; nothing compiled yet).

  Attributes:
    path: the bundle directory.
    manifest: the parsed manifest.json.
    user_emb: float32 [U, d]; item_emb: float32 [I, d].
    items: dict of per-item arrays (ITEM_FIELDS), each [I].
    history: dict indptr int64 [U+1], item int32 [E], event int8 [E],
      timestamp int64 [E] (each user's rows in time order).
    context_popularity: dict device int -> int32 [P] item ids, most popular
      first, plus key -1 for all devices.
    vocabs: name -> Vocab.
    index_config: dict (see recjax.serve.index).
  """
  path: str
  manifest: dict
  user_emb: np.ndarray
  item_emb: np.ndarray
  items: dict
  history: dict
  context_popularity: dict
  vocabs: dict
  index_config: dict

  @property
  def ranker_dir(self) -> Optional[str]:
    d = os.path.join(self.path, 'ranker')
    return d if os.path.isdir(d) else None

  def seen(self, u: int) -> np.ndarray:
    """int32 [S]: every distinct item user index u interacted with."""
    a, b = self.history['seen_indptr'][u], self.history['seen_indptr'][u + 1]
    return self.history['seen_item'][a:b]

  def user_history(self, u: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(items, events, timestamps) of user index u, oldest first."""
    a, b = self.history['indptr'][u], self.history['indptr'][u + 1]
    return (self.history['item'][a:b], self.history['event'][a:b],
            self.history['timestamp'][a:b])


def _files(root: str) -> list[str]:
  out = []
  for d, _, names in os.walk(root):
    for n in names:
      out.append(os.path.relpath(os.path.join(d, n), root))
  return sorted(f for f in out if f != 'manifest.json')


def history_csr(user: np.ndarray, item: np.ndarray, event: np.ndarray,
                timestamp: np.ndarray, num_users: int, max_len: int
                ) -> dict:
  """Each user's last `max_len` events in time order, as CSR arrays.

  Returns:
    dict indptr int64 [U+1], item int32 [E], event int8 [E], timestamp
    int64 [E] (the last events), and seen_indptr int64 [U+1], seen_item
    int32 [S] (every distinct item of the user, sorted).
  """
  order = np.lexsort((timestamp, user))
  user, item, event, timestamp = (user[order], item[order], event[order],
                                  timestamp[order])
  counts = np.bincount(user, minlength=num_users)
  ends = np.cumsum(counts)
  # Position of each row from its user's end: keep the last max_len.
  from_end = ends[user] - np.arange(len(user))
  keep = from_end <= max_len
  kept = np.minimum(counts, max_len)
  # Every item a user interacted with (retrieval excludes them), unique.
  pairs = np.unique(user.astype(np.int64) << 32 | item.astype(np.int64))
  seen_counts = np.bincount(pairs >> 32, minlength=num_users)
  return dict(indptr=np.r_[0, np.cumsum(kept)].astype(np.int64),
              item=item[keep].astype(np.int32),
              event=event[keep].astype(np.int8),
              timestamp=timestamp[keep].astype(np.int64),
              seen_indptr=np.r_[0, np.cumsum(seen_counts)].astype(np.int64),
              seen_item=(pairs & 0xFFFFFFFF).astype(np.int32))


def write_bundle(out_dir: str, *, models: dict, user_emb: np.ndarray,
                 item_emb: np.ndarray, items: dict, history: dict,
                 context_popularity: dict, vocabs: dict, index_config: dict,
                 data_fingerprint: str, extra_dirs: Optional[dict] = None,
                 overwrite: bool = False) -> dict:
  """Writes a complete bundle at `out_dir` atomically; returns the manifest.

  Args:
    models: name -> description dict (e.g. {'retrieval': {'name':
      'lightgcn', ...}, 'ranker': {...}}), stored as is.
    extra_dirs: bundle subdirectory name -> callable(path) that writes it
      (the orbax checkpoints), called inside the temporary directory.
    overwrite: replace an existing bundle; otherwise an existing `out_dir`
      is an error (nothing is touched).
  """
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir) and not overwrite:
    raise BundleError(f'{out_dir}: already exists (pass overwrite=True)')
  user_emb = np.ascontiguousarray(user_emb, np.float32)
  item_emb = np.ascontiguousarray(item_emb, np.float32)
  if user_emb.ndim != 2 or item_emb.ndim != 2 or \
      user_emb.shape[1] != item_emb.shape[1]:
    raise BundleError(f'embeddings must be [U, d] and [I, d], got '
                      f'{user_emb.shape} and {item_emb.shape}')
  missing = [f for f in ITEM_FIELDS if f not in items]
  if missing:
    raise BundleError(f'items lacks fields {missing}')
  for f in ITEM_FIELDS:
    if len(items[f]) != len(item_emb):
      raise BundleError(f'items[{f!r}] has {len(items[f])} rows, '
                        f'item_emb {len(item_emb)}')

  def fill(tmp):
    np.save(os.path.join(tmp, 'user_embeddings.npy'), user_emb)
    np.save(os.path.join(tmp, 'item_embeddings.npy'), item_emb)
    np.savez(os.path.join(tmp, 'items.npz'), **items)
    np.savez(os.path.join(tmp, 'history.npz'), **history)
    np.savez(os.path.join(tmp, 'context_popularity.npz'),
             **{str(k): np.asarray(v, np.int32)
                for k, v in context_popularity.items()})
    os.makedirs(os.path.join(tmp, 'vocabs'))
    for name in VOCABS:
      vocabs[name].save(os.path.join(tmp, 'vocabs', f'{name}.json'))
    with open(os.path.join(tmp, 'index.json'), 'w') as f:
      json.dump(index_config, f, indent=2)
    for name, write in (extra_dirs or {}).items():
      write(os.path.join(tmp, name))
    manifest = dict(
        format=FORMAT, version=VERSION,
        created_at=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
        models=models, data_fingerprint=data_fingerprint,
        dims=dict(num_users=int(user_emb.shape[0]),
                  num_items=int(item_emb.shape[0]),
                  embed_dim=int(item_emb.shape[1])),
        files={p: dict(bytes=os.path.getsize(os.path.join(tmp, p)),
                       sha256=sha256_file(os.path.join(tmp, p)))
               for p in _files(tmp)})
    # The manifest goes last: a directory without one is never complete.
    with open(os.path.join(tmp, 'manifest.json'), 'w') as f:
      json.dump(manifest, f, indent=2)
    return manifest

  return write_directory(out_dir, fill)


def read_manifest(path: str, verify_hashes: bool = False) -> dict:
  """The manifest of bundle `path`, checked against the files on disk."""
  mpath = os.path.join(path, 'manifest.json')
  if not os.path.isdir(path):
    raise BundleError(f'{path}: bundle directory not found')
  if not os.path.isfile(mpath):
    raise BundleError(f'{mpath}: missing (incomplete or not a bundle)')
  try:
    with open(mpath) as f:
      manifest = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise BundleError(f'{mpath}: not valid JSON ({e})') from None
  if not isinstance(manifest, dict) or manifest.get('format') != FORMAT:
    raise BundleError(f'{mpath}: format is not {FORMAT!r}')
  if manifest.get('version') != VERSION:
    raise BundleError(f'{mpath}: version {manifest.get("version")!r}, this '
                      f'recjax reads version {VERSION}')
  for key in ('files', 'dims', 'models', 'data_fingerprint', 'created_at'):
    if key not in manifest:
      raise BundleError(f'{mpath}: key {key!r} missing')
  for rel, info in manifest['files'].items():
    p = os.path.join(path, rel)
    if not os.path.isfile(p):
      raise BundleError(f'{p}: listed in the manifest but missing '
                        '(partial bundle)')
    if os.path.getsize(p) != info['bytes']:
      raise BundleError(f'{p}: {os.path.getsize(p)} bytes, manifest says '
                        f'{info["bytes"]} (truncated or replaced)')
    if verify_hashes and sha256_file(p) != info['sha256']:
      raise BundleError(f'{p}: sha256 differs from the manifest')
  return manifest


def load_bundle(path: str, verify_hashes: bool = False,
                expect: Optional[dict[str, Any]] = None) -> Bundle:
  """Loads and checks bundle `path`.

  Args:
    verify_hashes: also hash every file (slower: reads everything twice).
    expect: optional manifest values that must match, e.g.
      {'data_fingerprint': ..., 'dims': {'embed_dim': 64}}.

  Raises:
    BundleError: missing/partial/mismatched bundle, with the reason.
  """
  path = os.path.abspath(path)
  manifest = read_manifest(path, verify_hashes)
  for key, want in (expect or {}).items():
    got = manifest.get(key)
    if isinstance(want, dict) and isinstance(got, dict):
      bad = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
    else:
      bad = {} if got == want else {key: (got, want)}
    if bad:
      raise BundleError(f'{path}: manifest mismatch (got, expected): {bad}')
  dims = manifest['dims']
  user_emb = np.load(os.path.join(path, 'user_embeddings.npy'))
  item_emb = np.load(os.path.join(path, 'item_embeddings.npy'))
  want_u = (dims['num_users'], dims['embed_dim'])
  want_i = (dims['num_items'], dims['embed_dim'])
  if user_emb.shape != want_u or item_emb.shape != want_i:
    raise BundleError(f'{path}: embeddings {user_emb.shape}, '
                      f'{item_emb.shape}; manifest dims {want_u}, {want_i}')
  with np.load(os.path.join(path, 'items.npz')) as z:
    items = {k: z[k] for k in z.files}
  for f in ITEM_FIELDS:
    if f not in items or len(items[f]) != dims['num_items']:
      raise BundleError(f'{path}/items.npz: field {f!r} missing or not '
                        f'{dims["num_items"]} rows')
  with np.load(os.path.join(path, 'history.npz')) as z:
    history = {k: z[k] for k in z.files}
  for key in ('indptr', 'seen_indptr'):
    if len(history.get(key, ())) != dims['num_users'] + 1:
      raise BundleError(f'{path}/history.npz: {key} missing or not '
                        'num_users + 1 long')
  with np.load(os.path.join(path, 'context_popularity.npz')) as z:
    ctx = {int(k): z[k] for k in z.files}
  vocabs = {n: Vocab.load(os.path.join(path, 'vocabs', f'{n}.json'))
            for n in VOCABS}
  if len(vocabs['user']) != dims['num_users'] or \
      len(vocabs['item']) != dims['num_items']:
    raise BundleError(f'{path}/vocabs: sizes differ from the manifest dims')
  with open(os.path.join(path, 'index.json')) as f:
    index_config = json.load(f)
  return Bundle(path=path, manifest=manifest, user_emb=user_emb,
                item_emb=item_emb, items=items, history=history,
                context_popularity=ctx, vocabs=vocabs,
                index_config=index_config)
