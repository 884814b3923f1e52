"""Shared pieces of the AMR configs: the method's sections (amr_jax/projects/amr/config_sections.py), optimiser, data.

`amr_stage1.py` and `amr_stage2.py` start from `base_config(arg)` and change what their stage needs.
"""
import ml_collections

from amr_jax.projects.amr.config_sections import loss_config, matcher_config, model_config, quirks_config
from configs import common


def data_config(tiny: bool = False) -> ml_collections.ConfigDict:
  del tiny
  d = common.moment_data_config()
  d.augment = 'none'        # 'none' | 'splice_online' (stage 1 online Splice/Boost augmentation)
  d.aug_passes = 10         # augmentation passes (amr.md §4 iter_num)
  d.curriculum = 'none'     # 'none' (reference: uniform shuffle) | 'easy_to_hard'
  d.curriculum_schedule = ml_collections.ConfigDict()
  d.curriculum_schedule.pacing = 'linear'   # competence c(t) rises from start_frac to 1 ('linear'|'sqrt'|'step')
  d.curriculum_schedule.start_frac = 0.2    # share of the easiest samples allowed at step 0
  d.curriculum_schedule.warm_frac = 0.5     # fraction of training until every sample is allowed
  d.curriculum_schedule.temperature = 0.05  # soft decay of weights above the competence (0 = hard cut)
  d.curriculum_schedule.num_stages = 3      # for pacing='step'
  d.curriculum_schedule.by_rank = True      # difficulty -> empirical CDF before pacing
  d.shuffle_buffer = 100_000
  return d


def base_config(arg: str = '') -> ml_collections.ConfigDict:
  tiny = common.check_arg(arg) == 'tiny'
  c = common.trainer_config(tiny, method='amr', evals={'val': {'type': 'qvh'}}, best_metric='val/MR-full-mAP')
  c.model = model_config(tiny)
  c.quirks = quirks_config()
  c.loss = loss_config()
  c.matcher = matcher_config()
  c.data = data_config(tiny)
  c.predict = common.moment_predict_config()
  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-3 if tiny else 1e-4   # tiny: short runs on planted data need the larger step (PLANTED.md)
  c.optim.weight_decay = 1e-4
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.grad_clip = 0.1
  c.optim.lr_drop = 100     # epochs; StepLR(gamma=0.1) per epoch
  c.mine = ml_collections.ConfigDict()
  c.mine.folds = 2
  c.mine.theta = 0.5          # keep predictions scoring above this (fg prob x IoU quality)
  c.mine.max_per_query = 2
  return c
