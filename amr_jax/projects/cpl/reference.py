"""Parity check of the Flax CPL port against a PyTorch reference fixture folder (layout of `cpl_reference/`).

Every size comes from the fixture's tiny_config.json; groups: outputs, losses, gradients, optimiser, inference.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from amr_jax.projects.cpl import inference as inference_lib
from amr_jax.projects.cpl import losses as losses_lib
from amr_jax.projects.cpl import model as model_lib
from amr_jax.projects.cpl import optim as optim_lib
from amr_jax.projects.cpl import torch_names

ATOL = 1e-5                      # activations, masks, logits, NLL, losses, post-step params, windows (README §9)
# Gradients: rtol 1e-4 (README §9) with atol 1e-5 (the bound) taken relative to the tensor's largest
# gradient (atol = 1e-5 * max(1, max|g|)). README §9's atol 1e-6 is below the float32 noise of the reference
# itself: a float64 recomputation misses it by up to 1.9e-6, and on an AVX2 CPU (AMD EPYC) our float32 port
# misses it on 1 of 1024 entries (1.3e-6 on a -1.4e-5 entry of decoder1 layer 0's out_proj; float64: 1.0e-6).
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-5
VOTE_ATOL = 1e-6                 # c / votes of the eval/ set (float64 sums of float32 IoUs of identical windows)


@dataclasses.dataclass(frozen=True)
class CheckResult:
  """One compared quantity: `name` is 'group/key'; max_rel is over the entries failing atol (0 if none)."""
  name: str
  max_abs: float
  max_rel: float
  ok: bool


# ----------------------------------------------------------------------------------------------------------------
# Comparisons.


def compare(name: str, got: Any, want: Any, atol: Any = ATOL, rtol: float = 0.0) -> CheckResult:
  """ok iff every |got - want| <= atol + rtol |want| (equal infs / NaNs count as equal; atol may be an array)."""
  a, b = np.asarray(got, np.float64), np.asarray(want, np.float64)
  if a.shape != b.shape:
    if a.size == b.size == 1:
      a, b = a.reshape(()), b.reshape(())
    else:
      return CheckResult(f'{name} (shape {a.shape} vs {b.shape})', float('inf'), float('inf'), False)
  if a.size == 0:
    return CheckResult(name, 0.0, 0.0, True)
  same = (a == b) | (np.isnan(a) & np.isnan(b))
  with np.errstate(invalid='ignore'):
    err = np.where(same, 0.0, np.abs(a - b))
  err = np.where(np.isnan(err), np.inf, err)
  failing_abs = err > atol
  with np.errstate(divide='ignore', invalid='ignore'):
    rel = np.where(failing_abs, err / np.abs(b), 0.0)
  rel = np.where(np.isnan(rel), np.inf, rel)
  ok = bool(np.all(err <= atol + rtol * np.abs(b)))
  return CheckResult(name, float(err.max()), float(rel.max()), ok)


def compare_exact(name: str, got: Any, want: Any) -> CheckResult:
  """Integer / boolean arrays: identical values and shapes."""
  a, b = np.asarray(got), np.asarray(want)
  if a.shape != b.shape:
    return CheckResult(f'{name} (shape {a.shape} vs {b.shape})', float('inf'), float('inf'), False)
  err = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) if a.size else 0.0
  return CheckResult(name, err, 0.0, err == 0.0)


def _grad_tolerance(want: np.ndarray) -> np.ndarray:
  """Per-entry gradient tolerance: GRAD_ATOL * max(1, max|g|) + GRAD_RTOL * |g|."""
  want = np.asarray(want, np.float64)
  scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
  return GRAD_ATOL * scale + GRAD_RTOL * np.abs(want)


def missing(name: str) -> CheckResult:
  return CheckResult(f'{name} (missing)', float('inf'), float('inf'), False)


def format_results(results: List[CheckResult]) -> str:
  """One line per group: 'OK|FAIL group n=.. max_abs=.. max_rel=.. worst=..' (+ the failing names)."""
  groups: Dict[str, List[CheckResult]] = {}
  for r in results:
    groups.setdefault(r.name.split('/', 1)[0], []).append(r)
  lines = []
  for group, rows in groups.items():
    bad = [r.name.split('/', 1)[-1] for r in rows if not r.ok]
    worst = max(rows, key=lambda r: (not r.ok, r.max_abs))
    lines.append(f"{'OK  ' if not bad else 'FAIL'} {group:<20} n={len(rows):<4} "
                 f'max_abs={max(r.max_abs for r in rows):.3e} max_rel={max(r.max_rel for r in rows):.3e} '
                 f"worst={worst.name.split('/', 1)[-1]}" + (f' failing={bad[:6]}' if bad else ''))
  return '\n'.join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Fixture -> configs and batch.


def _load_npz(path: str) -> Dict[str, np.ndarray]:
  with np.load(path, allow_pickle=False) as z:
    return {k: z[k] for k in z.files}


def load_fixture(fixture_dir: str) -> Dict[str, Any]:
  """Every file of a CPL fixture folder (npz as dicts of arrays, json parsed); absent optional files are left out."""
  config_path = os.path.join(fixture_dir, 'tiny_config.json')
  if not os.path.exists(config_path):
    raise FileNotFoundError(f'{config_path} not found (is {fixture_dir!r} a CPL fixture folder?)')
  fixture: Dict[str, Any] = {}
  with open(config_path) as f:
    fixture['config'] = json.load(f)
  for key in ('params', 'inputs', 'outputs', 'grads', 'params_after_step', 'params_after_step2'):
    path = os.path.join(fixture_dir, f'{key}.npz')
    if os.path.exists(path):
      fixture[key] = _load_npz(path)
  for key in ('losses', 'inference'):
    path = os.path.join(fixture_dir, f'{key}.json')
    if os.path.exists(path):
      with open(path) as f:
        fixture[key] = json.load(f)
  eval_path = os.path.join(fixture_dir, 'eval', 'eval_arrays.npz')
  if os.path.exists(eval_path):
    fixture['eval_arrays'] = _load_npz(eval_path)
  return fixture


def fixture_configs(config: Dict[str, Any]) -> Tuple[model_lib.CPLModelConfig, losses_lib.CPLLossConfig, dict]:
  """(model config, loss config, optimiser config dict) from a fixture's tiny_config.json."""
  tiny, derived = config.get('TINY', {}), config.get('derived', {})
  args = config.get('original_args', {})
  mcfg = args.get('model', {}).get('config', {})
  trans = mcfg.get('DualTransformer', {})
  pick = lambda *vals: next(v for v in vals if v is not None)  # noqa: E731
  hidden = int(pick(mcfg.get('hidden_size'), trans.get('d_model'), tiny.get('hidden_size')))
  sigma = float(pick(mcfg.get('sigma'), tiny.get('sigma')))
  num_frames = int(pick(args.get('dataset', {}).get('max_num_frames'), tiny.get('max_num_frames')))
  kept = derived.get('clips_after_downsampling')
  downsample = 4 if kept is None or num_frames // 4 == kept else max(1, num_frames // int(kept))
  model = model_lib.CPLModelConfig(
      frame_dim=int(pick(mcfg.get('frames_input_size'), tiny.get('frame_dim'))),
      word_dim=int(pick(mcfg.get('words_input_size'), tiny.get('word_dim'))),
      hidden_size=hidden,
      num_heads=int(pick(trans.get('num_heads'), tiny.get('num_heads'))),
      num_layers1=int(pick(trans.get('num_decoder_layers1'), tiny.get('num_decoder_layers1'))),
      num_layers2=int(pick(trans.get('num_decoder_layers2'), tiny.get('num_decoder_layers2'))),
      ffn_multiplier=int(derived.get('ffn_dim', 2 * hidden)) // hidden,
      num_props=int(pick(mcfg.get('num_props'), tiny.get('num_props'))),
      vocab_size=int(pick(mcfg.get('vocab_size'), derived.get('vocab_size_model'))),
      sigma=sigma,
      neg_sigma_divisor=float(derived.get('sigma_divisor_negative', sigma / 2)),
      gamma=float(pick(mcfg.get('gamma'), tiny.get('gamma'))),
      max_epoch=int(pick(mcfg.get('max_epoch'), tiny.get('max_epoch'))),
      use_negative=bool(pick(mcfg.get('use_negative'), tiny.get('use_negative'), True)),
      dropout=float(pick(mcfg.get('dropout'), tiny.get('dropout'), 0.0)),
      transformer_dropout=float(pick(trans.get('dropout'), tiny.get('dropout'), 0.0)),
      attention_dropout=float(derived.get('attention_dropout', 0.0)),
      downsample=downsample,
      width_clamp=float(derived.get('width_clamp_min', 0.01)),
      gauss_attn_eps=float(derived.get('gauss_attn_eps', 1e-10)),
      key_padding_fill=float(derived.get('key_padding_fill', -1e30)),
      layer_norm_eps=float(derived.get('layernorm_eps', 1e-5)))
  lcfg = args.get('loss', {})
  loss = losses_lib.CPLLossConfig(
      margin_1=float(pick(lcfg.get('margin_1'), tiny.get('margin_1'))),
      margin_2=float(pick(lcfg.get('margin_2'), tiny.get('margin_2'))),
      lam=float(pick(lcfg.get('lambda'), tiny.get('lam'))),
      alpha_1=float(pick(lcfg.get('alpha_1'), tiny.get('alpha_1'))),
      alpha_2=float(pick(lcfg.get('alpha_2'), tiny.get('alpha_2'))),
      label_smoothing=float(derived.get('label_smoothing', 0.1)))
  ocfg = args.get('train', {}).get('optimizer', {})
  adam = derived.get('adam', {})
  optim = {'lr': float(pick(ocfg.get('lr'), tiny.get('lr'))),
           'weight_decay': float(pick(ocfg.get('weight_decay'), tiny.get('weight_decay'), 0.0)),
           'warmup_updates': int(pick(ocfg.get('warmup_updates'), tiny.get('warmup_updates'))),
           'warmup_init_lr': float(pick(ocfg.get('warmup_init_lr'), tiny.get('warmup_init_lr'))),
           'b1': float(adam.get('betas', [0.9, 0.999])[0]), 'b2': float(adam.get('betas', [0.9, 0.999])[1]),
           'eps': float(adam.get('eps', 1e-8)),
           'clip_norm': float(derived.get('grad_clip', {}).get('max_norm', tiny.get('clip_norm', 10.0))),
           'clip_eps': 1e-6, 'adam_variant': 'fairseq', 'lr_offset_by_one': True}
  return model, loss, optim


