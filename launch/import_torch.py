"""Import a TR-DETR/AMR PyTorch checkpoint (`.ckpt`/`.pth`) or an `.npz` of tensors as an inference export.

The result loads with `predict.py --workdir=OUT` and `Predictor(OUT)`; torch is optional (only for .ckpt).
"""
import json

from absl import flags
from ml_collections import config_flags

from amr_jax.projects.amr import torch_import
from amr_jax.train import checkpoints
from launch import _cli

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/amr_stage1.py', 'Model config (stage from it).')
_CKPT = flags.DEFINE_string('checkpoint', None, 'PyTorch .ckpt/.pth file or .npz of state_dict tensors.')
_OUT = flags.DEFINE_string('out', None, 'Export directory to write.')
_VIDEO_DIM = flags.DEFINE_integer('video_dim', 0, 'Video feature width without TEF (default: from the weights).')
flags.mark_flags_as_required(['checkpoint', 'out'])


def main(argv):
  del argv
  state_dict = torch_import.read_state_dict(_CKPT.value)
  config = _CONFIG.value
  params, dims = torch_import.state_dict_to_params(state_dict, config)
  saved = {'run': json.loads(config.to_json_best_effort()), 'dims': dims, 'task': 'amr'}
  checkpoints.save_export(_OUT.value, params, saved)
  print(f'imported {len(state_dict)} tensors from {_CKPT.value} into {_OUT.value} (dims {dims})')


if __name__ == '__main__':
  _cli.run(main, jax_cache=True)
