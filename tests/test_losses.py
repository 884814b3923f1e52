"""Tests of the AMR losses against the PyTorch fixture (stored model outputs in, every loss term out).

Also hand-computed tiny cases, quirk switches, gradient hygiene (no gradient through matching or the IoU target)
and global-batch normalisation under a data-sharded jit.
"""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amr_jax.projects.amr import losses
from amr_jax.projects.amr import matcher
from configs import amr_common
from tests.conftest import FIXTURES

FIXTURE_DIR = FIXTURES / 'amr_reference'
STAGE_INPUTS = {'stage1': 'stage1', 'stage2': 'stage2', 'stage2_after_step': 'stage2'}
LAYER_KEYS = ('pred_logits', 'pred_spans', 'pred_masks', 'iou_scores')
OUTPUT_KEYS = LAYER_KEYS + ('saliency_scores', 'video_mask', 'hs', 'src_txt_ed', 'src_vid_ed', 'src_vid_cls_ed',
                            'src_txt_cls_ed')
BATCH_KEYS = ('src_vid_mask', 'src_txt_mask', 'span_labels_cxw', 'num_windows', 'mask_labels', 'saliency_pos_labels',
              'saliency_neg_labels', 'saliency_all_labels', 'src_pos_mask', 'src_neg_mask')
TOL = 1e-5


def _load(name):
  """(raw fixture outputs, model output dict, batch dict, teacher_hs or None)."""
  raw = dict(np.load(FIXTURE_DIR / f'{name}_outputs.npz'))
  inputs = dict(np.load(FIXTURE_DIR / f'{STAGE_INPUTS[name]}_inputs.npz'))
  outputs = {k: jnp.asarray(raw[k]) for k in OUTPUT_KEYS}
  outputs['aux_outputs'] = [{k: jnp.asarray(raw[f'aux_outputs.{l}.{k}']) for k in LAYER_KEYS} for l in range(3)]
  batch = {k: jnp.asarray(inputs[k]) for k in BATCH_KEYS if k in inputs}
  teacher_hs = jnp.asarray(raw['teacher.hs']) if 'teacher.hs' in raw else None
  return raw, outputs, batch, teacher_hs


def _quirks(**overrides):
  quirks = amr_common.quirks_config()
  for key, value in overrides.items():
    quirks[key] = value
  return quirks


@functools.lru_cache(maxsize=None)
def _loss_fn(quirk_overrides=(), solver='hungarian'):
  """A jitted `amr_loss` (cached, so tests share compilations); quirk_overrides = ((name, value), ...)."""
  quirks = _quirks(**dict(quirk_overrides))
  matcher_cfg = amr_common.matcher_config()
  matcher_cfg.solver = solver

  @jax.jit
  def fn(outputs, batch, teacher_hs, indices):
    return losses.amr_loss(outputs, batch, loss_cfg=amr_common.loss_config(), matcher_cfg=matcher_cfg,
                           quirks=quirks, teacher_hs=teacher_hs, indices=indices)

  return fn


def _assert_close(actual, expected, key):
  actual, expected = float(actual), float(expected)
  assert abs(actual - expected) <= TOL * max(1.0, abs(expected)), f'{key}: {actual} vs {expected}'


@pytest.mark.parametrize('name,inject', [('stage1', True), ('stage1', False), ('stage2', True),
                                         ('stage2_after_step', True), ('stage2_after_step', False)])
def test_fixture_losses(name, inject):
  raw, outputs, batch, teacher_hs = _load(name)
  indices = jnp.asarray(raw['matcher.indices']) if inject else None
  total, aux = _loss_fn()(outputs, batch, teacher_hs, indices)
  np.testing.assert_array_equal(np.asarray(aux['indices']), raw['matcher.indices'])
  checked = 0
  for key, expected in raw.items():
    group, _, loss_key = key.partition('.')
    if group in ('loss', 'loss_weighted'):
      _assert_close(aux['unweighted' if group == 'loss' else 'weighted'][loss_key], expected, key)
      checked += 1
  assert checked == len(aux['unweighted']) + len(aux['weighted'])
  _assert_close(total, raw['loss_total'], 'loss_total')


