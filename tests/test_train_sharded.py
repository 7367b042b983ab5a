"""The same short run on 1 device and on 8 simulated CPU devices (mesh
data x model = 4 x 2) gives the same loss and metrics, and the embedding
table is really sharded by rows over 'model'."""

import numpy as np

from helpers import run_main

METRICS = ('loss', 'recall@20', 'ndcg@20', 'recall@10', 'ndcg@10',
           'precision@20', 'mrr@20', 'coverage@20', 'params_l2')


def test_one_vs_eight_devices(tmp_path):
  one, _ = run_main(tmp_path / 'one', overrides=['--config.mesh.shape=(1,1)'],
                    devices=1)
  eight, _ = run_main(tmp_path / 'eight',
                      overrides=['--config.mesh.shape=(4,2)'], devices=8)
  assert one['devices'] == 1 and eight['devices'] == 8
  assert eight['mesh'] == {'data': 4, 'model': 2}
  for k in METRICS:
    np.testing.assert_allclose(eight[k], one[k], rtol=1e-5, atol=1e-7,
                               err_msg=k)
  table = eight['sharding']["['embedding']"]
  assert table['spec'] == "('model', None)"
  full_rows = one['sharding']["['embedding']"]['shard_shape'][0]
  assert table['shard_shape'][0] * 2 == full_rows