def fixture_batch(inputs: Dict[str, np.ndarray], epoch: Optional[int] = None) -> Dict[str, np.ndarray]:
  """The fixture's collated tensors in this port's batch layout (no start slot, no pred token)."""
  num_frames = inputs['frames_feat'].shape[1]
  batch = inputs['frames_feat'].shape[0]
  ep = int(inputs['epoch']) if epoch is None else epoch
  return {
      'frames_feat': inputs['frames_feat'].astype(np.float32),
      'frames_mask': inputs['frames_mask'][:, :num_frames].astype(np.int32),
      'words_feat': inputs['words_feat'][:, 1:].astype(np.float32),
      'words_mask': inputs['words_mask'][:, 1:].astype(np.int32),
      'words_id': inputs['words_id'].astype(np.int32),
      'weights': inputs['weights'].astype(np.float32),
      'masked_words': inputs['masked_words'][:, 1:].astype(np.int32),
      'epoch': np.full((batch,), ep, np.int32),
      'sample_valid': np.ones((batch,), np.int32),
  }


# ----------------------------------------------------------------------------------------------------------------
# Forward + loss as one function of the params.


def make_loss_fn(model: model_lib.CPL, loss_cfg: losses_lib.CPLLossConfig, intermediates: bool = False):
  """params, batch -> (total, (aux, model outputs)); deterministic (dropout off unless `train` in the config)."""
  def loss_fn(params, batch):
    out = model.apply({'params': params}, *model_lib.model_inputs(batch), train=False,
                      sample_valid=batch.get('sample_valid'), intermediates=intermediates)
    targets = model_lib.decoder2_targets(batch['words_id'], out['word_valid'].shape[1])
    total, aux = losses_lib.cpl_loss(out, targets, loss_cfg, batch.get('sample_valid'))
    return total, (aux, out)
  return loss_fn


