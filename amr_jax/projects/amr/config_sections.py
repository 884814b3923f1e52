"""AMR's own config sections with their reference defaults: network, quirk switches, loss weights, matcher.

The run configs (configs/amr_*.py) build on these; the parity checker reads the same defaults.
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
