"""Trains one graph model within a time budget and scores it on warm users,
cold users and cold items, each beside the popularity baseline.

  python tools/bench_gnn.py --model=graphsage --data=marketplace \
      --budget_minutes=10
  python tools/bench_gnn.py --model=lightgcn --data=../shared/data/gowalla \
      --budget_minutes=30

--model: lightgcn | graphsage | pinsage | gat | tgat. --data: 'marketplace'
(the synthetic marketplace; --users/--items/--events size it) or a LightGCN
txt directory (no catalog, so no cold-start slices). Models other than
lightgcn use configs/gnn_marketplace.py; lightgcn uses configs/quickstart.py
on the marketplace and configs/lightgcn_gowalla.py on a path.

The last stdout line is one JSON object: recall@20, ndcg@20,
popularity_recall@20, train_s, seeds_per_s (training pairs per second),
peak_rss_mb, and on the marketplace cold_user_recall@20,
cold_item_recall@20, popularity_cold_user_recall@20,
popularity_cold_item_recall@20 (and the ndcg@20 of each), plus epochs,
step_s and the settings; with --eval_every_epochs, a history of the
evaluations during training.
"""

import json
import math
import os
import resource
import sys
import tempfile

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'configs'))
sys.path.insert(0, REPO)

MODELS = ('lightgcn', 'graphsage', 'pinsage', 'gat', 'tgat')
_MODEL = flags.DEFINE_enum('model', 'graphsage', MODELS, 'Model.')
_DATA = flags.DEFINE_string('data', 'marketplace',
                            "'marketplace' or a LightGCN txt directory.")
_BUDGET = flags.DEFINE_float('budget_minutes', 10.0, 'Training time budget.')
_EPOCHS = flags.DEFINE_integer('epochs', None, 'Epoch cap (default: config).')
_STEPS = flags.DEFINE_integer('steps', None, 'Step cap (smoke runs).')
_BATCH = flags.DEFINE_integer('batch_size', None, 'Default: config.')
_FANOUTS = flags.DEFINE_list('fanouts', None, 'Per-hop fan-outs.')
_EVAL_FANOUTS = flags.DEFINE_list(
    'eval_fanouts', None, 'Per-hop fan-outs at evaluation (wider '
    'neighbourhoods, less sampling noise). Default: the training ones.')
_NEIGHBOR_WEIGHT = flags.DEFINE_enum(
    'neighbor_weight', None, ['uniform', 'symmetric'], 'graphsage (mean '
    "aggregator): uniform means, or symmetric, LightGCN's normalisation "
    '1 / sqrt(d_parent d_child) (graph.neighbor_weight). Default: uniform.')
_DIM = flags.DEFINE_integer('embed_dim', None, 'Default: config.')
_ID_DROPOUT = flags.DEFINE_float(
    'id_dropout', None, 'Training-time probability of hiding a node id '
    '(the cold-start path; datasets without content gain nothing from it). '
    'Default: config.')
_NORMALIZE = flags.DEFINE_bool('normalize', None, 'Unit-vector (cosine) '
                               'embeddings; --nonormalize scores by dot '
                               'product. Default: config.')
_TEMPERATURE = flags.DEFINE_float('temperature', None, 'Softmax '
                                  'temperature. Default: config.')
_IN_BATCH = flags.DEFINE_bool(
    'in_batch_negatives', None, "Score each user against the batch's other "
    'items too (free extra negatives, logQ-corrected for their '
    'popularity). Default: config.')
_RESIDUAL = flags.DEFINE_bool(
    'residual', None, "Add each seed's input embedding to the last layer's "
    'output (the id row reaches the score directly). Default: config.')
_ACTIVATION = flags.DEFINE_enum(
    'activation', None, ('relu', 'linear'), 'graphsage, pinsage: between '
    'layers. Default: config (relu).')
_DROPOUT = flags.DEFINE_float(
    'dropout', None, "Sampled models: training-time dropout on every "
    "layer's inputs, in [0, 1). Default: config (0).")