def _lr_table_index(label: str) -> Optional[int]:
  if label.startswith('initial'):
    return 0
  match = re.search(r'step_update\((\d+)\)', label)
  return int(match.group(1)) if match else None


def check_fixture(fixture_dir: str) -> List[CheckResult]:
  """Runs the port on the fixture and compares every recorded quantity (README §9 tolerances)."""
  fixture = load_fixture(fixture_dir)
  model_cfg, loss_cfg, optim_cfg = fixture_configs(fixture['config'])
  model = model_lib.CPL(model_cfg)
  params = jax.tree.map(jnp.asarray, torch_names.torch_to_flax(fixture['params'], model_cfg))
  batch = jax.tree.map(jnp.asarray, fixture_batch(fixture['inputs']))
  results: List[CheckResult] = []

  grad_fn = jax.jit(jax.value_and_grad(make_loss_fn(model, loss_cfg, intermediates=True), has_aux=True))
  (total, (aux, out)), grads = grad_fn(params, batch)
  flat = {**jax.tree.map(np.asarray, out['inter']), **jax.tree.map(np.asarray, aux)}

  # Forward intermediates and per-sample loss terms (outputs.npz).
  for key, want in fixture.get('outputs', {}).items():
    if key not in flat:
      results.append(missing(f'outputs/{key}'))
    elif np.issubdtype(want.dtype, np.integer) or want.dtype == bool:
      results.append(compare_exact(f'outputs/{key}', flat[key], want))
    else:
      results.append(compare(f'outputs/{key}', flat[key], want))

  # Loss terms (losses.json).
  losses = fixture.get('losses', {})
  if losses:
    results += _check_losses(losses, flat, loss_cfg, float(total))

  # Gradients (grads.npz, before clipping).
  grads_torch = torch_names.flax_to_torch(jax.tree.map(np.asarray, grads), model_cfg)
  for name, want in fixture.get('grads', {}).items():
    results.append(compare(f'gradients/{name}', grads_torch[name], want, _grad_tolerance(want), 0.0)
                   if name in grads_torch else missing(f'gradients/{name}'))
  grad_norm = float(np.sqrt(sum(np.sum(np.square(np.asarray(g, np.float64))) for g in jax.tree.leaves(grads))))
  if 'grad_total_norm' in losses:
    results.append(compare('gradients/global_norm', grad_norm, losses['grad_total_norm'], rtol=1e-5))

  # Two optimiser steps (resumed update counter, fresh Adam state).
  steps_info = losses.get('optimizer_steps', {})
  resume = int(steps_info.get('resume_num_updates', fixture['config'].get('TINY', {}).get('resume_num_updates', 0)))
  results += _check_steps(fixture, steps_info, optim_cfg, resume, params, grads, grad_norm, grad_fn, batch,
                          model_cfg)

  # Inference (inference.json) and the inference rules on the eval/ prediction set.
  if 'inference' in fixture:
    results += _check_inference(fixture, grad_fn, params)
  if 'eval_arrays' in fixture:
    results += _check_eval_rules(fixture['eval_arrays'], fixture['config'])
  return results


