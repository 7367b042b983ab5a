"""Sampler throughput: seeds per second for 2-hop neighbourhoods, in a plain
loop and through tf.data with 1 and 2 workers.

  python tools/bench_sampler.py [--fanouts=15,10] [--sampler=uniform]
      [--batch=1024] [--batches=40]

Seeds are uniform over the default synthetic marketplace's users and items
(the sampler's input in training: users, positives and negatives). The last
stdout line is one JSON object: seeds_per_s for 'loop', 'tfdata_1' and
'tfdata_2' (medians of 3 repeats), the speed-up of 2 workers over 1, and the
graph's size.
"""

import json
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_FANOUTS = flags.DEFINE_list('fanouts', ['15', '10'], 'Per-hop fan-outs.')
_SAMPLER = flags.DEFINE_enum('sampler', 'uniform',
                             ['uniform', 'random_walk', 'temporal'],
                             'Sampler.')
_BATCH = flags.DEFINE_integer('batch', 1024, 'Seeds per batch.')
_BATCHES = flags.DEFINE_integer('batches', 40, 'Batches per measurement.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Measurements (median kept).')


def main(argv):
  del argv
  import numpy as np
  import tensorflow as tf
  tf.config.set_visible_devices([], 'GPU')
  from recjax.data import synthetic
  from recjax.graph import samplers
  from recjax.graph.nodes import NodeGraph
  ds = synthetic.generate_marketplace()
  g = NodeGraph.from_dataset(ds)
  fan = tuple(int(f) for f in _FANOUTS.value)
  s = {'uniform': lambda: samplers.NeighborSampler(g, fan),
       'random_walk': lambda: samplers.RandomWalkSampler(g, fan),
       'temporal': lambda: samplers.TemporalSampler(g, fan)}[_SAMPLER.value]()
  lo, hi = g.offsets['user'], g.offsets['seller']
  t_max = int(ds.train.timestamp.max()) + 1
  b, n = _BATCH.value, _BATCHES.value

  def make(step):
    rng = np.random.default_rng([0, step])
    seeds = rng.integers(lo, hi, b).astype(np.int32)
    blk = s.sample(seeds, rng, times=np.full(b, t_max))
    return {f'{k}{l}': v for k in ('ids', 'rel', 'weight', 'dt')
            for l, v in enumerate(getattr(blk, k))}

  def loop():
    t = time.perf_counter()
    for i in range(n):
      make(i)
    return n * b / (time.perf_counter() - t)

  def tfdata(workers):
    def run():
      it = samplers.tf_dataset(make, n + 1, num_parallel_calls=workers,
                               prefetch=4).as_numpy_iterator()
      next(it)                       # Start-up (tracing) is not throughput.
      t = time.perf_counter()
      for _ in it:
        pass
      return n * b / (time.perf_counter() - t)
    return run

  out = dict(sampler=_SAMPLER.value, fanouts=list(fan), batch=b,
             nodes=g.num_nodes, edges=g.num_edges)
  for name, fn in (('loop', loop), ('tfdata_1', tfdata(1)),
                   ('tfdata_2', tfdata(2))):
    fn()                             # Warm-up.
    out[f'{name}_seeds_per_s'] = round(float(np.median(
        [fn() for _ in range(_REPEATS.value)])), 1)
  out['speedup_2_over_1'] = round(out['tfdata_2_seeds_per_s']
                                  / out['tfdata_1_seeds_per_s'], 3)
  out['nodes_per_batch'] = int(b * (1 + fan[0] + fan[0] * fan[1]))
  print(json.dumps(out), flush=True)


if __name__ == '__main__':
  app.run(main)
