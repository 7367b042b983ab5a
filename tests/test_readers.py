"""Readers: every bad input gives one DataError at the right line and column;
valid inputs parse to the expected indices, vocabs and splits; saved
datasets round-trip. All inputs are tiny files written to tmp_path.
"""

import csv
import io
import os
import tempfile

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pandas as pd
import pytest

from recjax.data import io as data_io
from recjax.data import readers
from recjax.data.schema import DataError, DEVICES, EVENT_TYPES

HEAD = 'user_id,item_id,timestamp,event_type'
EVENTS = f"""{HEAD}
u1,i1,100,view
u2,i2,2020-09-13T12:26:40Z,Click
u1,i2,100.5,purchase
"""
CATALOG = """item_id,seller_id,category,price,margin,created_at,text,image
i1,s1,A>B>C,10,0.1,2020-01-01,Red  Phone,0 1
i2,s2,A > B > D,20,,5,,2 3
i3,s1,E>B>C,0,0.5,,big red box,4 5
"""


def write(tmp_path, name, text):
  path = tmp_path / name
  if isinstance(text, bytes):
    path.write_bytes(text)
  else:
    path.write_text(text)
  return str(path)


def assert_error(err, path, line, column, reason):
  assert (err.path, err.line, err.column) == (path, line, column), str(err)
  assert reason in err.reason, str(err)
  assert str(err).startswith(f'{path}:{line}: {column}: ')


# (name, events text, catalog text or None, line, column, reason substring)
EVENT_CASES = [
    ('missing column', 'user_id,item_id,timestamp\nu,i,1\n', None, 1,
     'event_type', "missing required column 'event_type'"),
    ('empty file', '', None, 1, '-', 'empty file'),
    ('blank file', '\n  \n', None, 1, '-', 'empty file'),
    ('header only', HEAD + '\n', None, 1, '-', 'empty file'),
    ('negative timestamp', EVENTS + 'u3,i1,-5,view\n', None, 5, 'timestamp',
     'negative timestamp'),
    ('pre-1970 date', EVENTS + 'u3,i1,1960-01-01,view\n', None, 5,
     'timestamp', 'negative timestamp'),
    ('nan timestamp', EVENTS + 'u3,i1,NaN,view\n', None, 5, 'timestamp',
     'timestamp is NaN'),
    ('empty timestamp', EVENTS + 'u3,i1,,view\n', None, 5, 'timestamp',
     'empty timestamp'),
    ('garbage timestamp', EVENTS + 'u3,i1,yesterday,view\n', None, 5,
     'timestamp', 'neither seconds since the epoch nor an ISO-8601'),
    ('unknown event', EVENTS + 'u3,i1,7,like\n', None, 5, 'event_type',
     "unknown event_type 'like' (allowed: view, click"),
    ('empty user', EVENTS + ',i1,7,view\n', None, 5, 'user_id',
     'missing user_id'),
    ('extra field', EVENTS + 'u3,i1,7,view,oops\n', None, 5, '-',
     'expected 4 fields, got 5'),
    ('blank line inside', f'{HEAD}\nu1,i1,1,view\n\nu2,i1,2,view\n', None, 3,
     'user_id', 'missing user_id'),
    ('duplicate event', EVENTS + 'u2,i9,1,view\nu1,i2,100.9,cart\n', None, 6,
     '-', 'first seen on line 4'),
    ('not in catalog', EVENTS + 'u3,i7,5,view\n', CATALOG, 5, 'item_id',
     "item 'i7' is not in the catalog"),
    ('unknown device', f'{HEAD},device\nu,i1,1,view,mobile\nu,i1,2,view,tv\n',
     None, 3, 'device', 'allowed: ' + ', '.join(DEVICES)),
    ('hour not int', f'{HEAD},hour\nu,i,1,view,3\nu,i,2,view,x\n', None, 3,
     'hour', 'integer 0..23'),
    ('hour range', f'{HEAD},hour\nu,i,1,view,24\n', None, 2, 'hour',
     "got '24'"),
    ('bad rating', f'{HEAD},rating\nu,i,1,view,\nu,i,2,view,good\n', None, 3,
     'rating', 'finite number'),
    ('earliest line wins', f'{HEAD}\nu,i,1,view\nu,i,2,bogus\nu,i,-1,view\n',
     None, 3, 'event_type', 'unknown'),
]

