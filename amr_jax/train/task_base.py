"""What every linen task of the generic trainer shares: its construction fields and the model init/apply.

A task binds a run config to one linen model: `init_model` / `apply_model` feed it the four model inputs of the
generic batch (MODEL_INPUTS) plus the task's own extra positional / keyword arguments, with a 'dropout' rng in
training. AMRTask and FlashMMRTask subclass `LinenTask`; adding a model = a task subclass + config + registry entry.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax

MODEL_INPUTS = ('src_vid', 'src_vid_mask', 'src_txt', 'src_txt_mask')


def model_inputs(batch: dict) -> list:
  """The positional model inputs of a generic batch, in MODEL_INPUTS order."""
  return [batch[k] for k in MODEL_INPUTS]


@dataclasses.dataclass
class LinenTask:
  """Base of the trainer's tasks: subclasses set `self.model` (a linen module) in `__post_init__`."""
  config: Any                   # the ml_collections run config
  video_dim: int                # with the 2 TEF dims
  text_dim: int

  def init_model(self, rng: jax.Array, batch: dict, *extra, **kwargs):
    """The model's 'params' collection, initialised on `batch` (rng also seeds any dropout at init)."""
    return self.model.init({'params': rng, 'dropout': rng}, *model_inputs(batch), *extra, **kwargs)['params']

  def apply_model(self, params, batch: dict, *extra, dropout_rng=None, **kwargs):
    """The model's forward on `batch`; `dropout_rng` (None = no rng) drives dropout. The model's own mode
    argument (AMR `train=`, FlashMMR `deterministic=`) goes in `kwargs`."""
    rngs = {'dropout': dropout_rng} if dropout_rng is not None else {}
    return self.model.apply({'params': params}, *model_inputs(batch), *extra, rngs=rngs, **kwargs)
