"""The evaluator interface: score predictions against ground truth, name the run's headline scalars.

Every evaluator type of `registry.EVALUATORS` subclasses `Evaluator`; `flatten` turns a nested result into scalars.
"""
from __future__ import annotations

import abc
from typing import Any


class Evaluator(abc.ABC):
  """Scores one split. Options come from the config entry (everything but `type`)."""

  def __init__(self, **options):
    self.options = options

  @abc.abstractmethod
  def evaluate(self, predictions: Any, ground_truth: Any) -> dict:
    """The full result (nested, as the official script writes it)."""

  @abc.abstractmethod
  def evaluate_files(self, submission_path: str, annotations_path: str) -> dict:
    """The full result from a submission file and an annotation file."""

  @abc.abstractmethod
  def scalars(self, result: dict) -> dict:
    """Flat {name: number} of the headline numbers (logged, and what eval.best_metric picks from)."""

  def brief(self, result: dict) -> dict:
    """What a human wants on stdout."""
    return self.scalars(result)


def flatten(tree: dict, prefix: str = '') -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f'{prefix}{key}/'))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
      out[f'{prefix}{key}'] = value
  return out
