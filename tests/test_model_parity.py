"""Parity of the Flax AMR with the PyTorch reference fixtures, and the PyTorch-name <-> Flax-pytree mapping.

Every output and intermediate must match to 1e-5 (abs or rel), float32; all sizes come from `tiny_config.json`.
"""
import os

import jax
import numpy as np
import pytest
from flax import traverse_util

from amr_jax.projects.amr.model import AMR, AMRModelConfig
from amr_jax.projects.amr import fixture as fx
from amr_jax.projects.amr import torch_names

FIXTURE_DIR = os.path.join(os.path.dirname(__file__), 'fixtures', 'amr_reference')
TOL = 1e-5
# Fixture keys that are not model outputs (matcher, losses, the teacher, the loss-side disc intermediates).
_NOT_MODEL_OUTPUT_PREFIXES = ('matcher.', 'loss', 'teacher.', 'inter.disc_')


@pytest.fixture(scope='module')
def fixture():
  return fx.load_fixture(FIXTURE_DIR)


@pytest.fixture(scope='module')
def cfg1(fixture):
  return fx.model_config(fixture, 'pretrain')


@pytest.fixture(scope='module')
def cfg2(fixture):
  return fx.model_config(fixture, 'distill')


def _assert_close(name, actual, expected):
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, f'{name}: shape {actual.shape} != {expected.shape}'
  err = np.abs(actual - expected)
  ok = (err <= TOL) | (err <= TOL * np.abs(expected))
  assert ok.all(), f'{name}: max abs err {err.max():.3g} (worst rel {np.max(err / (np.abs(expected) + 1e-30)):.3g})'
  return float(err.max()) if err.size else 0.0


def _compare_model_outputs(outputs, reference):
  flat = fx.flatten_outputs(outputs)
  keys = [k for k in reference if not k.startswith(_NOT_MODEL_OUTPUT_PREFIXES)]
  assert keys
  missing = [k for k in keys if k not in flat]
  assert not missing, f'model outputs lack fixture keys {missing}'
  return max(_assert_close(k, flat[k], reference[k]) for k in keys)


# ------------------------------------------------------------------------------------------------------------
# The mapping.


def _init_shapes(cfg, inputs):
  model = AMR(cfg)
  x = fx.model_inputs(inputs)
  shapes = jax.eval_shape(
      lambda: model.init({'params': jax.random.PRNGKey(0)}, x['src_vid'], x['src_vid_mask'], x['src_txt'],
                         x['src_txt_mask'], train=False))
  return {k: v.shape for k, v in traverse_util.flatten_dict(shapes['params']).items()}


@pytest.mark.parametrize('stage, params_key', [('stage1', 'params'), ('stage2', 'params_student'),
                                               ('stage2', 'params_teacher')])
def test_imported_tree_equals_init_tree(fixture, cfg1, cfg2, stage, params_key):
  cfg = cfg1 if stage == 'stage1' else cfg2
  imported = traverse_util.flatten_dict(torch_names.torch_to_flax(fixture[stage][params_key], cfg))
  init = _init_shapes(cfg, fixture[stage]['inputs'])
  assert set(imported) == set(init)
  for path, shape in init.items():
    assert imported[path].shape == shape, path


def test_table_matches_param_shapes_json(fixture, cfg1, cfg2):
  shapes = fixture['param_shapes']
  assert set(torch_names.aliases()) == set(shapes['aliases'])
  assert torch_names.aliases() == shapes['aliases']
  for cfg, key in ((cfg1, 'stage1'), (cfg2, 'stage2_student'), (cfg2, 'stage2_teacher')):
    assert set(torch_names.torch_names(cfg, include_aliases=True)) == set(shapes[key])
  assert set(torch_names.torch_names(cfg1)) == set(shapes['canonical_trainable_stage1'])
  assert set(torch_names.torch_names(cfg2)) == set(shapes['canonical_trainable_stage2_student'])


