"""recjax launcher: flags -> config -> train_and_evaluate(config, workdir).

  python -m recjax.main --config=configs/quickstart.py --workdir=DIR \
      [--config.train.num_epochs=5] [--mode=train|eval|export] [--bundle=B]

The last line printed to stdout is one JSON object with the run's figures.
Multi-process runs (launch/local_multihost.sh, launch/tpu_vm.sh,
launch/slurm_gpu.sbatch) add --coordinator_address, --num_processes and
--process_id, or set them in the environment (recjax.train.distributed).
Configs with `task = 'sequence'` (configs/sasrec_ml1m.py, ...) train through
recjax.train.seq_trainer, `task = 'graph'` (configs/gnn_marketplace.py)
through recjax.train.gnn_trainer, `task = 'graph_shards'`
(configs/gnn_shards.py) through recjax.train.shard_trainer, all others
through recjax.train.trainer.
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
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, "Multi-process runs: process 0's "
    "'host:port' (or env RECJAX_COORDINATOR). TPU slices and SLURM jobs "
    'need none of these three flags: set RECJAX_DISTRIBUTED=1.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None,
                                      'Multi-process runs: N processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None,
                                   "Multi-process runs: this process's index.")
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  import jax
  from recjax.train import distributed
  try:
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                           _PROCESS_ID.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  if jax.default_backend() != 'cpu':
    # TF (tf.data, TFDS) must never grab accelerator memory JAX needs.
    import tensorflow as tf
    tf.config.set_visible_devices([], 'GPU')
  from recjax.train import trainer
  config = _CONFIG.value
  task = config.get('task', '') or 'retrieval'
  if jax.process_count() > 1 and (task not in ('retrieval', 'graph_shards')
                                  or _MODE.value == 'export'):
    raise app.UsageError(
        f'task {task!r} with --mode={_MODE.value} runs in one process; '
        'multi-process runs support the retrieval trainer (train, eval) and '
        "'graph_shards' (train)")
  if config.get('task', '') == 'sequence':
    from recjax.train import seq_trainer as chosen
  elif config.get('task', '') == 'graph':
    from recjax.train import gnn_trainer as chosen
  elif config.get('task', '') == 'graph_shards':
    from recjax.train import shard_trainer as chosen
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