@pytest.mark.parametrize('name', ['stage1', 'stage2'])
def test_fixture_json_totals_and_saliency_parts(name):
  summary = json.loads((FIXTURE_DIR / f'{name}_losses.json').read_text())
  raw, outputs, batch, teacher_hs = _load(name)
  total, aux = _loss_fn()(outputs, batch, teacher_hs, jnp.asarray(raw['matcher.indices']))
  _assert_close(total, summary['total'], 'total')
  _assert_close(aux['parts']['loss_saliency_margin'], summary['loss_saliency_margin_part'], 'margin part')
  _assert_close(aux['parts']['loss_saliency_rankcon'], summary['loss_saliency_rankcon_part'], 'rankcon part')
  set_sum = sum(v for k, v in aux['weighted'].items() if k not in ('loss_ctc', 'loss_vtc', 'loss_dill', 'loss_disc'))
  _assert_close(set_sum, summary['set_criterion_weighted_sum'], 'set_criterion_weighted_sum')
  for key, weight in summary['weights'].items():
    assert float(aux['weighted'][key]) == pytest.approx(float(aux['unweighted'][key]) * weight, rel=1e-6, abs=1e-7)


def test_fixture_disc_intermediates():
  raw = dict(np.load(FIXTURE_DIR / 'stage2_outputs.npz'))
  inputs = dict(np.load(FIXTURE_DIR / 'stage2_inputs.npz'))
  loss, sim, pos_sim, neg_sim = losses.discriminative_loss(
      raw['src_vid_ed'], raw['src_vid_cls_ed'], inputs['src_pos_mask'], inputs['src_neg_mask'])
  np.testing.assert_allclose(sim, raw['inter.disc_sim'], atol=1e-6)
  np.testing.assert_allclose(pos_sim, raw['inter.disc_pos_sim'], atol=1e-6)
  np.testing.assert_allclose(neg_sim, raw['inter.disc_neg_sim'], atol=1e-6)
  assert float(neg_sim[1]) == 0.0  # empty negative mask -> n = 0
  _assert_close(loss, raw['loss.loss_disc'], 'loss_disc')


def _np_focal(logits, targets, alpha=0.25, gamma=2.0):
  prob = 1.0 / (1.0 + np.exp(-logits))
  ce = -(targets * np.log(prob) + (1 - targets) * np.log(1 - prob))
  p_t = prob * targets + (1 - prob) * (1 - targets)
  return (alpha * targets + (1 - alpha) * (1 - targets)) * ce * (1 - p_t) ** gamma


def test_set_losses_by_hand():
  """1 sample, 2 queries, 1 GT (plus one padded GT row): every set term computed by hand in numpy."""
  pred_spans = np.array([[[0.30, 0.20], [0.55, 0.30]]], np.float64)
  pred_logits = np.array([[[0.2, -0.4], [1.5, 0.1]]], np.float64)
  pred_masks = np.array([[[0.1, 0.2, 0.8, 0.3], [0.6, 0.7, 0.9, 0.1]]], np.float64)
  iou_logits = np.array([[[0.3], [-0.2]]], np.float64)
  gt_cxw = np.array([[[0.5, 0.4], [0.0, 0.0]]], np.float64)
  gt_masks = np.array([[[0, 1, 1, 0], [0, 0, 0, 0]]], np.float64)
  batch = {'span_labels_cxw': jnp.asarray(gt_cxw, jnp.float32), 'mask_labels': jnp.asarray(gt_masks, jnp.float32),
           'num_windows': jnp.asarray([1])}
  layer = {'pred_logits': jnp.asarray(pred_logits, jnp.float32), 'pred_spans': jnp.asarray(pred_spans, jnp.float32),
           'pred_masks': jnp.asarray(pred_masks, jnp.float32), 'iou_scores': jnp.asarray(iou_logits, jnp.float32)}

  def xx(cxw):
    return np.array([cxw[0] - cxw[1] / 2, cxw[0] + cxw[1] / 2])

  gt = xx(gt_cxw[0, 0])
  costs, gious, ious, mask_ious = [], [], [], []
  for q in range(2):
    p = xx(pred_spans[0, q])
    inter = max(min(p[1], gt[1]) - max(p[0], gt[0]), 0.0)
    union = (p[1] - p[0]) + (gt[1] - gt[0]) - inter
    enclosing = max(p[1], gt[1]) - min(p[0], gt[0])
    ious.append(inter / union)
    gious.append(inter / union - (enclosing - union) / enclosing)
    pg = (pred_masks[0, q] * gt_masks[0, 0]).sum()
    mask_ious.append(pg / (pred_masks[0, q].sum() + gt_masks[0, 0].sum() - pg))
    prob_fg = np.exp(pred_logits[0, q, 0]) / np.exp(pred_logits[0, q]).sum()
    costs.append(10 * np.abs(pred_spans[0, q] - gt_cxw[0, 0]).sum() - gious[q] - 4 * prob_fg + 5 * (1 - mask_ious[q]))
  matched = int(np.argmin(costs))
  assert matched == 1
  match = matcher.solve_hungarian(
      matcher.matching_cost(layer['pred_logits'], layer['pred_spans'], layer['pred_masks'],
                            batch['span_labels_cxw'], batch['mask_labels']), batch['num_windows'])
  np.testing.assert_array_equal(np.asarray(matcher.match_to_indices(match)), [[[matched, 0], [-1, -1]]])

  targets = np.zeros((2, 2))
  targets[:, 1] = 1
  targets[matched] = [1, 0]
  expected = {
      'loss_span': np.abs(pred_spans[0, matched] - gt_cxw[0, 0]).mean(),
      'loss_giou': 1 - gious[matched],
      'loss_label': _np_focal(pred_logits[0], targets).mean(),
      'class_error': 0.0 if pred_logits[0, matched].argmax() == 0 else 100.0,
      'loss_mask_iou': 1 - mask_ious[matched],
      'loss_iou_scores': np.mean((1 / (1 + np.exp(-iou_logits[0, :, 0])) - np.maximum(np.array(ious), 0.0)) ** 2),
  }
  terms = losses.set_losses(layer, batch, match, loss_cfg=amr_common.loss_config(), quirks=amr_common.quirks_config())
  for key, value in expected.items():
    assert float(terms[key]) == pytest.approx(value, rel=1e-5, abs=1e-6), key

  # Matched-only IoU loss: the matched query against its own GT window.
  terms = losses.set_losses(layer, batch, match, loss_cfg=amr_common.loss_config(),
                            quirks=_quirks(iou_loss_all_queries=False))
  matched_iou_loss = (1 / (1 + np.exp(-iou_logits[0, matched, 0])) - ious[matched]) ** 2
  assert float(terms['loss_iou_scores']) == pytest.approx(matched_iou_loss, rel=1e-5)


