"""Model-side reference quirks: each switch, turned off, changes the fixture outputs and gives the correct behaviour.

Quirks (configs/amr_common.py `quirks_config`): t2v_misaligned_mask, final_masks_from_layer2,
hd2mr_unmasked_softmax, vtc_mean_includes_padding.
"""
import os

import numpy as np
import pytest

from amr_jax.projects.amr import model as amr_lib
from amr_jax.ops import layers
from amr_jax.projects.amr import fixture as fx

FIXTURE_DIR = os.path.join(os.path.dirname(__file__), 'fixtures', 'amr_reference')


@pytest.fixture(scope='module')
def setup():
  data = fx.load_fixture(FIXTURE_DIR)
  cfg = fx.model_config(data, 'pretrain')
  variables = fx.flax_variables(data['stage1']['params'], cfg)
  inputs = fx.model_inputs(data['stage1']['inputs'])
  return cfg, variables, inputs


def _run(cfg, variables, inputs, **changes):
  return fx.run_model(cfg.replace(**changes), variables, inputs)


def _max_diff(a, b):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def test_from_configs_reads_quirks_and_model_keys():
  from configs import amr_common
  quirks = amr_common.quirks_config()
  quirks.hd2mr_unmasked_softmax = False
  cfg = amr_lib.AMRModelConfig.from_configs(amr_common.model_config(tiny=True), quirks, 18, 24)
  assert (cfg.hidden_dim, cfg.nheads, cfg.v_feat_dim, cfg.t_feat_dim) == (64, 4, 18, 24)
  assert cfg.dropout_impl == "hash"
  assert cfg.t2v_misaligned_mask and cfg.final_masks_from_layer2 and cfg.vtc_mean_includes_padding
  assert not cfg.hd2mr_unmasked_softmax
  reference_default = amr_lib.AMRModelConfig()
  assert reference_default.t2v_misaligned_mask and reference_default.final_masks_from_layer2
  assert reference_default.hd2mr_unmasked_softmax and reference_default.vtc_mean_includes_padding


def test_t2v_extra_mask_reproduces_repeat_then_bh_indexing():
  rng = np.random.default_rng(0)
  batch, heads, v_len, t_len = 3, 4, 5, 4
  video_valid = rng.random((batch, v_len)) > 0.4
  text_valid = rng.random((batch, t_len)) > 0.4
  got = np.asarray(amr_lib.t2v_misaligned_extra_mask(video_valid, text_valid, heads))
  # PyTorch: M = matmul(vid_pad[:, :, None], txt_pad[:, None, :]).repeat(H, 1, 1); MHA reads index b*H + h.
  per_sample = (~video_valid)[:, :, None] & (~text_valid)[:, None, :]
  repeated = np.concatenate([per_sample] * heads, axis=0)
  for b in range(batch):
    for h in range(heads):
      np.testing.assert_array_equal(got[b, h], repeated[b * heads + h])


def test_t2v_misaligned_mask_off(setup):
  cfg, variables, inputs = setup
  ref = _run(cfg, variables, inputs)
  off = _run(cfg, variables, inputs, t2v_misaligned_mask=False)
  assert _max_diff(ref['pred_logits'], off['pred_logits']) > 1e-3
  # The extra mask only hits query rows (clips) that are padding in *some* sample of the batch, in any sample
  # (e.g. rows 7.. of the full-length sample 0 here); rows valid everywhere are unchanged.
  valid_everywhere = int(inputs['src_vid_mask'].sum(1).min())
  t2v_ref, t2v_off = ref['inter']['t2v_out_vid'], off['inter']['t2v_out_vid']
  np.testing.assert_allclose(t2v_off[:, :valid_everywhere], t2v_ref[:, :valid_everywhere], atol=1e-6)
  assert _max_diff(t2v_off[0, valid_everywhere:], t2v_ref[0, valid_everywhere:]) > 1e-3
  # Correct (per-sample) masking makes the model batch-permutation equivariant; the quirk does not.
  perm = np.array([1, 0, 2])  # a swap (with B=3, H=4 the quirk is equivariant to cyclic shifts)
  permuted = {k: v[perm] for k, v in inputs.items()}
  off_perm = _run(cfg, variables, permuted, t2v_misaligned_mask=False)
  for key in ('pred_logits', 'pred_spans', 'pred_masks', 'saliency_scores'):
    np.testing.assert_allclose(off_perm[key], off[key][perm], atol=2e-6, err_msg=key)
  ref_perm = _run(cfg, variables, permuted)
  assert _max_diff(ref_perm['inter']['t2v_out_vid'], ref['inter']['t2v_out_vid'][perm]) > 1e-3