@pytest.mark.parametrize('stage, key, cfg_stage, with_aliases', [
    ('stage1', 'params', 'pretrain', True),
    ('stage1', 'params_after_step', 'pretrain', True),
    ('stage1', 'grads', 'pretrain', False),
    ('stage2', 'params_student', 'distill', True),
    ('stage2', 'params_teacher', 'distill', True),
    ('stage2', 'params_student_after_step', 'distill', True),
    ('stage2', 'grads', 'distill', False),
])
def test_round_trip_torch_flax_torch(fixture, stage, key, cfg_stage, with_aliases):
  cfg = fx.model_config(fixture, cfg_stage)
  state_dict = fixture[stage][key]
  back = torch_names.flax_to_torch(torch_names.torch_to_flax(state_dict, cfg), cfg,
                                   include_aliases=with_aliases)
  assert set(back) == set(state_dict)
  for name, value in state_dict.items():
    assert back[name].shape == value.shape, name
    np.testing.assert_array_equal(back[name], value, err_msg=name)


def test_mapping_rejects_unknown_missing_and_inconsistent_aliases(fixture, cfg1):
  params = dict(fixture['stage1']['params'])
  with pytest.raises(KeyError):
    torch_names.torch_to_flax({**params, 'bogus.weight': np.zeros(1)}, cfg1)
  partial = dict(params)
  del partial['transformer.decoder.norm.weight']
  with pytest.raises(KeyError):
    torch_names.torch_to_flax(partial, cfg1)
  # Alias only (no canonical spelling) is accepted.
  alias_only = {k: v for k, v in params.items() if k not in set(torch_names.aliases().values())}
  torch_names.torch_to_flax(alias_only, cfg1)
  broken = dict(params)
  broken['class_embed.bias'] = broken['class_embed.bias'] + 1.0
  with pytest.raises(ValueError):
    torch_names.torch_to_flax(broken, cfg1)


def test_in_proj_split_and_conv_squeeze(fixture, cfg1):
  params = fixture['stage1']['params']
  tree = torch_names.torch_to_flax(params, cfg1)
  d = cfg1.hidden_dim
  w = params['transformer.encoder.layers.1.self_attn.in_proj_weight']
  attn = tree['transformer']['encoder']['layers_1']['self_attn']
  np.testing.assert_array_equal(attn['k_proj']['kernel'], w[d:2 * d].T)
  np.testing.assert_array_equal(attn['v_proj']['bias'],
                                params['transformer.encoder.layers.1.self_attn.in_proj_bias'][2 * d:])
  conv = params['fuser.cq_attention.cqa_linear.conv1d.weight']
  np.testing.assert_array_equal(tree['fuser']['cq_attention']['cqa_linear']['kernel'], conv[:, :, 0].T)


# ------------------------------------------------------------------------------------------------------------
# Forward parity.


def test_stage1_forward_parity(fixture, cfg1):
  outputs = fx.run_model(cfg1, fx.flax_variables(fixture['stage1']['params'], cfg1), fixture['stage1']['inputs'])
  _compare_model_outputs(outputs, fixture['stage1']['outputs'])
  assert set(outputs) == {'pred_logits', 'pred_spans', 'iou_scores', 'pred_masks', 'aux_outputs',
                          'saliency_scores', 'video_mask', 'hs', 'hs_all', 'src_txt_ed', 'src_vid_ed',
                          'src_vid_cls_ed', 'src_txt_cls_ed', 'inter'}
  assert len(outputs['aux_outputs']) == cfg1.dec_layers - 1


