"""Parity check of the AMDNet port against a PyTorch reference fixture (layout of fixtures/amdnet_reference).

Every size comes from the fixture's tiny_config.json and arrays; tolerances are the fixture README's §9.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any, Dict, List, Mapping, NamedTuple, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from amr_jax.metrics import prvr as prvr_metrics
from amr_jax.metrics import prvr_evaluator
from amr_jax.projects.amdnet import losses as loss_lib
from amr_jax.projects.amdnet import model as model_lib
from amr_jax.projects.amdnet import optim as optim_lib
from amr_jax.projects.amdnet import torch_names

FORWARD_ATOL = 1e-5       # forward arrays: |a - b| <= 1e-5 + 1e-5 |b| elementwise
FORWARD_RTOL = 1e-5
LOSS_RTOL = 1e-5          # scalar loss terms and total: relative
GRAD_TOL = 5e-5           # per tensor: max |a - b| <= 5e-5 max(1, max |b|)
PARAM_STEP_ATOL = 1e-6    # post-step params: |a - b| <= 1e-6
MOMENT_M_RTOL = 5e-5      # opt state m: max |a - b| <= 5e-5 max |b|
MOMENT_V_RTOL = 1e-4      # opt state v: max |a - b| <= 1e-4 max |b|
# A reference gradient below this (max abs) is rounding noise of a mathematically zero gradient (README §6.1: the
# attn0 key bias). Its moments are compared with absolute tolerances (the moments a 1e-6 gradient would have).
NOISE_GRAD = 1e-6
NOISE_M_ATOL = 1e-7
NOISE_V_ATOL = 1e-12
GRAD_ROUNDING = 1e-5   # README §9: f32 gradient rounding is 6.5e-6 of each tensor's max

SCALAR_LOSS_KEYS = ('loss.clip_nce', 'loss.mask_div', 'loss.rank', 'loss_weighted.clip_nce',
                    'loss_weighted.mask_div', 'loss_weighted.rank', 'loss_total', 'nce.t2v', 'nce.v2t',
                    'nce.recomputed_loss', 'div.recomputed_loss', 'rel.recomputed_loss')
EXACT_KEYS = ('nce.positive_mask',)


class CheckResult(NamedTuple):
  """One compared quantity: its name ('<group>/<key>'), max abs error, max error relative to max |ref|, ok."""
  name: str
  max_abs: float
  max_rel: float
  ok: bool


def _errors(got, want) -> Tuple[np.ndarray, np.ndarray, float, float]:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  err = np.abs(got - want)
  err = np.where(np.isnan(got) & np.isnan(want), 0.0, err)  # NaN where the reference has NaN is a match
  err = np.where(np.isnan(err), np.inf, err)
  max_abs = float(err.max()) if err.size else 0.0
  finite = np.abs(want[np.isfinite(want)])
  scale = float(finite.max()) if finite.size else 0.0
  return got, want, max_abs, max_abs / max(scale, 1e-30)


def compare(name: str, got, want, kind: str = 'forward', noise: bool = False, slack=0.0) -> CheckResult:
  """Compare with the README tolerance of `kind`: forward | loss | exact | grad | param_step | moment_m | moment_v.

  `slack` (scalar or elementwise) widens the param_step / moment tolerances; `noise` marks a rounding-noise
  gradient tensor (its moments are compared with absolute tolerances). max_rel is relative to the scale the
  tolerance uses (max |ref|; max(1, max |ref|) for gradients)."""
  got_arr, want_arr = np.asarray(got), np.asarray(want)
  if got_arr.shape != want_arr.shape:
    return CheckResult(f'{name} (shape {got_arr.shape} vs {want_arr.shape})', float('inf'), float('inf'), False)
  if kind == 'exact':
    ok = bool(np.array_equal(got_arr, want_arr))
    _, _, max_abs, max_rel = _errors(got_arr.astype(np.float64), want_arr.astype(np.float64))
    return CheckResult(name, max_abs, max_rel, ok)
  got64, want64, max_abs, max_rel = _errors(got_arr, want_arr)
  err = np.abs(got64 - want64)
  err = np.where(np.isnan(got64) & np.isnan(want64), 0.0, np.where(np.isnan(err), np.inf, err))
  finite = np.abs(want64[np.isfinite(want64)])
  ref_max = float(finite.max()) if finite.size else 0.0
  if kind == 'forward':
    ok = bool(np.all(err <= FORWARD_ATOL + FORWARD_RTOL * np.abs(np.nan_to_num(want64))))
  elif kind == 'loss':
    ok = bool(np.all(err <= LOSS_RTOL * np.abs(np.nan_to_num(want64)) + 1e-12))
  elif kind == 'grad':
    ok = max_abs <= GRAD_TOL * max(1.0, ref_max)
    max_rel = max_abs / max(1.0, ref_max)
  elif kind == 'param_step':
    ok = bool(np.all(err <= PARAM_STEP_ATOL + np.asarray(slack, np.float64)))
  elif kind in ('moment_m', 'moment_v'):
    rtol = MOMENT_M_RTOL if kind == 'moment_m' else MOMENT_V_RTOL
    if noise:
      atol = NOISE_M_ATOL if kind == 'moment_m' else NOISE_V_ATOL
      ok = max_abs <= atol
      max_rel = max_abs / max(ref_max, atol / rtol)
    else:
      ok = bool(np.all(err <= rtol * ref_max + np.asarray(slack, np.float64)))
  else:
    raise ValueError(f'unknown comparison kind {kind!r}')
  return CheckResult(name, max_abs, max_rel, ok)


# integer outputs = argmax over axis 1 of these reference arrays
ARGMAX_OF = {'rel.best_moment': 'rel.moment_cos', 'scores_cos_argmax_clip': 'scores_cos_per_clip'}


def compare_argmax(name: str, got, want, ref_values) -> CheckResult:
  """Arg-max indices [Q, B] over axis 1 of `ref_values` [Q, K, B]: exact, except that an index whose reference
  value is within the forward tolerance of the reference maximum also counts (a near-tie: rounding decides)."""
  got, want, ref_values = (np.asarray(x) for x in (got, want, ref_values))
  if got.shape != want.shape:
    return CheckResult(f'{name} (shape {got.shape} vs {want.shape})', float('inf'), float('inf'), False)
  peak = np.take_along_axis(ref_values, want[:, None, :], axis=1)[:, 0]
  at_got = np.take_along_axis(ref_values, np.clip(got, 0, ref_values.shape[1] - 1)[:, None, :], axis=1)[:, 0]
  near = np.abs(at_got - peak) <= FORWARD_ATOL + FORWARD_RTOL * np.abs(peak)
  mismatched = got != want
  return CheckResult(name, float(mismatched.sum()), float(mismatched.mean()) if got.size else 0.0,
                     bool(np.all(~mismatched | near)))


def _load_npz(path: str) -> Dict[str, np.ndarray]:
  with np.load(path, allow_pickle=False) as z:
    return {k: z[k] for k in z.files}


def _require(fixture_dir: str, name: str) -> str:
  path = os.path.join(fixture_dir, name)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path}: missing (is {fixture_dir!r} an AMDNet fixture folder?)')
  return path


# ----------------------------------------------------------------------------------------------------
# Configs and batches from a fixture
# ----------------------------------------------------------------------------------------------------
def model_config(tiny_config: Mapping[str, Any], mode: str) -> model_lib.AMDNetConfig:
  """The network config of one fixture mode ('train': the repo cfg with dropout 0; 'eval': its dropouts).

  Sizes from TINY, dropouts from repo_cfg_{train,eval}_mode, constants from HARDCODED (repo values if absent)."""
  t, hard = tiny_config['TINY'], tiny_config.get('HARDCODED', {})
  repo = tiny_config.get('repo_cfg_train_mode' if mode == 'train' else 'repo_cfg_eval_mode',
                         {'input_drop': 0.0, 'drop': 0.0} if mode == 'train' else t)
  d = model_lib.AMDNetConfig()
  return model_lib.AMDNetConfig(
      video_dim=int(t['visual_feat_dim']), text_dim=int(t['q_feat_size']), hidden_size=int(t['hidden_size']),
      n_heads=int(t['n_heads']), event_size=int(t['event_size']), map_size=int(t['map_size']),
      max_ctx_l=int(t['max_ctx_l']), input_drop=float(repo['input_drop']), drop=float(repo['drop']),
      initializer_range=float(t.get('initializer_range', d.initializer_range)),
      layer_norm_eps=float(hard.get('layernorm_eps', d.layer_norm_eps)),
      normalize_eps=float(hard.get('normalize_eps', d.normalize_eps)),
      sigma_divisor=float(hard.get('sigma_divisor', d.sigma_divisor)),
      width_clamp_min=float(hard.get('width_clamp_min', d.width_clamp_min)),
      gauss_prefactor=float(hard.get('gauss_prefactor', d.gauss_prefactor)))


def loss_config(tiny_config: Mapping[str, Any]) -> loss_lib.AMDNetLossConfig:
  """Weights from TINY.loss_factor, the hard-coded constants from HARDCODED (repo values if absent)."""
  t, hard = tiny_config['TINY'], tiny_config.get('HARDCODED', {})
  d = loss_lib.AMDNetLossConfig()
  return loss_lib.AMDNetLossConfig(
      nce_weight=float(t['loss_factor'][0]), div_weight=float(t['loss_factor'][1]),
      rel_weight=float(hard.get('rel_weight', d.rel_weight)), div_lambda=float(hard.get('lambda_div', d.div_lambda)),
      rel_margin=float(hard.get('rel_margin', d.rel_margin)),
      normalize_eps=float(hard.get('normalize_eps', d.normalize_eps)))


def t_total(tiny_config: Mapping[str, Any]) -> int:
  derived = tiny_config.get('derived', {})
  if 't_total' in derived:
    return int(derived['t_total'])
  t = tiny_config['TINY']
  return int(t.get('batches_per_epoch', 1)) * int(t['n_epoch'])


def optimizer(tiny_config: Mapping[str, Any]):
  """The fixture's BertAdam: lr / warmup / wd from TINY, betas / eps / clipping from HARDCODED.bertadam."""
  t = tiny_config['TINY']
  adam = tiny_config.get('HARDCODED', {}).get('bertadam', {})
  return optim_lib.bertadam(float(t['lr']), float(t['lr_warmup_proportion']), t_total(tiny_config),
                            b1=float(adam.get('b1', 0.9)), b2=float(adam.get('b2', 0.999)),
                            eps=float(adam.get('e', 1e-6)), weight_decay=float(t['wd']),
                            max_grad_norm=float(adam.get('max_grad_norm', 1.0)))