def _check_losses(losses: dict, flat: dict, cfg: losses_lib.CPLLossConfig, total: float) -> List[CheckResult]:
  rec, ivc = losses.get('L_rec', {}), losses.get('L_ivc', {})
  scaled = lambda key, w: None if key not in flat else w * flat[key]  # noqa: E731
  mine = {
      'L_rec.min_k_nll_mean': flat.get('rec.min_k_nll_mean'), 'L_rec.ref_nll_mean': flat.get('rec.ref_nll_mean'),
      'L_rec.min_k_nll_mean_weighted': scaled('rec.min_k_nll_mean', cfg.rec_weight_each),
      'L_rec.ref_nll_mean_weighted': scaled('rec.ref_nll_mean', cfg.rec_weight_each), 'L_rec.value': flat['L_rec'],
      'L_ivc.ref_hinge_mean': flat.get('ivc.ref_hinge_mean'), 'L_ivc.left_hinge_mean': flat.get('ivc.left_hinge_mean'),
      'L_ivc.right_hinge_mean': flat.get('ivc.right_hinge_mean'), 'L_ivc.rank_sum': flat['ivc.rank_sum'],
      'L_ivc.rank_sum_weighted': scaled('ivc.rank_sum', cfg.alpha_1), 'L_ivc.div_mean': flat['ivc.div_mean'],
      'L_ivc.div_mean_weighted': scaled('ivc.div_mean', cfg.alpha_2), 'L_ivc.value': flat['L_ivc'],
      'total': total,
  }
  want = {f'L_rec.{k}': v for k, v in rec.items() if k != 'weight_each'}
  want.update({f'L_ivc.{k}': v for k, v in ivc.items()
               if k not in ('alpha_1', 'alpha_2', 'margin_1', 'margin_2', 'lambda')})
  want['total'] = losses.get('total')
  results = []
  for key, value in want.items():
    if value is None:
      continue
    results.append(compare(f'losses/{key}', mine[key], value) if mine.get(key) is not None
                   else missing(f'losses/{key}'))
  # The loss constants the fixture used must be the ones this run used.
  for src, got in (('alpha_1', cfg.alpha_1), ('alpha_2', cfg.alpha_2), ('margin_1', cfg.margin_1),
                   ('margin_2', cfg.margin_2), ('lambda', cfg.lam)):
    if src in ivc:
      results.append(compare(f'losses/constant.{src}', got, ivc[src], atol=0.0))
  per_sample = {'nll_min': 'nll.min', 'kstar': 'kstar', 'nll_ref': 'nll.ref', 'nll_left_at_kstar':
                'nll.left_at_kstar', 'nll_right_at_kstar': 'nll.right_at_kstar', 'hinge_ref_preclamp':
                'hinge.ref_preclamp', 'hinge_left_preclamp': 'hinge.left_preclamp', 'hinge_right_preclamp':
                'hinge.right_preclamp', 'div': 'div.per_sample'}
  for key, value in losses.get('per_sample', {}).items():
    name = f'losses/per_sample.{key}'
    if key not in per_sample or per_sample[key] not in flat:
      results.append(missing(name))
    elif key == 'kstar':
      results.append(compare_exact(name, flat[per_sample[key]], value))
    else:
      results.append(compare(name, flat[per_sample[key]], value))
  repo = losses.get('repo_loss_dicts', {})
  repo_map = {'rec_loss': {'final_loss': 'L_rec', 'nll_loss': 'rec.min_k_nll_mean', 'ref_nll_loss': 'rec.ref_nll_mean'},
              'ivc_loss': {'ivc_loss': 'L_ivc', 'neg_loss_1': 'ivc.left_hinge_mean',
                           'neg_loss_2': 'ivc.right_hinge_mean', 'ref_loss': 'ivc.ref_hinge_mean',
                           'div_loss': 'ivc.div_mean'}}
  for dict_name, entries in repo.items():
    for key, value in entries.items():
      name = f'losses/repo.{dict_name}.{key}'
      ours = repo_map.get(dict_name, {}).get(key)
      results.append(compare(name, flat[ours], value) if ours in flat else missing(name))
  return results