def test_stage2_student_forward_parity(fixture, cfg2):
  stage2 = fixture['stage2']
  outputs = fx.run_model(cfg2, fx.flax_variables(stage2['params_student'], cfg2), stage2['inputs'])
  _compare_model_outputs(outputs, stage2['outputs'])
  assert 'decoder_pass1.layer_out_prenorm' in outputs['inter']
  q = cfg2.num_queries
  assert outputs['pred_logits'].shape[1] == 2 * q
  # At the start of stage 2 the two passes are twins (copied FFNs, shared anchors); XLA may fuse the two
  # passes differently, so they agree to float32 rounding rather than bit for bit.
  np.testing.assert_allclose(outputs['hs_all'][:, :, :q], outputs['hs_all'][:, :, q:], atol=1e-6, rtol=1e-6)


def test_stage2_teacher_hs_parity(fixture, cfg2):
  stage2 = fixture['stage2']
  outputs = fx.run_model(cfg2, fx.flax_variables(stage2['params_teacher'], cfg2), stage2['inputs'])
  _assert_close('teacher.hs', outputs['hs'], stage2['outputs']['teacher.hs'])
  if 'after_step_outputs' in stage2:
    _assert_close('teacher.hs (after step file)', outputs['hs'], stage2['after_step_outputs']['teacher.hs'])


def test_stage2_after_step_forward_parity(fixture, cfg2):
  stage2 = fixture['stage2']
  outputs = fx.run_model(cfg2, fx.flax_variables(stage2['params_student_after_step'], cfg2), stage2['inputs'])
  _compare_model_outputs(outputs, stage2['after_step_outputs'])


def test_jax_attention_implementation_matches(fixture, cfg1):
  cfg = cfg1.replace(attention_impl='jax')
  outputs = fx.run_model(cfg, fx.flax_variables(fixture['stage1']['params'], cfg), fixture['stage1']['inputs'])
  _compare_model_outputs(outputs, fixture['stage1']['outputs'])


def test_bf16_precision_runs_and_stays_close(fixture, cfg1):
  cfg = cfg1.replace(precision='bf16')
  outputs = fx.run_model(cfg, fx.flax_variables(fixture['stage1']['params'], cfg), fixture['stage1']['inputs'])
  reference = fixture['stage1']['outputs']
  for key in ('pred_spans', 'pred_masks', 'saliency_scores'):
    assert outputs[key].dtype == np.float32
    assert np.all(np.isfinite(outputs[key]))
    assert np.max(np.abs(outputs[key] - reference[key])) < 0.1, key


# ------------------------------------------------------------------------------------------------------------
# Sizes come from the config; dropout; which params get gradients.


def _random_batch(rng, batch, v_len, t_len, v_dim, t_dim):
  vid_lens = np.array([v_len] + list(rng.integers(1, v_len + 1, batch - 1)))
  txt_lens = np.array([t_len] + list(rng.integers(1, t_len + 1, batch - 1)))
  vid_mask = (np.arange(v_len)[None] < vid_lens[:, None]).astype(np.float32)
  txt_mask = (np.arange(t_len)[None] < txt_lens[:, None]).astype(np.float32)
  src_vid = rng.normal(size=(batch, v_len, v_dim)).astype(np.float32) * vid_mask[..., None]
  src_txt = rng.normal(size=(batch, t_len, t_dim)).astype(np.float32) * txt_mask[..., None]
  return src_vid, vid_mask, src_txt, txt_mask