_LOGQ_WEIGHT = flags.DEFINE_float(
    'logq_weight', None, 'With --in_batch_negatives: the multiple of the '
    'logQ correction applied, >= 0 (below 1 keeps part of the popularity '
    'penalty, above 1 favours popular items). Default: config (1).')
_OUTPUT_L2 = flags.DEFINE_float(
    'output_l2', None, "L2 on the step's output embeddings (users, items, "
    'negatives); penalises their norms with --nonormalize. Default: config '
    '(0).')
_ID_L2 = flags.DEFINE_float(
    'id_l2', None, "LightGCN's L2 on the id-table rows of the step's users, "
    'items and negatives (sampled models). Default: config (0).')
_LOSS = flags.DEFINE_enum(
    'loss', None, ('softmax', 'ccl', 'bpr', 'multinomial'), 'Loss. Sampled '
    'models: softmax or ccl (cosine contrastive). Default: config.')
_MARGIN = flags.DEFINE_float('margin', None, 'ccl: cosine below which a '
                             'negative costs nothing. Default: config.')
_NEG_WEIGHT = flags.DEFINE_float('negative_weight', None, 'ccl: weight of '
                                 "the negatives' mean hinge. Default: config.")
_NEG = flags.DEFINE_integer('num_negatives', None, 'Shared negatives per '
                            'batch. Default: config.')
_HARD = flags.DEFINE_integer(
    'num_hard_negatives', None, 'pinsage: hard negatives per pair from '
    'random-walk ranks (the curriculum adds one per epoch up to this), >= 0; '
    '0 trains on the shared and in-batch negatives alone. Default: config '
    '(2).')
_LR = flags.DEFINE_float('lr', None, 'Peak learning rate. Default: config.')
_WEIGHT_DECAY = flags.DEFINE_float(
    'weight_decay', None, 'AdamW decoupled weight decay (switches the '
    'optimizer to adamw). Default: the config\'s optimizer.')
_TARGETS = flags.DEFINE_list(
    'target_events', None, 'Event types whose pairs are the training '
    'positives (graph edges keep every configured type). Default: config.')
_USERS = flags.DEFINE_integer('users', None, 'Marketplace users.')
_ITEMS = flags.DEFINE_integer('items', None, 'Marketplace items.')
_SELLERS = flags.DEFINE_integer('sellers', None, 'Marketplace sellers.')
_EVENTS = flags.DEFINE_integer('events', None, 'Marketplace events.')
_EVAL_EVERY = flags.DEFINE_integer(
    'eval_every_epochs', 0, 'Also evaluate every N epochs (the JSON\'s '
    'history: step, epoch, recall@20, ndcg@20 and, for the sampled models '
    'on the marketplace, the cold recalls); its time is not train_s. 0: only '
    'at the end.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Default: a temp dir.')

KEYS = ('recall@20', 'ndcg@20', 'popularity_recall@20',
        'popularity_ndcg@20', 'cold_user_recall@20', 'cold_user_ndcg@20',
        'popularity_cold_user_recall@20', 'popularity_cold_user_ndcg@20',
        'cold_item_recall@20', 'cold_item_ndcg@20',
        'popularity_cold_item_recall@20', 'popularity_cold_item_ndcg@20',
        'coverage@20', 'epochs', 'steps', 'train_s', 'step_s', 'eval_s',
        'devices', 'compilations', 'relation_attention')


