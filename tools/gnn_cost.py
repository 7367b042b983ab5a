"""Per-pair and per-node cost of a sampled GNN training step, from XLA's
cost analysis of the compiled step (no timing: it compiles, it does not
run). These are the constants docs/scaling.md scales to a pod.

  python tools/gnn_cost.py --embed_dim=128 --fanouts=15,10 --batch_size=1024

A step scores B (user, item) pairs against B shared negatives: 3B seeds,
each with its sampled tree (1 + f1 + f1 f2 nodes). The last stdout line is
one JSON object: flops and bytes per step, per training pair and per
sampled node, the number of sampled nodes and the parameter count of the
layers (the id table is excluded: it scales with the graph, not the step).
"""

import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_DIM = flags.DEFINE_integer('embed_dim', 128, 'Embedding width D.')
_FANOUTS = flags.DEFINE_list('fanouts', ['15', '10'], 'Per-hop fan-outs.')
_BATCH = flags.DEFINE_integer('batch_size', 1024, 'Training pairs B.')
_MODEL = flags.DEFINE_enum('model', 'graphsage', ['graphsage', 'pinsage',
                                                  'gat', 'tgat'], 'Model.')


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from recjax.data import synthetic
  from recjax.graph import samplers
  from recjax.graph.nodes import NodeGraph, node_features
  from recjax.models.gnn import NodeEncoder, SampledGNN

  ds = synthetic.generate_marketplace(synthetic.MarketplaceConfig(
      num_users=2000, num_items=1000, num_sellers=50, num_events=50000))
  g = NodeGraph.from_dataset(ds)
  feats_np = node_features(g, ds)
  feats = jax.tree.map(jnp.asarray, feats_np)
  b, d = _BATCH.value, _DIM.value
  fan = tuple(int(f) for f in _FANOUTS.value)
  s = samplers.NeighborSampler(g, fan)
  seeds = np.r_[g.ids('user', np.arange(b) % g.counts['user']),
                g.ids('item', np.arange(2 * b) % g.counts['item'])]
  block = s.sample(seeds, np.random.default_rng(0)).as_dict()
  enc = NodeEncoder(num_nodes=g.num_nodes, embed_dim=d,
                    item_offset=g.offsets['item'], num_items=g.counts['item'],
                    text_vocab=int(feats_np['text'].max()) + 1,
                    price_buckets=16)
  model = SampledGNN(kind=_MODEL.value, encoder=enc, num_layers=len(fan),
                     num_relations=s.num_relations)
  params = model.init(jax.random.key(0), block, feats)['params']
  tx = optax.adam(1e-3)

  def loss(p, block):
    e = model.apply({'params': p}, block, feats, train=True,
                    rngs={'dropout': jax.random.key(1)})
    u, pos, neg = e[:b], e[b:2 * b], e[2 * b:]
    logits = jnp.concatenate([jnp.sum(u * pos, -1, keepdims=True),
                              u @ neg.T], -1) / 0.1
    return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[:, 0])

  def step(p, o, block):
    l, grads = jax.value_and_grad(loss)(p, block)
    updates, o = tx.update(grads, o, p)
    return optax.apply_updates(p, updates), o, l

  compiled = jax.jit(step).lower(params, tx.init(params), block).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  nodes = int(sum(len(x) for x in block['ids']))
  flops, nbytes = float(cost['flops']), float(cost['bytes accessed'])
  table = g.num_nodes * d   # the id rows: they scale with the graph
  layer_params = int(sum(x.size for x in jax.tree.leaves(params))) - table
  print(json.dumps(dict(
      model=_MODEL.value, embed_dim=d, fanouts=list(fan), pairs=b,
      seeds=3 * b, sampled_nodes=nodes, flops_per_step=flops,
      bytes_per_step=nbytes, flops_per_pair=round(flops / b),
      bytes_per_pair=round(nbytes / b), flops_per_node=round(flops / nodes),
      bytes_per_node=round(nbytes / nodes), layer_params=layer_params,
      backend=jax.default_backend())), flush=True)


if __name__ == '__main__':
  app.run(main)
