"""Trains a sequence model within a wall-clock budget and evaluates it under
both protocols: full ranking (all items, history masked) and sampled
(100 negatives, uniform and by popularity; labelled).

  python tools/bench_seq.py --model=sasrec --data=../shared/data/ml-1m \
      --budget_minutes=60
  python tools/bench_seq.py --model=bert4rec --data=../shared/data/ml-1m
  python tools/bench_seq.py --model=features --data=marketplace   # synthetic

--data is a SASRec-format file ("user item" per line, time-ordered per
user; leave-last-out split), a directory holding one such .txt file, or
'marketplace' (the synthetic marketplace, temporal split; --model=features
there is the feature-rich session encoder, --model=sasrec its baseline).

Overrides of the config for ablations: --loss, --num_negatives, --negatives,
--exclude_seen, --loss_average, --embed_dim, --lr, --b2, --schedule, --dropout,
--attention, --max_len, --positions (from_end | from_start), --layout
(pre_ln | sasrec | post_ln), --attention_dropout (output | weights),
--pos_init_std, --buckets (training batch widths; 'none': every batch
full width, batches mix history lengths), --valid_users, --select_metric,
--train_windows (last | all); --recipe=paper is SASRec's own recipe
(configs/sasrec_ml1m.py:paper), --recipe=uniform100 the same trained by
sampled softmax over 16 uniform negatives per position.

The last stdout line is one JSON object: 'full', 'uniform100' and
'popularity100' (hr@K, ndcg@K, mrr...), epochs, steps, train_s, epoch_s,
compile_s, eval_s, peak_rss_mb, best_step, history and the settings.
"""

import glob
import json
import os
import resource
import sys
import tempfile

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'configs'))

_MODEL = flags.DEFINE_enum('model', 'sasrec', ['sasrec', 'bert4rec',
                                               'features'], 'Model.')
_DATA = flags.DEFINE_string('data', None, "SASRec txt file or directory, or "
                            "'marketplace'.")
_BUDGET = flags.DEFINE_float('budget_minutes', 60.0, 'Training time budget.')
_MAX_EPOCHS = flags.DEFINE_integer('max_epochs', None, 'Epoch cap '
                                   '(default: the config\'s).')
_EVAL_EVERY = flags.DEFINE_integer('eval_every_epochs', None,
                                   'Validation every N epochs.')
_LOSS = flags.DEFINE_string('loss', None, "'bce' | 'gbce' | "
                            "'sampled_softmax' | 'full_softmax'.")
_NEG = flags.DEFINE_integer('num_negatives', None, 'Sampled negatives.')
_NEG_MODE = flags.DEFINE_enum('negatives', None, ['row', 'position'],
                              "Negatives shared by a sequence ('row') or "
                              "drawn per position (SASRec's BCE).")
_EXCLUDE_SEEN = flags.DEFINE_bool(
    'exclude_seen', None, "Position negatives avoid the user's training "
    "items (SASRec's sampler; on in --recipe=paper).")
_AVERAGE = flags.DEFINE_enum(
    'loss_average', None, ['batch', 'epoch'], "loss.average: the loss's "
    "denominator, the batch's positions or an average batch's.")
_DIM = flags.DEFINE_integer('embed_dim', None, 'Hidden size.')
_LR = flags.DEFINE_float('lr', None, 'Peak learning rate.')
_SCHEDULE = flags.DEFINE_enum('schedule', None,
                              ['constant', 'cosine', 'linear'],
                              'Learning-rate schedule (decays over the '
                              'budget or the epochs).')
_B2 = flags.DEFINE_float('b2', None, "Adam's second-moment decay "
                         "(optimizer.b2; SASRec's code: 0.98).")
_DROPOUT = flags.DEFINE_float('dropout', None, 'Dropout rate.')
_ATTENTION = flags.DEFINE_enum('attention', None, ['full', 'local', 'linear'],
                               'Attention kernel.')
