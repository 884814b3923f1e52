"""Evaluators by type name, as a run's `config.evals` lists them (big_vision style) and `launch/evaluate.py` uses.

Only names here (importing this module loads no metric code); each class derives from `base.Evaluator`.
"""
from __future__ import annotations

import importlib

from amr_jax.metrics.base import Evaluator

# type name -> 'module:Class'. A method that brings a metric adds one line here (no import of it happens here).
EVALUATORS = {
    'qvh': 'amr_jax.metrics.moment_evaluators:QVHEvaluator',
    'qvm2': 'amr_jax.metrics.moment_evaluators:QVM2Evaluator',
    'charades': 'amr_jax.metrics.moment_evaluators:CharadesEvaluator',
    'prvr': 'amr_jax.metrics.prvr_evaluator:PrvrEvaluator',
    'weak_mr': 'amr_jax.metrics.weak_mr:WeakMREvaluator',
}


def names() -> list:
  return sorted(EVALUATORS)


def get(type_name: str, **options) -> Evaluator:
  """The evaluator registered under `type_name` (or given as 'package.module:Class'), built with `options`."""
  path = EVALUATORS.get(type_name, type_name if ':' in type_name else None)
  if path is None:
    raise ValueError(f'unknown evaluator type {type_name!r}; known: {", ".join(names())}')
  module_name, _, class_name = path.partition(':')
  return getattr(importlib.import_module(module_name), class_name)(**options)
