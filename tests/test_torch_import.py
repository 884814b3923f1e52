"""Importing PyTorch-named weights (.npz) into an export that the Predictor loads and that equals the fixture."""
import json
import subprocess
import sys

import numpy as np

from conftest import FIXTURES, ROOT


def test_import_npz_roundtrip(tmp_path):
  fixture = FIXTURES / 'amr_reference'
  out = tmp_path / 'export'
  sizes = json.loads((fixture / 'tiny_config.json').read_text())['model']  # the checkpoint's own sizes
  size_flags = [f'--config.model.{k}={sizes[k]}' for k in ('hidden_dim', 'nheads', 'dim_feedforward')]
  proc = subprocess.run([sys.executable, str(ROOT / 'launch' / 'import_torch.py'),
                         '--config=configs/amr_stage1.py:tiny', f'--checkpoint={fixture / "stage1_params.npz"}',
                         f'--out={out}', *size_flags],
                        cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-2000:]
  from amr_jax.projects.amr import torch_names
  from amr_jax.projects.amr.fixture import load_fixture, model_config
  from amr_jax.train import checkpoints
  params, saved = checkpoints.load_export(out)
  assert saved['dims'] == {'video_dim': 16, 'text_dim': 24}
  cfg = model_config(load_fixture(str(fixture)), 'pretrain')
  back = torch_names.flax_to_torch(params, cfg)
  with np.load(fixture / 'stage1_params.npz') as z:
    for name, value in back.items():
      np.testing.assert_array_equal(value, z[name])


def test_import_missing_file_is_one_line(tmp_path):
  proc = subprocess.run([sys.executable, str(ROOT / 'launch' / 'import_torch.py'), '--checkpoint=/nope.ckpt',
                         f'--out={tmp_path}'], cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr
