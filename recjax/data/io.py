"""Saving a `Dataset` to a directory and loading it back.

Layout of a saved directory:
  arrays.npz      every array: 'train.user', ..., 'catalog.price', ...,
                  'cold_users', 'cold_items'
  vocab.NAME.json one JSON list of raw ids per vocab
  manifest.json   format version, name, sizes, row counts, the file list
                  with byte sizes and the arrays' sha256

Writes are atomic: everything goes to a temporary directory next to the
target, which is then renamed into place, so a crash leaves either the old
dataset or the new one, never a mix. The manifest is written last and
`load_dataset_dir` checks every file against it, so a directory copied or
edited by hand only partly is rejected with a clear `DataError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Optional

import numpy as np

from recjax.data.schema import Catalog, DataError, Dataset, Interactions, Vocab

FORMAT = 'recjax.dataset'
VERSION = 1
_SPLITS = ('train', 'valid', 'test')
_CATALOG_FIELDS = ('seller', 'taxonomy', 'price', 'margin', 'created_at',
                   'text', 'category_parent', 'image')


def sha256_file(path: str) -> str:
  """Hex sha256 of a file, read in 1 MB blocks."""
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


def write_directory(directory: str, fill: Callable[[str], Any]) -> Any:
  """Writes a directory atomically: `fill(tmp)` then a swap into place.

  `fill` writes everything into a fresh temporary sibling of `directory`;
  only when it returns does that replace `directory` (the old one, if any,
  is moved aside first and deleted last). An exception, or a crash, leaves
  `directory` as it was and removes the temporary. Returns fill's result.
  """
  directory = os.path.abspath(directory)
  parent, base = os.path.split(directory)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f'.{base}.tmp-', dir=parent)
  try:
    result = fill(tmp)
    if os.path.exists(directory):
      # A directory cannot be os.replace'd onto a non-empty one: move the old
      # one aside first, and delete it only once the new one is in place.
      old = tempfile.mkdtemp(prefix=f'.{base}.old-', dir=parent)
      os.rename(directory, os.path.join(old, base))
      os.rename(tmp, directory)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(tmp, directory)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return result


def _fsync_write(path: str, write) -> None:
  with open(path, 'wb') as f:
    write(f)
    f.flush()
    os.fsync(f.fileno())


def _arrays(ds: Dataset) -> dict[str, np.ndarray]:
  out = {}
  for split in _SPLITS:
    inter: Optional[Interactions] = getattr(ds, split)
    if inter is not None:
      out.update({f'{split}.{f}': getattr(inter, f) for f in inter.FIELDS})
  if ds.catalog is not None:
    for f in _CATALOG_FIELDS:
      value = getattr(ds.catalog, f)
      if value is not None:
        out[f'catalog.{f}'] = np.asarray(value)
  out['cold_users'] = np.asarray(ds.cold_users, np.int32)
  out['cold_items'] = np.asarray(ds.cold_items, np.int32)
  return out


def save_dataset(ds: Dataset, directory: str) -> None:
  """Writes `ds` to `directory` atomically, replacing a dataset saved there.

  Raises:
    FileExistsError: `directory` exists but is not a saved dataset (it is
      never overwritten then, to not destroy unrelated files).
  """
  directory = os.path.abspath(directory)
  if os.path.exists(directory) and os.listdir(directory) and not os.path.exists(
      os.path.join(directory, 'manifest.json')):
    raise FileExistsError(f'{directory} exists and is not a saved dataset; '
                          'refusing to overwrite it')

  def fill(tmp):
    arrays = _arrays(ds)
    _fsync_write(os.path.join(tmp, 'arrays.npz'),
                 lambda f: np.savez(f, **arrays))
    for name, vocab in ds.vocabs.items():
      data = json.dumps(vocab.to_json()).encode()
      _fsync_write(os.path.join(tmp, f'vocab.{name}.json'),
                   lambda f: f.write(data))
    files = {f: os.path.getsize(os.path.join(tmp, f))
             for f in sorted(os.listdir(tmp))}
    manifest = dict(
        format=FORMAT, version=VERSION, name=ds.name,
        num_users=int(ds.num_users), num_items=int(ds.num_items),
        rows={s: len(getattr(ds, s)) for s in _SPLITS
              if getattr(ds, s) is not None},
        has_catalog=ds.catalog is not None, vocabs=sorted(ds.vocabs),
        files=files,
        arrays_sha256=sha256_file(os.path.join(tmp, 'arrays.npz')))
    data = json.dumps(manifest, indent=1).encode()
    _fsync_write(os.path.join(tmp, 'manifest.json'), lambda f: f.write(data))

  write_directory(directory, fill)


def _fail(directory: str, file: str, reason: str):
  raise DataError(os.path.join(directory, file), 0, '-', reason)


def load_dataset_dir(directory: str) -> Dataset:
  """Loads a directory written by `save_dataset`.

  Raises:
    DataError: no such directory, no manifest (not a dataset, or a write
      that never finished), unknown format version, or any file missing or
      differing from the manifest (size, checksum, row counts).
  """
  if not os.path.isdir(directory):
    _fail(directory, '', 'no such dataset directory')
  path = os.path.join(directory, 'manifest.json')
  if not os.path.exists(path):
    _fail(directory, 'manifest.json', 'missing: not a saved dataset, or a '
          'save that did not finish')
  try:
    with open(path) as f:
      manifest = json.load(f)
  except (OSError, ValueError) as e:
    _fail(directory, 'manifest.json', f'unreadable manifest: {e}')
  if manifest.get('format') != FORMAT or manifest.get('version') != VERSION:
    _fail(directory, 'manifest.json', f'not a {FORMAT} v{VERSION} manifest '
          f"(format={manifest.get('format')!r}, "
          f"version={manifest.get('version')!r})")
  for file, size in manifest['files'].items():
    full = os.path.join(directory, file)
    if not os.path.exists(full):
      _fail(directory, file, 'listed in manifest.json but missing')
    if os.path.getsize(full) != size:
      _fail(directory, file, f'has {os.path.getsize(full)} bytes, manifest '
            f'says {size} (partial or mismatched copy)')
  if sha256_file(os.path.join(directory, 'arrays.npz')) != manifest[
      'arrays_sha256']:
    _fail(directory, 'arrays.npz', 'checksum differs from manifest.json')

  with np.load(os.path.join(directory, 'arrays.npz')) as z:
    arrays = {k: z[k] for k in z.files}
  splits = {}
  for split, rows in manifest['rows'].items():
    splits[split] = Interactions(**{
        f: arrays[f'{split}.{f}'] for f in Interactions.FIELDS})
    if len(splits[split]) != rows:
      _fail(directory, 'arrays.npz', f'{split} has {len(splits[split])} rows, '
            f'manifest says {rows}')
  catalog = None
  if manifest['has_catalog']:
    catalog = Catalog(**{f: arrays.get(f'catalog.{f}')
                         for f in _CATALOG_FIELDS})
  vocabs = {n: Vocab.load(os.path.join(directory, f'vocab.{n}.json'))
            for n in manifest['vocabs']}
  for name, size in (('user', manifest['num_users']),
                     ('item', manifest['num_items'])):
    if name in vocabs and len(vocabs[name]) != size:
      _fail(directory, f'vocab.{name}.json', f'has {len(vocabs[name])} '
            f'entries, manifest says {size}')
  return Dataset(name=manifest['name'], num_users=manifest['num_users'],
                 num_items=manifest['num_items'], train=splits['train'],
                 test=splits['test'], valid=splits.get('valid'),
                 catalog=catalog, vocabs=vocabs,
                 cold_users=arrays['cold_users'],
                 cold_items=arrays['cold_items'])
