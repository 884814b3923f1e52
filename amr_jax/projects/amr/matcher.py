"""Hungarian matching of AMR predictions to GT windows (span L1 + GIoU + class + soft mask IoU cost).

Costs are computed batched on device; the assignment is solved inside jit with optax's Hungarian algorithm (default)
or with scipy through a host callback (`solver='scipy'`, test oracle). Outputs have fixed shapes.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize

from amr_jax.ops import spans as span_utils


class Match(NamedTuple):
  """A fixed-shape assignment per sample; slots k < num_windows[b] hold the valid pairs, sorted by query index.

  Attributes:
    src_idx: [..., W] int32 matched query index (0 where invalid).
    tgt_idx: [..., W] int32 matched GT-window index (0 where invalid).
    valid: [..., W] bool, True for real pairs.
  """
  src_idx: jax.Array
  tgt_idx: jax.Array
  valid: jax.Array


def match_to_indices(match):
  """Match -> index array [..., W, 2] (query, window) with -1 in unused slots (the fixture layout)."""
  pairs = jnp.stack([match.src_idx, match.tgt_idx], axis=-1)
  return jnp.where(match.valid[..., None], pairs, -1).astype(jnp.int32)


def indices_to_match(indices):
  """Index array [..., W, 2] with -1 in unused slots -> Match."""
  indices = jnp.asarray(indices)
  valid = (indices[..., 0] >= 0) & (indices[..., 1] >= 0)
  src_idx = jnp.where(valid, indices[..., 0], 0).astype(jnp.int32)
  tgt_idx = jnp.where(valid, indices[..., 1], 0).astype(jnp.int32)
  return Match(src_idx, tgt_idx, valid)


def matching_cost(pred_logits, pred_spans, pred_masks, span_labels_cxw, mask_labels, *, cost_span=10.0,
                  cost_giou=1.0, cost_class=4.0, cost_mask=5.0):
  """The reference 4-term matching cost for every (query, GT window) pair.

  `C = cost_span·L1(cxw) − cost_giou·GIoU(xx) − cost_class·softmax(logits)[fg] + cost_mask·(1 − softIoU)`.

  Args:
    pred_logits: [B, Q, 2] class logits (index 0 = foreground).
    pred_spans: [B, Q, 2] predicted (cx, w) in [0, 1].
    pred_masks: [B, Q, Lv] mask probabilities.
    span_labels_cxw: [B, W, 2] GT windows (cx, w); rows >= num_windows are padding (any value).
    mask_labels: [B, W, Lv] GT clip masks.
    cost_span, cost_giou, cost_class, cost_mask: term weights.

  Returns:
    [B, Q, W] float cost. Padded GT columns hold meaningless values; `solve_assignment` masks them.
  """
  prob_fg = jax.nn.softmax(pred_logits, axis=-1)[..., 0]  # [B, Q]
  span_l1 = jnp.sum(jnp.abs(pred_spans[:, :, None, :] - span_labels_cxw[:, None, :, :]), axis=-1)  # [B, Q, W]
  giou = span_utils.generalized_temporal_iou_pairwise(
      span_utils.span_cxw_to_xx(pred_spans), span_utils.span_cxw_to_xx(span_labels_cxw))  # [B, Q, W]
  mask_iou = span_utils.soft_mask_iou_pairwise(pred_masks, mask_labels)  # [B, Q, W]
  return (cost_span * span_l1 - cost_giou * giou - cost_class * prob_fg[:, :, None]
          + cost_mask * (1.0 - mask_iou))


def _pad_invalid_columns(cost, num_windows):
  """Give GT columns >= num_windows a constant cost above every real cost of that sample.

  A row-independent constant leaves the optimal assignment of the real columns unchanged when Q >= num_windows
  (every column gets a row anyway), and being larger than every real cost it is never preferred to a free real column
  when Q < W. It stays close to the real costs so that the float32 potentials of the solver keep their precision.

  Args:
    cost: [B, Q, W] cost.
    num_windows: [B] int number of real GT windows.

  Returns:
    [B, Q, W] cost with padded columns replaced.
  """
  max_windows = cost.shape[-1]
  column_valid = jnp.arange(max_windows)[None, :] < num_windows[:, None]  # [B, W]
  column_valid = jnp.broadcast_to(column_valid[:, None, :], cost.shape)  # [B, Q, W]
  real_max = jnp.max(jnp.where(column_valid, cost, -jnp.inf), axis=(1, 2), keepdims=True)  # [B, 1, 1]
  real_min = jnp.min(jnp.where(column_valid, cost, jnp.inf), axis=(1, 2), keepdims=True)
  spread = jnp.where(jnp.isfinite(real_max), real_max - real_min, 0.0)
  pad_value = jnp.where(jnp.isfinite(real_max), real_max + spread + 1.0, 0.0)
  return jnp.where(column_valid, cost, pad_value)


def _sorted_fixed_match(rows, cols, num_windows, max_windows, num_queries):
  """Per-sample solver output (rows [K], cols [K], K = min(Q, W)) -> Match [W] sorted like scipy's output."""
  valid = cols < num_windows  # [K]
  sort_key = jnp.where(valid, rows, num_queries + cols)  # invalid pairs go last
  order = jnp.argsort(sort_key)
  rows, cols, valid = rows[order], cols[order], valid[order]
  num_pairs = rows.shape[0]
  if num_pairs < max_windows:
    pad = max_windows - num_pairs
    rows = jnp.concatenate([rows, jnp.zeros(pad, rows.dtype)])
    cols = jnp.concatenate([cols, jnp.zeros(pad, cols.dtype)])
    valid = jnp.concatenate([valid, jnp.zeros(pad, bool)])
  src_idx = jnp.where(valid, rows, 0).astype(jnp.int32)
  tgt_idx = jnp.where(valid, cols, 0).astype(jnp.int32)
  return Match(src_idx, tgt_idx, valid)