def test_other_sizes_init_forward_and_dropout():
  cfg = AMRModelConfig(hidden_dim=24, nheads=3, dim_feedforward=40, t2v_layers=1, enc_layers=3, dec_layers=3,
                       num_queries=5, n_input_proj=3, max_q_l=6, stage='distill', v_feat_dim=7, t_feat_dim=9)
  batch, v_len, t_len = 2, 11, 6
  src_vid, vid_mask, src_txt, txt_mask = _random_batch(np.random.default_rng(0), batch, v_len, t_len, 7, 9)
  model = AMR(cfg)
  variables = model.init({'params': jax.random.PRNGKey(0)}, src_vid, vid_mask, src_txt, txt_mask, train=False)
  params = variables['params']
  np.testing.assert_allclose(params['logit_scale'], np.log(1 / 0.07), rtol=1e-6)
  np.testing.assert_array_equal(params['transformer']['decoder']['layers_0']['activation']['weight'], [0.25])
  np.testing.assert_array_equal(params['transformer']['decoder']['bbox_embed']['layers_2']['bias'], [0.0, 0.0])
  # The mapping covers the tree whatever the sizes.
  state_dict = torch_names.flax_to_torch(params, cfg, include_aliases=True)
  assert state_dict['fuser.cq_attention.cqa_linear.conv1d.weight'].shape == (24, 96, 1)
  assert state_dict['transformer.t2v_encoder.layers.0.self_attn.in_proj_weight'].shape == (72, 24)
  again = torch_names.torch_to_flax(state_dict, cfg)
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, params), again)

  def forward(params, rng, train):
    return model.apply({'params': params}, src_vid, vid_mask, src_txt, txt_mask, train=train,
                       rngs={'dropout': rng})

  apply = jax.jit(forward, static_argnums=2)
  # 'rbg' keys: the dropout graph compiles ~3x faster on CPU than with threefry.
  k1, k2 = jax.random.key(1, impl='rbg'), jax.random.key(2, impl='rbg')
  eval_out = apply(params, k1, False)
  q = 2 * cfg.num_queries
  assert eval_out['pred_logits'].shape == (batch, q, 2)
  assert eval_out['pred_spans'].shape == (batch, q, 2)
  assert eval_out['iou_scores'].shape == (batch, q, 1)
  assert eval_out['pred_masks'].shape == (batch, q, v_len)
  assert eval_out['hs'].shape == (cfg.dec_layers, batch, cfg.num_queries, cfg.hidden_dim)
  assert eval_out['hs_all'].shape == (cfg.dec_layers, batch, q, cfg.hidden_dim)
  assert eval_out['saliency_scores'].shape == (batch, v_len)
  assert len(eval_out['aux_outputs']) == cfg.dec_layers - 1
  assert eval_out['inter']['decoder_pass1.layer_out_prenorm'].shape == (cfg.dec_layers, batch, 5, 24)
  np.testing.assert_array_equal(eval_out['pred_logits'], apply(params, k2, False)['pred_logits'])
  train_a = apply(params, k1, True)['pred_logits']
  np.testing.assert_array_equal(train_a, apply(params, k1, True)['pred_logits'])
  assert not np.allclose(train_a, apply(params, k2, True)['pred_logits'])
  assert not np.allclose(train_a, eval_out['pred_logits'])


def test_folded_input_layernorm_matches_the_unfolded_one(monkeypatch):
  """Eval-mode LayerNorm->Linear folded into one matmul on the raw input: same numbers, also for inputs whose
  mean is large against their spread (where x W' - mean s cancels)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from amr_jax.ops import layers
  calls = []
  fold = layers.folded_layernorm_linear
  monkeypatch.setattr(layers, 'folded_layernorm_linear', lambda *a: calls.append(1) or fold(*a))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(3.0, 0.5, (4, 75, 600)), jnp.float32)  # mean = 6x the spread
  plain = layers.LinearLayer(32, dropout=0.5, relu=False)
  folded = layers.LinearLayer(32, dropout=0.5, relu=False, fold_eval_layernorm=True)
  params = plain.init(jax.random.key(0), x, train=False)
  params = jax.tree.map(lambda p: p + 0.1 * jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
  want = plain.apply(params, x, train=False)
  assert not calls
  got = folded.apply(params, x, train=False)
  assert calls == [1]  # the folded path ran
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5 * float(jnp.abs(want).max()))
  # Train mode (dropout between the two) never folds.
  rngs = {'dropout': jax.random.key(1)}
  np.testing.assert_array_equal(folded.apply(params, x, train=True, rngs=rngs),
                                plain.apply(params, x, train=True, rngs=rngs))
  assert calls == [1]
