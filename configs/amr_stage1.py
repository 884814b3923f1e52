"""AMR stage 1 (cold start): trains only on Splice/Boost-augmented samples (amr.md §5).

`--config=configs/amr_stage1.py` = the reference recipe; `:tiny` = the small variant for tests and the demo.
"""
import ml_collections

from configs import amr_common


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  c = amr_common.base_config(arg)
  c.model.stage = 'pretrain'
  c.data.augment = 'splice_online'
  c.train.num_epochs = 40
  c.train.batch_size = 128 if arg != 'tiny' else 16
  c.optim.lr_drop = 100           # epochs: no decay within 40 epochs
  if arg == 'tiny':
    c.data.aug_passes = 2
    c.train.num_steps = 300
    c.train.checkpoint_every = 100
    c.train.log_every = 25
  return c