def solve_hungarian(cost, num_windows):
  """Optimal assignment of queries to the real GT windows, on device (jittable, vmapped over the batch).

  Args:
    cost: [B, Q, W] cost (padded columns may hold anything).
    num_windows: [B] int number of real GT windows per sample.

  Returns:
    Match with fields [B, W].
  """
  num_windows = jnp.asarray(num_windows).astype(jnp.int32)
  num_queries, max_windows = cost.shape[-2:]
  padded_cost = _pad_invalid_columns(cost, num_windows)

  def solve_one(cost_one, num_windows_one):
    rows, cols = optax.assignment.hungarian_algorithm(cost_one)  # [K], K = min(Q, W)
    return _sorted_fixed_match(rows, cols, num_windows_one, max_windows, num_queries)

  return jax.vmap(solve_one)(padded_cost, num_windows)


def match_scipy(cost, num_windows):
  """Host oracle: scipy `linear_sum_assignment` on each sample's real (Q, num_windows[b]) block, as the reference.

  Args:
    cost: [B, Q, W] numpy cost.
    num_windows: [B] ints.

  Returns:
    Index array [B, W, 2] int32 (query, window), -1 in unused slots; pairs sorted by query index.
  """
  cost = np.asarray(cost)
  num_windows = np.asarray(num_windows)
  batch_size, _, max_windows = cost.shape
  indices = np.full((batch_size, max_windows, 2), -1, np.int32)
  for b in range(batch_size):
    n = int(num_windows[b])
    if n == 0:
      continue
    rows, cols = scipy.optimize.linear_sum_assignment(cost[b, :, :n])
    indices[b, :len(rows), 0] = rows
    indices[b, :len(rows), 1] = cols
  return indices


def solve_scipy_callback(cost, num_windows):
  """`match_scipy` run through `jax.pure_callback` (jittable, host round trip); returns Match with fields [B, W]."""
  num_windows = jnp.asarray(num_windows).astype(jnp.int32)
  result_shape = jax.ShapeDtypeStruct(cost.shape[:1] + cost.shape[2:] + (2,), jnp.int32)
  indices = jax.pure_callback(match_scipy, result_shape, cost, num_windows, vmap_method='sequential')
  return indices_to_match(indices)


def solve_assignment(cost, num_windows, solver='hungarian'):
  """Dispatch to the device Hungarian (`'hungarian'`) or the scipy host callback (`'scipy'`); returns Match [B, W]."""
  if solver == 'hungarian':
    return solve_hungarian(cost, num_windows)
  if solver == 'scipy':
    return solve_scipy_callback(cost, num_windows)
  raise ValueError(f'unknown matcher solver {solver!r}; expected "hungarian" or "scipy"')


def match_layer(layer_outputs, batch, matcher_cfg):
  """Match one decoder layer's predictions (no gradient flows through the matching).

  Args:
    layer_outputs: dict with `pred_logits [B,Q,2]`, `pred_spans [B,Q,2]`, `pred_masks [B,Q,Lv]`.
    batch: dict with `span_labels_cxw [B,W,2]`, `mask_labels [B,W,Lv]`, `num_windows [B]`.
    matcher_cfg: config with `cost_span`, `cost_giou`, `cost_class`, `cost_mask` and `solver`.

  Returns:
    Match with fields [B, W].
  """
  outputs = jax.lax.stop_gradient(
      {k: layer_outputs[k] for k in ('pred_logits', 'pred_spans', 'pred_masks')})
  cost = matching_cost(
      outputs['pred_logits'], outputs['pred_spans'], outputs['pred_masks'],
      batch['span_labels_cxw'], batch['mask_labels'],
      cost_span=matcher_cfg.cost_span, cost_giou=matcher_cfg.cost_giou,
      cost_class=matcher_cfg.cost_class, cost_mask=matcher_cfg.cost_mask)
  solver = getattr(matcher_cfg, 'solver', 'hungarian')
  return solve_assignment(cost, batch['num_windows'], solver)
