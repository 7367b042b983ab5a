"""Times the synthetic marketplace generator at scale.

  python tools/bench_marketplace.py --events=10000000 [--users=N --items=N
      --sellers=N --seed=0 --split]

Users, items and sellers scale with the events unless given (10M events:
200k users, 100k items, 5k sellers). The world and its events come from
`synthetic.generate_events`; `--split` also times `split_marketplace`.
The last stdout line is one JSON object: gen_s, peak_rss_mb, events, users,
items, sellers, the count of each event type (and split_s, train, test with
--split).
"""

import json
import os
import resource
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_EVENTS = flags.DEFINE_integer('events', 10_000_000, 'Events to generate.')
_USERS = flags.DEFINE_integer('users', None, 'Default: events / 50.')
_ITEMS = flags.DEFINE_integer('items', None, 'Default: events / 100.')
_SELLERS = flags.DEFINE_integer('sellers', None, 'Default: items / 20.')
_SEED = flags.DEFINE_integer('seed', 0, 'Generator seed.')
_SPLIT = flags.DEFINE_bool('split', False, 'Also time the train/test split.')


def main(argv):
  del argv
  import numpy as np
  from recjax.data import synthetic
  from recjax.data.schema import EVENT_TYPES
  n = _EVENTS.value
  users = _USERS.value or max(300, n // 50)
  items = _ITEMS.value or max(200, n // 100)
  sellers = _SELLERS.value or max(10, min(items, items // 20))
  cfg = synthetic.MarketplaceConfig(num_users=users, num_items=items,
                                    num_sellers=sellers, num_events=n,
                                    seed=_SEED.value)
  t0 = time.perf_counter()
  events, catalog, _ = synthetic.generate_events(cfg)
  gen_s = time.perf_counter() - t0
  counts = np.bincount(events.event, minlength=len(EVENT_TYPES))
  out = dict(gen_s=round(gen_s, 2), events=len(events), users=users,
             items=items, sellers=sellers,
             active_users=int(len(np.unique(events.user))),
             **{t: int(c) for t, c in zip(EVENT_TYPES, counts)})
  if _SPLIT.value:
    t0 = time.perf_counter()
    ds = synthetic.split_marketplace(events, catalog, cfg)
    out.update(split_s=round(time.perf_counter() - t0, 2),
               train=len(ds.train), test=len(ds.test))
  # ru_maxrss is in KiB on Linux.
  out['peak_rss_mb'] = round(
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
  print(json.dumps(out), flush=True)


if __name__ == '__main__':
  app.run(main)
