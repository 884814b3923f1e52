"""AMDNet (TMM 2025, PRVR) on the shared trainer: `--config=configs/amdnet.py[:tiny|:act|:cha]`.

Defaults are the released TVR recipe (songpipi/AMDNet `Configs/tvr.py`, spec /work/shared/specs/amdnet.md): d 384,
32 clips, 4 moments, 512-d CLIP inputs, BertAdam lr 3e-4 / 1% warmup / wd 0.01, 128 videos a batch, 200 epochs.
"""
import ml_collections

ARGS = ('', 'tiny', 'act', 'cha')


def section(**fields) -> ml_collections.ConfigDict:
  """One config section from keyword fields."""
  return ml_collections.ConfigDict(fields)


def model_config(tiny: bool = False) -> ml_collections.ConfigDict:
  """Network (mirrors `amr_jax.projects.amdnet.model.AMDNetConfig`); the feature widths come from the data."""
  return section(
      video_dim=512,           # CLIP ViT-B/32 frame features as released (the store's width wins)
      text_dim=512,            # CLIP ViT-B/32 sentence features
      hidden_size=32 if tiny else 384,   # 256 for ActivityNet / Charades
      n_heads=4,               # must equal event_size
      event_size=4,            # moments H (span anchors)
      map_size=8 if tiny else 32,        # clips N per video
      max_ctx_l=24 if tiny else 128,     # rows of the position table (the repo's max_ctx_l; only N are used)
      input_drop=0.2,
      drop=0.2,
      initializer_range=0.02,
      layer_norm_eps=1e-5,
      normalize_eps=1e-12,
      sigma_divisor=9.0,       # s = max(w, width_clamp_min) / 9 (hard-coded)
      width_clamp_min=0.01,
      gauss_prefactor=0.3989422804014327,
      dropout_impl='hash',     # 'hash' (counter-hash masks, sharding-invariant) | 'jax'
      # Spec open question 2: 'clip' = max over the N attended clip tokens (the code); 'moment' = max over the
      # H moment features (a third-party summary's "max-over-moments"), for the NCE and the retrieval score.
      score_mode='clip',
  )


def quirks_config() -> ml_collections.ConfigDict:
  """Every reference quirk that changes numbers (fixture README §8); the defaults reproduce the original code."""
  return section(
      clip_avg='repo',                 # 2: round-half-even bounds, last bound clamped to F-1 | 'inclusive'
      moment_mask='multiply',          # 3: mask multiplies the attention logits | 'log_add' (log M added)
      mask_norm='max',                 # 4: Gaussian / its max (peak 1) | 'sum' | 'density'
      mask_nan_guard=False,            # 5: all-underflow rows give 0/0 = NaN | True: log-space masks
      t_grid='linspace',               # 6: t_n = n/(N-1) | 'centers': (n + 1/2)/N
      moment_pool='sum',               # 8: P = M V (weighted sums) | 'mean': (M / sum M) V
      share_query_dropout=False,       # 10: the query projection runs twice in training | True: once
      optimizer='bertadam_repo',       # 16: per-tensor clip, no bias correction, lr 0 at step 0 | 'adamw'
      decay_lowercase_layernorm=True,  # 17: clip2video.layernorm.weight is decayed | False: not decayed
  )


def loss_config(collection: str = 'tvr') -> ml_collections.ConfigDict:
  """Criterion weights (mirrors `losses.AMDNetLossConfig`): loss_factor [0.04, 1] TVR, [0.02, 1] ANet / Cha."""
  return section(
      nce_weight=0.04 if collection == 'tvr' else 0.02,
      div_weight=1.0,
      rel_weight=25.0,         # hard-coded in the repo
      div_lambda=0.15,         # hard-coded
      rel_margin=0.02,         # hard-coded
      normalize_eps=1e-12,
  )


def optim_config(collection: str = 'tvr') -> ml_collections.ConfigDict:
  """BertAdam (`Opts/optimization.py`); t_total = the run's total steps (batches per epoch x epochs)."""
  return section(
      lr=3e-4 if collection == 'tvr' else 2.5e-4,
      warmup_proportion=0.01,
      weight_decay=0.01,
      b1=0.9,
      b2=0.999,
      eps=1e-6,
      max_grad_norm=1.0,       # per tensor
      schedule='warmup_linear',
  )


def data_config(collection: str = 'tvr', tiny: bool = False) -> ml_collections.ConfigDict:
  """PRVR caption files + CLIP feature store (layout of amr_jax/data/prvr.py)."""
  root = f'data/prvr/{collection}'
  return section(
      collection=collection,
      root=root,
      train_annotations=f'{root}/TextData/{collection}train.caption.txt',
      val_annotations=f'{root}/TextData/{collection}val.caption.txt',
      feature_dir=root,
      max_captions_per_video=4 if tiny else 8,   # caption slots C per video in a train batch (TVR has 5 each)
      max_frames=64 if tiny else 256,            # frame slots L per video before clip pooling
      drop_bad=False,
      subset=0,
      val_subset=0,
  )


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  if arg not in ARGS:
    raise ValueError(f'unknown config argument {arg!r}; expected one of: '
                     + ', '.join(repr(a) if a else "'' (none)" for a in ARGS))
  tiny = arg == 'tiny'
  collection = {'act': 'activitynet', 'cha': 'charades'}.get(arg, 'tvr')
  c = ml_collections.ConfigDict()
  c.method = 'amdnet'
  c.seed = 9527 if collection == 'tvr' else 3407
  c.model = model_config(tiny)
  if collection != 'tvr':
    c.model.hidden_size = 256
  if collection == 'charades':
    c.model.input_drop = c.model.drop = 0.15   # Configs/cha.py
  c.quirks = quirks_config()
  c.loss = loss_config(collection)
  c.optim = optim_config(collection)
  c.data = data_config(collection, tiny)
  c.train = section(
      num_epochs=100 if collection != 'tvr' else 200,
      num_steps=300 if tiny else 0,     # >0 overrides epochs
      batch_size=8 if tiny else 128,    # videos per batch, each with all of its captions
      checkpoint_every=100 if tiny else 1000,
      eval_every=100 if tiny else 0,    # 0 = once per epoch (the repo validates every epoch)
      # The repo stops when es_cnt > max_es_cnt, i.e. after 16 epochs without a strictly higher val SumR (11 for
      # Charades): patience = max_es_cnt + 1.
      early_stop_patience=11 if collection == 'charades' else 16,
  )
  c.eval = section(
      context_batch_size=100,           # videos encoded per block (eval_context_bsz)
      query_batch_size=50,              # captions per block (eval_query_bsz)
      tie_order='stable',
  )
  c.init = section(stage1_workdir='')
  return c