CATALOG_CASES = [
    ('catalog missing column', 'item_id,seller_id,price\ni1,s,1\n', 1,
     'category', 'missing required column'),
    ('ragged image', CATALOG + 'i4,s1,A>B>C,1,,,,1 2 3\n', 5, 'image',
     'image has 3 values, expected 2 (as on line 2)'),
    ('bad image value', CATALOG + 'i4,s1,A>B>C,1,,,,1 x\n', 5, 'image',
     "image value 'x' is not a finite number"),
    ('negative price', CATALOG + 'i4,s1,A>B>C,-1,,,,1 2\n', 5, 'price',
     "price must be a finite number >= 0, got '-1'"),
    ('text price', CATALOG + 'i4,s1,A>B>C,cheap,,,,1 2\n', 5, 'price',
     'finite number'),
    ('empty price', CATALOG + 'i4,s1,A>B>C,,,,,1 2\n', 5, 'price',
     'empty price'),
    ('category levels', CATALOG + 'i4,s1,A>B,1,,,,1 2\n', 5, 'category',
     'has 2 levels, expected 3'),
    ('category empty level', CATALOG + 'i4,s1,A>>C,1,,,,1 2\n', 5,
     'category', 'empty level'),
    ('duplicate catalog item', CATALOG + 'i1,s1,A>B>C,1,,,,1 2\n', 5,
     'item_id', 'first on line 2'),
]


@pytest.mark.parametrize('name,events,catalog,line,column,reason', EVENT_CASES,
                         ids=[c[0] for c in EVENT_CASES])
def test_event_errors(tmp_path, name, events, catalog, line, column, reason):
  path = write(tmp_path, 'events.csv', events)
  cat = write(tmp_path, 'items.csv', catalog) if catalog else None
  with pytest.raises(DataError) as e:
    readers.read_events(path, cat)
  assert_error(e.value, path, line, column, reason)


@pytest.mark.parametrize('name,catalog,line,column,reason', CATALOG_CASES,
                         ids=[c[0] for c in CATALOG_CASES])
def test_catalog_errors(tmp_path, name, catalog, line, column, reason):
  path = write(tmp_path, 'events.csv', EVENTS)
  cat = write(tmp_path, 'items.csv', catalog)
  with pytest.raises(DataError) as e:
    readers.read_events(path, cat)
  assert_error(e.value, cat, line, column, reason)


def test_encoding_and_missing_file(tmp_path):
  path = write(tmp_path, 'events.csv', EVENTS.encode() + b'u\xff,i1,5,view\n')
  with pytest.raises(DataError) as e:
    readers.read_events(path)
  assert_error(e.value, path, 5, '-', 'invalid UTF-8')
  missing = str(tmp_path / 'nope.csv')
  with pytest.raises(DataError) as e:
    readers.read_events(missing)
  assert_error(e.value, missing, 0, '-', 'no such file')


def test_allow_duplicates(tmp_path):
  path = write(tmp_path, 'events.csv', EVENTS + 'u1,i1,100,cart\n')
  inter, _, _ = readers.read_events(path, allow_duplicates=True)
  assert len(inter) == 4


def test_events_with_catalog(tmp_path):
  path = write(tmp_path, 'events.csv', EVENTS)
  inter, cat, vocabs = readers.read_events(path, write(tmp_path, 'c.csv',
                                                       CATALOG))
  np.testing.assert_array_equal(inter.item, [0, 1, 1])   # catalog order
  np.testing.assert_array_equal(inter.timestamp, [100, 1600000000, 100])
  np.testing.assert_array_equal(inter.event, [0, 1, 3])
  assert vocabs['item'].to_json() == ['i1', 'i2', 'i3']
  assert vocabs['seller'].to_json() == ['s1', 's2']
  # Categories are whole path prefixes: B under A and B under E differ.
  assert vocabs['category'].to_json() == [
      'A', 'E', 'A>B', 'E>B', 'A>B>C', 'A>B>D', 'E>B>C']
  np.testing.assert_array_equal(cat.taxonomy, [[0, 2, 4], [0, 2, 5],
                                               [1, 3, 6]])
  np.testing.assert_array_equal(cat.category_parent, [-1, -1, 0, 1, 2, 2, 3])
  np.testing.assert_allclose(cat.margin, [0.1, 0, 0.5])
  np.testing.assert_array_equal(cat.created_at, [1577836800, 5, 0])
  assert vocabs['token'].raw(0) == ''
  np.testing.assert_array_equal(cat.text, [[1, 2, 0], [0, 0, 0], [3, 1, 4]])
  np.testing.assert_allclose(cat.image, [[0, 1], [2, 3], [4, 5]])


