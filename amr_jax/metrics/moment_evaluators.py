"""Evaluator types of the moment-retrieval metrics: QVHighlights (qvh), QV-M² (qvm2), Charades-STA (charades).

Thin wrappers over the official-script reproductions in `api` (validation, nesting and keys as the originals).
"""
from __future__ import annotations

from amr_jax.metrics import api as mr_api
from amr_jax.metrics.base import Evaluator, flatten


class _MomentEvaluator(Evaluator):
  """The official MR/HD scripts (amr_jax.metrics.api) of one task name."""
  task = ''

  def evaluate(self, predictions, ground_truth):
    return mr_api.evaluate(self.task, predictions, ground_truth)

  def evaluate_files(self, submission_path, annotations_path):
    return mr_api.evaluate_files(self.task, submission_path, annotations_path)

  def scalars(self, result):
    return flatten(mr_api.brief(self.task, result))

  def brief(self, result):
    return mr_api.brief(self.task, result)


class QVHEvaluator(_MomentEvaluator):
  task = 'qvh'


class QVM2Evaluator(_MomentEvaluator):
  task = 'qvm2'


class CharadesEvaluator(_MomentEvaluator):
  task = 'charades'