def test_saliency_by_hand():
  scores = np.array([[0.5, -0.2, 1.0, 0.3], [0.1, 0.4, -0.3, 7.0]], np.float64)
  video_mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], np.float64)
  all_labels = np.array([[0, 3, 12, 1], [2, 0, 0, 0]], np.float64)
  pos_labels = np.array([[2, 3], [0, 0]])
  neg_labels = np.array([[3, 0], [0, 2]])
  hinge, rank = losses.saliency_loss_parts(*(jnp.asarray(x, jnp.float32) for x in (scores, video_mask)),
                                           jnp.asarray(pos_labels), jnp.asarray(neg_labels),
                                           jnp.asarray(all_labels, jnp.float32))
  expected_hinge = sum(max(0.0, 0.2 + scores[b, neg_labels[b, k]] - scores[b, pos_labels[b, k]])
                       for b in range(2) for k in range(2)) / 4 * 2
  logits = np.where(video_mask > 0, scores, -1e3) / 0.5
  log_prob = logits - logits.max(1, keepdims=True)
  log_prob = log_prob - np.log(np.exp(log_prob).sum(1, keepdims=True) + 1e-6)
  expected_rank = 0.0
  for r in range(1, 12):
    pos = (all_labels >= r).astype(float)
    if pos.sum() == 0:
      continue
    per_sample = -(pos * log_prob * video_mask).sum(1) / (pos.sum(1) + 1e-6) * (pos.sum(1) > 0)
    expected_rank += per_sample.mean()
  expected_rank /= 12
  assert float(hinge) == pytest.approx(expected_hinge, rel=1e-5)
  assert float(rank) == pytest.approx(expected_rank, rel=1e-5)


@pytest.mark.parametrize('quirk', ['iou_loss_all_queries', 'final_mask_loss_weight_zero', 'ctc_mean_includes_padding',
                                   'vtc_mean_includes_padding', 'disc_anchor_video_mean'])
def test_each_quirk_switch_changes_the_total(quirk):
  raw, outputs, batch, teacher_hs = _load('stage2')
  indices = jnp.asarray(raw['matcher.indices'])
  total_on, aux_on = _loss_fn()(outputs, batch, teacher_hs, indices)
  total_off, aux_off = _loss_fn(((quirk, False),))(outputs, batch, teacher_hs, indices)
  assert abs(float(total_on) - float(total_off)) > 1e-4
  if quirk == 'final_mask_loss_weight_zero':
    assert float(total_off - total_on) == pytest.approx(5.0 * float(aux_on['unweighted']['loss_mask_iou']), rel=1e-5)
  if quirk == 'ctc_mean_includes_padding':  # 12+9+7 of 36 positions valid
    assert float(aux_off['unweighted']['loss_ctc']) != pytest.approx(float(aux_on['unweighted']['loss_ctc']))


