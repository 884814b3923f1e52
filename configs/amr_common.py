"""Shared pieces of the AMR configs: model, loss weights, matcher, quirk switches, optimiser, data.

`amr_stage1.py` and `amr_stage2.py` start from `base_config(arg)` and change what their stage needs.
"""
import ml_collections


def model_config(tiny: bool = False) -> ml_collections.ConfigDict:
  """AMR network hyper-parameters (amr.md §2); feature widths come from the store, not from here."""
  m = ml_collections.ConfigDict()
  # tiny: hidden 64 / FFN 128 / input dropout 0.1. Hidden 32 with the reference's input dropout 0.5 barely learned
  # planted data (val R1@0.5 9 % after 800 steps); these values learn it within a few hundred steps (docs/PLANTED.md).
  m.hidden_dim = 64 if tiny else 256
  m.nheads = 4 if tiny else 8
  m.dim_feedforward = 128 if tiny else 1024
  m.t2v_layers = 2
  m.enc_layers = 2
  m.dec_layers = 4
  m.num_queries = 10
  m.dropout = 0.1
  m.input_dropout = 0.1 if tiny else 0.5
  m.n_input_proj = 2
  m.max_q_l = 32            # size of the unused TrainablePositionalEncoding table
  m.stage = 'pretrain'      # 'pretrain' (stage 1) or 'distill' (stage 2: 2 query passes, active FFNs)
  m.precision = 'fp32'      # 'fp32' or 'bf16' (opt-in bfloat16 matmuls)
  m.dropout_impl = 'hash'   # 'hash' (counter-hash masks, ~30x cheaper on CPU) or 'jax' (jax.random.bernoulli)
  m.fold_eval_layernorm = True  # eval: wide input LayerNorms folded into their Linear (same math, ~15% faster)
  return m


def quirks_config() -> ml_collections.ConfigDict:
  """Every reference quirk that changes numbers; True = reproduce the original code (docs/QUIRKS.md)."""
  q = ml_collections.ConfigDict()
  q.t2v_misaligned_mask = True          # T2V extra mask tiled with repeat (sample/head misaligned)
  q.final_masks_from_layer2 = True      # final pred_masks (and final matching) use decoder layer L-2
  q.hd2mr_unmasked_softmax = True       # HD2MR softmax over clips includes padding
  q.vtc_mean_includes_padding = True    # VTC video mean over all padded positions
  q.ctc_mean_includes_padding = True    # CTC BCE averaged over padded positions too
  q.iou_loss_all_queries = True         # IoU-score MSE over all queries (else matched only)
  q.final_mask_loss_weight_zero = True  # final-layer mask IoU loss weight 0 (aux 5)
  q.disc_anchor_video_mean = True       # L_disc anchor = mean video feature (else sentence feature)
  q.stage2_random_anchors = True        # stage-2 anchors drawn N(0,1) (else copy stage-1 query_embed)
  q.teacher_train_mode = True           # stage-2 teacher runs with dropout on
  q.fixed_clamp_150 = True              # inference clamps windows to [0, 150] (else [0, duration])
  return q


def loss_config() -> ml_collections.ConfigDict:
  """Loss weights and constants (amr.md §3, fixture tiny_config.json 'loss_weights'/'loss_params')."""
  l = ml_collections.ConfigDict()
  l.span = 10.0
  l.giou = 1.0
  l.label = 4.0
  l.saliency = 1.0
  l.mask_iou = 5.0          # aux layers; the final layer gets 0 while quirks.final_mask_loss_weight_zero
  l.iou_scores = 1.0
  l.ctc = 0.5
  l.vtc = 0.3
  l.dill = 0.5
  l.disc = 0.5
  l.focal_alpha = 0.25
  l.focal_gamma = 2.0
  l.saliency_margin = 0.2
  l.rank_tau = 0.5
  l.ctc_temperature = 0.07
  l.vtc_temperature = 0.07
  l.disc_temperature = 0.07
  return l


def matcher_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.cost_span = 10.0
  c.cost_giou = 1.0
  c.cost_class = 4.0
  c.cost_mask = 5.0
  c.solver = 'hungarian'    # 'hungarian' (optax, on device) or 'scipy' (host callback; test oracle)
  return c


def data_config(tiny: bool = False) -> ml_collections.ConfigDict:
  d = ml_collections.ConfigDict()
  d.train_annotations = 'data/annotations/qvhighlights/highlight_train_release.jsonl'
  d.val_annotations = 'data/annotations/qvhighlights/highlight_val_release.jsonl'
  d.feature_dir = 'demo_out/planted'
  d.max_v_l = 75
  d.max_q_l = 32
  d.max_windows = 10
  d.clip_len = 2.0
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
  d.drop_bad = False
  d.shuffle_queries = False # control run: train on other queries' text features (must stay near chance)
  d.shuffle_buffer = 100_000
  d.subset = 0              # >0: only the first N training queries (demo / tests)
  d.val_subset = 0
  return d


def base_config(arg: str = '') -> ml_collections.ConfigDict:
  tiny = arg == 'tiny'
  c = ml_collections.ConfigDict()
  c.seed = 42
  c.model = model_config(tiny)
  c.quirks = quirks_config()
  c.loss = loss_config()
  c.matcher = matcher_config()
  c.data = data_config(tiny)
  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-3 if tiny else 1e-4   # tiny: short runs on planted data need the larger step (PLANTED.md)
  c.optim.weight_decay = 1e-4
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.grad_clip = 0.1
  c.optim.lr_drop = 100     # epochs; StepLR(gamma=0.1) per epoch
  c.train = ml_collections.ConfigDict()
  c.train.num_epochs = 40
  c.train.num_steps = 0     # >0 overrides epochs
  c.train.batch_size = 8 if tiny else 128
  c.train.num_devices = 0   # 0 = every device of every process; N = the first N (one process only)
  c.train.checkpoint_every = 200
  c.train.keep_checkpoints = 3
  c.train.eval_every = 0
  c.train.log_every = 10
  c.train.max_bad_steps = 5 # consecutive non-finite steps before the run stops
  c.train.inject_nan_at_step = -1  # test hook: poison this step's loss/gradients with NaN
  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 100 if not tiny else 32
  c.init = ml_collections.ConfigDict()
  c.init.stage1_workdir = ''
  c.mine = ml_collections.ConfigDict()
  c.mine.folds = 2
  c.mine.theta = 0.5          # keep predictions scoring above this (fg prob x IoU quality)
  c.mine.max_per_query = 2
  return c
