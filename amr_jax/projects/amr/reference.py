"""Parity check of the AMR port against a PyTorch reference fixture, every dimension read from the fixture.

Groups: outputs + intermediates, matcher costs/indices, losses, gradients, post-step params and forward, submission.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from amr_jax.projects.amr import losses as loss_lib
from amr_jax.projects.amr import matcher as matcher_lib
from amr_jax.ops import optim as optim_lib
from amr_jax.projects.amr import postprocess as predict_lib
from amr_jax.projects.amr import fixture as fx
from amr_jax.projects.amr import torch_names
from amr_jax.projects.amr import config_sections
from amr_jax.projects.amr.model import AMR

TOL = 1e-5
LOSS_KEYS = {'loss_span': 'span', 'loss_giou': 'giou', 'loss_label': 'label', 'loss_saliency': 'saliency',
             'loss_iou_scores': 'iou_scores', 'CTC': 'ctc', 'VTC': 'vtc', 'dill (stage 2)': 'dill',
             'disc (stage 2)': 'disc', 'loss_mask_iou_aux_layers': 'mask_iou'}


def max_errors(got, want) -> tuple[float, float, bool]:
  """(max abs error, max rel error over the elements failing abs, ok) with ok = abs OR rel <= TOL."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  if got.shape != want.shape:
    return float('inf'), float('inf'), False
  if got.size == 0:
    return 0.0, 0.0, True
  err = np.abs(got - want)
  rel = err / np.maximum(np.abs(want), 1e-30)
  failing = err > TOL
  max_rel = float(rel[failing].max()) if failing.any() else 0.0
  return float(err.max()), max_rel, bool(np.all(~failing | (rel <= TOL)))


def rounded_errors(got, want, unrounded, unit: float) -> tuple[float, float, bool, int]:
  """max_errors for values rounded to `unit`, allowing a rounding-boundary flip: an element may differ by one
  unit when our unrounded value lies within the tolerance of the boundary between the two rounded values (the
  reference's unrounded value, on the other side of it, then agrees with ours). Returns (.., .., ok, flips)."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  unrounded = np.asarray(unrounded, np.float64)
  if got.shape != want.shape or unrounded.shape != got.shape:
    return float('inf'), float('inf'), False, 0
  if got.size == 0:
    return 0.0, 0.0, True, 0
  err = np.abs(got - want)
  boundary = (got + want) / 2
  near = np.abs(unrounded - boundary) <= TOL * np.maximum(1.0, np.abs(unrounded))
  flip = (err > TOL) & (err <= unit * (1 + 1e-6)) & near
  failing = (err > TOL) & ~flip
  rel = err / np.maximum(np.abs(want), 1e-30)
  max_rel = float(rel[failing].max()) if failing.any() else 0.0
  shown = np.where(flip, 0.0, err)
  return float(shown.max()), max_rel, bool(not failing.any()), int(flip.sum())


class Report:
  """Collects per-group maxima; one line per group."""

  def __init__(self):
    self.groups: dict[str, list] = {}
    self.flips: dict[str, int] = {}

  def add(self, group: str, name: str, got, want) -> None:
    self.groups.setdefault(group, []).append((name, *max_errors(got, want)))

  def add_rounded(self, group: str, name: str, got, want, unrounded, unit: float) -> None:
    """Compare values rounded to `unit` (see rounded_errors); flips are counted and reported."""
    *row, flips = rounded_errors(got, want, unrounded, unit)
    self.groups.setdefault(group, []).append((name, *row))
    self.flips[group] = self.flips.get(group, 0) + flips

  def lines(self) -> list[str]:
    out = []
    for group, rows in self.groups.items():
      worst = max(rows, key=lambda r: (not r[3], r[1]))
      bad = [r[0] for r in rows if not r[3]]
      status = 'OK  ' if not bad else 'FAIL'
      out.append(f'{status} {group:<34} n={len(rows):<4} max_abs={max(r[1] for r in rows):.3e} '
                 f'max_rel={max(r[2] for r in rows):.3e} worst={worst[0]}'
                 + (f' failing={bad[:5]}' if bad else '')
                 + (f' rounding_flips={self.flips[group]} (one unit of the last kept digit, unrounded values on '
                    f'the boundary)' if self.flips.get(group) else ''))
    return out

  @property
  def ok(self) -> bool:
    return all(r[3] for rows in self.groups.values() for r in rows)


def run_configs(fixture: dict) -> tuple[Any, Any, Any, Any]:
  """Loss/matcher/quirk/optimiser configs with the fixture's weights and constants."""
  cfg = fixture['config']
  loss = config_sections.loss_config()
  for src, dst in LOSS_KEYS.items():
    if src in cfg['loss_weights']:
      loss[dst] = float(cfg['loss_weights'][src])
  params = cfg['loss_params']
  loss.focal_alpha, loss.focal_gamma = params['focal_alpha'], params['focal_gamma']
  loss.saliency_margin, loss.rank_tau = params['saliency_margin'], params['rank_contrastive_tau']
  loss.ctc_temperature, loss.vtc_temperature = params['ctc_temperature'], params['vtc_temperature']
  loss.disc_temperature = params['disc_temperature']
  matcher = config_sections.matcher_config()
  for k in ('cost_span', 'cost_giou', 'cost_class', 'cost_mask'):
    matcher[k] = float(cfg['matcher'][k])
  opt = ml_collections.ConfigDict(dict(
      lr=cfg['optimizer']['lr'], b1=cfg['optimizer']['betas'][0], b2=cfg['optimizer']['betas'][1],
      eps=cfg['optimizer']['eps'], weight_decay=cfg['optimizer']['weight_decay'],
      grad_clip=cfg['optimizer']['grad_clip']['max_norm'], lr_drop=100))
  return loss, matcher, config_sections.quirks_config(), opt


