"""FlashMMR multi-moment post-verification (PV): proposal crops, GRU + MLP verifier, L_PV and L_repr.

The repo only defines the GRU module; crops, targets and losses follow the paper, open questions behind flags.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from amr_jax.projects.flashmmr.model import torch_bias_init, torch_linear_kernel_init
from amr_jax.ops import spans

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class FlashMMRVerifierConfig:
  """PV module and loss settings.

  Attributes:
    input_dim: feature size of the fused features F (model hidden_dim).
    hidden_dim: GRU width; the classifier is hidden → hidden/2 → hidden/4 → 1.
    dropout: classifier dropout.
    max_crop_len: fixed crop length T (crops longer than T are truncated to their first T clips).
    clips_per_second: r of `I_i = F[round(s·r) : round(e·r)]` (0.5 = 2 s clips).
    num_proposals: K proposals per sample go to PV during training (open question 2: the top-K by score,
      K = max_num_moment = 50 as in the third-party reading).
    lw_pv: weight of L_PV (MSE). Open question 3: the paper's "9 and 7" read as lw_pv = 9, lw_repr = 0.7 (the
      third-party reproduction's `--lw_pv 9.0 --lw_pv1 0.7`); the code defaults are the other way round.
    lw_repr: weight of L_repr.
    apply_sigmoid: p = σ(verifier output) as in the paper (the module itself returns raw scores).
    adjust_proposals: clamp proposals to [0, duration] and round to the clip grid before cropping (the paper's
      constrained temporal adjustment; no min/max window-length clipping, as the hl inference path).
    backprop_into_features: PV gradients reach the fused features F (False: F is stop-gradient'ed).
    repr_over_proposal_pairs: open question 1. False (default, the paper's wording "for prediction i"): S_i is the
      clip×clip cosine self-similarity inside crop I_i, T_i[a, b] = 1 when clips a and b lie in the same GT
      segment (both outside any GT also agree). True (third-party reading): one K×K cosine matrix over
      mean-pooled proposal features, target 1 when two proposals best-match the same GT.
    repr_background_pairs_agree: in the clip-level reading, two background clips count as agreeing.
  """
  input_dim: int = 256
  hidden_dim: int = 128
  dropout: float = 0.3
  max_crop_len: int = 75
  clips_per_second: float = 0.5
  num_proposals: int = 50
  lw_pv: float = 9.0
  lw_repr: float = 0.7
  apply_sigmoid: bool = True
  adjust_proposals: bool = True
  backprop_into_features: bool = True
  repr_over_proposal_pairs: bool = False
  repr_background_pairs_agree: bool = True


class GRULastHidden(nn.Module):
  """One-layer unidirectional torch-style GRU (gates r, z, n) returning the last valid hidden state.

  n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)); h' = (1 − z) ⊙ n + z ⊙ h; h_0 = 0.
  """
  input_dim: int
  hidden_dim: int

  @nn.compact
  def __call__(self, sequences: Array, lengths: Array) -> Array:
    # sequences: [N, T, Din]; lengths: [N] -> [N, H] (zeros where length == 0)
    h_dim = self.hidden_dim
    bound = 1.0 / math.sqrt(h_dim)
    uniform = lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)
    input_kernel = self.param("input_kernel", uniform, (self.input_dim, 3 * h_dim))
    hidden_kernel = self.param("hidden_kernel", uniform, (h_dim, 3 * h_dim))
    input_bias = self.param("input_bias", uniform, (3 * h_dim,))
    hidden_bias = self.param("hidden_bias", uniform, (3 * h_dim,))
    projected = sequences @ input_kernel + input_bias  # [N, T, 3H]

    def step(h, inputs):
      x_proj, t = inputs  # [N, 3H], scalar
      h_proj = h @ hidden_kernel + hidden_bias  # [N, 3H]
      r = jax.nn.sigmoid(x_proj[:, :h_dim] + h_proj[:, :h_dim])
      z = jax.nn.sigmoid(x_proj[:, h_dim:2 * h_dim] + h_proj[:, h_dim:2 * h_dim])
      n = jnp.tanh(x_proj[:, 2 * h_dim:] + r * h_proj[:, 2 * h_dim:])
      h_new = (1 - z) * n + z * h
      h = jnp.where((t < lengths)[:, None], h_new, h)
      return h, None

    h0 = jnp.zeros((sequences.shape[0], h_dim), sequences.dtype)
    steps = jnp.arange(sequences.shape[1])
    h, _ = jax.lax.scan(step, h0, (projected.transpose(1, 0, 2), steps))
    return h


class PostVerificationGRU(nn.Module):
  """`PostVerificationRNN`: GRU over each crop → last hidden → MLP (ReLU, Dropout) → raw score."""
  config: FlashMMRVerifierConfig

  @nn.compact
  def __call__(self, crops: Array, lengths: Array, deterministic: bool = True) -> Dict[str, Array]:
    """Scores fixed-shape padded crops.

    Args:
      crops: [N, T, input_dim] crop features, zero-padded after `lengths`.
      lengths: [N] valid steps per crop (0 = empty crop; its outputs are meaningless and should be masked).
      deterministic: False enables the classifier dropout (needs a 'dropout' rng).

    Returns:
      dict with `last_hidden` [N, H] and `scores_raw` [N, 1].
    """
    cfg = self.config
    hidden = GRULastHidden(cfg.input_dim, cfg.hidden_dim, name="gru")(crops, lengths)
    widths = [cfg.hidden_dim, cfg.hidden_dim // 2, cfg.hidden_dim // 4, 1]
    x = hidden
    for j in range(3):
      x = nn.Dense(widths[j + 1], kernel_init=torch_linear_kernel_init, bias_init=torch_bias_init(widths[j]),
                   name=f"classifier_{j}")(x)
      if j < 2:
        x = nn.relu(x)
        x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
    return dict(last_hidden=hidden, scores_raw=x)


# ----------------------------------------------------------------------------------------------------------------
# Proposals, crops and targets (fixed shapes).


def adjust_proposals(windows_sec: Array, duration: Array, clip_length: float = 2.0) -> Array:
  """Constrained temporal adjustment: clamp to [0, duration] and round to multiples of clip_length.

  Args:
    windows_sec: [..., N, 2] seconds.
    duration: [...] seconds.
    clip_length: seconds per clip.

  Returns:
    [..., N, 2].
  """
  upper = jnp.asarray(duration, windows_sec.dtype)[..., None, None]
  clamped = jnp.clip(windows_sec, 0.0, upper)
  return jnp.round(clamped / clip_length) * clip_length


def crop_indices(windows_sec: Array, num_clips: int | Array, clips_per_second: float) -> Tuple[Array, Array]:
  """Clip index range [round(s·r), round(e·r)) of each window, clipped to [0, num_clips].

  Args:
    windows_sec: [..., N, 2].
    num_clips: valid clips of the video (scalar or [...]).
    clips_per_second: r.

  Returns:
    (start [..., N] int32, end [..., N] int32) with end ≥ start.
  """
  idx = jnp.round(windows_sec * clips_per_second).astype(jnp.int32)
  limit = jnp.asarray(num_clips, jnp.int32)
  if limit.ndim:
    limit = limit[..., None]
  start = jnp.clip(idx[..., 0], 0, limit)
  end = jnp.clip(idx[..., 1], start, limit)
  return start, end


def crop_features(features: Array, start: Array, end: Array, max_crop_len: int) -> Tuple[Array, Array]:
  """Gathers `features[start:end]` into zero-padded fixed-length crops.

  Args:
    features: [L, D] fused features of one video.
    start, end: [N] clip ranges.
    max_crop_len: T.

  Returns:
    (crops [N, T, D], lengths [N] = min(end − start, T)).
  """
  offsets = jnp.arange(max_crop_len)  # [T]
  lengths = jnp.minimum(end - start, max_crop_len)
  index = start[:, None] + offsets[None, :]  # [N, T]
  valid = offsets[None, :] < lengths[:, None]
  index = jnp.clip(index, 0, features.shape[0] - 1)
  crops = features[index] * valid[..., None].astype(features.dtype)
  return crops, lengths


def temporal_iou_matrix(windows: Array, gt_windows: Array) -> Array:
  """[N, M] IoU of windows [N, 2] vs GT [M, 2] (seconds); 0 where the union is empty (shared ops.spans IoU)."""
  return spans.temporal_iou_pairwise(windows, gt_windows, empty_union_iou=0.0)[0]


def max_iou_targets(windows: Array, gt_windows: Array, gt_valid: Array) -> Array:
  """IoU_hat_i = max_j tIoU(b_i, b*_j) over all valid GT windows (0 when there is none).

  Args:
    windows: [N, 2] seconds.
    gt_windows: [G, 2] seconds (padding rows arbitrary).
    gt_valid: [G] bool.

  Returns:
    [N].
  """
  gt = jnp.where(gt_valid[:, None], gt_windows, 0.0)
  iou = jnp.where(gt_valid[None, :], temporal_iou_matrix(windows, gt), 0.0)
  return iou.max(axis=1)


def pv_mse_loss(scores_raw: Array, iou_hat: Array, valid: Array, apply_sigmoid: bool = True) -> Array:
  """L_PV = mean over valid crops of (p − IoU_hat)², p = σ(score) (torch `mse_loss`, mean reduction).

  Args:
    scores_raw: [N, 1] or [N].
    iou_hat: [N].
    valid: [N] bool (non-empty crops).
    apply_sigmoid: p = σ(raw) (paper) or raw.

  Returns:
    scalar.
  """
  raw = scores_raw.reshape(iou_hat.shape)
  p = jax.nn.sigmoid(raw) if apply_sigmoid else raw
  w = valid.astype(p.dtype)
  return jnp.sum(jnp.square(p - iou_hat) * w) / jnp.maximum(w.sum(), 1.0)


def _cosine_matrix(x: Array) -> Array:
  # x: [..., M, D] -> [..., M, M]
  # max(‖x‖, 1e-8) with a finite gradient for the all-zero padded steps.
  norm = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), 1e-16))
  unit = x / norm
  return jnp.einsum("...md,...nd->...mn", unit, unit)


def _bce(prob: Array, target: Array) -> Array:
  prob = jnp.clip(prob, 1e-7, 1 - 1e-7)
  return -(target * jnp.log(prob) + (1 - target) * jnp.log(1 - prob))


def clip_segment_labels(num_clips: int, gt_windows: Array, gt_valid: Array, clip_length: float) -> Array:
  """Per clip, the index of the first GT containing its centre, or −1 (background).

  Args:
    num_clips: L.
    gt_windows: [G, 2] seconds.
    gt_valid: [G] bool.
    clip_length: seconds per clip.

  Returns:
    [L] int32.
  """
  centre = (jnp.arange(num_clips) + 0.5) * clip_length  # [L]
  inside = (centre[:, None] >= gt_windows[None, :, 0]) & (centre[:, None] < gt_windows[None, :, 1]) & gt_valid[None]
  first = jnp.argmax(inside, axis=1)
  return jnp.where(inside.any(axis=1), first, -1).astype(jnp.int32)


def representation_loss_clip_pairs(crops: Array, lengths: Array, crop_start: Array, segment_labels: Array,
                                   valid: Array, background_pairs_agree: bool = True) -> Array:
  """L_repr, clip-level reading: Σ_i BCE((1 + cos(I_i[a], I_i[b]))/2, same-segment(a, b)) / #pairs.

  Args:
    crops: [N, T, D].
    lengths: [N].
    crop_start: [N] first clip index of each crop.
    segment_labels: [L] per-clip GT segment index (−1 background).
    valid: [N] bool.
    background_pairs_agree: two background clips agree.

  Returns:
    scalar: mean over valid clip pairs (a ≠ b) of all valid crops.
  """
  t = crops.shape[1]
  sim = (_cosine_matrix(crops) + 1.0) / 2.0  # [N, T, T]
  clip_idx = jnp.clip(crop_start[:, None] + jnp.arange(t)[None, :], 0, segment_labels.shape[0] - 1)
  labels = segment_labels[clip_idx]  # [N, T]
  agree = labels[:, :, None] == labels[:, None, :]
  if not background_pairs_agree:
    agree = agree & (labels[:, :, None] >= 0)
  step_valid = jnp.arange(t)[None, :] < lengths[:, None]  # [N, T]
  pair_valid = step_valid[:, :, None] & step_valid[:, None, :] & ~jnp.eye(t, dtype=bool)[None] & valid[:, None, None]
  loss = _bce(sim, agree.astype(sim.dtype)) * pair_valid
  return loss.sum() / jnp.maximum(pair_valid.sum(), 1)


def representation_loss_proposal_pairs(crops: Array, lengths: Array, windows: Array, gt_windows: Array,
                                       gt_valid: Array, valid: Array) -> Array:
  """L_repr, proposal-level (third-party) reading: K×K cosine of mean-pooled crops vs. same-best-GT target.

  Proposals are ordered by start time (irrelevant for the symmetric loss). Masked BCE over valid pairs a ≠ b.

  Args:
    crops: [N, T, D].
    lengths: [N].
    windows: [N, 2] seconds.
    gt_windows: [G, 2].
    gt_valid: [G] bool.
    valid: [N] bool.

  Returns:
    scalar.
  """
  step_valid = (jnp.arange(crops.shape[1])[None, :] < lengths[:, None]).astype(crops.dtype)
  pooled = (crops * step_valid[..., None]).sum(1) / jnp.maximum(step_valid.sum(1, keepdims=True), 1.0)
  sim = (_cosine_matrix(pooled) + 1.0) / 2.0  # [N, N]
  iou = jnp.where(gt_valid[None, :], temporal_iou_matrix(windows, jnp.where(gt_valid[:, None], gt_windows, 0.0)),
                  -1.0)
  best = jnp.argmax(iou, axis=1)
  matched = iou.max(axis=1) > 0
  target = (best[:, None] == best[None, :]) & matched[:, None] & matched[None, :]
  n = crops.shape[0]
  pair_valid = valid[:, None] & valid[None, :] & ~jnp.eye(n, dtype=bool)
  loss = _bce(sim, target.astype(sim.dtype)) * pair_valid
  return loss.sum() / jnp.maximum(pair_valid.sum(), 1)


def score_proposals(verifier: PostVerificationGRU, verifier_params: Mapping[str, Any], memory: Array,
                    video_mask: Array, pred_spans: Array, duration: Array, config: FlashMMRVerifierConfig,
                    clip_length: float = 2.0, deterministic: bool = True, rngs: Optional[Dict[str, Array]] = None
                    ) -> Dict[str, Array]:
  """Crops the first K = num_proposals windows of `pred_spans` from F and runs the verifier on them.

  Shared by the training losses and the evaluation forward (predicted IoU of each proposal).

  Args:
    verifier: the PV module.
    verifier_params: its params.
    memory: [B, L, D] fused features F.
    video_mask: [B, L] 1 = valid clip.
    pred_spans: [B, P, >=2] windows (seconds), in the order the proposals are to be taken.
    duration: [B] seconds.
    config: verifier config.
    clip_length: seconds per clip.
    deterministic: dropout off.
    rngs: flax rngs for dropout.

  Returns:
    dict with `windows` [B, K, 2] (adjusted, stop-gradient), `start` [B, K], `lengths` [B, K], `crops`
    [B, K, T, D] and `scores_raw` [B, K] (p = sigmoid(scores_raw) when `apply_sigmoid`).
  """
  batch = memory.shape[0]
  k = min(config.num_proposals, pred_spans.shape[1])
  windows = jax.lax.stop_gradient(pred_spans[:, :k, :2])  # [B, K, 2]
  if config.adjust_proposals:
    windows = adjust_proposals(windows, duration, clip_length)
  features = memory if config.backprop_into_features else jax.lax.stop_gradient(memory)
  valid_clips = video_mask.sum(axis=1).astype(jnp.int32)
  start, end = crop_indices(windows, valid_clips, config.clips_per_second)  # [B, K]
  crops, lengths = jax.vmap(crop_features, in_axes=(0, 0, 0, None))(features, start, end, config.max_crop_len)
  flat_crops = crops.reshape(batch * k, config.max_crop_len, -1)
  out = verifier.apply({"params": verifier_params}, flat_crops, lengths.reshape(-1), deterministic, rngs=rngs)
  return dict(windows=windows, start=start, lengths=lengths, crops=crops,
              scores_raw=out["scores_raw"].reshape(batch, k))


def post_verification_losses(verifier: PostVerificationGRU, verifier_params: Mapping[str, Any], memory: Array,
                             video_mask: Array, pred_spans: Array, duration: Array, gt_windows_sec: Array,
                             gt_valid: Array, config: FlashMMRVerifierConfig, clip_length: float = 2.0,
                             deterministic: bool = True, rngs: Optional[Dict[str, Array]] = None
                             ) -> Tuple[Array, Dict[str, Array]]:
  """Training-time PV losses for a padded batch (FlashMMR additions to the FlashVTG criterion).

  Args:
    verifier: the PV module.
    verifier_params: its params.
    memory: [B, L, D] fused features F (model output `memory`).
    video_mask: [B, L] 1 = valid clip.
    pred_spans: [B, P, 3] score-sorted decoded windows (seconds) from the network.
    duration: [B] seconds.
    gt_windows_sec: [B, G, 2] all GT windows (open question 4: all, not the max_windows subset).
    gt_valid: [B, G] bool.
    config: verifier config.
    clip_length: seconds per clip.
    deterministic: dropout off.
    rngs: flax rngs for dropout.

  Returns:
    (lw_pv·L_PV + lw_repr·L_repr, dict of the unweighted terms and the targets).
  """
  batch, num_clips = memory.shape[:2]
  scored = score_proposals(verifier, verifier_params, memory, video_mask, pred_spans, duration, config,
                           clip_length, deterministic, rngs)
  windows, start, crops, lengths = scored["windows"], scored["start"], scored["crops"], scored["lengths"]
  k = windows.shape[1]
  out = dict(scores_raw=scored["scores_raw"].reshape(-1, 1))
  valid = (lengths > 0)  # [B, K]
  iou_hat = jax.vmap(max_iou_targets)(windows, gt_windows_sec, gt_valid)  # [B, K]
  loss_pv = pv_mse_loss(out["scores_raw"], iou_hat.reshape(-1), valid.reshape(-1), config.apply_sigmoid)
  if config.repr_over_proposal_pairs:
    per_sample = jax.vmap(representation_loss_proposal_pairs)(crops, lengths, windows, gt_windows_sec, gt_valid,
                                                               valid)
  else:
    labels = jax.vmap(clip_segment_labels, in_axes=(None, 0, 0, None))(num_clips, gt_windows_sec, gt_valid,
                                                                         clip_length)
    fn = lambda c, l, s, lab, v: representation_loss_clip_pairs(c, l, s, lab, v, config.repr_background_pairs_agree)
    per_sample = jax.vmap(fn)(crops, lengths, start, labels, valid)
  loss_repr = per_sample.mean()
  total = config.lw_pv * loss_pv + config.lw_repr * loss_repr
  return total, dict(loss_pv=loss_pv, loss_repr=loss_repr, iou_hat=iou_hat, crop_valid=valid,
                     scores_raw=out["scores_raw"].reshape(batch, k))
