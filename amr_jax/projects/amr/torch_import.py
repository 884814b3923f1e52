"""Read PyTorch AMR/TR-DETR weights safely (.ckpt via torch weights_only, or .npz) and map them to Flax params.

torch is an optional extra: without it, .ckpt files get a clear message and .npz files still work.
"""
from __future__ import annotations

import pathlib

import numpy as np

from amr_jax.projects.amr.model import AMRModelConfig
from amr_jax.projects.amr import torch_names


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  p = pathlib.Path(path)
  if not p.exists():
    raise FileNotFoundError(f'{p}: no such checkpoint')
  if p.suffix == '.npz':
    with np.load(p) as z:
      return {k: np.asarray(z[k]) for k in z.files}
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise RuntimeError(f'{p}: reading a PyTorch checkpoint needs torch (pip install torch), or convert it to '
                       f'.npz with numpy first') from e
  obj = torch.load(p, map_location='cpu', weights_only=True)  # never unpickles arbitrary objects
  state = obj.get('model', obj) if isinstance(obj, dict) else obj
  return {k: v.detach().cpu().numpy() for k, v in state.items() if hasattr(v, 'detach')}


def state_dict_to_params(state_dict: dict, config) -> tuple[dict, dict]:
  """(Flax params, {'video_dim', 'text_dim'}) for a run config; widths come from the input projections."""
  v_in = state_dict['input_vid_proj.0.LayerNorm.weight'].shape[0]
  t_in = state_dict['input_txt_proj.0.LayerNorm.weight'].shape[0]
  cfg = AMRModelConfig.from_configs(config.model, config.quirks, v_in, t_in)
  hidden = state_dict['input_vid_proj.0.net.1.weight'].shape[0]
  if hidden != cfg.hidden_dim:
    raise ValueError(f'checkpoint hidden size {hidden} != config model.hidden_dim {cfg.hidden_dim}')
  params = torch_names.torch_to_flax(state_dict, cfg, strict=True)
  return params, {'video_dim': int(v_in - 2), 'text_dim': int(t_in)}