def loss_batch(inputs: dict) -> dict:
  keys = ('src_vid', 'src_vid_mask', 'src_txt', 'src_txt_mask', 'span_labels_cxw', 'num_windows', 'mask_labels',
          'saliency_pos_labels', 'saliency_neg_labels', 'saliency_all_labels', 'src_pos_mask')
  batch = {k: np.asarray(inputs[k]) for k in keys}
  batch['num_windows'] = batch['num_windows'].astype(np.int32)
  for k in ('saliency_pos_labels', 'saliency_neg_labels'):
    batch[k] = batch[k].astype(np.int32)
  batch['src_neg_mask'] = np.asarray(inputs.get('src_neg_mask', np.zeros_like(inputs['src_vid_mask'])))
  return batch


def recorded_indices(outputs: dict) -> np.ndarray:
  """The fixture's matcher.indices [L, B, W, 2] (already in layer order 0..L-1)."""
  return np.asarray(outputs['matcher.indices']).astype(np.int32)


def check_stage(report: Report, fixture: dict, stage: str) -> None:
  """Forward, matcher, losses, grads, post-step params (and for stage 2 the post-step forward)."""
  s = fixture['stage1' if stage == 'pretrain' else 'stage2']
  tag = 'stage1' if stage == 'pretrain' else 'stage2'
  cfg = fx.model_config(fixture, stage)
  loss_cfg, matcher_cfg, quirks, opt_cfg = run_configs(fixture)
  params_sd = s['params'] if stage == 'pretrain' else s['params_student']
  variables = fx.flax_variables(params_sd, cfg)
  inputs, want = s['inputs'], s['outputs']
  model = AMR(cfg)
  batch = loss_batch(inputs)

  def forward(params):
    return model.apply({'params': params}, *[jnp.asarray(batch[k]) for k in fx.MODEL_INPUT_KEYS], train=False)

  outputs = jax.jit(forward)(variables['params'])
  flat = fx.flatten_outputs(jax.tree.map(np.asarray, outputs))
  if stage == 'distill':  # the disc loss's per-clip cosine and its positive / negative means
    _, sim, pos_sim, neg_sim = loss_lib.discriminative_loss(
        outputs['src_vid_ed'], outputs['src_vid_cls_ed'], batch['src_pos_mask'], batch['src_neg_mask'],
        temperature=loss_cfg.disc_temperature)
    flat.update({'inter.disc_sim': np.asarray(sim), 'inter.disc_pos_sim': np.asarray(pos_sim),
                 'inter.disc_neg_sim': np.asarray(neg_sim)})
  for key, value in want.items():
    if key.startswith(('matcher.', 'loss', 'teacher.')):
      continue
    if key in flat:
      report.add(f'{tag} outputs' if not key.startswith('inter.') else f'{tag} intermediates', key, flat[key],
                 value)
    else:
      report.add(f'{tag} outputs', f'{key} (missing)', np.array([np.inf]), np.array([0.0]))

  teacher_hs = None
  if stage == 'distill':
    teacher = fx.flax_variables(s['params_teacher'], cfg)
    teacher_out = jax.jit(lambda p: model.apply({'params': p}, *[jnp.asarray(batch[k]) for k in
                                                                fx.MODEL_INPUT_KEYS], train=False))(
                                                                    teacher['params'])
    teacher_hs = teacher_out['hs']
    report.add(f'{tag} outputs', 'teacher.hs', teacher_hs, want['teacher.hs'])

  # Matcher: cost blocks per layer and sample, and indices where well defined (stage 2 at init has twin ties).
  layers = loss_lib.layer_outputs_list(outputs)
  num_layers = len(layers)
  costs = []
  for l, layer in enumerate(layers):
    cost = np.asarray(matcher_lib.matching_cost(
        layer['pred_logits'], layer['pred_spans'], layer['pred_masks'], batch['span_labels_cxw'],
        batch['mask_labels'], cost_span=matcher_cfg.cost_span, cost_giou=matcher_cfg.cost_giou,
        cost_class=matcher_cfg.cost_class, cost_mask=matcher_cfg.cost_mask))
    costs.append(cost)
    for b, n in enumerate(batch['num_windows']):
      report.add(f'{tag} matcher costs', f'layer{l}.sample{b}', cost[b, :, :n], want[f'matcher.cost.layer{l}.sample{b}'])
  indices = recorded_indices(want)
  if stage == 'pretrain':
    solved = np.stack([np.asarray(matcher_lib.match_to_indices(
        matcher_lib.solve_hungarian(jnp.asarray(c), jnp.asarray(batch['num_windows'])))) for c in costs])
    report.add(f'{tag} matcher indices', 'hungarian', solved, indices)

  # Losses with the recorded indices injected (the tie warning), then gradients of the total.
  def total_loss(params):
    out = forward(params)
    return loss_lib.amr_loss(out, batch, loss_cfg=loss_cfg, matcher_cfg=matcher_cfg, quirks=quirks,
                             teacher_hs=teacher_hs, indices=jnp.asarray(indices))

  (total, aux), grads = jax.jit(jax.value_and_grad(total_loss, has_aux=True))(variables['params'])
  for key, value in aux['unweighted'].items():
    if f'loss.{key}' in want:
      report.add(f'{tag} losses', key, value, want[f'loss.{key}'])
  for key, value in aux['weighted'].items():
    if f'loss_weighted.{key}' in want:
      report.add(f'{tag} losses', f'weighted.{key}', value, want[f'loss_weighted.{key}'])
  report.add(f'{tag} losses', 'loss_total', total, want['loss_total'])

  grads_torch = torch_names.flax_to_torch(grads, cfg)
  want_grads = s['grads']
  for name, value in want_grads.items():
    report.add(f'{tag} gradients', name, grads_torch[name], value)

  # One optimiser step (clip + AdamW, no-grad params skipped) -> post-step params.
  tx = optim_lib.make_optimizer(opt_cfg, trainable_mask=lambda p: optim_lib.params_with_grad_mask(p, stage))
  opt_state = tx.init(variables['params'])
  updates, _ = tx.update(grads, opt_state, variables['params'])
  new_params = jax.tree.map(lambda p, u: p + u, variables['params'], updates)
  after = s['params_after_step'] if stage == 'pretrain' else s['params_student_after_step']
  new_torch = torch_names.flax_to_torch(new_params, cfg, include_aliases=True)
  for name, value in after.items():
    report.add(f'{tag} post-step params', name, new_torch[name], value)

  if stage == 'distill' and 'after_step_outputs' in s:
    want2 = s['after_step_outputs']
    after_vars = fx.flax_variables(after, cfg)
    out2 = jax.jit(forward)(after_vars['params'])
    flat2 = fx.flatten_outputs(jax.tree.map(np.asarray, out2))
    for key, value in want2.items():
      if key in flat2:
        report.add(f'{tag} post-step forward', key, flat2[key], value)
    total2, aux2 = jax.jit(lambda o: loss_lib.amr_loss(o, batch, loss_cfg=loss_cfg, matcher_cfg=matcher_cfg,
                                                        quirks=quirks, teacher_hs=teacher_hs))(out2)
    report.add(f'{tag} post-step forward', 'matcher.indices (recomputed)', aux2['indices'],
               recorded_indices(want2))
    for key, value in aux2['unweighted'].items():
      if f'loss.{key}' in want2:
        report.add(f'{tag} post-step forward', key, value, want2[f'loss.{key}'])
    report.add(f'{tag} post-step forward', 'loss_total', total2, want2['loss_total'])

  if stage == 'pretrain':
    check_submission(report, fixture, flat)