def _check_steps(fixture, steps_info, optim_cfg, resume, params, grads, grad_norm, grad_fn, batch,
                 model_cfg) -> List[CheckResult]:
  results = []
  schedule = optim_lib.inverse_sqrt_schedule(optim_cfg['lr'], optim_cfg['warmup_updates'],
                                             optim_cfg['warmup_init_lr'])
  for label, value in steps_info.get('lr_schedule_table', {}).items():
    index = _lr_table_index(label)
    if index is not None:
      results.append(compare(f'optimizer/lr({index})', float(schedule(index)), value, atol=0.0, rtol=1e-6))
  tx = optim_lib.make_optimizer(optim_cfg, resume_num_updates=resume)
  # The optimiser is elementwise (plus the global norm): it runs on one flat vector (one tiny compile).
  flat, unflat = _flattener(params)
  update = jax.jit(tx.update)
  # The optimiser alone: one update from the fixture's own gradients (README: reproduces every entry to 1e-7).
  if 'params_after_step' in fixture and 'grads' in fixture:
    ref_grads = torch_names.torch_to_flax(fixture['grads'], model_cfg)
    updates, _ = update(flat(ref_grads), tx.init(flat(params)), flat(params))
    stepped = torch_names.flax_to_torch(unflat(flat(params) + np.asarray(updates)), model_cfg)
    for key, want in fixture['params_after_step'].items():
      results.append(compare(f'step_from_ref_grads/{key}', stepped[key], want) if key in stepped
                     else missing(f'step_from_ref_grads/{key}'))
  # End to end from this port's gradients. An entry whose gradient is at Adam's epsilon scale moves by
  # lr g / (|g| + eps'), so the gradient tolerance propagates into it: tol = 1e-5 + |du/dg| * grad tolerance.
  adam = optim_lib.scale_by_fairseq_adam(schedule, optim_cfg['b1'], optim_cfg['b2'], optim_cfg['eps'],
                                         optim_cfg['weight_decay'], optim_cfg['adam_variant'],
                                         optim_cfg['lr_offset_by_one'], resume)
  state = tx.init(flat(params))
  after_names = ('params_after_step', 'params_after_step2')
  steps = steps_info.get('steps', [])
  current, current_grads, current_norm = params, grads, grad_norm
  propagated = jax.tree.map(lambda p: np.zeros(p.shape), params)
  for i, name in enumerate(after_names):
    if name not in fixture:
      break
    info = steps[i] if i < len(steps) else {}
    if i > 0:   # forward / backward at the stepped params, same batch and masked words
      (total, (aux, _)), current_grads = grad_fn(jax.tree.map(jnp.asarray, current), batch)
      current_norm = float(np.sqrt(sum(np.sum(np.square(np.asarray(g, np.float64)))
                                       for g in jax.tree.leaves(current_grads))))
      for key, ours in (('loss_total', total), ('L_rec', aux['L_rec']), ('L_ivc', aux['L_ivc'])):
        if key in info:
          results.append(compare(f'optimizer/step{i + 1}.{key}', ours, info[key]))
    if 'grad_total_norm_before_clip' in info:
      results.append(compare(f'optimizer/step{i + 1}.grad_norm', current_norm, info['grad_total_norm_before_clip'],
                             rtol=1e-5))
    coef = min(optim_cfg['clip_norm'] / (current_norm + optim_cfg['clip_eps']), 1.0)
    if 'clip_coef' in info:
      results.append(compare(f'optimizer/step{i + 1}.clip_coef', coef, info['clip_coef'], atol=0.0, rtol=1e-5))
    if 'lr_used' in info:
      results.append(compare(f'optimizer/step{i + 1}.lr_used', float(optim_lib.current_lr(state, optim_cfg)),
                             info['lr_used'], atol=0.0, rtol=1e-6))
    adam_state = state[-1] if isinstance(state, tuple) else state
    slope = unflat(_update_slope(adam, adam_state, flat(current), flat(current_grads) * np.float32(coef)))
    # Where sqrt(v) = 0 (a gradient that was exactly 0 so far) the jvp is 0/0; the slope there is s (1-b1) / eps.
    t = float(adam_state.count) + 1
    lr_now = float(optim_lib.current_lr(state, optim_cfg))
    step_size = lr_now * np.sqrt(1 - optim_cfg['b2'] ** t) / (1 - optim_cfg['b1'] ** t)
    at_zero = step_size * (1 - optim_cfg['b1']) / optim_cfg['eps']
    propagated = jax.tree.map(
        lambda acc, d, g: acc + np.nan_to_num(np.abs(np.asarray(d, np.float64)), nan=at_zero) * coef
        * _grad_tolerance(np.asarray(g)), propagated, slope, current_grads)
    updates, state = update(flat(current_grads), state, flat(current))
    current = unflat(flat(current) + np.asarray(updates))
    if 'lr_set_after_step' in info:
      results.append(compare(f'optimizer/step{i + 1}.lr_set_after_step',
                             float(optim_lib.current_lr(state, optim_cfg)), info['lr_set_after_step'], atol=0.0,
                             rtol=1e-6))
    stepped = torch_names.flax_to_torch(jax.tree.map(np.asarray, current), model_cfg)
    slack = torch_names.flax_to_torch(propagated, model_cfg)
    for key, want in fixture[name].items():
      results.append(compare(f'{name}/{key}', stepped[key], want, atol=ATOL + slack[key]) if key in stepped
                     else missing(f'{name}/{key}'))
  return results


