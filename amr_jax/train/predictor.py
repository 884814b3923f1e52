"""`Predictor`: any method's inference from a training workdir or an export, through its task contract.

The task is rebuilt from the saved record alone (config + dims); `predict_files` reads annotations + features.
"""
from __future__ import annotations

import pathlib
from typing import Any, Optional

import jax

from amr_jax.train import inference, registry, sharding


class Predictor:
  """Inference from a training workdir (best checkpoint, else the last) or an export directory."""

  def __init__(self, workdir: str | pathlib.Path, *, which: str = 'best', batch_size: Optional[int] = None,
               num_devices: int = 1, **predict_options):
    """predict_options override the saved config's `predict` section (e.g. sliding_window=False)."""
    path = pathlib.Path(workdir)
    self.task = registry.task_from_saved(path)
    self.config = self.task.config
    if predict_options:
      with self.config.unlocked():
        for key, value in predict_options.items():
          if 'predict' not in self.config or key not in self.config.predict:
            raise ValueError(f'{path}: method {self.task.name!r} has no predict option {key!r}')
          self.config.predict[key] = value
    self.batch_size = int(batch_size or self.task.default_eval_batch_size)
    self.mesh = sharding.make_mesh(num_devices)
    self.params = jax.device_put(registry.load_trained_params(str(path), which=which),
                                 sharding.replicated(self.mesh))
    self.run = inference.make_runner(self.mesh)

  def predict_data(self, data) -> Any:
    """Predictions for an EvalData built by this predictor's task."""
    return self.task.predict(self.params, data, self.run, self.batch_size)

  def predict_files(self, annotations: str, feature_dir: str) -> Any:
    """Predictions for every sample of `annotations` (no labels needed) with features from `feature_dir`."""
    data = self.task.eval_data(annotations, feature_dir, with_labels=False, what='predict')
    return self.predict_data(data)

  def write(self, predictions: Any, out: str) -> None:
    pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
    self.task.write_predictions(predictions, out)
