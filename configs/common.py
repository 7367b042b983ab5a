"""Defaults shared by every experiment config; each config overrides parts."""

import os

import ml_collections

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO), 'shared', 'data')


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = 'marketplace'     # see recjax/data/registry.py
  c.data.path = ''
  c.data.catalog = ''
  c.data.split = 'temporal'       # for csv/parquet event logs
  c.data.test_frac = 0.2
  c.data.seed = 0
  # SASRec txt (leave-last-out): validate on this many users only, the rest
  # train on their validation event (gSASRec's protocol); 0 = every user.
  c.data.valid_users = 0
  # Event types whose user-item pairs are graph edges (and, unless
  # target_events says otherwise, the training positives).
  c.data.event_types = ('click', 'cart', 'purchase', 'review')
  # Event types whose pairs are the training positives; () = event_types.
  c.data.target_events = ()
  c.data.marketplace = ml_collections.ConfigDict()   # MarketplaceConfig fields

  c.model = ml_collections.ConfigDict()
  c.model.name = 'lightgcn'
  c.model.embed_dim = 64
  c.model.num_layers = 3
  c.model.init_std = 0.1
  c.model.spmm_backend = 'auto'   # 'auto' | 'ffi' (CPU kernel) | 'xla'

  c.loss = ml_collections.ConfigDict()
  c.loss.name = 'bpr'             # 'bpr' | 'softmax' | 'ccl' (shared negs)
  c.loss.num_negatives = 1
  c.loss.temperature = 0.1
  c.loss.normalize = True
  c.loss.l2 = 1e-4
  c.loss.margin = 0.9             # ccl: negatives below this cosine are ignored
  c.loss.negative_weight = 150.0  # ccl: weight of the negatives' hinge

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = 'adam'
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = 'constant'
  c.optimizer.warmup_steps = 0
  c.optimizer.weight_decay = 0.0
  c.optimizer.grad_clip_norm = 0.0
  c.optimizer.b2 = 0.999                # Adam's second-moment decay

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 2048
  c.train.num_epochs = 10
  c.train.num_steps = -1          # > 0 overrides num_epochs
  c.train.budget_minutes = 0.0    # > 0 stops training after this much time
  c.train.log_every = 50
  c.train.eval_every_epochs = 0   # 0: evaluate only at the end
  c.train.patience = 0            # evals without improvement; 0 = off
  c.train.checkpoint_every_steps = 1000
  c.train.keep_checkpoints = 2
  c.train.tensorboard = True
  c.train.progress = True

  c.eval = ml_collections.ConfigDict()
  c.eval.ks = (10, 20)
  c.eval.batch_size = 1024
  c.eval.select_metric = 'recall@20'
  c.eval.final = True            # False: skip the final evaluation
  c.eval.cold_reveal = 3          # cold-start users reveal their first N test events

  # Export and serving (python -m recjax.main --mode=export; recjax.serve).
  c.serve = ml_collections.ConfigDict()
  c.serve.history_len = 100       # events per user the ranker attends over
  c.serve.index_kind = 'auto'     # 'auto' | 'exact' | 'scann'
  c.serve.target_recall = 0.95    # ScaNN tuned to this recall@k vs exact
  c.serve.ranker_steps = 800      # 0: bundle without a ranker
  c.serve.listwise_steps = 300    # learned listwise re-ranker; 0: off
  c.serve.listwise_top = 64       # items it re-scores per request
  c.serve.ranker = ml_collections.ConfigDict()   # RankerConfig overrides
  c.serve.ranker.embed_dim = 32
  c.serve.ranker.layers = 0       # history self-attention: 4x slower, no gain
  c.serve.ranker.buckets = (512, 2048, 10240)     # compiled candidate counts
  c.serve.ranker.batch_size = 256
  c.serve.ranker.learning_rate = 2e-3

  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (-1, 1)          # -1: every visible device on 'data'
  c.mesh.axes = ('data', 'model')
  # Logical axis -> mesh axis. Tables shard by rows over 'model'.
  c.sharding_rules = (
      ('batch', 'data'),
      ('node', 'model'),
      ('user', 'model'),
      ('item', 'model'),
      ('vocab', 'model'),
      ('embed', None),
      ('heads', None),
      ('mlp', None),
      ('seq', None),
  )
  return c