def _flattener(tree):
  """(tree -> flat float32 numpy vector, vector -> tree of numpy arrays) for trees shaped like `tree`."""
  leaves, treedef = jax.tree.flatten(tree)
  shapes = [np.shape(x) for x in leaves]
  sizes = [int(np.prod(s)) for s in shapes]
  offsets = np.cumsum([0] + sizes)

  def flat(t):
    return np.concatenate([np.ravel(np.asarray(x, np.float32)) for x in jax.tree.leaves(t)])

  def unflat(v):
    v = np.asarray(v)
    return jax.tree.unflatten(treedef, [v[offsets[i]:offsets[i + 1]].reshape(shapes[i])
                                        for i in range(len(shapes))])
  return flat, unflat


@jax.jit(static_argnums=0)
def _update_slope(adam, adam_state, params, grads):
  """d update_i / d g_i of an elementwise optimiser update (the jvp along ones = the diagonal)."""
  return jax.jvp(lambda g: adam.update(g, adam_state, params)[0], (grads,), (jax.tree.map(jnp.ones_like, grads),))[1]


def _check_inference(fixture, grad_fn, params) -> List[CheckResult]:
  """inference.json: the reference's eval runs the full forward at epoch 0 on the same masked input (the negatives
  are computed and unused), so the training program is reused at the eval epoch; the proposals are then ranked and
  voted by `inference` (`inference.eval_forward`, the positive pass only, is checked against this file by
  tests/test_cpl_parity.py)."""
  info = fixture['inference']
  inputs = fixture['inputs']
  batch = {k: jnp.asarray(v) for k, v in fixture_batch(inputs, epoch=int(info.get('epoch', 0))).items()}
  (_, (aux, out)), _ = grad_fn(params, batch)
  host = jax.tree.map(np.asarray, inference_lib.ranked_outputs(aux['nll.pos'], out['center'], out['width']))
  dataset = fixture['config'].get('original_args', {}).get('dataset', {}).get('dataset', 'CharadesSTA')
  rows = inference_lib.prediction_rows(host, inputs['durations_sec'], top_k=int(info.get('k_for_R@k', 5)),
                                       dataset_name=dataset)
  results = []
  float_keys = ('nll_per_proposal', 'center', 'width', 'ranked_windows_norm', 'ranked_windows_sec',
                'top5_windows_sec')
  for n, (mine, want) in enumerate(zip(rows, info['queries'])):
    for key in float_keys:
      if key in want:
        results.append(compare(f'inference/q{n}.{key}', mine[key], want[key]))
    if 'rank_order' in want:
      results.append(compare_exact(f'inference/q{n}.rank_order', mine['rank_order'], want['rank_order']))
    for variant in ('top1_loss', 'top1_vote_charades', 'top1_vote_activitynet'):
      if variant not in want:
        continue
      for key, value in want[variant].items():
        name = f'inference/q{n}.{variant}.{key}'
        if key in ('rank', 'proposal'):
          results.append(compare_exact(name, mine[variant][key], value))
        else:
          results.append(compare(name, mine[variant][key], value))
  if len(rows) != len(info['queries']):
    results.append(CheckResult('inference/num_queries', float(abs(len(rows) - len(info['queries']))), 0.0, False))
  return results