def _config():
  on_path = _DATA.value != 'marketplace'
  if _MODEL.value == 'lightgcn':
    if _FANOUTS.value or _EVAL_FANOUTS.value:
      raise app.UsageError('--fanouts / --eval_fanouts: lightgcn propagates '
                           'over whole neighbourhoods, it samples none')
    if _ID_DROPOUT.value is not None:
      raise app.UsageError('--id_dropout: lightgcn has no content path, so '
                           'it never hides ids')
    for flag in (_IN_BATCH, _RESIDUAL, _LOGQ_WEIGHT, _OUTPUT_L2,
                 _ACTIVATION, _ID_L2, _DROPOUT):
      if flag.value is not None:
        raise app.UsageError(f'--{flag.name}: a sampled-model option; '
                             'lightgcn does not read it (its L2 on the id '
                             'rows is tools/bench_lightgcn.py --l2)')
    if on_path:
      import lightgcn_gowalla
      c = lightgcn_gowalla.get_config()
    else:
      import quickstart
      c = quickstart.get_config()
  else:
    import gnn_marketplace
    c = gnn_marketplace.get_config(_MODEL.value)
    if _FANOUTS.value:
      c.graph.fanouts = tuple(int(f) for f in _FANOUTS.value)
    if _EVAL_FANOUTS.value:
      c.graph.eval_fanouts = tuple(int(f) for f in _EVAL_FANOUTS.value)
    if _NEIGHBOR_WEIGHT.value is not None:
      c.graph.neighbor_weight = _NEIGHBOR_WEIGHT.value
  if _HARD.value is not None:
    if _MODEL.value != 'pinsage':
      raise app.UsageError(f'--num_hard_negatives: a pinsage option (hard '
                           f'negatives come from its random-walk ranks); '
                           f'--model={_MODEL.value} draws none')
    if _HARD.value < 0:
      raise app.UsageError(f'--num_hard_negatives={_HARD.value}: want >= 0')
    c.graph.num_hard_negatives = _HARD.value
  if _NEIGHBOR_WEIGHT.value is not None:
    if _MODEL.value == 'lightgcn':
      raise app.UsageError('--neighbor_weight: lightgcn propagates over '
                           'whole neighbourhoods, it samples none')
    from recjax.train import gnn_trainer
    try:
      gnn_trainer.check_neighbor_weight(c, name='--neighbor_weight')
    except ValueError as e:
      raise app.UsageError(str(e)) from None
  for flag in (_ID_DROPOUT, _DROPOUT):
    if flag.value is not None and not 0 <= flag.value < 1:
      raise app.UsageError(f'--{flag.name}={flag.value}: want a '
                           'probability in [0, 1)')
  if _WEIGHT_DECAY.value is not None:
    if not (math.isfinite(_WEIGHT_DECAY.value) and _WEIGHT_DECAY.value >= 0):
      raise app.UsageError(f'--weight_decay={_WEIGHT_DECAY.value}: want a '
                           'finite value >= 0')
    c.optimizer.name = 'adamw'
    c.optimizer.weight_decay = _WEIGHT_DECAY.value
  for flag in (_LOGQ_WEIGHT, _OUTPUT_L2, _ID_L2):
    if flag.value is not None and not (math.isfinite(flag.value)
                                       and flag.value >= 0):
      raise app.UsageError(f'--{flag.name}={flag.value}: want a finite '
                           'value >= 0')
  if on_path:
    if not os.path.isdir(_DATA.value):
      raise app.UsageError(f'--data={_DATA.value}: not a directory (want '
                           "'marketplace' or a LightGCN txt directory)")
    c.data.name, c.data.path = 'lightgcn', _DATA.value
    c.data.event_types = ('click',)
  else:
    for flag, field in ((_USERS, 'num_users'), (_ITEMS, 'num_items'),
                        (_SELLERS, 'num_sellers'), (_EVENTS, 'num_events')):
      if flag.value is not None:
        c.data.marketplace[field] = flag.value
  for value, node, key in ((_EPOCHS, c.train, 'num_epochs'),
                           (_STEPS, c.train, 'num_steps'),
                           (_BATCH, c.train, 'batch_size'),
                           (_DIM, c.model, 'embed_dim'),
                           (_ID_DROPOUT, c.model, 'id_dropout'),
                           (_NORMALIZE, c.loss, 'normalize'),
                           (_TEMPERATURE, c.loss, 'temperature'),
                           (_NEG, c.loss, 'num_negatives'),
                           (_LOSS, c.loss, 'name'),
                           (_MARGIN, c.loss, 'margin'),
                           (_NEG_WEIGHT, c.loss, 'negative_weight'),
                           (_IN_BATCH, c.loss, 'in_batch_negatives'),
                           (_RESIDUAL, c.model, 'residual'),
                           (_ACTIVATION, c.model, 'activation'),
                           (_DROPOUT, c.model, 'dropout'),
                           (_LOGQ_WEIGHT, c.loss, 'logq_weight'),
                           (_OUTPUT_L2, c.loss, 'output_l2'),
                           (_ID_L2, c.loss, 'id_l2'),
                           (_LR, c.optimizer, 'learning_rate')):
    if value.value is not None:
      node[key] = value.value
  if _TARGETS.value is not None:
    c.data.target_events = tuple(_TARGETS.value)
  for flag in (_MARGIN, _NEG_WEIGHT):
    if flag.value is not None and c.loss.name != 'ccl':
      raise app.UsageError(f'--{flag.name}: a ccl option; the loss is '
                           f'{c.loss.name!r} (add --loss=ccl)')
  if _MODEL.value != 'lightgcn':
    from recjax.train import gnn_trainer
    try:
      gnn_trainer.check_loss(c)
      gnn_trainer.check_activation(c)
    except ValueError as e:       # e.g. --logq_weight without in-batch ones
      raise app.UsageError(str(e)) from None
  c.train.budget_minutes = _BUDGET.value
  if _EVAL_EVERY.value < 0:
    raise app.UsageError(f'--eval_every_epochs={_EVAL_EVERY.value}: want '
                         '>= 0')
  c.train.eval_every_epochs = _EVAL_EVERY.value
  c.train.checkpoint_every_steps = 10**9   # Benchmarks time training only.
  c.train.tensorboard = False
  return c


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  c = _config()
  if _MODEL.value == 'lightgcn':
    from recjax.train import trainer as chosen
  else:
    from recjax.train import gnn_trainer as chosen
  workdir = _WORKDIR.value or tempfile.mkdtemp(prefix='bench_gnn_')
  from recjax.train import checkpoint
  checkpoint.require_fresh(workdir, error=app.UsageError)
  r = chosen.train_and_evaluate(c, workdir)
  out = dict(model=_MODEL.value, data=_DATA.value)
  out.update({k: r[k] for k in KEYS if k in r})
  if r.get('history'):
    out['history'] = r['history']
  out['seeds_per_s'] = round(
      r['steps'] * c.train.batch_size / max(r['train_s'], 1e-9), 1)
  out['settings'] = dict(
      batch_size=c.train.batch_size, embed_dim=c.model.embed_dim,
      id_dropout=c.model.get('id_dropout'),
      loss=c.loss.name, normalize=c.loss.normalize,
      temperature=c.loss.temperature,
      num_negatives=c.loss.num_negatives,
      in_batch_negatives=c.loss.get('in_batch_negatives'),
      residual=c.model.get('residual'),
      activation=c.model.get('activation'),
      dropout=c.model.get('dropout'),
      logq_weight=c.loss.get('logq_weight'),
      output_l2=c.loss.get('output_l2'),
      id_l2=c.loss.get('id_l2'),
      margin=c.loss.margin if c.loss.name == 'ccl' else None,
      negative_weight=c.loss.negative_weight if c.loss.name == 'ccl'
      else None,
      lr=c.optimizer.learning_rate, optimizer=c.optimizer.name,
      weight_decay=c.optimizer.get('weight_decay'),
      target_events=list(c.data.get('target_events') or ()) or None,
      budget_minutes=_BUDGET.value, num_epochs=c.train.num_epochs,
      fanouts=list(c.graph.fanouts) if 'graph' in c else None,
      eval_fanouts=list(c.graph.eval_fanouts or ()) or None
      if 'graph' in c else None,
      num_hard_negatives=c.graph.get('num_hard_negatives')
      if 'graph' in c else None,
      neighbor_weight=c.graph.get('neighbor_weight')
      if 'graph' in c else None,
      marketplace=c.data.marketplace.to_dict())
  out['peak_rss_mb'] = round(
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
  print(json.dumps(out), flush=True)


if __name__ == '__main__':
  app.run(main)
