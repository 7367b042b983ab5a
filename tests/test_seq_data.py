"""recjax.data.sequences: padding, features, protocols and batching."""

import numpy as np
import pytest

from recjax.data import sequences, splits
from recjax.data.schema import EVENT_INDEX, Dataset, Interactions
from recjax.data.synthetic import MarketplaceConfig, generate_marketplace


def _inter(rows):
  """rows: (user, item, timestamp[, event])."""
  a = np.array(rows, np.int64)
  event = a[:, 3] if a.shape[1] > 3 else None
  return Interactions.create(a[:, 0], a[:, 1], timestamp=a[:, 2], event=event)


def _sasrec_dataset(seqs):
  """A leave-last-out Dataset from {user: [items in time order]}."""
  rows = [(u, i, t) for u, items in seqs.items() for t, i in enumerate(items)]
  inter = _inter(rows)
  train, valid, test = splits.leave_last_out(inter, num_valid=1)
  return Dataset('toy', num_users=max(seqs) + 1,
                 num_items=int(inter.item.max()) + 1, train=train,
                 valid=valid, test=test)


def test_build_right_aligns_and_buckets_gaps():
  inter = _inter([(1, 5, 100), (0, 3, 10), (1, 6, 101), (1, 7, 1000),
                  (0, 4, 10)])
  s = sequences.build(inter, num_users=3, width=4)
  np.testing.assert_array_equal(s.users, [0, 1])
  np.testing.assert_array_equal(s.item, [[0, 0, 4, 5], [0, 6, 7, 8]])
  np.testing.assert_array_equal(s.length, [2, 3])
  # First event 1; gap 0 s -> 2 + log2(1) = 2; 1 s -> 3; 899 s -> 2 + 9.
  np.testing.assert_array_equal(s.gap, [[0, 0, 1, 2], [0, 1, 3, 11]])
  np.testing.assert_array_equal(s.seen[1], [5, 6, 7])
  short = sequences.build(inter, num_users=3, width=2)
  np.testing.assert_array_equal(short.item, [[4, 5], [7, 8]])
  assert len(short.seen[1]) == 3          # masking uses the full history


def test_collapse_repeats_keeps_deepest_event():
  view, click, cart = (EVENT_INDEX[e] for e in ('view', 'click', 'cart'))
  inter = _inter([(0, 1, 1, view), (0, 1, 2, click), (0, 1, 3, cart),
                  (0, 2, 9, view), (0, 1, 20, view)])
  s = sequences.build(inter, 1, 5, collapse_repeats=True)
  np.testing.assert_array_equal(s.item[0], [0, 0, 2, 3, 2])
  np.testing.assert_array_equal(s.event[0, 2:], [cart, view, view])


def test_leave_last_out_protocol():
  ds = _sasrec_dataset({0: [1, 2, 3, 4, 5], 1: [6, 7, 8], 2: [9, 1, 2, 3]})
  tr = sequences.train_sequences(ds, width=4)
  # Train on all but the last 2: user 0 -> 1,2,3 (ids +1); user 1 has one
  # training event, too short for a next-item pair.
  np.testing.assert_array_equal(tr.users, [0, 2])
  np.testing.assert_array_equal(tr.item, [[0, 2, 3, 4], [0, 0, 10, 2]])
  valid = sequences.eval_set(ds, 4, 'valid')
  np.testing.assert_array_equal(valid.targets[:, 0], [4, 7, 2])
  np.testing.assert_array_equal(valid.history.item[0], [0, 2, 3, 4])
  test = sequences.eval_set(ds, 4, 'test')
  np.testing.assert_array_equal(test.targets[:, 0], [5, 8, 3])
  np.testing.assert_array_equal(test.history.item[0], [2, 3, 4, 5])
  np.testing.assert_array_equal(test.history.item[1], [0, 0, 7, 8])


def test_train_windows_cover_every_target_once():
  """stride = width - 1: a history longer than the window is cut into
  windows, latest first, that overlap by one event; each training event
  after the first is a next-item target exactly once."""
  ds = _sasrec_dataset({0: list(range(1, 10)), 1: [3, 4, 5, 6]})
  last = sequences.train_sequences(ds, width=4)
  tr = sequences.train_sequences(ds, width=4, stride=3)
  # User 0 trains on items 1..7 (ids 2..8): windows end at 7 and 4 events;
  # one ending at 1 event would hold no next-item pair.
  np.testing.assert_array_equal(tr.users, [0, 0, 1])
  np.testing.assert_array_equal(tr.item, [[5, 6, 7, 8], [2, 3, 4, 5],
                                          [0, 0, 4, 5]])
  np.testing.assert_array_equal(tr.length, [4, 4, 2])
  np.testing.assert_array_equal(tr.item[[0, 2]], last.item)
  targets = np.sort(tr.item[tr.users == 0][:, 1:].ravel())
  np.testing.assert_array_equal(targets, np.arange(3, 9))
  with pytest.raises(ValueError, match='stride'):
    sequences.train_sequences(ds, width=4, stride=0)