def _check_eval_rules(arrays: Dict[str, np.ndarray], config: dict) -> List[CheckResult]:
  """eval/: ranking, windows, top-5 and both vote picks rebuilt by `prediction_rows` from the stored centres, widths
  and NLLs (the rows carry the eval/predictions.json field names)."""
  del config
  order = np.asarray(inference_lib.rank_by_nll(jnp.asarray(arrays['nll'])))
  windows = np.asarray(inference_lib.proposal_windows(jnp.asarray(arrays['center']), jnp.asarray(arrays['width'])))
  host = {'nll': arrays['nll'], 'rank_order': order, 'center': arrays['center'], 'width': arrays['width'],
          'ranked_windows': np.take_along_axis(windows, order[..., None], axis=1)}
  rows = inference_lib.prediction_rows(host, arrays['durations_sec'], top_k=5)
  stacked = lambda key: np.asarray([row[key] for row in rows])  # noqa: E731
  results = [compare_exact('eval_rules/rank_order', order, arrays['rank_order']),
             compare('eval_rules/ranked_windows_norm_f32', stacked('ranked_windows_norm_f32'),
                     arrays['ranked_windows_norm_f32'], atol=0.0),
             compare('eval_rules/ranked_windows_sec', stacked('ranked_windows_sec'), arrays['ranked_windows_sec'],
                     atol=1e-9)]
  for key in ('vote_charades_rank', 'vote_activitynet_rank'):
    if key in arrays:
      results.append(compare_exact(f'eval_rules/{key}', stacked(key), arrays[key]))
  for key, ours in (('vote_charades_c', np.asarray([r['top1_vote_charades']['c'] for r in rows])),
                    ('vote_charades_votes', np.asarray([r['top1_vote_charades']['votes'] for r in rows])),
                    ('vote_activitynet_votes', np.asarray([r['top1_vote_activitynet']['votes'] for r in rows]))):
    if key in arrays:
      results.append(compare(f'eval_rules/{key}', ours, arrays[key], atol=VOTE_ATOL))
  return results


def run_check(fixture_dir: str) -> tuple:
  """(one line per group, all ok) for `launch/check_reference.py --model=cpl` (sizes from tiny_config.json)."""
  results = check_fixture(fixture_dir)
  return format_results(results).split('\n'), all(r.ok for r in results)
