"""Run logs: metrics.jsonl + TensorBoard events (process 0 only), and a progress line with step/s and ETA.

TensorBoard writing goes through tf.summary, imported lazily so evaluation-only tools stay light.
"""
from __future__ import annotations

import json
import pathlib
import sys
import time


class MetricLogger:
  """Appends {'step': s, **metrics} to WORKDIR/metrics.jsonl and scalars to WORKDIR/tb."""

  def __init__(self, workdir: pathlib.Path, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    if enabled:
      self._jsonl = open(pathlib.Path(workdir) / 'metrics.jsonl', 'a', encoding='utf-8')
      import tensorflow as tf  # pylint: disable=import-outside-toplevel
      self._tf = tf
      self._tb = tf.summary.create_file_writer(str(pathlib.Path(workdir) / 'tb'))

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    self._jsonl.write(json.dumps({'step': int(step), **metrics}) + '\n')
    self._jsonl.flush()
    with self._tb.as_default(step=int(step)):
      for k, v in metrics.items():
        self._tf.summary.scalar(k, float(v))
    self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


class Progress:
  """Prints `step i/N  loss x  y step/s  ETA mm:ss` (steps after the first, so compile time is excluded)."""

  def __init__(self, total: int, start: int = 0, every: int = 10, enabled: bool = True, stream=sys.stdout):
    self.total, self.start, self.every, self.enabled, self.stream = total, start, every, enabled, stream
    self._t0 = None
    self._s0 = start

  def update(self, step: int, loss: float) -> None:
    if not self.enabled:
      return
    now = time.perf_counter()
    if self._t0 is None:
      self._t0, self._s0 = now, step
      rate = float('nan')
    else:
      rate = (step - self._s0) / max(now - self._t0, 1e-9)
    eta = (self.total - step) / rate if rate == rate and rate > 0 else float('nan')
    eta_txt = f'{int(eta // 60):02d}:{int(eta % 60):02d}' if eta == eta else '--:--'
    rate_txt = f'{rate:.2f} step/s' if rate == rate else 'rate after the next log'
    print(f'step {step}/{self.total}  loss {loss:.4f}  {rate_txt}  ETA {eta_txt}', file=self.stream, flush=True)