def test_string_and_int_ids(tmp_path):
  """Integer-looking ids become ints; one non-integer keeps all as text."""
  ints = write(tmp_path, 'a.csv', f'{HEAD}\n10,7,1,view\n3,7,2,view\n')
  inter, _, vocabs = readers.read_events(ints)
  assert vocabs['user'].to_json() == [10, 3]
  np.testing.assert_array_equal(inter.user, [0, 1])
  mixed = write(tmp_path, 'b.csv', f'{HEAD}\n10,007,1,view\nx,7,2,view\n')
  inter, _, vocabs = readers.read_events(mixed)
  assert vocabs['user'].to_json() == ['10', 'x']
  assert vocabs['item'].to_json() == ['007', '7']       # no collision
  # Int events against a text catalog still match ('7' == '7').
  cat = write(tmp_path, 'c.csv', 'item_id,seller_id,category,price\n'
              'x7,s,A,1\n7,s,A,2\n')
  inter, _, vocabs = readers.read_events(ints, cat)
  np.testing.assert_array_equal(inter.item, [1, 1])


def test_optional_columns(tmp_path):
  path = write(tmp_path, 'e.csv', f'{HEAD},rating,device,location,hour\n'
               'u,i,1,VIEW,4.5,Mobile,Paris,0\nu,j,2,cart,,,,\n'
               'v,i,3,review,nan,app,Berlin,23\n')
  inter, cat, vocabs = readers.read_events(path)
  assert cat is None
  np.testing.assert_array_equal(inter.rating, [4.5, np.nan, np.nan])
  np.testing.assert_array_equal(inter.device, [2, 0, 4])
  assert vocabs['location'].to_json() == ['', 'Paris', 'Berlin']
  np.testing.assert_array_equal(inter.location, [1, 0, 2])
  np.testing.assert_array_equal(inter.hour, [0, -1, 23])
  assert EVENT_TYPES[inter.event[2]] == 'review'


def test_parquet(tmp_path):
  df = pd.DataFrame(dict(
      user_id=[5, 6, 5], item_id=['a', 'b', 'a'],
      timestamp=pd.to_datetime(['2020-01-01', '2020-01-02', '2020-01-03']),
      event_type=['view', 'cart', 'purchase']))
  path = str(tmp_path / 'e.parquet')
  df.to_parquet(path)
  inter, _, vocabs = readers.read_events(path)
  assert vocabs['user'].to_json() == [5, 6]
  np.testing.assert_array_equal(inter.timestamp,
                                [1577836800, 1577923200, 1578009600])
  df['timestamp'] = [1, -2, 3]
  df.to_parquet(path)
  with pytest.raises(DataError) as e:
    readers.read_events(path)
  assert_error(e.value, path, 3, 'timestamp', 'negative')   # row 1 -> line 3
  df.drop(columns='item_id').to_parquet(path)
  with pytest.raises(DataError) as e:
    readers.read_events(path)
  assert_error(e.value, path, 1, 'item_id', 'missing required column')


# ------------------------------------------------------------------ txt files

LIGHTGCN_CASES = [
    ('item not int', '0 1 2\n1 3 x4 5\n', 2, 'item', "'x4'"),
    ('user not int', '0 1 2\nu1 3\n', 2, 'user', "'u1'"),
    ('negative', '0 1 2\n1 -3\n', 2, 'item', 'negative id -3'),
    ('float', '0 1 2.5\n', 1, 'item', "'2.5'"),
    ('empty', '', 1, '-', 'empty file'),
    ('only spaces', ' \n\n', 1, '-', 'empty file'),
    ('duplicate item', '0 1 2\n1 4 5 4\n', 2, 'item',
     'duplicate item 4 on this line'),
    ('too large', '0 99999999999\n', 1, 'item', 'too large'),
    ('encoding', b'0 1\n1 2\n2 \xe9\n', 3, '-', 'UTF-8'),
]


@pytest.mark.parametrize('name,text,line,column,reason', LIGHTGCN_CASES,
                         ids=[c[0] for c in LIGHTGCN_CASES])
def test_lightgcn_errors(tmp_path, name, text, line, column, reason):
  write(tmp_path, 'train.txt', '0 1\n')
  path = write(tmp_path, 'test.txt', text)
  with pytest.raises(DataError) as e:
    readers.read_lightgcn(str(tmp_path))
  assert_error(e.value, path, line, column, reason)


