"""MCMT (IJMLC 2025) on the shared trainer: `--config=configs/mcmt.py[:tiny|:activitynet]`.

CPL's Charades-STA recipe (configs/cpl.py) + the trainer keys + MCMT's switches (mcmt.md recipe; defaults = it).
"""
import ml_collections

from configs import common
from configs import cpl


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  common.check_arg(arg, ('', 'tiny', 'activitynet'))
  tiny = arg == 'tiny'
  c = common.trainer_config(tiny, method='mcmt', evals={'val': {'type': 'weak_mr'}}, best_metric='val/R1_mIoU')
  base = cpl.get_config(arg)
  for section in ('model', 'quirks', 'optim', 'data', 'inference'):
    c[section] = base[section]
  c.seed = base.seed
  c.train.update({k: base.train[k] for k in ('num_epochs', 'num_steps', 'batch_size', 'checkpoint_every',
                                              'eval_every', 'log_every')})
  c.data.durations_from = ''      # annotation files with durations (Charades txt has none)
  c.data.query_map = ''           # {qid: qid} json: the shuffled-query control
  c.data.subset = 0
  c.data.val_subset = 0
  c.text = ml_collections.ConfigDict(dict(
      tokenizer='auto', pos_tagger='auto', tag_rule='substring', count_eval=True, word_vectors='planted',
      word_vector_seed=0, missing_word='error', require_vector=True))
  # Losses (recipe item 8): CPL's constants per dataset, task weights 1.
  c.loss = ml_collections.ConfigDict(dict(
      margin_hard=0.1, margin_easy=0.15, lam=base.loss.lam, alpha_1=base.loss.alpha_1, alpha_2=base.loss.alpha_2,
      label_smoothing=0.1, forward_weight=1.0, inverse_weight=1.0, rec_pos_hard_weight=0.5, rec_props_weight=0.5))
  # MCMT's additions (recipe items 4, 7, 10).
  c.mcmt = ml_collections.ConfigDict(dict(
      combine='nll_softmax',      # 'nll_softmax' | 'max' | 'mean' | 'learned'
      tau=1.0,                    # temperature of nll_softmax
      inverse_mode='reverse',     # 'reverse' (right-to-left) | 'complement' (the other words masked)
      rank_by='both',             # eval ranking: NLL_f + NLL_b ('both') | NLL_f ('forward')
  ))
  return c   # ':tiny' keeps CPL's tiny recipe (model, optimiser, steps), so the two compare like for like
