"""The task contract: every member a method gives the model-neutral trainer, predictor and exporter.

`Task` (an abstract base) is the one typed interface; `TrainData` / `EvalData` are its input pipeline.
"""
from __future__ import annotations

import abc
import dataclasses
import json
from typing import Any, Callable, ClassVar, Iterator, Mapping, Optional, Sequence

import jax
import numpy as np
import optax


# ----------------------------------------------------------------------------------------------------
# Batch specs
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ArraySpec:
  """One batch entry: its per-example shape (no batch axis) and dtype."""
  shape: tuple
  dtype: str

  def __str__(self):
    return f'{self.dtype}{list(self.shape)}'


BatchSpec = Mapping[str, ArraySpec]   # name -> spec; every batch a task yields has exactly these entries


def spec_of(batch: Mapping[str, np.ndarray]) -> dict:
  """The per-example BatchSpec of a stacked numpy batch (leading axis = batch)."""
  return {k: ArraySpec(tuple(int(d) for d in np.shape(v)[1:]), str(np.asarray(v).dtype))
          for k, v in sorted(batch.items())}


def check_batch(batch: Mapping[str, np.ndarray], spec: BatchSpec, where: str) -> None:
  """Raise one ValueError naming every entry of `batch` that differs from `spec`."""
  got = spec_of(batch)
  problems = [f'missing {k} ({s})' for k, s in spec.items() if k not in got]
  problems += [f'unexpected {k} ({s})' for k, s in got.items() if k not in spec]
  problems += [f'{k}: expected {spec[k]}, got {s}' for k, s in got.items() if k in spec and spec[k] != s]
  if problems:
    raise ValueError(f'{where}: batch does not match its spec: ' + '; '.join(problems))


# ----------------------------------------------------------------------------------------------------
# Input pipeline
# ----------------------------------------------------------------------------------------------------
class TrainData(abc.ABC):
  """Training examples: the global batch of step s is a pure function of (seed, s) (exact resume)."""

  spec: BatchSpec   # per-example spec of every train batch

  @abc.abstractmethod
  def __len__(self) -> int:
    """Examples per epoch (the unit of steps_per_epoch)."""

  @abc.abstractmethod
  def batch(self, seed: int, step: int, global_batch: int, process_index: int = 0,
            process_count: int = 1, indices: Optional[np.ndarray] = None) -> dict:
    """This process's rows of the global batch of `step`: numpy arrays with `spec` (plus the batch axis).

    indices: the step's global sample indices from `sample_order` (None = shuffled epochs)."""

  def sample_order(self, seed: int, global_batch: int, num_steps: int) -> Optional[Callable[[int], np.ndarray]]:
    """Optional step -> global sample indices (a curriculum); None = shuffled epochs."""
    del seed, global_batch, num_steps
    return None


