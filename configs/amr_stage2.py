"""AMR stage 2 (distillation adaptation): real train data with wrong spans, student + frozen teacher (§6).

Needs `--config.init.stage1_workdir=DIR`; `:tiny` = the small variant for tests and the demo.
"""
import ml_collections

from configs import amr_common


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  c = amr_common.base_config(arg)
  c.model.stage = 'distill'
  c.data.augment = 'none'
  c.data.train_annotations = 'data/annotations/qvhighlights/highlight_train_release.jsonl'
  c.train.num_epochs = 100
  c.train.batch_size = 32 if arg != 'tiny' else 16
  c.optim.lr_drop = 40            # epochs: lr 1e-4 -> 1e-5 -> 1e-6
  if arg == 'tiny':
    c.optim.lr = 3e-4             # distillation from a trained stage 1: the smaller step (docs/PLANTED.md)
    c.train.num_steps = 300
    c.train.checkpoint_every = 100
    c.train.log_every = 25
  return c