_MAX_LEN = flags.DEFINE_integer('max_len', None, 'History window.')
_POSITIONS = flags.DEFINE_enum('positions', None, ['from_end', 'from_start'],
                               'Where position embeddings count from.')
_LAYOUT = flags.DEFINE_enum('layout', None, ['pre_ln', 'sasrec', 'post_ln'],
                            "Where the blocks' norms sit "
                            '(models/attention.py Block).')
_ATTN_DROPOUT = flags.DEFINE_enum(
    'attention_dropout', None, ['output', 'weights'], "What the attention "
    "sublayer's dropout hits (model.attention_dropout).")
_POS_STD = flags.DEFINE_float('pos_init_std', None, "Std of the position "
                              "table's init (model.pos_init_std).")
_BUCKETS = flags.DEFINE_list('buckets', None, 'Training batch widths below '
                             "the full one ('none': every batch full width).")
_VALID_USERS = flags.DEFINE_integer(
    'valid_users', None, 'Leave-last-out: users with a validation event '
    "(default: the config's: 512 for SASRec on ml-1m, gSASRec's split; "
    "0 = every user, SASRec's split, BERT4Rec's default).")
_WINDOWS = flags.DEFINE_enum(
    'train_windows', None, ['last', 'all'], "'all': histories longer than "
    "max_len also train on their earlier windows (the default of SASRec's "
    "softmax config); 'last': each user's last max_len events only.")
_RECIPE = flags.DEFINE_enum(
    'recipe', 'softmax', ['softmax', 'paper', 'uniform100'],
    "SASRec on a txt file: configs/sasrec_ml1m.py's variant ('paper': "
    'BCE with one negative per position, selected on uniform100; '
    "'uniform100': the same trained by sampled softmax over 16 uniform "
    'negatives per position).')
_SELECT = flags.DEFINE_string('select_metric', None, 'Validation metric '
                              "that picks the tested epoch, e.g. 'ndcg@10', "
                              "'uniform100_ndcg@10'.")
_WORKDIR = flags.DEFINE_string('workdir', None, 'Default: a temp dir.')
flags.mark_flag_as_required('data')

_PROTOCOLS = ('uniform100', 'popularity100')


def _sasrec_file(path: str) -> str:
  if os.path.isdir(path):
    txt = sorted(glob.glob(os.path.join(path, '*.txt')))
    if len(txt) != 1:
      raise app.UsageError(f'--data={path}: expected one .txt file there, '
                           f'found {len(txt)}')
    return txt[0]
  if not os.path.exists(path):
    raise app.UsageError(f'--data={path} does not exist')
  return path


def _config():
  import bert4rec_ml1m
  import sasrec_ml1m
  import session_marketplace
  model = _MODEL.value
  if _RECIPE.value != 'softmax' and (model != 'sasrec'
                                     or _DATA.value == 'marketplace'):
    raise app.UsageError(f'--recipe={_RECIPE.value} is a recipe of SASRec '
                         'on a txt file (configs/sasrec_ml1m.py)')
  if _DATA.value == 'marketplace':
    c = session_marketplace.get_config()
    c.model.name = 'session' if model == 'features' else model
  else:
    if model == 'bert4rec':
      c = bert4rec_ml1m.get_config()
    else:
      c = sasrec_ml1m.get_config(_RECIPE.value)
    c.data.path = _sasrec_file(_DATA.value)
    if model == 'features':
      c.model.name = 'session'
  for value, node, key in ((_MAX_EPOCHS, c.train, 'num_epochs'),
                           (_EVAL_EVERY, c.train, 'eval_every_epochs'),
                           (_LOSS, c.loss, 'name'),
                           (_NEG, c.loss, 'num_negatives'),
                           (_NEG_MODE, c.loss, 'negatives'),
                           (_EXCLUDE_SEEN, c.loss, 'exclude_seen'),
                           (_AVERAGE, c.loss, 'average'),
                           (_DIM, c.model, 'embed_dim'),
                           (_DIM, c.model, 'ff_dim'),
                           (_LR, c.optimizer, 'learning_rate'),
                           (_B2, c.optimizer, 'b2'),
                           (_SCHEDULE, c.optimizer, 'schedule'),
                           (_DROPOUT, c.model, 'dropout'),
                           (_ATTENTION, c.model, 'attention'),
                           (_MAX_LEN, c.model, 'max_len'),
                           (_POSITIONS, c.model, 'positions'),
                           (_LAYOUT, c.model, 'layout'),
                           (_ATTN_DROPOUT, c.model, 'attention_dropout'),
                           (_POS_STD, c.model, 'pos_init_std'),
                           (_VALID_USERS, c.data, 'valid_users'),
                           (_SELECT, c.eval, 'select_metric'),
                           (_WINDOWS, c.data, 'train_windows')):
    if value.value is not None:
      node[key] = value.value
  if _BUCKETS.value is not None:
    b = [x for x in _BUCKETS.value if x.lower() != 'none']
    try:
      c.data.buckets = tuple(int(x) for x in b)
    except ValueError:
      raise app.UsageError(f'--buckets={",".join(_BUCKETS.value)}: expected '
                           "integers or 'none'") from None
  c.train.budget_minutes = _BUDGET.value
  c.train.checkpoint_every_steps = 10**9   # Benchmarks time training only.
  c.train.progress = False
  return c


def main(argv):
  del argv
  from recjax.train import seq_trainer
  c = _config()
  workdir = _WORKDIR.value or tempfile.mkdtemp(prefix='bench_seq_')
  from recjax.train import checkpoint
  checkpoint.require_fresh(workdir, error=app.UsageError)
  r = seq_trainer.train_and_evaluate(c, workdir)
  ks = tuple(c.eval.ks)
  full = {f'{m}@{k}': r[f'{m}@{k}'] for k in ks
          for m in ('hr', 'recall', 'ndcg', 'mrr', 'coverage')}
  out = dict(model=_MODEL.value, model_name=r['model'], data=r['data'],
             full=full)
  for label in _PROTOCOLS:
    keys = [k for k in r if k.startswith(label + '_')]
    if keys:
      out[label] = {k[len(label) + 1:]: r[k] for k in keys}
  out.update({k: r[k] for k in (
      'epochs', 'steps', 'steps_per_epoch', 'train_sequences',
      'train_targets', 'train_s', 'epoch_s', 'step_s',
      'compile_s', 'eval_s', 'eval_users', 'selected_on', 'best_step',
      'loss', 'devices')})
  out['history'] = r['history']
  out['settings'] = dict(
      loss=c.loss.name, num_negatives=c.loss.num_negatives,
      gbce_t=c.loss.gbce_t, exclude_seen=c.loss.exclude_seen,
      loss_average=c.loss.average,
      embed_dim=c.model.embed_dim,
      num_blocks=c.model.num_blocks, max_len=c.model.max_len,
      attention=c.model.attention, dropout=c.model.dropout,
      positions=c.model.positions, layout=c.model.get('layout', 'pre_ln'),
      attention_dropout=c.model.get('attention_dropout', 'output'),
      pos_init_std=c.model.get('pos_init_std', None),
      buckets=list(c.data.buckets),
      lr=c.optimizer.learning_rate, schedule=c.optimizer.schedule,
      b2=c.optimizer.b2,
      batch_size=c.train.batch_size, budget_minutes=_BUDGET.value,
      valid_users=c.data.get('valid_users', 0),
      select_metric=c.eval.select_metric,
      train_windows=c.data.get('train_windows', 'last'),
      recipe=_RECIPE.value)
  out['peak_rss_mb'] = round(
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
  out['workdir'] = workdir
  print(json.dumps(out), flush=True)


if __name__ == '__main__':
  app.run(main)
