"""Boost wrong-span mining: a stage-1-style AMR (stage-1 losses, real data, no augmentation) per fold.

Used by `launch/mine_wrong_spans.py --config=configs/amr_mine.py[:tiny]`; theta in `mine.theta`.
"""
import ml_collections

from configs import amr_common


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  c = amr_common.base_config(arg)
  c.model.stage = 'pretrain'
  c.data.augment = 'none'
  c.data.val_annotations = ''
  c.train.batch_size = 32 if arg != 'tiny' else 16
  c.train.num_epochs = 40
  if arg == 'tiny':
    c.train.num_steps = 200
    c.train.checkpoint_every = 100
    c.train.log_every = 50
    c.mine.theta = 0.01       # short tiny fold models score ~0.02; the full config keeps 0.5
  return c