def pad_frames(raw_frames_concat: np.ndarray, frame_counts: Sequence[int], extra: int = 0,
               fill: float = 0.0) -> Tuple[np.ndarray, np.ndarray]:
  """Concatenated per-video frames -> (video_feat [B, max F + extra, D], video_mask [B, .]); padding = fill."""
  counts = [int(c) for c in frame_counts]
  length = max(counts) + extra
  feat = np.full((len(counts), length, raw_frames_concat.shape[1]), fill, np.float32)
  mask = np.zeros((len(counts), length), np.float32)
  start = 0
  for b, count in enumerate(counts):
    feat[b, :count] = raw_frames_concat[start:start + count]
    mask[b, :count] = 1.0
    start += count
  return feat, mask


def caption_slots(text_feat: np.ndarray, text_labels: Sequence[int], num_videos: int, extra: int = 0,
                  fill: float = 0.0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Query-major captions with their video labels -> (caption_feat [B, C, Dq], caption_mask [B, C], slot [Q]):
  video b's captions fill its slots in query order; slot[i] = b * C + c of query i (gathers [B*C] -> [Q])."""
  labels = np.asarray(text_labels, np.int64)
  per_video = np.bincount(labels, minlength=num_videos)
  slots = int(per_video.max()) + extra
  feat = np.full((num_videos, slots, text_feat.shape[1]), fill, np.float32)
  mask = np.zeros((num_videos, slots), np.float32)
  slot = np.zeros(len(labels), np.int64)
  used = np.zeros(num_videos, np.int64)
  for i, b in enumerate(labels):
    feat[b, used[b]] = text_feat[i]
    mask[b, used[b]] = 1.0
    slot[i] = b * slots + used[b]
    used[b] += 1
  return feat, mask, slot


def fixture_batch(inputs: Mapping[str, np.ndarray], extra_frames: int = 0, extra_captions: int = 0,
                  fill: float = 0.0) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
  """The fixture's training batch in the port's layout (raw frames, padded) and the query -> slot index."""
  if 'raw_frames_concat' in inputs:
    video_feat, video_mask = pad_frames(inputs['raw_frames_concat'], inputs['raw_frame_counts'], extra_frames, fill)
  else:  # already pooled clips: N frames pool to themselves
    video_feat = np.asarray(inputs['clip_video_features'], np.float32)
    video_mask = np.ones(video_feat.shape[:2], np.float32)
  b = video_feat.shape[0]
  caption_feat, caption_mask, slot = caption_slots(inputs['text_feat'], inputs['text_labels'], b, extra_captions,
                                                   fill)
  batch = {'video_feat': video_feat, 'video_mask': video_mask, 'caption_feat': caption_feat,
           'caption_mask': caption_mask, 'sample_valid': np.ones((b,), np.float32)}
  return batch, slot


# ----------------------------------------------------------------------------------------------------
# The port's numbers under the fixture's names
# ----------------------------------------------------------------------------------------------------
def forward_and_loss(params, batch: Mapping[str, Any], cfg: model_lib.AMDNetConfig,
                     loss_cfg: loss_lib.AMDNetLossConfig, *, train: bool, rng=None) -> Tuple[Any, dict, dict]:
  """(total, model outputs, loss aux with pieces) of one batch."""
  model = model_lib.AMDNet(cfg)
  rngs = {'dropout': rng if rng is not None else jax.random.PRNGKey(0)} if train else None
  out = model.apply({'params': params}, batch['video_feat'], batch['video_mask'], batch['caption_feat'],
                    batch['caption_mask'], train=train, rngs=rngs)
  total, aux = loss_lib.amdnet_loss(out, batch, cfg, loss_cfg, return_pieces=True)
  return total, out, aux


def fixture_names(out: Mapping[str, Any], aux: Mapping[str, Any], slot: np.ndarray,
                  cfg: model_lib.AMDNetConfig) -> Dict[str, Any]:
  """Model outputs + loss pieces -> the fixture's `outputs.npz` keys (without the mode prefix), in query order.

  Traceable (run it inside the jitted forward); `slot` [Q] maps query i to its caption slot b * C + c."""
  b, c, d = out['query_emb_first_call'].shape
  names = {k: out[k] for k in (
      'clip_proj', 'V', 'pooled_mean', 'global_vec', 'gauss_logits', 'centres', 'widths', 'gauss_masks',
      'moment_feat', 'attn0.logits', 'attn0.probs', 'attn0.context', 'o0', 'attn1.logits_unmasked',
      'attn1.logits_masked', 'attn1.probs', 'attn1.context', 'o1', 'clip_tokens')}
  q_first = out['query_emb_first_call'].reshape(b * c, d)[slot]
  q_second = out['query_emb'].reshape(b * c, d)[slot]
  names['query_emb_first_call'], names['query_emb'] = q_first, q_second
  cos, cos_per_clip = model_lib.clip_scores(q_first, model_lib.retrieval_tokens(out, cfg), normalize=True,
                                            eps=cfg.normalize_eps)
  names['scores_cos'], names['scores_cos_per_clip'] = cos, cos_per_clip
  names['scores_cos_argmax_clip'] = jnp.argmax(cos_per_clip, axis=1)
  names['scores_dot'] = aux['scores_dot'][slot]
  names['scores_dot_per_clip'] = aux['scores_dot_per_clip'][slot]
  rel_full = loss_lib.relevance_cosines(q_second, out['moment_feat'], out['global_vec'], cfg.normalize_eps)
  for key in ('moment_cos', 'max_moment_cos', 'best_moment', 'global_cos'):
    names[f'rel.{key}'] = rel_full[key]
  names['rel.hinge'] = aux['rel']['hinge'].reshape(b * c)[slot]
  names['rel.recomputed_loss'] = aux['rel']['loss']
  nce = aux['nce']
  names['nce.t2v_num'], names['nce.t2v_den'] = nce['t2v_num'][slot], nce['t2v_den'][slot]
  names['nce.v2t_num'], names['nce.v2t_den'] = nce['v2t_num'], nce['v2t_den']
  names['nce.t2v'], names['nce.v2t'], names['nce.recomputed_loss'] = nce['t2v'], nce['v2t'], nce['loss']
  names['nce.positive_mask'] = aux['validity']['positive'][slot]
  div = aux['div']
  names['div.masks_row_normalised'], names['div.gram'] = div['masks_row_normalised'], div['gram']
  names['div.per_video'], names['div.recomputed_loss'] = div['per_video'], div['loss']
  for term in ('clip_nce', 'mask_div', 'rank'):
    names[f'loss.{term}'] = aux[f'loss/{term}']
    names[f'loss_weighted.{term}'] = aux[f'loss_weighted/{term}']
  names['loss_total'] = aux['loss/total']
  return names


def encode_corpus(params, cfg: model_lib.AMDNetConfig, video_feat: np.ndarray, video_mask: np.ndarray,
                  text_feat: np.ndarray, context_bsz: int, query_bsz: int) -> Tuple[np.ndarray, np.ndarray]:
  """Corpus-level evaluation: every video encoded once (blocks of context_bsz, the last one padded), every
  caption once (blocks of query_bsz), then the similarity [Q, V] block by block. Returns (scores, clip_feat)."""
  model = model_lib.AMDNet(cfg)

  def encode_videos(p, frames, mask):  # only what retrieval needs leaves the program (the rest is dead code)
    out = model.apply({'params': p}, frames, mask, train=False, method=model_lib.AMDNet.encode_videos)
    return model_lib.retrieval_tokens(out, cfg), out['clip_feat']

  encode_v = jax.jit(encode_videos)
  encode_q = jax.jit(lambda p, t: model.apply({'params': p}, t, train=False,
                                              method=model_lib.AMDNet.encode_queries))
  score = jax.jit(lambda q, v: model_lib.score(q, v, cfg.normalize_eps))
  tokens, clips = [], []
  for start in range(0, len(video_feat), context_bsz):
    f, m = _padded_block(video_feat, start, context_bsz), _padded_block(video_mask, start, context_bsz)
    n = min(context_bsz, len(video_feat) - start)
    block_tokens, block_clips = encode_v(params, f, m)
    tokens.append(np.asarray(block_tokens)[:n])
    clips.append(np.asarray(block_clips)[:n])
  queries = []
  for start in range(0, len(text_feat), query_bsz):
    n = min(query_bsz, len(text_feat) - start)
    queries.append(np.asarray(encode_q(params, _padded_block(text_feat, start, query_bsz)))[:n])
  video_tokens, query_emb = np.concatenate(tokens), np.concatenate(queries)
  rows = []
  for qs in range(0, len(query_emb), query_bsz):
    q = _padded_block(query_emb, qs, query_bsz)
    cols = [np.asarray(score(q, _padded_block(video_tokens, vs, context_bsz)))[:, :min(context_bsz,
                                                                                       len(video_tokens) - vs)]
            for vs in range(0, len(video_tokens), context_bsz)]
    rows.append(np.concatenate(cols, axis=1)[:min(query_bsz, len(query_emb) - qs)])
  return np.concatenate(rows), np.concatenate(clips)


def _padded_block(x: np.ndarray, start: int, size: int) -> np.ndarray:
  block = x[start:start + size]
  if len(block) < size:
    block = np.concatenate([block, np.zeros((size - len(block),) + x.shape[1:], x.dtype)])
  return block


def tie_rank(scores: np.ndarray, gt: np.ndarray) -> np.ndarray:
  """1-based rank of each query's GT video, ties broken as torch's stable CPU argsort on <= 16 videos
  (behind tied videos of lower index): 1 + #{s > s_gt} + #{j < gt: s_j = s_gt}."""
  s_gt = scores[np.arange(len(gt)), gt][:, None]
  lower = np.arange(scores.shape[1])[None, :] < gt[:, None]
  return 1 + np.sum(scores > s_gt, axis=1) + np.sum((scores == s_gt) & lower, axis=1)


@functools.lru_cache(maxsize=4)
def _optimizer_step(tiny_config_json: str):
  """(jitted init, jitted (params, state, grads) -> (new params, new state)) of a fixture's optimiser."""
  tx = optimizer(json.loads(tiny_config_json))
  def step(p, s, g):
    updates, s = tx.update(g, s, p)
    return jax.tree.map(lambda a, u: a + u, p, updates), s
  return jax.jit(tx.init), jax.jit(step)


def run_optimizer(tiny_config: Mapping[str, Any], params, grad_of, iterations: int, first_grads=None):
  """`iterations` steps of the fixture's optimiser from `params`; each step's gradients are `grad_of(current)`,
  or `first_grads` while the weights are still the initial ones (the first step's lr multiplier is 0).

  Returns (torch-named params after the last step, (torch-named m, torch-named v), how many steps were fed
  `first_grads`)."""
  init, step = _optimizer_step(json.dumps(tiny_config, sort_keys=True))
  state = init(params)
  current, unchanged, fed = params, True, 0
  for _ in range(iterations):
    use_first = first_grads is not None and unchanged
    fed += int(use_first)
    new, state = step(current, state, first_grads if use_first else grad_of(current))
    unchanged = unchanged and all(np.array_equal(a, b) for a, b in zip(jax.device_get(jax.tree.leaves(new)),
                                                                       jax.device_get(jax.tree.leaves(current))))
    current = new
  moments = optim_lib.bertadam_moments(state)
  return (torch_names.flax_to_torch(jax.device_get(current)),
          tuple(torch_names.flax_to_torch(jax.device_get(x)) for x in (moments.mu, moments.nu)), fed)


def _step_sensitivity(tiny_config: Mapping[str, Any], params, grads, grad_of, iterations: int) -> tuple:
  """Per element: how far the post-step params, m and v move when every gradient tensor is off by float32
  rounding (GRAD_ROUNDING x its max |g|, the README's measured f32-vs-f64 scale rounded up), either sign; later
  steps take their gradients at the moved weights, so the compounding is included. Returns (params, m, v) dicts.

  Adam's update m / (sqrt(v) + eps) is linear in g with slope ~0.19/eps once |g_clipped| << eps / 0.045, so a
  gradient entry of ~1e-5 in a strongly clipped tensor turns a 1e-7 rounding into a 1e-6 step difference."""
  base_p, (base_m, base_v), _ = run_optimizer(tiny_config, params, grad_of, iterations, first_grads=grads)
  worst = tuple({k: np.zeros_like(v) for k, v in d.items()} for d in (base_p, base_m, base_v))
  for sign in (1.0, -1.0):
    shifted = jax.tree.map(lambda g: np.asarray(g) + np.float32(sign * GRAD_ROUNDING) * np.abs(np.asarray(g)).max(),
                           grads)  # noqa: B023
    moved_p, (moved_m, moved_v), _ = run_optimizer(tiny_config, params, grad_of, iterations, first_grads=shifted)
    for acc, moved, base in zip(worst, (moved_p, moved_m, moved_v), (base_p, base_m, base_v)):
      for k in acc:
        acc[k] = np.maximum(acc[k], np.abs(moved[k] - base[k]))
  return worst


# ----------------------------------------------------------------------------------------------------
# The checker
# ----------------------------------------------------------------------------------------------------
def _kind(key: str) -> str:
  if key in SCALAR_LOSS_KEYS:
    return 'loss'
  if key in EXACT_KEYS:
    return 'exact'
  return 'forward'


def _check_mode(results: List[CheckResult], mode: str, want: Mapping[str, np.ndarray], mine: Mapping[str, Any]):
  prefix = f'{mode}.'
  for key in sorted(k for k in want if k.startswith(prefix)):
    short = key[len(prefix):]
    if short.startswith('val_path.'):
      continue
    group = f'{mode} losses' if short.startswith(('loss', 'nce.', 'div.', 'rel.')) else f'{mode} forward'
    if short not in mine:
      results.append(CheckResult(f'{group}/{short} (not produced)', float('inf'), float('inf'), False))
      continue
    if short in ARGMAX_OF:  # exact, except where the reference maximum itself is within rounding of another entry
      results.append(compare_argmax(f'{group}/{short}', mine[short], want[key], want[f'{prefix}{ARGMAX_OF[short]}']))
      continue
    results.append(compare(f'{group}/{short}', mine[short], want[key], _kind(short)))


def check_fixture(fixture_dir: str) -> List[CheckResult]:
  """Every comparison of the port with the fixture in `fixture_dir` (sizes from its tiny_config.json).

  Groups: clip pooling, {train,eval} forward (+ intermediates), {train,eval} losses (every term and piece),
  eval val_path, gradients, optimiser groups, post-step params, optimiser state, eval model_case (if present).
  """
  with open(_require(fixture_dir, 'tiny_config.json')) as f:
    tiny = json.load(f)
  state = _load_npz(_require(fixture_dir, 'params.npz'))
  inputs = _load_npz(_require(fixture_dir, 'inputs.npz'))
  want = _load_npz(_require(fixture_dir, 'outputs.npz'))
  ref_grads = _load_npz(_require(fixture_dir, 'grads.npz'))
  results: List[CheckResult] = []

  params = jax.tree.map(jnp.asarray, torch_names.torch_to_flax(state))
  batch, slot = fixture_batch(inputs, extra_frames=3, extra_captions=1)
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  loss_cfg = loss_config(tiny)
  cfg_train, cfg_eval = model_config(tiny, 'train'), model_config(tiny, 'eval')

  # Train mode: every fixture output + the gradients of the total, in one program; eval mode: the same outputs and
  # the validation path (encode_videos / encode_queries / score) on the training batch.
  def train_names(p, b):
    total, out, aux = forward_and_loss(p, b, cfg_train, loss_cfg, train=True)
    names = fixture_names(out, aux, slot, cfg_train)
    names['clip_feat'] = out['clip_feat']
    return total, names

  grad_fn = jax.jit(jax.value_and_grad(train_names, has_aux=True))
  model_eval = model_lib.AMDNet(cfg_eval)

  def eval_names(p, b, text_feat):
    _, out, aux = forward_and_loss(p, b, cfg_eval, loss_cfg, train=False)
    vids = model_eval.apply({'params': p}, b['video_feat'], b['video_mask'], train=False,
                            method=model_lib.AMDNet.encode_videos)
    queries = model_eval.apply({'params': p}, text_feat, train=False, method=model_lib.AMDNet.encode_queries)
    val_path = model_lib.clip_scores(queries, model_lib.retrieval_tokens(vids, cfg_eval), normalize=True,
                                     eps=cfg_eval.normalize_eps)
    return fixture_names(out, aux, slot, cfg_eval), val_path

  def host(names, cfg):
    names = {k: np.asarray(v) for k, v in names.items()}
    names['t_grid'] = model_lib.clip_positions(cfg)
    for key in ('rel.best_moment', 'scores_cos_argmax_clip'):
      names[key] = names[key].astype(np.int64)
    return names

  (_, train_out), grads = grad_fn(params, batch)
  train_out = host(train_out, cfg_train)
  eval_out, (cos, per_clip) = jax.jit(eval_names)(params, batch, jnp.asarray(inputs['text_feat']))
  eval_out = host(eval_out, cfg_eval)

  # Clip pooling (the model's first step) against the repo's data code, and the clip grid.
  results.append(compare('clip pooling/clip_video_features', train_out['clip_feat'], inputs['clip_video_features']))
  if 'train.t_grid' in want:
    results.append(compare('clip pooling/t_grid (torch.linspace bits)', train_out['t_grid'], want['train.t_grid'],
                           'exact'))
  _check_mode(results, 'train', want, train_out)
  _check_mode(results, 'eval', want, eval_out)
  if 'eval.val_path.scores' in want:
    results.append(compare('eval val_path/scores', cos, want['eval.val_path.scores']))
    results.append(compare('eval val_path/scores_per_clip', per_clip, want['eval.val_path.scores_per_clip']))

  grads_torch = torch_names.flax_to_torch(jax.device_get(grads))
  for name, value in ref_grads.items():
    results.append(compare(f'gradients/{name}', grads_torch.get(name, np.full_like(value, np.nan)), value, 'grad'))
  noise = {name for name, value in ref_grads.items() if float(np.abs(value).max()) < NOISE_GRAD}

  # Weight-decay groups from the Flax paths.
  shapes_path = os.path.join(fixture_dir, 'param_shapes.json')
  if os.path.exists(shapes_path):
    with open(shapes_path) as f:
      shapes = json.load(f)
    decayed = torch_names.flax_to_torch(optim_lib.decay_mask(jax.device_get(params)))
    groups = shapes.get('weight_decay_groups', {})
    for wd, names in groups.items():
      expect = float(wd) > 0
      bad = [n for n in names if bool(np.asarray(decayed[n])) != expect]
      results.append(CheckResult(f'optimiser groups/weight_decay={wd} ({len(names)} tensors)', float(len(bad)),
                                 0.0, not bad))
    got_shapes = {k: list(np.shape(v)) for k, v in torch_names.flax_to_torch(jax.device_get(params)).items()}
    results.append(CheckResult('optimiser groups/param shapes', 0.0, 0.0,
                               got_shapes == {k: list(v) for k, v in shapes['state_dict_shapes'].items()}))

  # The original training loop body, `optimizer_iterations` times on the same batch: (a) the optimiser alone, fed
  # the fixture's gradients (the README's recipe) while the weights are unchanged; (b) end to end on the port's own
  # gradients, with the tolerance widened by how far gradient rounding moves each element (`_step_sensitivity`).
  after_path, state_path = (os.path.join(fixture_dir, n) for n in ('params_after_step.npz',
                                                                   'opt_state_after_step.npz'))
  if os.path.exists(after_path):
    ref_after = _load_npz(after_path)
    ref_state = _load_npz(state_path) if os.path.exists(state_path) else {}
    iterations = int(tiny.get('derived', {}).get('optimizer_iterations', 1))
    fixture_grads = jax.tree.map(jnp.asarray, torch_names.torch_to_flax(ref_grads))
    own = lambda p: grad_fn(p, batch)[1]  # noqa: E731  (the same compiled program)
    fed, fed_state, n_fed = run_optimizer(tiny, params, own, iterations, first_grads=fixture_grads)
    e2e, e2e_state, _ = run_optimizer(tiny, params, own, iterations)
    slack = _step_sensitivity(tiny, params, fixture_grads, own, iterations)
    # The fed run is the optimiser alone (README tolerances as they stand) unless some step needed own gradients.
    fed_slack = slack if n_fed < iterations else tuple({k: 0.0 for k in d} for d in slack)
    for name, value in ref_after.items():
      results.append(compare(f'post-step params/{name}', fed[name], value, 'param_step', slack=fed_slack[0][name]))
      results.append(compare(f'post-step params (own grads)/{name}', e2e[name], value, 'param_step',
                             slack=slack[0][name]))
    for key, value in ref_state.items():
      which, name = key.split('.', 1)
      kind, index = ('moment_m', 1) if which == 'next_m' else ('moment_v', 2)
      for group, moments, widen in (('optimiser state', fed_state, fed_slack),
                                    ('optimiser state (own grads)', e2e_state, slack)):
        results.append(compare(f'{group}/{key}', moments[index - 1][name], value, kind, noise=name in noise,
                               slack=widen[index][name]))

  losses_path = os.path.join(fixture_dir, 'losses.json')
  if os.path.exists(losses_path):
    with open(losses_path) as f:
      results += _check_losses_json(json.load(f), train_out, grads_torch, tiny)
  results += _check_eval_case(fixture_dir, tiny, params, cfg_eval)
  return results


def _check_losses_json(record: Mapping[str, Any], mine: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray],
                       tiny: Mapping[str, Any]) -> List[CheckResult]:
  """losses.json: the readable loss numbers, sub-terms, gradient norms, clip coefficients, lr multipliers."""
  out: List[CheckResult] = []
  group = 'losses.json'
  for term, value in record.get('losses_unweighted', {}).items():
    out.append(compare(f'{group}/losses_unweighted.{term}', mine[f'loss.{term}'], value, 'loss'))
  for term, value in record.get('losses_weighted', {}).items():
    out.append(compare(f'{group}/losses_weighted.{term}', mine[f'loss_weighted.{term}'], value, 'loss'))
  if 'loss_total' in record:
    out.append(compare(f'{group}/loss_total', mine['loss_total'], record['loss_total'], 'loss'))
  sub = record.get('sub_terms', {})
  if 'nce_t2v' in sub:
    out.append(compare(f'{group}/sub_terms.nce_t2v', mine['nce.t2v'], sub['nce_t2v'], 'loss'))
  if 'nce_v2t' in sub:
    out.append(compare(f'{group}/sub_terms.nce_v2t', mine['nce.v2t'], sub['nce_v2t'], 'loss'))
  if 'div_per_video' in sub:
    out.append(compare(f'{group}/sub_terms.div_per_video', mine['div.per_video'], sub['div_per_video']))
  if 'rel_active_hinges' in sub:
    out.append(compare(f'{group}/sub_terms.rel_active_hinges', int(np.sum(mine['rel.hinge'] > 0)),
                       int(sub['rel_active_hinges']), 'exact'))
  if 'rel_n_queries' in sub:
    out.append(compare(f'{group}/sub_terms.rel_n_queries', len(mine['rel.hinge']), int(sub['rel_n_queries']),
                       'exact'))
  if 'grad_global_norm' in record:
    norm = np.sqrt(sum(float(np.sum(np.square(g.astype(np.float64)))) for g in grads.values()))
    out.append(compare(f'{group}/grad_global_norm', norm, record['grad_global_norm'], 'loss'))
  opt = record.get('optimizer', {})
  max_norm = float(tiny.get('HARDCODED', {}).get('bertadam', {}).get('max_grad_norm', 1.0))
  for name, value in opt.get('per_parameter_grad_norm_before_clip', {}).items():
    norm = np.sqrt(np.sum(np.square(grads[name].astype(np.float32)), dtype=np.float32))
    out.append(compare(f'{group}/grad_norm.{name}', norm, value, 'grad'))
  for name, value in opt.get('per_parameter_clip_coefficient', {}).items():
    norm = np.sqrt(np.sum(np.square(grads[name].astype(np.float32)), dtype=np.float32))
    out.append(compare(f'{group}/clip_coefficient.{name}', min(1.0, max_norm / (float(norm) + 1e-6)), value,
                       'grad'))
  t = tiny['TINY']
  schedule = optim_lib.bertadam_schedule(1.0, float(t['lr_warmup_proportion']), t_total(tiny))
  for step in opt.get('steps', []):
    k = int(step['state_step_index_used_by_schedule'])
    out.append(compare(f'{group}/lr_multiplier.iteration{step["iteration"]}', float(schedule(k)),
                       step['lr_multiplier'], 'loss'))
  return out


