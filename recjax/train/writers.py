"""Metric writers: JSON lines (metrics.jsonl) and TensorBoard events.

Only process 0 writes, so multi-host runs produce one record per step.
"""

from __future__ import annotations

import json
import os
import time

import jax


class MetricWriter:
  """Appends `{"step": s, "time": t, **metrics}` lines and TB scalars."""

  def __init__(self, workdir: str, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self._tb = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')
    if tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, metrics: dict, prefix: str = '') -> None:
    if not self.enabled:
      return
    record = {'step': int(step), 'time': time.time()}
    record.update({prefix + k: v for k, v in metrics.items()})
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in metrics.items():
        if isinstance(v, (int, float)):
          # TensorBoard tag names allow no '@'; metrics.jsonl keeps 'recall@20'.
          self._tb.add_scalar((prefix + k).replace('@', '_at_'), v, step)

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      if self._tb is not None:
        self._tb.close()