def test_lightgcn_parse(tmp_path):
  write(tmp_path, 'train.txt', '0 3 1 2\r\n\n2\t5 0\n1\n  1 4  \n')
  write(tmp_path, 'test.txt', '0 4 3\n2 6\n')
  ds = readers.read_lightgcn(str(tmp_path))
  assert (ds.num_users, ds.num_items) == (3, 7)
  np.testing.assert_array_equal(ds.train.user, [0, 0, 0, 2, 2, 1])
  np.testing.assert_array_equal(ds.train.item, [3, 1, 2, 5, 0, 4])
  np.testing.assert_array_equal(ds.train.timestamp, np.arange(6))
  assert readers.count_seen(ds.train, ds.test) == 1       # (0, 3) is seen
  assert ds.vocabs['item'].raw(6) == 6
  one = readers.read_lightgcn(str(tmp_path / 'test.txt'))
  assert (len(one.train), len(one.test), one.num_items) == (3, 0, 7)
  with pytest.raises(DataError) as e:
    readers.read_lightgcn(str(tmp_path / 'nope'))
  assert 'no such file' in str(e.value)


def test_lightgcn_matches_python_split(tmp_path):
  rng = np.random.default_rng(0)
  lines = [' '.join(map(str, [u, *rng.choice(1000, rng.integers(0, 30),
                                             replace=False)]))
           for u in rng.permutation(200)]
  path = write(tmp_path, 'x.txt', '\n'.join(lines) + '\n')
  ds = readers.read_lightgcn(path)
  pairs = [(int(t[0]), int(i)) for t in map(str.split, lines) for i in t[1:]]
  np.testing.assert_array_equal(np.stack([ds.train.user, ds.train.item], 1),
                                np.array(pairs).reshape(-1, 2))


SASREC_CASES = [
    ('three fields', '1 1\n1 2 3\n', 2, '-', 'expected 2 fields'),
    ('one field', '1 1\n1\n', 2, '-', 'got 1'),
    ('blank line', '1 1\n\n1 2\n', 2, '-', 'got 0'),
    ('not int', '1 1\n1 b\n', 2, 'item', "'b'"),
    ('empty', '', 1, '-', 'empty file'),
]


@pytest.mark.parametrize('name,text,line,column,reason', SASREC_CASES,
                         ids=[c[0] for c in SASREC_CASES])
def test_sasrec_errors(tmp_path, name, text, line, column, reason):
  path = write(tmp_path, 'seq.txt', text)
  with pytest.raises(DataError) as e:
    readers.read_sasrec(path)
  assert_error(e.value, path, line, column, reason)


def test_sasrec_split(tmp_path):
  text = ''.join(f'{u} {i}\n' for u, i in
                 [(1, 10), (1, 11), (1, 12), (1, 13), (2, 11), (2, 14),
                  (2, 10), (3, 12), (3, 10)])
  ds = readers.read_sasrec(write(tmp_path, 'seq.txt', text + '\n'))
  assert ds.vocabs['user'].to_json() == [1, 2, 3]
  assert ds.vocabs['item'].to_json() == [10, 11, 12, 13, 14]
  np.testing.assert_array_equal(ds.test.item, [3, 0])     # 13 and 10
  np.testing.assert_array_equal(ds.valid.item, [2, 4])    # 12 and 14
  assert len(ds.train) == 5              # user 3 (2 events) stays in train


# ------------------------------------------------------- splits and save/load

def test_make_dataset_splits(tmp_path):
  rows = [f'u{u},i{(u * 7 + t) % 13},{1000 + 10 * t + u},view'
          for u in range(20) for t in range(6)]
  path = write(tmp_path, 'e.csv', HEAD + '\n' + '\n'.join(rows) + '\n')
  for split in ('temporal', 'random', 'leave_last_out'):
    ds = readers.read_events_dataset(path, split=split, test_frac=0.3)
    assert len(ds.train) + len(ds.test) == 120, split
  ds = readers.read_events_dataset(path, cold_user_frac=0.2,
                                   cold_item_frac=0.1, seed=1)
  assert (len(ds.cold_users), len(ds.cold_items)) == (4, 1)
  assert not np.isin(ds.train.user, ds.cold_users).any()
  assert not np.isin(ds.train.item, ds.cold_items).any()
  with pytest.raises(ValueError, match='split must be'):
    readers.read_events_dataset(path, split='bogus')


def assert_same(a, b):
  assert a.summary() == b.summary()
  for split in ('train', 'valid', 'test'):
    x, y = getattr(a, split), getattr(b, split)
    assert (x is None) == (y is None)
    for f in () if x is None else x.FIELDS:
      np.testing.assert_array_equal(getattr(x, f), getattr(y, f))
  assert (a.catalog is None) == (b.catalog is None)
  if a.catalog is not None:
    for f in ('seller', 'taxonomy', 'price', 'text', 'category_parent',
              'image', 'created_at', 'margin'):
      np.testing.assert_array_equal(getattr(a.catalog, f),
                                    getattr(b.catalog, f))
  assert {k: v.to_json() for k, v in a.vocabs.items()} == {
      k: v.to_json() for k, v in b.vocabs.items()}


