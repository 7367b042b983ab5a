"""Checks a data file before training on it; prints a one-line summary.

Usage:
  python tools/validate_data.py --format=lightgcn --path=data/gowalla
  python tools/validate_data.py --format=sasrec --path=data/ml-1m/ml-1m.txt
  python tools/validate_data.py --format=csv --path=events.csv \
      --catalog=items.csv

Exit status 0 with one `ok: format=... users=... ...` line on stdout, or 2
with exactly `PATH:LINE: COLUMN: reason` on stderr for bad data (bad flags
also exit 2, with argparse's usage message). No traceback for either.
"""

from __future__ import annotations

import argparse
import os
import sys

# Works from a plain checkout too, not only with the editable install.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recjax.data import readers  # pylint: disable=g-import-not-at-top
from recjax.data.schema import DataError  # pylint: disable=g-import-not-at-top

FORMATS = ('lightgcn', 'sasrec', 'csv', 'parquet')


def _fields(**counts) -> str:
  return ' '.join(f'{k}={v}' for k, v in counts.items())


def summarize(fmt: str, path: str, catalog: str | None) -> str:
  """Reads the data with the matching reader; returns the summary line."""
  if fmt == 'lightgcn':
    ds = readers.read_lightgcn(path)
    return 'ok: ' + _fields(
        format=fmt, users=ds.num_users, items=ds.num_items,
        events=len(ds.train) + len(ds.test), train=len(ds.train),
        test=len(ds.test),
        test_in_train=readers.count_seen(ds.train, ds.test))
  if fmt == 'sasrec':
    ds = readers.read_sasrec(path)
    valid = 0 if ds.valid is None else len(ds.valid)
    return 'ok: ' + _fields(
        format=fmt, users=ds.num_users, items=ds.num_items,
        events=len(ds.train) + valid + len(ds.test), train=len(ds.train),
        valid=valid, test=len(ds.test))
  inter, cat, vocabs = readers.read_events(path, catalog=catalog, fmt=fmt)
  return 'ok: ' + _fields(
      format=fmt, users=len(vocabs['user']), items=len(vocabs['item']),
      events=len(inter), sellers=len(vocabs.get('seller', ())),
      categories=0 if cat is None else len(cat.category_parent))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      description='Validate a recjax input file.')
  parser.add_argument('--format', required=True, choices=FORMATS)
  parser.add_argument('--path', required=True)
  parser.add_argument('--catalog', default=None,
                      help='item catalog (csv / parquet formats only)')
  args = parser.parse_args(argv)         # exits 2 with usage on bad flags
  if args.catalog and args.format in ('lightgcn', 'sasrec'):
    parser.error(f'--catalog is only for csv and parquet, not '
                 f'--format={args.format}')
  try:
    print(summarize(args.format, args.path, args.catalog))
  except DataError as e:
    print(e, file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