def test_no_gradient_through_matching_or_iou_target():
  raw, outputs, batch, _ = _load('stage1')
  loss_cfg, quirks, matcher_cfg = amr_common.loss_config(), amr_common.quirks_config(), amr_common.matcher_config()

  def total_fn(outputs, indices):
    return losses.amr_loss(outputs, batch, loss_cfg=loss_cfg, matcher_cfg=matcher_cfg, quirks=quirks,
                           indices=indices)[0]

  grads_matched = jax.jit(jax.grad(lambda o: total_fn(o, None)))(outputs)
  grads_injected = jax.jit(jax.grad(lambda o: total_fn(o, jnp.asarray(raw['matcher.indices']))))(outputs)
  for g_matched, g_injected in zip(jax.tree.leaves(grads_matched), jax.tree.leaves(grads_injected)):
    assert np.isfinite(np.asarray(g_matched)).all()
    np.testing.assert_allclose(np.asarray(g_matched), np.asarray(g_injected), atol=1e-6)

  def iou_term(pred_spans):
    layer = {k: outputs[k] for k in LAYER_KEYS} | {'pred_spans': pred_spans}
    match = matcher.indices_to_match(raw['matcher.indices'][3])
    return losses.set_losses(layer, batch, match, loss_cfg=loss_cfg, quirks=quirks)['loss_iou_scores']

  np.testing.assert_array_equal(np.asarray(jax.grad(iou_term)(outputs['pred_spans'])), 0.0)


def test_finite_with_a_sample_without_windows():
  _, outputs, batch, _ = _load('stage1')
  batch = dict(batch, num_windows=jnp.asarray([0, 1, 3]))

  def total_fn(outputs):
    return losses.amr_loss(outputs, batch, loss_cfg=amr_common.loss_config(), matcher_cfg=amr_common.matcher_config(),
                           quirks=amr_common.quirks_config())

  (total, aux), grads = jax.jit(jax.value_and_grad(total_fn, has_aux=True))(outputs)
  assert np.isfinite(float(total))
  assert (np.asarray(aux['indices'])[:, 0] == -1).all()
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_scipy_solver_gives_the_same_total():
  raw, outputs, batch, teacher_hs = _load('stage2_after_step')
  total, aux = _loss_fn(solver='scipy')(outputs, batch, teacher_hs, None)
  np.testing.assert_array_equal(np.asarray(aux['indices']), raw['matcher.indices'])
  _assert_close(total, raw['loss_total'], 'loss_total')


def test_global_batch_normalisation_under_data_sharding():
  devices = jax.devices()
  assert len(devices) >= 2, 'needs several (simulated) devices: XLA_FLAGS=--xla_force_host_platform_device_count=8'
  raw, outputs, batch, _ = _load('stage1')
  # A batch of 6 = the fixture twice, with different sizes of matched sets per shard.
  tile = lambda x, axis=0: jnp.concatenate([x, jnp.flip(x, axis)], axis=axis)  # noqa: E731
  outputs = {k: (tile(v, 1) if k == 'hs' else tile(v)) if k != 'aux_outputs' else [jax.tree.map(tile, a) for a in v]
             for k, v in outputs.items()}
  batch = {k: tile(v) for k, v in batch.items()}
  indices = tile(jnp.asarray(raw['matcher.indices']), 1)  # [L, 6, W, 2]
  loss = _loss_fn()
  total_single, aux_single = loss(outputs, batch, None, None)
  np.testing.assert_array_equal(np.asarray(aux_single['indices']), np.asarray(indices))
  mesh = jax.sharding.Mesh(np.array(devices[:2]), ('data',))

  def shard(x, axis=0):
    spec = [None] * x.ndim
    spec[axis] = 'data'
    return jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec)))

  outputs_sharded = {k: (shard(v, 1) if k == 'hs' else shard(v)) if k != 'aux_outputs'
                     else [jax.tree.map(shard, a) for a in v] for k, v in outputs.items()}
  batch_sharded = {k: shard(v) for k, v in batch.items()}
  total_sharded, _ = loss(outputs_sharded, batch_sharded, None, shard(indices, 1))
  assert float(total_sharded) == pytest.approx(float(total_single), rel=1e-6)
  # Every batch-mean term of the doubled batch equals the fixture's (VTC differs: it contrasts within the batch).
  for key, value in aux_single['unweighted'].items():
    if key != 'loss_vtc':
      _assert_close(value, raw[f'loss.{key}'], f'{key} (doubled batch)')
