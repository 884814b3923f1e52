"""Tests of the Hungarian matcher: device solver vs scipy on random costs, padding, and the PyTorch fixture.

Fixture costs and indices come from `tests/fixtures/amr_reference` (scipy 1.17.1 on the repo's float32 costs).
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.optimize

from amr_jax.projects.amr import matcher
from configs import amr_common
from tests.conftest import FIXTURES

FIXTURE_DIR = FIXTURES / 'amr_reference'
STAGE_INPUTS = {'stage1': 'stage1', 'stage2': 'stage2', 'stage2_after_step': 'stage2'}
LAYER_KEYS = ('pred_logits', 'pred_spans', 'pred_masks', 'iou_scores')


def _load_fixture(name):
  outputs = dict(np.load(FIXTURE_DIR / f'{name}_outputs.npz'))
  inputs = dict(np.load(FIXTURE_DIR / f'{STAGE_INPUTS[name]}_inputs.npz'))
  return outputs, inputs


def _layer(outputs, layer_idx):
  prefix = '' if layer_idx == 3 else f'aux_outputs.{layer_idx}.'
  return {k: outputs[prefix + k] for k in LAYER_KEYS}


def _total_cost(cost, indices):
  """Sum of cost[q, w] over the valid pairs of an index array [W, 2]."""
  valid = indices[:, 0] >= 0
  return float(cost[indices[valid, 0], indices[valid, 1]].sum())


_solve_hungarian_jit = jax.jit(matcher.solve_hungarian)


@pytest.mark.parametrize('num_queries,max_windows', [(10, 3), (20, 10), (6, 6), (3, 5), (1, 4)])
def test_hungarian_matches_scipy_without_ties(num_queries, max_windows):
  rng = np.random.default_rng(num_queries * 100 + max_windows)
  cost = rng.normal(size=(4, num_queries, max_windows)).astype(np.float32)
  num_windows = np.full(4, max_windows)
  ours = np.asarray(matcher.match_to_indices(_solve_hungarian_jit(jnp.asarray(cost), num_windows)))
  for b in range(4):
    rows, cols = scipy.optimize.linear_sum_assignment(cost[b])
    num_pairs = len(rows)
    np.testing.assert_array_equal(ours[b, :num_pairs, 0], rows)
    np.testing.assert_array_equal(ours[b, :num_pairs, 1], cols)
    assert (ours[b, num_pairs:] == -1).all()


@pytest.mark.parametrize('num_queries,max_windows', [(10, 3), (20, 10), (5, 5), (3, 6)])
def test_hungarian_optimal_cost_with_ties(num_queries, max_windows):
  rng = np.random.default_rng(7 + num_queries)
  cost = rng.integers(0, 3, size=(6, num_queries, max_windows)).astype(np.float32)  # many exact ties
  cost[0, :, :] = 1.0  # all equal
  cost[1, num_queries // 2:] = cost[1, :num_queries - num_queries // 2]  # twin rows
  num_windows = np.full(6, max_windows)
  ours = np.asarray(matcher.match_to_indices(_solve_hungarian_jit(jnp.asarray(cost), num_windows)))
  for b in range(6):
    rows, cols = scipy.optimize.linear_sum_assignment(cost[b])
    assert _total_cost(cost[b], ours[b]) == pytest.approx(float(cost[b][rows, cols].sum()), abs=1e-5)
    valid = ours[b, :, 0] >= 0
    assert valid.sum() == min(num_queries, max_windows)
    assert len(set(ours[b, valid, 0])) == valid.sum() and len(set(ours[b, valid, 1])) == valid.sum()
    assert (np.diff(ours[b, valid, 0]) > 0).all()  # sorted by query index


@pytest.mark.parametrize('num_queries', [10, 4, 2])
def test_padded_columns_are_never_selected(num_queries):
  rng = np.random.default_rng(num_queries)
  max_windows = 6
  num_windows = np.array([0, 1, 2, 4, 6, 3])
  cost = rng.normal(size=(6, num_queries, max_windows)).astype(np.float32) * 5
  column_valid = np.arange(max_windows)[None, None, :] < num_windows[:, None, None]
  cost = np.where(column_valid, cost, -1e4).astype(np.float32)  # padded columns look very attractive
  match = _solve_hungarian_jit(jnp.asarray(cost), num_windows)
  ours = np.asarray(matcher.match_to_indices(match))
  reference = matcher.match_scipy(cost, num_windows)
  for b in range(6):
    expected_pairs = min(num_queries, num_windows[b])
    valid = ours[b, :, 0] >= 0
    assert valid.sum() == expected_pairs
    assert (ours[b, valid, 1] < num_windows[b]).all()
    assert valid[:expected_pairs].all() and not valid[expected_pairs:].any()
    np.testing.assert_array_equal(ours[b], reference[b])


def test_scipy_callback_matches_host_oracle_under_jit():
  rng = np.random.default_rng(3)
  cost = rng.normal(size=(3, 10, 4)).astype(np.float32)
  num_windows = np.array([2, 4, 1])
  via_callback = jax.jit(lambda c, n: matcher.match_to_indices(matcher.solve_assignment(c, n, 'scipy')))
  np.testing.assert_array_equal(np.asarray(via_callback(cost, num_windows)), matcher.match_scipy(cost, num_windows))
  with pytest.raises(ValueError):
    matcher.solve_assignment(jnp.asarray(cost), num_windows, 'auction')


def test_match_index_round_trip():
  indices = np.array([[[3, 1], [5, 0], [-1, -1]], [[-1, -1], [-1, -1], [-1, -1]]])
  match = matcher.indices_to_match(indices)
  np.testing.assert_array_equal(np.asarray(match.valid), indices[..., 0] >= 0)
  np.testing.assert_array_equal(np.asarray(matcher.match_to_indices(match)), indices)


@pytest.mark.parametrize('name', ['stage1', 'stage2', 'stage2_after_step'])
def test_fixture_costs(name):
  outputs, inputs = _load_fixture(name)
  cfg = amr_common.matcher_config()
  for layer_idx in range(4):
    layer = _layer(outputs, layer_idx)
    cost = np.asarray(matcher.matching_cost(
        layer['pred_logits'], layer['pred_spans'], layer['pred_masks'], inputs['span_labels_cxw'],
        inputs['mask_labels'], cost_span=cfg.cost_span, cost_giou=cfg.cost_giou, cost_class=cfg.cost_class,
        cost_mask=cfg.cost_mask))
    ours = np.asarray(matcher.match_to_indices(_solve_hungarian_jit(jnp.asarray(cost), inputs['num_windows'])))
    for b, num_windows in enumerate(inputs['num_windows']):
      expected = outputs[f'matcher.cost.layer{layer_idx}.sample{b}']
      np.testing.assert_allclose(cost[b, :, :num_windows], expected, atol=1e-5, rtol=1e-5)
      # Whatever the tie-break, the optimal total cost agrees with scipy on the recorded cost block.
      rows, cols = scipy.optimize.linear_sum_assignment(expected)
      assert _total_cost(cost[b], ours[b]) == pytest.approx(float(expected[rows, cols].sum()), abs=1e-4)


@pytest.mark.parametrize('name', ['stage1', 'stage2_after_step'])
@pytest.mark.parametrize('solver', ['hungarian', 'scipy'])
def test_fixture_indices(name, solver):
  """Recomputed matching reproduces `matcher.indices` (stage 2 at init has exact twin ties; costs only there)."""
  outputs, inputs = _load_fixture(name)
  cfg = ml_collections.ConfigDict(amr_common.matcher_config().to_dict())
  cfg.solver = solver
  batch = {k: jnp.asarray(inputs[k]) for k in ('span_labels_cxw', 'mask_labels', 'num_windows')}
  match_fn = jax.jit(lambda layer, batch: matcher.match_layer(layer, batch, cfg))
  for layer_idx in range(4):
    match = match_fn(_layer(outputs, layer_idx), batch)
    np.testing.assert_array_equal(np.asarray(matcher.match_to_indices(match)),
                                  outputs['matcher.indices'][layer_idx])
