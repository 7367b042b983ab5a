"""recjax launcher: flags -> config -> train_and_evaluate(config, workdir).

  python -m recjax.main --config=configs/quickstart.py --workdir=DIR \
      [--config.train.num_epochs=5] [--mode=train|eval|export] [--bundle=B]

The last line printed to stdout is one JSON object with the run's figures.
Configs with `task = 'sequence'` (configs/sasrec_ml1m.py, ...) train through
recjax.train.seq_trainer, `task = 'graph'` (configs/gnn_marketplace.py)
through recjax.train.gnn_trainer, all others through recjax.train.trainer.
"""

import json
import logging as std_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file with get_config().',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'export'],
                          'train (and evaluate), evaluate the latest '
                          'checkpoint, or export it as a serving bundle.')
_BUNDLE = flags.DEFINE_string('bundle', None, 'export: the bundle directory '
                              '(default WORKDIR/bundle).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  import jax
  if os.environ.get('RECJAX_DISTRIBUTED') == '1':
    jax.distributed.initialize()
  if jax.default_backend() != 'cpu':
    # TF (tf.data, TFDS) must never grab accelerator memory JAX needs.
    import tensorflow as tf
    tf.config.set_visible_devices([], 'GPU')
  from recjax.train import trainer
  config = _CONFIG.value
  if config.get('task', '') == 'sequence':
    from recjax.train import seq_trainer as chosen
  elif config.get('task', '') == 'graph':
    from recjax.train import gnn_trainer as chosen
  else:
    chosen = trainer
  try:
    if _MODE.value == 'export':
      if chosen is not trainer:
        raise ValueError(f'--mode=export serves retrieval models '
                         f'(task "retrieval"); this config is task '
                         f'{config.get("task")!r}')
      from recjax.serve import export
      bundle = _BUNDLE.value or os.path.join(_WORKDIR.value, 'bundle')
      result = export.export(config, _WORKDIR.value, bundle,
                             log=lambda m: print(m, file=sys.stderr))
    else:
      result = chosen.train_and_evaluate(config, _WORKDIR.value,
                                         mode=_MODE.value)
  except (ValueError, FileNotFoundError, trainer.NanLossError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  std_logging.getLogger('absl').setLevel(std_logging.INFO)
  app.run(main)
