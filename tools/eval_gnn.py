"""Re-evaluates a trained sampled graph model (a bench_gnn or recjax.main
workdir) at other evaluation fan-outs, without training.

  python tools/eval_gnn.py --workdir=/tmp/sage --eval_fanouts=30,15 \
      --eval_fanouts=60,30

The workdir's config.json (written by training) rebuilds the data, sampler
and model; its latest checkpoint gives the parameters. Each --eval_fanouts
value (one positive fan-out per hop) is one evaluation; each prints a JSON
line with recall@20, ndcg@20, coverage@20 (and the cold-start slices on the
marketplace), the checkpoint's step and eval_s. Each evaluation goes
through gnn_trainer.train_and_evaluate(mode='eval'), so each reloads the
data and the checkpoint: simple, at the cost of that load per fan-out.
config.json is left as training wrote it; the figures also go to the
workdir's metrics under 'eval@AxB/' (the fan-outs), apart from training's
own 'eval/' rows.
"""

import json
import os
import sys

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained workdir.',
                               required=True)
_FANOUTS = flags.DEFINE_multi_string(
    'eval_fanouts', None, 'Comma-separated fan-outs per hop, e.g. 60,30; '
    'repeat the flag for several evaluations. Default: the config\'s.')
_CHUNK = flags.DEFINE_integer(
    'embed_chunk', None, 'Nodes embedded per call; wide fan-outs need '
    'smaller chunks (512 holds 100 x 40 in ~2 GB). Default: the config\'s.')
KEYS = ('recall@20', 'ndcg@20', 'coverage@20', 'cold_user_recall@20',
        'cold_item_recall@20', 'eval_s')


def _load_config(workdir: str):
  import ml_collections
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise app.UsageError(f'--workdir={workdir}: no config.json (not a '
                         'training workdir)')
  ckpt = os.path.join(workdir, 'checkpoints')
  if not (os.path.isdir(ckpt) and any(n.isdigit() for n in os.listdir(ckpt))):
    raise app.UsageError(f'--workdir={workdir}: no checkpoint under '
                         f'{ckpt}; evaluating would score an untrained model')
  with open(path) as f:
    try:
      c = ml_collections.ConfigDict(json.load(f))
    except json.JSONDecodeError as e:
      raise app.UsageError(f'{path}: not JSON ({e})') from None
  if c.get('task') != 'graph':
    raise app.UsageError(f'{path}: task {c.get("task")!r}; this tool '
                         "evaluates sampled graph models (task 'graph')")
  return c


def _fanouts(text: str, hops: int) -> tuple:
  try:
    f = tuple(int(x) for x in text.split(','))
  except ValueError:
    f = ()
  if len(f) != hops or min(f, default=0) < 1:
    raise app.UsageError(f'--eval_fanouts={text}: want {hops} positive '
                         'integers, comma-separated (one per hop)')
  return f


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  c = _load_config(_WORKDIR.value)
  hops = len(c.graph.fanouts)
  runs = [_fanouts(t, hops) for t in (_FANOUTS.value or [])] or [
      tuple(c.graph.get('eval_fanouts', ()) or c.graph.fanouts)]
  if _CHUNK.value is not None:
    if _CHUNK.value < 1:
      raise app.UsageError(f'--embed_chunk={_CHUNK.value}: want >= 1')
    c.eval.embed_chunk = _CHUNK.value
  from recjax.train import gnn_trainer
  for f in runs:
    c.graph.eval_fanouts = f
    r = gnn_trainer.train_and_evaluate(c, _WORKDIR.value, mode='eval')
    out = dict(model=r['model'], data=r['data'], steps=r['steps'],
               eval_fanouts=list(f))
    out.update({k: round(r[k], 6) for k in KEYS if k in r})
    print(json.dumps(out), flush=True)


if __name__ == '__main__':
  app.run(main)