def test_save_load_round_trip(tmp_path):
  events = readers.read_events_dataset(
      write(tmp_path, 'e.csv', EVENTS), write(tmp_path, 'c.csv', CATALOG),
      split='random', test_frac=0.5)
  write(tmp_path, 's.txt', '1 5\n1 6\n1 7\n2 5\n2 6\n2 8\n')
  sasrec = readers.read_sasrec(str(tmp_path / 's.txt'))
  for ds in (events, sasrec):
    out = str(tmp_path / 'saved')
    data_io.save_dataset(ds, out)
    assert_same(ds, data_io.load_dataset_dir(out))
  # Overwriting leaves no temporary directories behind.
  assert sorted(os.listdir(tmp_path)) == ['c.csv', 'e.csv', 's.txt', 'saved']


def test_load_rejects_partial_dirs(tmp_path):
  ds = readers.read_sasrec(write(tmp_path, 's.txt', '1 5\n1 6\n1 7\n'))
  out = tmp_path / 'saved'
  data_io.save_dataset(ds, str(out))
  (out / 'vocab.item.json').unlink()
  with pytest.raises(DataError, match='listed in manifest.json but missing'):
    data_io.load_dataset_dir(str(out))
  data_io.save_dataset(ds, str(out))
  with open(out / 'arrays.npz', 'r+b') as f:
    f.truncate(100)
  with pytest.raises(DataError, match='partial or mismatched'):
    data_io.load_dataset_dir(str(out))
  (out / 'manifest.json').unlink()
  with pytest.raises(DataError, match='missing: not a saved dataset'):
    data_io.load_dataset_dir(str(out))
  with pytest.raises(FileExistsError):           # not ours: never replaced
    data_io.save_dataset(ds, str(out))


def test_save_failure_leaves_old_dataset(tmp_path, monkeypatch):
  ds = readers.read_sasrec(write(tmp_path, 's.txt', '1 5\n1 6\n1 7\n'))
  out = str(tmp_path / 'saved')
  data_io.save_dataset(ds, out)
  def boom(*args, **kwargs):
    raise OSError('disk full')
  monkeypatch.setattr(data_io.np, 'savez', boom)
  with pytest.raises(OSError, match='disk full'):
    data_io.save_dataset(ds, out)
  assert sorted(os.listdir(tmp_path)) == ['s.txt', 'saved']
  assert_same(ds, data_io.load_dataset_dir(out))


# ------------------------------------------------------------------ property

_ID = st.text('abcXYZ019_-," ', min_size=1, max_size=6).map(str.strip).filter(
    bool)
_ROW = st.tuples(_ID, _ID, st.integers(0, 2_000_000_000),
                 st.sampled_from(EVENT_TYPES + ('VIEW', 'Cart')))
# column -> bad values; each gives a DataError at its own row.
_CORRUPT = dict(user_id=[''], item_id=[''],
                timestamp=['-1', 'nan', '', 'soon', '1e400'],
                event_type=['', 'like'])


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(rows=st.lists(_ROW, min_size=1, max_size=12),
                  corrupt=st.tuples(st.integers(0, 11),
                                    st.sampled_from(sorted(_CORRUPT)),
                                    st.integers(0, 4)))
def test_random_rows_parse_and_corruptions_are_located(rows, corrupt):
  # Timestamp + row index keeps (user, item, timestamp) unique.
  rows = [[u, i, str(t * 16 + n), e] for n, (u, i, t, e) in enumerate(rows)]
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'e.csv')
    def save(rows):
      buf = io.StringIO()
      csv.writer(buf, lineterminator='\n').writerows(
          [HEAD.split(',')] + rows)
      with open(path, 'w') as f:
        f.write(buf.getvalue())
    save(rows)
    inter, _, vocabs = readers.read_events(path)
    assert len(inter) == len(rows)
    for n, (u, i, _, e) in enumerate(rows):
      assert str(vocabs['user'].raw(inter.user[n])) == str(
          int(u) if isinstance(vocabs['user'].raw(0), int) else u)
      assert EVENT_TYPES[inter.event[n]] == e.lower()
    row, column, k = corrupt
    row %= len(rows)
    bad = _CORRUPT[column][k % len(_CORRUPT[column])]
    rows[row][HEAD.split(',').index(column)] = bad
    save(rows)
    with pytest.raises(DataError) as err:
      readers.read_events(path)
    assert (err.value.line, err.value.column) == (row + 2, column), str(
        err.value)
