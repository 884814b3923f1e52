"""Hand-computed unit tests for FlashMMR: anchors, centre sampling, NMS, verifier targets, quirk switches.

Small cases worked out by hand; one tiny end-to-end jit run per quirk setting checks that every path trains.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amr_jax.projects.flashmmr import losses as losses_lib
from amr_jax.projects.flashmmr import postprocess as post_lib
from amr_jax.projects.flashmmr import model as model_lib
from amr_jax.projects.flashmmr import verifier as verifier_lib

STRIDES = (1, 2, 4, 8)


# ----------------------------------------------------------------------------------------------------------------
# Anchor points and regression ranges.


def test_regression_ranges():
  assert model_lib.regression_ranges(STRIDES) == ((0.0, 2.0), (2.0, 4.0), (4.0, 8.0), (8.0, math.inf))
  assert model_lib.regression_ranges((1, 2)) == ((0.0, 2.0), (2.0, math.inf))


def test_anchor_points_length_16():
  points = model_lib.anchor_points(16, STRIDES)
  assert points.shape == (30, 4)
  np.testing.assert_array_equal(points[:16, 0], np.arange(16))
  np.testing.assert_array_equal(points[16:24, 0], np.arange(0, 16, 2))
  np.testing.assert_array_equal(points[24:28, 0], [0, 4, 8, 12])
  np.testing.assert_array_equal(points[28:, 0], [0, 8])
  np.testing.assert_array_equal(points[:, 3], [1] * 16 + [2] * 8 + [4] * 4 + [8] * 2)
  np.testing.assert_array_equal(points[16, 1:3], [2, 4])
  assert points[29, 1] == 8 and np.isinf(points[29, 2])


@pytest.mark.parametrize("length,sizes", [(16, (16, 8, 4, 2)), (12, (12, 6, 3, 1)), (9, (9, 4, 2, 1)),
                                          (80, (80, 40, 20, 10)), (5, (5, 2, 1))])
def test_pyramid_level_sizes_floor_and_skip(length, sizes):
  assert model_lib.pyramid_level_sizes(length, STRIDES) == sizes
  assert model_lib.anchor_points(length, STRIDES).shape[0] == sum(sizes)


def test_anchor_buffer_limit():
  with pytest.raises(ValueError):
    model_lib.anchor_points(40, STRIDES, buffer_size=32)


def test_pyramid_masks_max_pool():
  mask = jnp.array([[1, 1, 1, 1, 1, 0, 0, 0]], jnp.int32)
  levels = model_lib.pyramid_masks(mask, STRIDES)
  np.testing.assert_array_equal(levels[1], [[1, 1, 1, 0]])
  np.testing.assert_array_equal(levels[2], [[1, 1]])
  np.testing.assert_array_equal(levels[3], [[1]])


# ----------------------------------------------------------------------------------------------------------------
# Centre sampling and the shortest-GT rule.


def _targets(gt, valid=None, inclusive=True, length=16):
  points = jnp.asarray(model_lib.anchor_points(length, STRIDES))
  gt = jnp.asarray(gt, jnp.float32)
  valid = jnp.ones(gt.shape[0], bool) if valid is None else jnp.asarray(valid)
  cls, reg = losses_lib.point_targets_single(points, gt, valid, 1.5, inclusive)
  return np.asarray(points), np.asarray(cls), np.asarray(reg)


def test_centre_sampling_single_gt_inclusive_bounds():
  # GT [2, 6] (clips), centre 4. Stride 1: region [2.5, 5.5] → t=3,4,5 with max dist 3,2,3; only t=4 (2 ≤ 2).
  # Stride 2: region [2, 6]; t=2,4,6 have max dist 4,2,4, all within [2, 4] inclusive. Strides 4/8: none.
  points, cls, reg = _targets([[2.0, 6.0]])
  positives = {(int(p[3]), int(p[0])) for p, c in zip(points, cls) if c == 1}
  assert positives == {(1, 4), (2, 2), (2, 4), (2, 6)}
  idx = {(int(p[3]), int(p[0])): i for i, p in enumerate(points)}
  np.testing.assert_allclose(reg[idx[(1, 4)]], [2.0, 2.0])
  np.testing.assert_allclose(reg[idx[(2, 2)]], [0.0, 2.0])
  np.testing.assert_allclose(reg[idx[(2, 6)]], [2.0, 0.0])


def test_centre_sampling_half_open_bounds():
  # Half-open [lo, hi): distance 2 belongs to stride 2 only, distance 4 to stride 4 only (outside its region).
  points, cls, _ = _targets([[2.0, 6.0]], inclusive=False)
  positives = {(int(p[3]), int(p[0])) for p, c in zip(points, cls) if c == 1}
  assert positives == {(2, 4)}


def test_shortest_gt_wins():
  # Stride-2 point t=4 qualifies for A = [1, 7] (dist 3) and B = [2, 6] (dist 2); B is shorter.
  points, cls, reg = _targets([[1.0, 7.0], [2.0, 6.0]])
  i = [k for k, p in enumerate(points) if p[3] == 2 and p[0] == 4][0]
  assert cls[i] == 1
  np.testing.assert_allclose(reg[i], [(4 - 2) / 2, (6 - 4) / 2])


def test_equal_length_tie_takes_first_gt():
  # Stride-2 point t=4: A = [1, 7] and B = [2, 8] both length 6 and both qualify → A (index 0).
  points, cls, reg = _targets([[1.0, 7.0], [2.0, 8.0]])
  i = [k for k, p in enumerate(points) if p[3] == 2 and p[0] == 4][0]
  assert cls[i] == 1
  np.testing.assert_allclose(reg[i], [(4 - 1) / 2, (7 - 4) / 2])


def test_padding_gt_never_qualifies_and_reg_stays_finite():
  points, cls, reg = _targets([[2.0, 6.0], [np.inf, np.inf]], valid=[True, False])
  _, cls_ref, reg_ref = _targets([[2.0, 6.0]])
  np.testing.assert_array_equal(cls, cls_ref)
  np.testing.assert_allclose(reg, reg_ref)
  assert np.all(np.isfinite(reg))


def test_batched_targets_use_fps_and_inf_padding():
  points = jnp.asarray(model_lib.anchor_points(16, STRIDES))
  gt_sec = jnp.array([[[4.0, 12.0], [np.inf, np.inf]]], jnp.float32)
  cls, reg = losses_lib.point_targets(points, gt_sec, jnp.array([[True, False]]), jnp.array([0.5]), 1.5)
  _, cls_ref, reg_ref = _targets([[2.0, 6.0]])
  np.testing.assert_array_equal(np.asarray(cls)[0], cls_ref)
  np.testing.assert_allclose(np.asarray(reg)[0], reg_ref)


def test_focal_loss_matches_formula():
  logits = jnp.array([-2.0, 0.0, 3.0])
  target = jnp.array([0.0, 1.0, 1.0])
  p = 1 / (1 + np.exp(-np.array([-2.0, 0.0, 3.0])))
  ce = -(np.array([0, 1, 1]) * np.log(p) + (1 - np.array([0, 1, 1])) * np.log(1 - p))
  p_t = np.where(np.array([0, 1, 1]) == 1, p, 1 - p)
  np.testing.assert_allclose(losses_lib.sigmoid_focal_loss(logits, target), ce * (1 - p_t)**2, rtol=1e-6)


def test_degenerate_single_false_negative_row():
  # §9.6: one false-negative row with 8 positive clips out of 16 gives 8·log(1+1e-6)/(1+1e-6)/16/12.
  labels = jnp.zeros((3, 16)).at[0, :8].set(1.0)
  mask = jnp.ones((3, 16))
  cfg = losses_lib.FlashMMRLossConfig()
  value = losses_lib._degenerate_single_row_rank_loss(labels, mask, jnp.array([True, False, False]), cfg)
  expected = 8 * np.log(np.float32(1 + 1e-6)) / (1 + 1e-6) / 16 / 12
  np.testing.assert_allclose(value, expected, rtol=1e-3)


# ----------------------------------------------------------------------------------------------------------------
# NMS and post-processing.


def test_nms_sets_suppressed_scores_to_zero_and_keeps_rows():
  rows = [[0.0, 10.0, 0.9], [1.0, 10.0, 0.8], [20.0, 30.0, 0.7], [0.0, 9.0, 0.6]]
  out = post_lib.nms_rows(rows, post_lib.FlashMMRPostprocessConfig(nms_thd=0.7))
  expected = [[0.0, 10.0, 0.9], [20.0, 30.0, 0.7], [1.0, 10.0, 0.0], [0.0, 9.0, 0.0]]
  np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_nms_threshold_is_inclusive():
  # IoU([0, 10], [0, 7]) = 0.7 exactly in float32 → suppressed (≥).
  out = post_lib.nms_rows([[0.0, 10.0, 0.9], [0.0, 7.0, 0.8]], post_lib.FlashMMRPostprocessConfig(nms_thd=0.7))
  assert out[1][2] == 0.0


def test_nms_first_index_wins_equal_scores():
  rows = [[0.0, 4.0, 0.5], [10.0, 14.0, 0.8], [0.0, 4.2, 0.8]]
  out = post_lib.nms_rows(rows, post_lib.FlashMMRPostprocessConfig())
  # Step 0 picks [10, 14] (first of the tied 0.8); [0, 4.2] then suppresses [0, 4] (IoU 4/4.2).
  np.testing.assert_allclose(out[0], [10.0, 14.0, 0.8], rtol=1e-6)
  np.testing.assert_allclose(out[1], [0.0, 4.2, 0.8], rtol=1e-6)
  assert out[2][2] == 0.0


def test_zero_length_windows_never_suppress_each_other():
  rows = [[150.0, 150.0, 0.6], [150.0, 150.0, 0.5], [10.0, 20.0, 0.4]]
  out = post_lib.nms_rows(rows, post_lib.FlashMMRPostprocessConfig())
  assert [r[2] for r in out] == pytest.approx([0.6, 0.5, 0.4])
  strict = post_lib.nms_rows(rows, post_lib.FlashMMRPostprocessConfig(zero_length_iou_is_nan=False))
  assert [r[2] for r in strict] == pytest.approx([0.6, 0.4, 0.0])


def test_clamp_then_clip_ts_then_round_half_to_even():
  cfg = post_lib.FlashMMRPostprocessConfig()
  stage1 = post_lib.clamp_rows(np.array([[-1.23456, 155.5, 0.612345], [3.0, 5.0, 0.5]], np.float32), 160)
  assert stage1 == [[0.0, 155.5, 0.6123], [3.0, 5.0, 0.5]]
  stage2 = post_lib.postprocess_rows(stage1, cfg)
  # 155.5 → 150 (clip_ts); 3/2 = 1.5 → 2 → 4 s; 5/2 = 2.5 → 2 → 4 s (half to even, like torch.round).
  assert stage2 == [[0.0, 150.0, 0.6123], [4.0, 4.0, 0.5]]
  no_fixed_clip = dataclasses.replace(cfg, clip_to_fixed_max_ts=False)
  assert post_lib.postprocess_rows(stage1, no_fixed_clip)[0][1] == 156.0


def test_make_submissions_format():
  before, processed, after = post_lib.make_submissions(
      [dict(qid=7, query="q", vid="v_0.0_150.0", duration=150, boundary=np.array([[1.0, 9.0, 0.7]], np.float32),
            saliency=np.array([0.123456, -0.5]))], post_lib.FlashMMRPostprocessConfig())
  assert before[0]["pred_saliency_scores"] == [0.1235, -0.5]
  assert processed[0]["pred_relevant_windows"] == [[0.0, 8.0, 0.7]]  # 0.5 and 4.5 clips round to even
  assert set(after[0]) == {"qid", "query", "vid", "pred_relevant_windows", "pred_saliency_scores"}


def test_torch_sort_emulation_is_a_descending_permutation():
  rng = np.random.default_rng(0)
  for n in (0, 1, 2, 16, 17, 50, 300):
    values = rng.integers(0, 4, n).astype(np.float32)
    order = post_lib.torch_sort_descending(values)
    assert sorted(order.tolist()) == list(range(n))
    assert np.all(np.diff(values[order]) <= 0)
  # Already sorted input of ≤ 16 elements is left untouched (final insertion sort only).
  np.testing.assert_array_equal(post_lib.torch_sort_descending(np.array([3, 2, 2, 2, 1.0])), [0, 1, 2, 3, 4])
  # nan sorts first, as torch's descending comparator does.
  assert post_lib.torch_sort_descending(np.array([1.0, np.nan, 3.0]))[0] == 1


# ----------------------------------------------------------------------------------------------------------------
# Verifier: crops, targets, GRU.


def test_verifier_target_is_max_iou_over_overlapping_gts():
  gt = jnp.array([[0.0, 10.0], [5.0, 15.0], [np.inf, np.inf]])
  valid = jnp.array([True, True, False])
  windows = jnp.array([[5.0, 10.0], [4.0, 12.0], [20.0, 20.0], [0.0, 15.0]])
  iou = np.asarray(verifier_lib.max_iou_targets(windows, gt, valid))
  # [5,10]: 5/10 vs 5/10; [4,12]: 6/12 vs 7/11; zero-length: 0; [0,15]: 10/15 vs 10/15.
  np.testing.assert_allclose(iou, [0.5, 7 / 11, 0.0, 10 / 15], rtol=1e-6)


def test_crop_indices_and_features():
  features = jnp.arange(10 * 3, dtype=jnp.float32).reshape(10, 3)
  windows = jnp.array([[2.0, 8.0], [0.0, 0.0], [14.0, 40.0]])
  start, end = verifier_lib.crop_indices(windows, 10, 0.5)
  np.testing.assert_array_equal(start, [1, 0, 7])
  np.testing.assert_array_equal(end, [4, 0, 10])
  crops, lengths = verifier_lib.crop_features(features, start, end, 4)
  np.testing.assert_array_equal(lengths, [3, 0, 3])
  np.testing.assert_array_equal(crops[0, :3], features[1:4])
  assert np.all(np.asarray(crops[0, 3]) == 0) and np.all(np.asarray(crops[1]) == 0)


def _numpy_gru(x, wi, wh, bi, bh):
  h = np.zeros(wh.shape[0])
  hid = wh.shape[0]
  for step in x:
    gi, gh = step @ wi + bi, h @ wh + bh
    r = 1 / (1 + np.exp(-(gi[:hid] + gh[:hid])))
    z = 1 / (1 + np.exp(-(gi[hid:2 * hid] + gh[hid:2 * hid])))
    n = np.tanh(gi[2 * hid:] + r * gh[2 * hid:])
    h = (1 - z) * n + z * h
  return h


def test_gru_last_hidden_matches_numpy_and_ignores_padding():
  cfg = verifier_lib.FlashMMRVerifierConfig(input_dim=5, hidden_dim=8)
  module = verifier_lib.PostVerificationGRU(cfg)
  rng = np.random.default_rng(1)
  crops = rng.normal(size=(2, 6, 5)).astype(np.float32)
  lengths = np.array([6, 3], np.int32)
  params = module.init(jax.random.PRNGKey(0), crops, lengths)["params"]
  out = module.apply({"params": params}, crops, lengths)
  g = jax.tree_util.tree_map(np.asarray, params["gru"])
  for i in range(2):
    ref = _numpy_gru(crops[i, :lengths[i]], g["input_kernel"], g["hidden_kernel"], g["input_bias"],
                     g["hidden_bias"])
    np.testing.assert_allclose(out["last_hidden"][i], ref, rtol=1e-5, atol=1e-6)
  changed = crops.copy()
  changed[1, 3:] = 99.0
  np.testing.assert_allclose(module.apply({"params": params}, changed, lengths)["scores_raw"], out["scores_raw"])


def test_pv_mse_loss_masks_empty_crops():
  raw = jnp.array([[0.0], [100.0], [0.0]])
  loss = verifier_lib.pv_mse_loss(raw, jnp.array([0.5, 0.0, 1.0]), jnp.array([True, False, True]))
  np.testing.assert_allclose(loss, (0.0 + 0.25) / 2)


@pytest.mark.parametrize("proposal_pairs", [False, True])
def test_post_verification_losses_finite_with_grads(proposal_pairs):
  cfg = verifier_lib.FlashMMRVerifierConfig(input_dim=4, hidden_dim=8, max_crop_len=6, num_proposals=3,
                                            repr_over_proposal_pairs=proposal_pairs)
  module = verifier_lib.PostVerificationGRU(cfg)
  rng = np.random.default_rng(2)
  memory = jnp.asarray(rng.normal(size=(2, 6, 4)).astype(np.float32))
  mask = jnp.array([[1] * 6, [1] * 4 + [0] * 2], jnp.float32)
  spans = jnp.array([[[0.0, 6.0, 0.9], [2.0, 10.0, 0.8], [11.0, 11.5, 0.1]],
                     [[-2.0, 4.0, 0.9], [1.0, 7.0, 0.5], [4.0, 4.0, 0.2]]])
  gt = jnp.array([[[0.0, 4.0], [6.0, 10.0]], [[2.0, 6.0], [np.inf, np.inf]]])
  gt_valid = jnp.array([[True, True], [True, False]])
  params = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 6, 4)), jnp.array([1]))["params"]

  def loss(mem, p):
    return verifier_lib.post_verification_losses(module, p, mem, mask, spans, jnp.array([12.0, 8.0]), gt,
                                                 gt_valid, cfg)[0]

  value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(memory, params)
  assert np.isfinite(value)
  assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
  assert np.abs(np.asarray(grads[0])).sum() > 0


# ----------------------------------------------------------------------------------------------------------------
# Model helpers and quirk switches.


def test_misaligned_mask_rows():
  np.testing.assert_array_equal(model_lib.misaligned_mask_rows(jnp.ones(3, bool), 4),
                                [[0, 1, 2, 0], [1, 2, 0, 1], [2, 0, 1, 2]])
  rows = np.asarray(model_lib.misaligned_mask_rows(jnp.array([False, True, True]), 4))
  np.testing.assert_array_equal(rows[1:], [[1, 2, 1, 2], [1, 2, 1, 2]])


def test_real_negative_mask_strips_two_fields():
  vids = ["vidAAAAAAA_30.0_180.0", "vid_BB-BBBB_0.0_150.0", "vidCCCCCCC_60.0_210.0"]
  np.testing.assert_array_equal(model_lib.real_negative_mask(vids), [True, True, True])
  same = ["vidAAAAAAA_30.0_180.0", "vidAAAAAAA_0.0_150.0", "vidCCCCCCC_60.0_210.0"]
  np.testing.assert_array_equal(model_lib.real_negative_mask(same), [False, True, True])


def test_sine_position_embedding_padding_repeats_last_valid():
  pos = np.asarray(model_lib.sine_position_embedding(jnp.array([[1.0, 1.0, 1.0, 0.0]]), 8))
  np.testing.assert_allclose(pos[0, 3], pos[0, 2])
  np.testing.assert_allclose(pos[0, 2, 0], np.sin(2 * np.pi * 3 / (3 + 1e-6)), atol=1e-6)


TINY = model_lib.FlashMMRModelConfig(
    video_feature_dim=6, text_feature_dim=5, hidden_dim=8, num_heads=2, dim_feedforward=16, num_dummies=2,
    t2v_layers=1, enc_layers=1, dummy_layers=1, dummy_encoder_num_heads=2, max_q_l=6, kernel_size=3,
    num_mlp_layers=2, strides=(1, 2, 4))
QUIRKS_OFF_MODEL = dict(pyramid_input_inplace_relu=False, t2v_misaligned_extra_mask=False,
                        saliency_mean_includes_padding=False, pyramid_sees_padding=False, rank_padded_points=False,
                        inter_conf_crosses_levels=False, t2v_drop_dummy_values=False,
                        mix_logits_before_sigmoid=False, use_txt_pos=True)
QUIRKS_OFF_LOSS = dict(centre_sampling_inclusive_bounds=False, label_loss_includes_padding=False,
                       attn_bce_includes_padding=False, falseneg_single_row_degenerate=False,
                       attn_falseneg_term_dead=False, neg_pair_log_unclamped=False)


@pytest.mark.parametrize("reference_quirks", [True, False])
def test_tiny_model_trains_with_dropout(reference_quirks):
  model_cfg = TINY if reference_quirks else dataclasses.replace(TINY, **QUIRKS_OFF_MODEL)
  loss_cfg = losses_lib.FlashMMRLossConfig() if reference_quirks else losses_lib.FlashMMRLossConfig(
      **QUIRKS_OFF_LOSS)
  model = model_lib.FlashMMR(model_cfg)
  rng = np.random.default_rng(3)
  vid = rng.normal(size=(3, 8, 6)).astype(np.float32)
  vid_mask = np.array([[1] * 8, [1] * 6 + [0] * 2, [1] * 5 + [0] * 3], np.float32)
  vid *= vid_mask[..., None]
  txt = rng.normal(size=(3, 4, 5)).astype(np.float32)
  txt_mask = np.array([[1] * 4, [1, 1, 0, 0], [1, 1, 1, 0]], np.float32)
  real_neg = jnp.array([False, True, True])
  targets = dict(gt_windows_sec=jnp.array([[[2.0, 8.0], [np.inf, np.inf]], [[0.0, 6.0], [8.0, 12.0]],
                                           [[4.0, 10.0], [np.inf, np.inf]]]),
                 fps=jnp.full((3,), 0.5), saliency_all_labels=jnp.asarray(
                     np.array([[0, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 1, 1, 0, 0], [0, 0, 1, 1, 1, 0, 0, 0]],
                              np.float32)),
                 saliency_pos_labels=jnp.array([[1, 2], [0, 4], [2, 3]]),
                 saliency_neg_labels=jnp.array([[5, 6], [3, 5], [0, 1]]))
  keys = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}
  params = jax.jit(model.init)(keys, vid, vid_mask, txt, txt_mask, real_neg)["params"]

  def loss_fn(p):
    out = model.apply({"params": p}, vid, vid_mask, txt, txt_mask, real_neg, deterministic=False,
                      rngs={"dropout": jax.random.PRNGKey(2)})
    return losses_lib.flashmmr_losses(out, targets, loss_cfg)

  (total, terms), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
  assert np.isfinite(total)
  for name in ("loss.loss_cls", "loss.loss_reg", "loss.loss_sal", "loss.loss_saliency", "loss.loss_label"):
    assert np.isfinite(terms[name]), name
  assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
  if not reference_quirks:
    assert np.abs(np.asarray(grads["text_position_table"])).sum() > 0