def test_final_masks_from_layer2_off(setup):
  cfg, variables, inputs = setup
  ref = _run(cfg, variables, inputs)
  np.testing.assert_array_equal(ref['pred_masks'], ref['aux_outputs'][cfg.dec_layers - 2]['pred_masks'])
  off = _run(cfg, variables, inputs, final_masks_from_layer2=False)
  assert _max_diff(ref['pred_masks'], off['pred_masks']) > 1e-3
  # Off: the last decoder layer's own masks, recomputed here from the intermediates.
  query = layers.l2_normalize(ref['hs_all'][-1] + ref['inter']['mask_head_out'][-1])
  video = layers.l2_normalize(ref['inter']['enc_pass2_memory_local'])
  logit_scale = np.exp(variables['params']['logit_scale'])
  expected = 1.0 / (1.0 + np.exp(-logit_scale * np.einsum('bqd,bkd->bqk', query, video)))
  np.testing.assert_allclose(off['pred_masks'], expected, atol=1e-5)
  for key in ('pred_logits', 'pred_spans', 'saliency_scores'):
    np.testing.assert_allclose(off[key], ref[key], atol=1e-6, err_msg=key)


def test_hd2mr_unmasked_softmax_off(setup):
  cfg, variables, inputs = setup
  ref = _run(cfg, variables, inputs)
  off = _run(cfg, variables, inputs, hd2mr_unmasked_softmax=False)
  assert _max_diff(ref['inter']['enc_pass2_memory_local'], off['inter']['enc_pass2_memory_local']) > 1e-3
  assert _max_diff(ref['pred_spans'], off['pred_spans']) > 1e-4
  # HD2MR runs after the first encoder pass: everything up to the saliency scores is unchanged.
  np.testing.assert_allclose(off['saliency_scores'], ref['saliency_scores'], atol=1e-6)
  # Sample 0 has no padding, so its softmax is the same either way.
  np.testing.assert_allclose(off['pred_logits'][0], ref['pred_logits'][0], atol=1e-6)
  # Masked softmax: the content of padded clips no longer leaks into valid outputs.
  rng = np.random.default_rng(0)
  valid = inputs['src_vid_mask'] > 0
  noisy = dict(inputs)
  noisy['src_vid'] = np.where(valid[..., None], inputs['src_vid'],
                              rng.normal(size=inputs['src_vid'].shape).astype(np.float32))
  off_noisy = _run(cfg, variables, noisy, hd2mr_unmasked_softmax=False)
  for key in ('pred_logits', 'pred_spans', 'iou_scores'):
    np.testing.assert_allclose(off_noisy[key], off[key], atol=1e-5, err_msg=key)
  mask_valid = np.broadcast_to(valid[:, None, :], off['pred_masks'].shape)
  np.testing.assert_allclose(off_noisy['pred_masks'][mask_valid], off['pred_masks'][mask_valid], atol=1e-5)
  np.testing.assert_allclose(off_noisy['saliency_scores'][valid], off['saliency_scores'][valid], atol=1e-5)
  ref_noisy = _run(cfg, variables, noisy)
  assert _max_diff(ref_noisy['pred_spans'][1:], ref['pred_spans'][1:]) > 1e-4


def test_vtc_mean_includes_padding_off(setup):
  cfg, variables, inputs = setup
  ref = _run(cfg, variables, inputs)
  off = _run(cfg, variables, inputs, vtc_mean_includes_padding=False)
  vid = ref['src_vid_ed']
  mask = inputs['src_vid_mask'][..., None]
  np.testing.assert_allclose(ref['src_vid_cls_ed'], vid.mean(axis=1), atol=1e-6)
  np.testing.assert_allclose(off['src_vid_cls_ed'], (vid * mask).sum(1) / mask.sum(1), atol=1e-6)
  assert _max_diff(ref['src_vid_cls_ed'][1:], off['src_vid_cls_ed'][1:]) > 1e-3
  np.testing.assert_allclose(off['src_vid_cls_ed'][0], ref['src_vid_cls_ed'][0], atol=1e-6)
  # Only the VTC/disc feature changes.
  for key in ('pred_logits', 'pred_spans', 'pred_masks', 'saliency_scores', 'hs'):
    np.testing.assert_allclose(off[key], ref[key], atol=1e-6, err_msg=key)
