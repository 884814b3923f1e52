"""Parity of the Flax FlashMMR port with the PyTorch reference fixture (tests/fixtures/flashmmr_reference).

One full `check_flashmmr_fixture` run (forward, losses, grads, optimiser step, submissions, PV) shared by all tests.
"""
import json
import os

import numpy as np
import pytest

from amr_jax.projects.flashmmr import postprocess as post_lib
from amr_jax.projects.flashmmr import reference as flashmmr_check
from amr_jax.projects.flashmmr import torch_names as names_lib
from amr_jax.projects.flashmmr.model import FlashMMRModelConfig

FIXTURE_DIR = os.path.join(os.path.dirname(__file__), "fixtures", "flashmmr_reference")

GROUPS = (
    "params", "outputs", "losses", "grads", "samevid_outputs", "samevid_losses", "samevid_grads",
    "params_after_step", "inference", "submission_before_postprocess.from_fixture_boundaries",
    "submission_before_postprocess.end_to_end", "submission.from_fixture_boundaries", "submission.end_to_end",
    "submission_nms_thd_0_7.from_fixture_boundaries", "submission_nms_thd_0_7.end_to_end", "pv",
)


@pytest.fixture(scope="module")
def check_rows():
  return flashmmr_check.check_flashmmr_fixture(FIXTURE_DIR)


def _load(name):
  with np.load(os.path.join(FIXTURE_DIR, name)) as data:
    return {k: data[k] for k in data.files}


@pytest.mark.parametrize("group", GROUPS)
def test_group_matches_reference(check_rows, group):
  rows = [r for r in check_rows if flashmmr_check.row_group(r[0]) == group]
  assert rows, f"no rows for {group}"
  failing = [r for r in rows if not r[3]]
  assert not failing, "\n".join(f"{r[0]} abs={r[1]:.3e} rel={r[2]:.3e}" for r in failing)


def test_every_row_is_in_a_known_group(check_rows):
  unknown = sorted({flashmmr_check.row_group(r[0]) for r in check_rows} - set(GROUPS))
  assert not unknown
  assert all(r[3] for r in check_rows)


def test_every_parameter_gradient_and_step_is_checked(check_rows):
  names = {r[0] for r in check_rows}
  state = _load("params.npz")
  for key in state:
    assert f"grads.{key}" in names
    assert f"samevid_grads.{key}" in names
    assert f"params_after_step.{key}" in names


def test_every_recorded_output_and_loss_is_checked(check_rows):
  names = {r[0] for r in check_rows}
  for prefix in ("", "samevid_"):
    ref = _load(f"{prefix}outputs.npz")
    for key in ref:
      if key in ("_avg_factor", "loss_target.gt_boundary_sec") or key.startswith("weight."):
        continue
      group = "losses" if key.startswith("loss") else "outputs"
      assert any(n.startswith(f"{prefix}{group}.{key}") for n in names), key


def test_name_map_round_trip_and_shapes():
  with open(os.path.join(FIXTURE_DIR, "tiny_config.json")) as f:
    cfg = FlashMMRModelConfig.from_fixture(json.load(f))
  with open(os.path.join(FIXTURE_DIR, "param_shapes.json")) as f:
    shapes = json.load(f)
  table = names_lib.flashmmr_name_table(cfg)
  assert [name for name, _, _ in table] == shapes["named_parameters"]
  state = _load("params.npz")
  back = names_lib.flashmmr_flax_to_torch(names_lib.flashmmr_torch_to_flax(state, cfg), cfg)
  for name, shape in shapes["state_dict_shapes"].items():
    assert list(back[name].shape) == shape
    np.testing.assert_array_equal(back[name], state[name])
  with pytest.raises(KeyError):
    names_lib.flashmmr_torch_to_flax({k: v for k, v in state.items() if k != "coef"}, cfg)
  # The inference-only FlashMMR checkpoint has no AdaPooling weight; non-strict loading accepts that.
  partial = names_lib.flashmmr_torch_to_flax({k: v for k, v in state.items() if k != "pooling.att.weight"}, cfg,
                                             strict=False)
  assert "query_pooling" not in partial


def test_torch_sort_emulation_reproduces_recorded_orders():
  out = _load("outputs.npz")
  scores = out["inter.score_sigmoid"][..., 0]
  for b in range(scores.shape[0]):
    np.testing.assert_array_equal(post_lib.torch_sort_descending(scores[b]), out["inter.pred_spans_order"][b])


def test_nms_from_recorded_submission_is_exact():
  def read(name):
    with open(os.path.join(FIXTURE_DIR, name)) as f:
      return [json.loads(line) for line in f]

  processed, after = read("submission.jsonl"), read("submission_nms_thd_0.7.jsonl")
  cfg = post_lib.FlashMMRPostprocessConfig()
  for rec, ref in zip(processed, after):
    assert post_lib.nms_rows(rec["pred_relevant_windows"], cfg) == ref["pred_relevant_windows"]
