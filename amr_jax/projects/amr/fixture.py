"""Loading the PyTorch reference fixtures (tests/fixtures/amr_reference layout) and running the Flax AMR on them.

`load_fixture` returns plain numpy/JSON data; the helpers build the model config, import the params and flatten
model outputs to the fixture's key names (`aux_outputs.{i}.{key}`, `inter.{name}`).
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any, Mapping, Optional

import jax
import numpy as np

from amr_jax.projects.amr.model import AMR, AMRModelConfig
from amr_jax.projects.amr import torch_names

MODEL_INPUT_KEYS = ('src_vid', 'src_vid_mask', 'src_txt', 'src_txt_mask')

# fixture group -> {entry name: file name}
_NPZ_FILES = {
    'stage1': {
        'inputs': 'stage1_inputs.npz',
        'outputs': 'stage1_outputs.npz',
        'params': 'stage1_params.npz',
        'grads': 'stage1_grads.npz',
        'params_after_step': 'stage1_params_after_step.npz',
    },
    'stage2': {
        'inputs': 'stage2_inputs.npz',
        'outputs': 'stage2_outputs.npz',
        'params_student': 'stage2_params_student.npz',
        'params_teacher': 'stage2_params_teacher.npz',
        'grads': 'stage2_grads.npz',
        'params_student_after_step': 'stage2_params_student_after_step.npz',
        'after_step_outputs': 'stage2_after_step_outputs.npz',
    },
}
_JSON_FILES = {
    'stage1': {'losses': 'stage1_losses.json',
               'submission_before_postprocess': 'stage1_submission_before_postprocess.json'},
    'stage2': {'losses': 'stage2_losses.json'},
}


def _load_npz(path: str) -> dict[str, np.ndarray]:
  with np.load(path, allow_pickle=False) as z:
    return {k: z[k] for k in z.files}


def _load_jsonl(path: str) -> list[Any]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def load_fixture(fixture_dir: str) -> dict[str, Any]:
  """Everything in a fixture folder, as numpy arrays and JSON values.

  Args:
    fixture_dir: folder with `tiny_config.json`, `param_shapes.json` and the stage npz/json files.

  Returns:
    {'dir', 'config' (tiny_config.json), 'param_shapes' (if present),
     'stage1': {'inputs', 'outputs', 'params', 'grads', 'params_after_step', 'losses',
                'submission_before_postprocess', 'submission'},
     'stage2': {'inputs', 'outputs', 'params_student', 'params_teacher', 'grads', 'params_student_after_step',
                'after_step_outputs', 'losses'}}.
    Files that are absent are left out; npz entries are dicts name -> array with the files' flat key names.
  """
  config_path = os.path.join(fixture_dir, 'tiny_config.json')
  if not os.path.exists(config_path):
    raise FileNotFoundError(f'{config_path} not found (is {fixture_dir!r} a fixture folder?)')
  with open(config_path) as f:
    fixture: dict[str, Any] = {'dir': fixture_dir, 'config': json.load(f)}
  shapes_path = os.path.join(fixture_dir, 'param_shapes.json')
  if os.path.exists(shapes_path):
    with open(shapes_path) as f:
      fixture['param_shapes'] = json.load(f)
  for group, files in _NPZ_FILES.items():
    entries: dict[str, Any] = {}
    for name, file_name in files.items():
      path = os.path.join(fixture_dir, file_name)
      if os.path.exists(path):
        entries[name] = _load_npz(path)
    for name, file_name in _JSON_FILES.get(group, {}).items():
      path = os.path.join(fixture_dir, file_name)
      if os.path.exists(path):
        with open(path) as f:
          entries[name] = json.load(f)
    if group == 'stage1':
      path = os.path.join(fixture_dir, 'stage1_submission.jsonl')
      if os.path.exists(path):
        entries['submission'] = _load_jsonl(path)
    if entries:
      fixture[group] = entries
  return fixture


def model_config(fixture_or_config: Mapping[str, Any], stage: str, **overrides) -> AMRModelConfig:
  """`AMRModelConfig` for a fixture (the `load_fixture` dict or the tiny_config dict); stage 'pretrain'|'distill'."""
  config = fixture_or_config.get('config', fixture_or_config)
  return AMRModelConfig.from_fixture(config, stage=stage, **overrides)


def flax_variables(state_dict: Mapping[str, Any], cfg: AMRModelConfig) -> dict[str, Any]:
  """PyTorch-named params -> `{'params': tree}` ready for `AMR(cfg).apply`."""
  params = torch_names.torch_to_flax(state_dict, cfg)
  return {'params': jax.tree.map(lambda x: np.asarray(x, np.float32), params)}


def model_inputs(inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The four model inputs of a fixture inputs dict, float32."""
  return {k: np.asarray(inputs[k], np.float32) for k in MODEL_INPUT_KEYS}


@functools.lru_cache(maxsize=16)
def _jitted_forward(cfg: AMRModelConfig, train: bool):
  """One compiled forward per (config, mode): the student, teacher and post-step params share it."""
  model = AMR(cfg)

  def forward(variables, x, rng):
    rngs = {'dropout': rng} if train else None
    return model.apply(variables, x['src_vid'], x['src_vid_mask'], x['src_txt'], x['src_txt_mask'],
                       train=train, rngs=rngs)

  return jax.jit(forward)


def run_model(cfg: AMRModelConfig, variables: Mapping[str, Any], inputs: Mapping[str, Any], *,
              train: bool = False, dropout_rng: Optional[jax.Array] = None) -> dict[str, Any]:
  """Jitted `AMR(cfg).apply` on fixture inputs; returns the output dict with numpy leaves."""
  if train and dropout_rng is None:
    raise ValueError('train=True needs a dropout_rng')
  forward = _jitted_forward(cfg, train)
  return jax.tree.map(np.asarray, forward(variables, model_inputs(inputs), dropout_rng))


def flatten_outputs(outputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Model output dict -> the fixture's flat names: 'pred_logits', 'aux_outputs.0.pred_spans', 'inter.hs_all', ..."""
  flat: dict[str, np.ndarray] = {}
  for key, value in outputs.items():
    if key == 'aux_outputs':
      for i, aux in enumerate(value):
        for aux_key, aux_value in aux.items():
          flat[f'aux_outputs.{i}.{aux_key}'] = np.asarray(aux_value)
    elif key == 'inter':
      for inter_key, inter_value in value.items():
        flat[f'inter.{inter_key}'] = np.asarray(inter_value)
    else:
      flat[key] = np.asarray(value)
  return flat