def _check_eval_case(fixture_dir: str, tiny: Mapping[str, Any], params, cfg: model_lib.AMDNetConfig
                     ) -> List[CheckResult]:
  path = os.path.join(fixture_dir, 'eval', 'model_case.npz')
  if not os.path.exists(path):
    return []
  case = _load_npz(path)
  t = tiny['TINY']
  video_feat, video_mask = pad_frames(case['raw_frames_concat'], case['raw_frame_counts'], extra=2)
  scores, clips = encode_corpus(params, cfg, video_feat, video_mask, case['text_feat'], int(t['eval_context_bsz']),
                                int(t['eval_query_bsz']))
  out = [compare('eval model_case/clip_video_features', clips, case['clip_video_features']),
         compare('eval model_case/scores', scores, case['scores'])]
  for copy, original in np.asarray(case.get('duplicate_pairs', np.zeros((0, 2), np.int64))):
    out.append(compare(f'eval model_case/duplicate column {copy} == {original}', scores[:, copy],
                       scores[:, original], 'exact'))
  if 'gt_rank' in case and 'gt_video_index' in case:
    # Ranks are exact where they are defined by the scores: skip queries with another video within the forward
    # tolerance of the GT score (rounding decides) and, above 16 videos, exactly tied GTs (torch's tie order is
    # implementation-defined there, README §7.2).
    ref, gt = np.asarray(case['scores'], np.float64), np.asarray(case['gt_video_index'])
    s_gt = ref[np.arange(len(gt)), gt][:, None]
    gap = np.abs(ref - s_gt)
    others = np.arange(ref.shape[1])[None, :] != gt[:, None]
    near = np.any(others & (gap > 0) & (gap <= 2 * (FORWARD_ATOL + FORWARD_RTOL * np.abs(s_gt))), axis=1)
    tied = np.any(others & (gap == 0), axis=1)
    keep = ~near & (~tied if ref.shape[1] > 16 else True)
    ranks = tie_rank(scores, gt)
    out.append(compare(f'eval model_case/gt_rank (stable tie rule, {int(keep.sum())} of {len(gt)} queries)',
                       ranks[keep], np.asarray(case['gt_rank'])[keep], 'exact'))
    metrics_path = os.path.join(fixture_dir, 'eval', 'metrics.json')
    if os.path.exists(metrics_path):   # the port's own scores through the port's metric code = the original's
      with open(metrics_path) as f:
        want = json.load(f).get('model_case', {}).get('metrics', {})
      got = prvr_metrics.recall_metrics(prvr_metrics.gt_ranks(scores, gt))
      bad = [k for k in want if got.get(k) != want[k]]
      out.append(CheckResult('eval model_case/R@K and SumR from the port\'s scores (exact)', float(len(bad)), 0.0,
                             not bad))
  return out