def unrounded_windows(outputs: dict, b: int, duration: float) -> np.ndarray:
  """[Q, 3] (st, ed, score) of sample b before any rounding, in `ranked_windows` order."""
  return np.asarray(predict_lib.ranked_windows_unrounded(outputs['pred_logits'][b], outputs['pred_spans'][b],
                                                          outputs['iou_scores'][b], duration), np.float64)


def check_submission(report: Report, fixture: dict, flat: dict) -> None:
  """Rows are compared as rounded values: windows/scores to 4 decimals before post-processing, windows to the
  2 s grid (scores 4 decimals) after it, with rounding-boundary flips allowed and counted."""
  s, inputs = fixture['stage1'], fixture['stage1']['inputs']
  before, after = s['submission_before_postprocess'], s['submission']
  for post, ref in ((False, before), (True, after)):
    rows = predict_lib.submission_rows(flat, inputs['qids'], inputs['durations_sec'], inputs['vid_lens'],
                                       [r['query'] for r in ref], [r['vid'] for r in ref], postprocess=post)
    group = 'submission rows ' + ('after post-processing' if post else 'before post-processing')
    for b, (got, want) in enumerate(zip(rows, ref)):
      got_w = np.asarray(got['pred_relevant_windows'], np.float64).reshape(-1, 3)
      want_w = np.asarray(want['pred_relevant_windows'], np.float64).reshape(-1, 3)
      raw = unrounded_windows(flat, b, float(inputs['durations_sec'][b]))
      if post:
        raw = np.concatenate([np.clip(raw[:, :2], 0, predict_lib.CLAMP_MAX_SEC), raw[:, 2:]], 1)
        if got_w.shape == want_w.shape == raw.shape:
          report.add_rounded(group, f"qid {want['qid']} windows", got_w[:, :2], want_w[:, :2], raw[:, :2], 2.0)
          report.add_rounded(group, f"qid {want['qid']} scores", got_w[:, 2], want_w[:, 2], raw[:, 2], 1e-4)
        else:
          report.add(group, f"qid {want['qid']} windows", got_w, want_w)
      else:
        report.add_rounded(group, f"qid {want['qid']} windows", got_w, want_w, raw, 1e-4)
      report.add(group, f"qid {want['qid']} saliency", np.asarray(got['pred_saliency_scores']),
                 np.asarray(want['pred_saliency_scores']))


def check_amr_fixture(fixture_dir: str) -> Report:
  jax.config.update('jax_default_matmul_precision', 'highest')
  fixture = fx.load_fixture(fixture_dir)
  report = Report()
  check_stage(report, fixture, 'pretrain')
  check_stage(report, fixture, 'distill')
  return report


def run_check(fixture_dir: str) -> tuple[list, bool]:
  """(one line per group, all ok) for launch/check_reference.py."""
  report = check_amr_fixture(fixture_dir)
  return report.lines(), report.ok
