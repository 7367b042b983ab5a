"""PairSampler: static shapes, determinism by step, true negatives."""

import numpy as np

from recjax.data.sampling import PairSampler, UserSampler


def test_deterministic_and_negatives_are_not_positives():
  rng = np.random.default_rng(0)
  u = rng.integers(0, 50, 2000)
  i = rng.integers(0, 30, 2000)   # Dense: collisions would be frequent.
  s = PairSampler(u, i, 30, batch_size=128, num_negatives=3, seed=7)
  b1, b2 = s.batch(17), PairSampler(u, i, 30, 128, 3, seed=7).batch(17)
  for k in b1:
    np.testing.assert_array_equal(b1[k], b2[k])
  assert b1['neg'].shape == (128, 3)
  pos = set(zip(u.tolist(), i.tolist()))
  for step in range(5):
    b = s.batch(step)
    for user, negs in zip(b['user'], b['neg']):
      assert not any((user, n) in pos for n in negs)


def test_epoch_covers_pairs_once_and_shared_negatives():
  u, i = np.arange(100), np.arange(100) % 10
  s = PairSampler(u, i, 10, batch_size=25, num_negatives=4,
                  shared_negatives=True)
  assert s.steps_per_epoch == 4
  seen = np.concatenate([s.batch(k)['user'] for k in range(4)])
  np.testing.assert_array_equal(np.sort(seen), u)
  assert s.batch(0)['neg'].shape == (4,)
  assert not np.array_equal(s.batch(0)['user'], s.batch(4)['user'])


def test_user_sampler_gives_each_users_positives():
  rng = np.random.default_rng(1)
  u = rng.integers(0, 40, 600)
  i = rng.integers(0, 500, 600)
  key = np.unique(u.astype(np.int64) * 1000 + i)
  u, i = (key // 1000).astype(np.int32), (key % 1000).astype(np.int32)
  s = UserSampler(u, i, batch_size=8, max_positives=12, seed=3)
  assert s.steps_per_epoch == len(np.unique(u)) // 8
  truth = {k: set(i[u == k].tolist()) for k in np.unique(u).tolist()}
  users = []
  for step in range(s.steps_per_epoch):
    b = s.batch(step)
    assert b['pos'].shape == (8, 12) and b['pos_mask'].shape == (8, 12)
    for user, pos, m in zip(b['user'], b['pos'], b['pos_mask']):
      got = pos[m > 0].tolist()
      assert len(got) == min(12, len(truth[user]))
      assert len(set(got)) == len(got) and set(got) <= truth[user]
      users.append(int(user))
  assert len(set(users)) == len(users)   # Each user at most once per epoch.
  b = UserSampler(u, i, 8, 12, seed=3).batch(2)
  np.testing.assert_array_equal(b['pos'], s.batch(2)['pos'])