class EvalData(abc.ABC):
  """Inputs to score: padded batches (entry `sample_valid` marks real rows) and the evaluators' ground truth."""

  spec: BatchSpec
  ground_truth: Any   # what the evaluators compare predictions with (None when predicting without labels)

  @abc.abstractmethod
  def __len__(self) -> int:
    """Number of samples to predict."""

  @abc.abstractmethod
  def batches(self, batch_size: int, process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
    """Sequential fixed-size batches over every sample; padding rows have sample_valid = 0."""


# `BatchRunner(fn, params, data, batch_size)` yields (host_outputs, host_batch) per batch of `data.batches`
# (this process's slice of each), padding rows removed: fn(params, batch) -> dict of arrays is jitted, run
# sharded over the data axis, and gathered to the host.
BatchRunner = Callable[[Callable, Any, Iterator[dict]], Iterator[tuple]]


# ----------------------------------------------------------------------------------------------------
# The task
# ----------------------------------------------------------------------------------------------------
class Task(abc.ABC):
  """A method bound to one run config. Construct with (config, dims); dims = None means "learn from data".

  `dims` holds whatever the data fixes and the model needs (feature widths, vocabulary size ...); the
  trainer saves it with every run and export, so `Task(config, dims)` rebuilds the model with no data at hand.
  """

  name: ClassVar[str]                         # registry name, e.g. 'amr'
  default_eval_batch_size: ClassVar[int] = 32

  def __init__(self, config, dims: Optional[dict] = None):
    self.config = config
    self.dims = dict(dims or {})

  # -- input pipeline -------------------------------------------------------------------------------
  @abc.abstractmethod
  def train_data(self) -> TrainData:
    """Loads, validates (every problem in one pass) and wraps the training split; sets self.dims."""

  @abc.abstractmethod
  def eval_data(self, annotations: str, feature_dir: str, *, with_labels: bool = True) -> EvalData:
    """Loads and validates one evaluation split. with_labels=False: predicting, no ground truth needed."""

  # -- parameters -----------------------------------------------------------------------------------
  @abc.abstractmethod
  def init_params(self, rng, example_batch: dict, teacher_params: Any = None) -> tuple:
    """(trainable params, frozen params or None). teacher_params: the run `teacher_workdir()` names."""

  def teacher_workdir(self) -> str:
    """A trained run whose params `init_params` needs (stage-2 distillation); '' = none."""
    return ''

  def trainable_mask(self, params) -> Any:
    """Pytree of bools: True = the optimiser updates this leaf (optax.masked); default all."""
    return jax.tree.map(lambda _: True, params)

  # -- training -------------------------------------------------------------------------------------
  @abc.abstractmethod
  def loss(self, params, frozen_params, batch: dict, rng) -> tuple:
    """(scalar loss, dict of scalar metrics). Pure and jittable; `rng` drives dropout and sampling."""

  @abc.abstractmethod
  def optimizer(self, steps_per_epoch: int, num_steps: int) -> optax.GradientTransformation:
    """The method's optimiser and schedule; frozen leaves (`trainable_mask`) go through an optax mask in it."""

  # -- inference ------------------------------------------------------------------------------------
  @abc.abstractmethod
  def eval_forward(self, params, batch: dict) -> dict:
    """Jittable forward in eval mode: dict of arrays with the batch axis first."""

  def postprocess(self, host_outputs: dict, host_batch: dict) -> list:
    """Per-sample tasks: numpy outputs of one batch (padding removed) -> submission rows."""
    raise NotImplementedError(f'{type(self).__name__} has no per-sample postprocess; override predict()')

  def predict(self, params, data: EvalData, run: BatchRunner, batch_size: int) -> Any:
    """Predictions for `data` (submission rows for per-sample tasks). Default: eval_forward + postprocess."""
    rows = []
    for host_outputs, host_batch in run(self.eval_forward, params, data, batch_size):
      rows += self.postprocess(host_outputs, host_batch)
    return rows

  def diagnostics(self, params, data: EvalData, run: BatchRunner, batch_size: int) -> dict:
    """Extra scalars a method reports at every evaluation besides its evaluators (default none)."""
    del params, data, run, batch_size
    return {}

  def write_predictions(self, predictions: Any, path: str) -> None:
    """Writes predictions in the method's submission format (default: one JSON row per line)."""
    with open(path, 'w', encoding='utf-8') as f:
      for row in predictions:
        f.write(json.dumps(row) + '\n')

  def evaluators(self) -> Sequence[tuple]:
    """(name, type, options) of the evaluators this run scores with (from config.evals)."""
    evals = self.config.get('evals', {})
    return [(name, cfg['type'], {k: v for k, v in cfg.items() if k != 'type'}) for name, cfg in evals.items()]

  # -- export ---------------------------------------------------------------------------------------
  def export_payload(self) -> dict:
    """What an export carries besides params to rebuild this task: the run config and dims (JSON-able)."""
    return {'run': json.loads(self.config.to_json_best_effort()), 'dims': self.dims, 'task': self.name}