def test_leave_last_out_validates_a_subset_of_users():
  """gSASRec's split: only `valid_users` users hold a validation event; the
  others train on it. Nothing is lost or duplicated, test is unchanged."""
  rng = np.random.default_rng(3)
  rows = [(u, int(i), t) for u in range(40)
          for t, i in enumerate(rng.integers(1, 50, 2 + u % 6))]
  inter = _inter(rows)
  full = splits.leave_last_out(inter, num_valid=1)
  train, valid, test = splits.leave_last_out(inter, num_valid=1,
                                             valid_users=7, seed=1)
  assert len(np.unique(valid.user)) == len(valid) == 7
  assert set(valid.user) <= set(full[1].user)      # eligible users only
  assert len(train) + len(valid) + len(test) == len(inter)
  np.testing.assert_array_equal(test.user, full[2].user)
  np.testing.assert_array_equal(test.item, full[2].item)
  others = ~np.isin(full[1].user, valid.user)
  moved = full[1].take(others)      # their validation events now train
  key = lambda x: set(zip(x.user.tolist(), x.timestamp.tolist()))
  assert key(moved) <= key(train) and not key(valid) & key(train)
  again = splits.leave_last_out(inter, num_valid=1, valid_users=7, seed=1)
  np.testing.assert_array_equal(again[1].user, valid.user)
  everyone = splits.leave_last_out(inter, num_valid=1, valid_users=1000)
  assert len(everyone[1]) == len(full[1])
  with pytest.raises(ValueError, match='valid_users'):
    splits.leave_last_out(inter, valid_users=-1)


def test_temporal_protocol_on_marketplace():
  ds = generate_marketplace(MarketplaceConfig.tiny())
  es = sequences.eval_set(ds, 20, 'test', collapse_repeats=True)
  assert sequences.eval_set(ds, 20, 'valid') is None
  assert not np.isin(es.history.users, ds.cold_users).any()
  for u, seen, t in zip(es.history.users, es.history.seen, es.targets):
    t = t[t >= 0]
    assert len(t) and not np.isin(t, seen).any()
    assert set(t) == set(ds.test.item[ds.test.user == u])
  side = sequences.item_side_features(ds)
  assert side['seller'][0] == 0 and len(side['price']) == ds.num_items + 1
  assert side['price'][1:].min() == 1 and side['price'].max() == 10


def test_batcher_is_deterministic_and_bucketed():
  rng = np.random.default_rng(0)
  rows = [(u, int(i), t) for u in range(50)
          for t, i in enumerate(rng.integers(0, 30, 2 + u))]
  ds = Dataset('toy', 50, 30, train=_inter(rows), test=_inter(rows[:1]))
  tr = sequences.train_sequences(ds, width=33)
  b = sequences.SequenceBatcher(tr, batch_size=8, buckets=(8, 16), seed=3)
  assert b.widths == (8, 16, 33) and b.steps_per_epoch == 6
  seen_rows = []
  for step in range(b.steps_per_epoch):
    x = b.batch(step)
    assert x['item'].shape[0] == 8 and x['item'].shape[1] in b.widths
    assert set(x) == set(sequences.FEATURES) | {'user'}
    assert (x['user'] == x['user'][:, :1]).all()
    w = x['item'].shape[1]
    for row in x['item']:
      full = tr.item[np.flatnonzero((tr.item[:, -w:] == row).all(1))[0]]
      assert (full[:-w] == 0).all()     # nothing cut off on the left
      seen_rows.append(tuple(full))
  assert len(set(seen_rows)) == 48      # distinct rows within an epoch
  again = sequences.SequenceBatcher(tr, 8, (8, 16), seed=3)
  np.testing.assert_array_equal(again.batch(7)['item'], b.batch(7)['item'])
  # seen_mask: each row's user's whole training history, ids + 1.
  x, m = b.batch(9), b.seen_mask(9, 30)
  assert m.shape == (8, 31) and not m[:, 0].any()
  for u, row in zip(x['user'][:, -1], m):
    want = ds.train.item[ds.train.user == u]
    assert set(np.flatnonzero(row) - 1) == set(want)


def test_epoch_average_weighs_every_position_alike():
  """loss.average='epoch': a batch's loss is its positions' sum over the
  positions an average batch holds, so bucketed batches of short and of
  long histories weigh each position the same; over an epoch the batches'
  counts average to that normaliser (here every row is used)."""
  from ml_collections import ConfigDict  # pylint: disable=g-import-not-at-top
  from recjax.train import seq_trainer  # pylint: disable=g-import-not-at-top
  rows = [(u, int(i), t) for u in range(48)
          for t, i in enumerate(np.arange(2 + u) % 30)]
  ds = Dataset('toy', 48, 30, train=_inter(rows), test=_inter(rows[:1]))
  b = sequences.SequenceBatcher(sequences.train_sequences(ds, width=33),
                                batch_size=8, buckets=(8, 16), seed=3)
  cfg = lambda v: ConfigDict(dict(loss=dict(average=v),
                                  model=dict(name='bert4rec')))
  assert seq_trainer._epoch_normalizer(cfg('batch'), 'next', b) is None
  per = seq_trainer._epoch_normalizer(cfg('epoch'), 'next', b)
  counts = []
  for step in range(b.steps_per_epoch):
    x = b.batch(step)['item']
    counts.append(((x[:, 1:] > 0) & (x[:, :-1] > 0)).sum())
  assert len(set(counts)) > 1                       # short and long batches
  np.testing.assert_allclose(np.mean(counts), per)
  with pytest.raises(ValueError, match='loss.average'):
    seq_trainer._epoch_normalizer(cfg('user'), 'next', b)
  with pytest.raises(ValueError, match="loss.average='epoch'"):
    seq_trainer._epoch_normalizer(cfg('epoch'), 'cloze', b)


def test_tf_dataset_batches():
  pytest.importorskip('tensorflow')
  ds = _sasrec_dataset({u: list(range(u % 5, u % 5 + 6)) for u in range(10)})
  tr = sequences.train_sequences(ds, width=5)
  batches = list(sequences.to_tf_dataset(tr, 4, features=('item',)))
  assert len(batches) == 2 and batches[0]['item'].shape == (4, 5)