def format_results(results: Sequence[CheckResult]) -> str:
  """One line per group: 'OK|FAIL <group> n=<count> max_abs=.. max_rel=..' (+ the failing names)."""
  groups: Dict[str, List[CheckResult]] = {}
  for r in results:
    groups.setdefault(r.name.split('/', 1)[0], []).append(r)
  lines = []
  for group, rows in groups.items():
    bad = [r.name.split('/', 1)[-1] for r in rows if not r.ok]
    line = (f'{"FAIL" if bad else "OK  "} {group:<28} n={len(rows):<3} '
            f'max_abs={max(r.max_abs for r in rows):.3e} max_rel={max(r.max_rel for r in rows):.3e}')
    lines.append(line + (f' failing={bad[:6]}' if bad else ''))
  return '\n'.join(lines)


def all_ok(results: Sequence[CheckResult]) -> bool:
  return all(r.ok for r in results)


# ----------------------------------------------------------------------------------------------------
# The retrieval metrics on the fixture's eval/ cases, and the launch/check_reference.py entry point
# ----------------------------------------------------------------------------------------------------
EVAL_CASES = ('model_case', 'synthetic_small', 'synthetic_large')


def check_eval_metrics(fixture_dir: str) -> List[CheckResult]:
  """eval/*.npz through the port's metric code: GT ranks and R@K / SumR exactly as `eval/metrics.json` (the
  original's `cal_perf`), both from the ranks and through the 'prvr' evaluator on the stored ids."""
  eval_dir = os.path.join(fixture_dir, 'eval')
  metrics_path = os.path.join(eval_dir, 'metrics.json')
  if not os.path.exists(metrics_path):
    return []
  with open(metrics_path) as f:
    expected = json.load(f)
  evaluator = prvr_evaluator.PrvrEvaluator()
  out: List[CheckResult] = []
  for case_name in EVAL_CASES:
    path = os.path.join(eval_dir, f'{case_name}.npz')
    if not os.path.exists(path) or case_name not in expected:
      continue
    case = _load_npz(path)
    group = f'eval metrics/{case_name}'
    ranks = prvr_metrics.gt_ranks(case['scores'], case['gt_video_index'])
    if 'gt_rank' in case:
      out.append(compare(f'{group} gt_rank', ranks, case['gt_rank'], 'exact'))
    want = expected[case_name]['metrics']
    got = prvr_metrics.recall_metrics(ranks)
    mismatched = [k for k in want if got.get(k) != want[k]]
    out.append(CheckResult(f'{group} R@K/SumR (exact floats)', float(len(mismatched)), 0.0, not mismatched))
    if 'cap_ids' in case and 'video_ids' in case:
      ground_truth = {'cap_ids': [str(c) for c in case['cap_ids']], 'video_ids': [str(v) for v in case['video_ids']]}
      order = np.argsort([int(g) for g in case['gt_video_index']], kind='stable')  # any row order must do
      predictions = {'scores': case['scores'][order], 'cap_ids': [ground_truth['cap_ids'][i] for i in order],
                     'vid_ids': ground_truth['video_ids']}
      try:
        result = evaluator.evaluate(predictions, ground_truth)
        bad = [k for k in want if result.get(k) != want[k]]
      except ValueError as e:   # a GT id convention the evaluator does not know
        bad = [f'evaluator: {e}']
      out.append(CheckResult(f'{group} prvr evaluator (rows reordered)', float(len(bad)), 0.0, not bad))
  return out


def run_check(fixture_dir: str) -> Tuple[List[str], bool]:
  """(one line per group, all ok) for `launch/check_reference.py --model=amdnet`: every parity comparison of
  `check_fixture` (sizes from the fixture's tiny_config.json) plus the metric cases of eval/."""
  results = check_fixture(fixture_dir) + check_eval_metrics(fixture_dir)
  return format_results(results).split('\n'), all_ok(results)
