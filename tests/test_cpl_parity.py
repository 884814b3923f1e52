"""CPL port: parity with the PyTorch fixture, fixed shapes, sharding, padding invariance, draws and switches.

The fixture is tests/fixtures/cpl_reference (copied from the team's shared fixtures; see its SOURCES.md).
"""
import dataclasses
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from amr_jax.projects.cpl import inference as inference_lib
from amr_jax.projects.cpl import losses as losses_lib
from amr_jax.projects.cpl import model as model_lib
from amr_jax.projects.cpl import optim as optim_lib
from amr_jax.projects.cpl import reference
from amr_jax.projects.cpl import torch_names
from configs import cpl as cpl_config

FIXTURE = pathlib.Path(__file__).resolve().parent / 'fixtures' / 'cpl_reference'

# A second tiny case: other widths, depths (1 + 1), K, clip and word counts, sigma divisors, dropout on. The
# wider Gaussians (sigma 3 / 1.5) keep its outputs well conditioned: XLA:CPU rounds a few ops differently per
# device shard (1 ulp), and CPL's narrow Gaussians amplify an ulp in a centre ~100x.
SMALL = model_lib.CPLModelConfig(frame_dim=12, word_dim=10, hidden_size=16, num_heads=2, num_layers1=1,
                                 num_layers2=1, num_props=3, vocab_size=23, max_epoch=10, sigma=3.0,
                                 neg_sigma_divisor=1.5, dropout=0.1, transformer_dropout=0.1)
SMALL_LOSS = losses_lib.CPLLossConfig()
B, F, W = 8, 20, 6
# LLVM -O0 halves XLA:CPU's compile time of the test-only programs (the checker keeps the default: its float32
# gradient sums are only as accurate as the fixture needs with the vectorised -O2 reductions).
FAST_COMPILE = {'xla_backend_optimization_level': 0}


def small_batch(seed: int = 0, num_words: int = W) -> dict:
  """Random batch of the SMALL case: sentence lengths 1..W, sample 2 has 6 padded clips, no masked_words."""
  rng = np.random.default_rng(seed)
  lengths = np.array([6, 1, 4, 5, 2, 6, 3, 4])
  words_mask = (np.arange(num_words)[None] < lengths[:, None]).astype(np.int32)
  frames_mask = np.ones((B, F), np.int32)
  frames_mask[2, F - 6:] = 0
  pos = rng.integers(1, 3, (B, num_words)).astype(np.float32)
  weights = np.where(words_mask, np.exp(pos), 0.0)
  return {
      'frames_feat': rng.normal(size=(B, F, SMALL.frame_dim)).astype(np.float32) * frames_mask[..., None],
      'frames_mask': frames_mask,
      'words_feat': (rng.normal(size=(B, num_words, SMALL.word_dim)) * words_mask[..., None]).astype(np.float32),
      'words_mask': words_mask,
      'words_id': (rng.integers(1, SMALL.vocab_size, (B, num_words)) * words_mask).astype(np.int32),
      'weights': (weights / weights.sum(1, keepdims=True)).astype(np.float32),
      'epoch': np.full((B,), 3, np.int32),
      'sample_valid': np.ones((B,), np.int32),
  }


@pytest.fixture(scope='module')
def fixture_results():
  return reference.check_fixture(str(FIXTURE))


@pytest.fixture(scope='module')
def small_setup():
  model = model_lib.CPL(SMALL)
  batch = small_batch()
  batch_in = dict(batch, masked_words=np.zeros((B, W), np.int32))
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(1), *model_lib.model_inputs(batch_in)))['params']
  rng = np.random.default_rng(1)   # random params without compiling init (LayerNorm scales around 1)
  params = jax.tree_util.tree_map_with_path(
      lambda path, s: jnp.asarray((1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0)
                                  + 0.2 * rng.normal(size=s.shape), jnp.float32), shapes)
  # Proposals spread around centres 0.5 and widths 0.6 (logit 0.4), not saturated at the 0.01 width clamp.
  params['fc_gauss'] = {'kernel': params['fc_gauss']['kernel'] * 0.25,
                        'bias': jnp.tile(jnp.array([0.0, 0.4]), SMALL.num_props)}
  traces = []

  def loss(p, b, rng):
    traces.append(1)
    total, aux = losses_lib.batch_loss(model, p, b, SMALL_LOSS, rng, train=True)
    return total, losses_lib.scalar_metrics(aux)

  grad_fn = jax.jit(jax.value_and_grad(loss, has_aux=True), compiler_options=FAST_COMPILE)
  return model, params, batch, grad_fn, traces


def test_checker_passes_on_fixture(fixture_results):
  text = reference.format_results(fixture_results)
  print(text)
  assert all(r.ok for r in fixture_results), text
  groups = {r.name.split('/', 1)[0] for r in fixture_results}
  assert {'outputs', 'losses', 'gradients', 'optimizer', 'step_from_ref_grads', 'params_after_step',
          'params_after_step2', 'inference', 'eval_rules'} <= groups
  # Every array of outputs.npz, grads.npz and both post-step files was compared.
  with np.load(FIXTURE / 'outputs.npz') as z:
    assert sum(r.name.startswith('outputs/') for r in fixture_results) == len(z.files)
  with np.load(FIXTURE / 'grads.npz') as z:
    assert sum(r.name.startswith('gradients/') and 'global_norm' not in r.name for r in fixture_results) == len(z.files)
  lines = text.splitlines()
  assert len(lines) == len(groups) and all(line.startswith(('OK', 'FAIL')) for line in lines)


def test_checker_reports_a_wrong_value(fixture_results):
  bad = reference.compare('outputs/x', np.array([1.0, 2.0]), np.array([1.0, 2.1]))
  text = reference.format_results(list(fixture_results[:3]) + [bad])
  assert not bad.ok and 'FAIL outputs' in text and 'x' in text


def test_second_case_fixed_shapes_and_epoch_does_not_recompile(small_setup):
  model, params, batch, grad_fn, traces = small_setup
  rng = jax.random.PRNGKey(5)
  (total, metrics), grads = grad_fn(params, batch, rng)
  later = dict(batch, epoch=np.full((B,), 9, np.int32))
  (total2, _), _ = grad_fn(params, later, rng)
  assert len(traces) == 1 and grad_fn._cache_size() == 1   # the epoch is data, not a static value
  assert np.isfinite(float(total)) and np.isfinite(float(total2)) and float(total) != float(total2)
  assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))
  assert set(metrics) >= {'L_rec', 'L_ivc', 'ivc.div_mean'}
  # Scanned decoder params: a leading layer axis of the configured depth.
  assert params['decoder1']['layers']['fc1']['kernel'].shape == (1, 16, 32)
  assert params['fc_gauss']['kernel'].shape == (16, 6)
  names = torch_names.flax_to_torch(params, SMALL)
  back = torch_names.torch_to_flax(names, SMALL)
  assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), b), params, back))


def test_eight_devices_match_one(small_setup):
  model, params, batch, grad_fn, _ = small_setup
  assert len(jax.devices()) == 8, 'conftest forces 8 host devices'
  rng = jax.random.PRNGKey(7)
  (total1, _), grads1 = grad_fn(params, batch, rng)
  mesh = Mesh(np.array(jax.devices()), ('data',))
  sharded = jax.device_put(batch, NamedSharding(mesh, P('data')))
  replicated = jax.device_put(params, NamedSharding(mesh, P()))
  (total8, _), grads8 = grad_fn(replicated, sharded, rng)
  assert abs(float(total8) - float(total1)) <= 1e-6 * max(1.0, abs(float(total1)))
  for a, b in zip(jax.tree.leaves(grads8), jax.tree.leaves(grads1)):
    a, b = np.asarray(a), np.asarray(b)
    assert np.max(np.abs(a - b)) <= 1e-6 * max(1.0, float(np.abs(b).max()))


def test_padding_invariance(small_setup):
  model, params, batch, grad_fn, _ = small_setup
  rng = jax.random.PRNGKey(5)
  # Padded clips (sample 2 has 6): their content changes nothing, loss and gradients included.
  (base_total, base), base_grads = grad_fn(params, batch, rng)
  noisy = dict(batch, frames_feat=batch['frames_feat'].copy())
  noisy['frames_feat'][2, F - 6:] = 100.0
  (noisy_total, noisy_metrics), noisy_grads = grad_fn(params, noisy, rng)
  assert float(noisy_total) == pytest.approx(float(base_total), rel=1e-6)
  for a, b in zip(jax.tree.leaves(noisy_grads), jax.tree.leaves(base_grads)):
    assert np.max(np.abs(np.asarray(a) - np.asarray(b))) <= 1e-6 * max(1.0, float(np.abs(np.asarray(b)).max()))
  # Empty word slots: the fixture batch with 3 more slots ranks, scores and windows its proposals as the fixture
  # does (decoder-2 key / target masks follow the real lengths and the batch maximum, not the padded width).
  fixture = reference.load_fixture(str(FIXTURE))
  model_cfg, loss_cfg, _ = reference.fixture_configs(fixture['config'])
  fixture_params = torch_names.torch_to_flax(fixture['params'], model_cfg)
  fixture_model = model_lib.CPL(model_cfg)
  extra = 3
  pad = lambda x: np.pad(x, [(0, 0), (0, extra)] + [(0, 0)] * (x.ndim - 2))  # noqa: E731
  padded = {k: (pad(v) if k in ('words_feat', 'words_mask', 'words_id', 'weights', 'masked_words') else v)
            for k, v in reference.fixture_batch(fixture['inputs'], epoch=0).items()}
  host = jax.jit(lambda p, b: inference_lib.eval_forward(fixture_model, p, b, loss_cfg),
                 compiler_options=FAST_COMPILE)(fixture_params, padded)
  for n, want in enumerate(fixture['inference']['queries']):
    np.testing.assert_allclose(np.asarray(host['nll'][n]), want['nll_per_proposal'], atol=1e-5)
    np.testing.assert_array_equal(np.asarray(host['rank_order'][n]), want['rank_order'])
    np.testing.assert_allclose(np.asarray(host['ranked_windows'][n]), want['ranked_windows_norm'], atol=1e-5)


def test_masked_word_draw():
  draw = jax.jit(model_lib.draw_masked_words)
  words_mask = jnp.asarray((np.arange(8)[None] < np.array([8, 5, 3, 1, 0, 7])[:, None]).astype(np.int32))
  weights = jnp.where(words_mask > 0, 1.0 / 8, 0.0)
  drawn = np.asarray(draw(jax.random.PRNGKey(0), words_mask, weights, jnp.arange(6)))
  np.testing.assert_array_equal(drawn.sum(1), [2, 1, 1, 1, 0, 2])            # max(len // 3, 1), none if empty
  assert not np.any(drawn * (1 - np.asarray(words_mask)))
  # A row's draw depends on its row id only (the same with the batch reversed and ids kept).
  rev = np.asarray(draw(jax.random.PRNGKey(0), words_mask[::-1], weights[::-1], jnp.arange(6)[::-1]))
  np.testing.assert_array_equal(rev[::-1], drawn)
  # Distribution: one of 3 words, the content word e times as likely per draw (softmax of POS weights 2, 1, 1).
  p = np.exp([2.0, 1.0, 1.0]) / np.exp([2.0, 1.0, 1.0]).sum()
  many_mask = jnp.ones((4000, 3), jnp.int32)
  many = np.asarray(draw(jax.random.PRNGKey(1), many_mask, jnp.broadcast_to(jnp.asarray(p, jnp.float32), (4000, 3)),
                          jnp.arange(4000)))
  assert abs(many[:, 0].mean() - p[0]) < 0.03
  # The numpy variant is the reference's call bit for bit.
  lengths, probs = np.array([6, 2]), np.array([[.3, .1, .1, .2, .2, .1], [.5, .5, 0, 0, 0, 0]])
  got = model_lib.draw_masked_words_numpy(np.random.RandomState(4), lengths, probs)
  rs = np.random.RandomState(4)
  want0 = rs.choice(np.arange(1, 7), 2, replace=False, p=probs[0])
  want1 = rs.choice(np.arange(1, 3), 1, replace=False, p=probs[1, :2])
  assert set(np.flatnonzero(got[0]) + 1) == set(want0) and set(np.flatnonzero(got[1]) + 1) == set(want1)


def test_static_tables_and_mask_rules():
  for n in list(range(8, 66)) + [200]:
    np.testing.assert_array_equal(model_lib.keep_indices(n, n // 4), model_lib.keep_indices(n, n // 4, 'exact'))
  np.testing.assert_array_equal(model_lib.keep_indices(48, 12), [0, 4, 8, 12, 17, 21, 25, 29, 34, 38, 42, 47])
  table = model_lib.word_position_table(9, 32)
  assert np.all(table[0] == 0) and np.isclose(table[1, 0], math.sin(1.0)) and np.isclose(table[1, 16], math.cos(1.0))
  assert np.isclose(table[1, 15], math.sin(math.exp(-15 * math.log(10000) / 15)))
  grid = jnp.asarray(model_lib.linspace_float32(0.0, 1.0, 12))
  c, w = jnp.array([[0.3, 0.91]]), jnp.array([[0.2, 0.3]])
  ref = model_lib.gaussian_mask(grid, c, w, 9.0)
  np.testing.assert_allclose(model_lib.gaussian_mask(grid, c, w, 9.0, normalisation='grid_max_stable'), ref,
                             atol=1e-6)
  assert float(jnp.max(ref[0, 0])) == 1.0
  # A coarse grid and a tiny width: the reference formula underflows to 0/0 (Q9), the stable one does not.
  coarse = jnp.asarray(model_lib.linspace_float32(0.0, 1.0, 3))
  assert np.isnan(np.asarray(model_lib.gaussian_mask(coarse, jnp.array([0.25]), jnp.array([0.0]), 9.0))).all()
  stable = np.asarray(model_lib.gaussian_mask(coarse, jnp.array([0.25]), jnp.array([0.0]), 9.0, 0.01,
                                              'grid_max_stable'))
  assert np.isfinite(stable).all() and stable.max() == 1.0
  # Decoder-2 target rules (Q12/Q13).
  words_mask = jnp.asarray([[1, 1, 1, 1], [1, 1, 0, 0]])
  np.testing.assert_array_equal(model_lib.decoder2_word_valid(words_mask, 4, 'batch_max'),
                                [[1, 1, 1, 1], [1, 1, 1, 0]])
  np.testing.assert_array_equal(model_lib.decoder2_word_valid(words_mask, 5, 'always'),
                                [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
  np.testing.assert_array_equal(model_lib.decoder2_word_valid(words_mask, 4, 'never'), [[1, 1, 1, 1], [1, 1, 0, 0]])
  # Padding rows do not count for the batch maximum.
  np.testing.assert_array_equal(
      model_lib.decoder2_word_valid(words_mask, 4, 'batch_max', jnp.asarray([0, 1])), [[1, 1, 0, 0], [1, 1, 0, 0]])
  # Negative schedule: 0 ** 0 = 1 (gamma 0 means full-strength negatives at every epoch, eval included).
  np.testing.assert_allclose(model_lib.negative_schedule_scale(jnp.array([0, 7, 40]), 30, 0.5),
                             [0.0, math.sqrt(7 / 30), 1.0], rtol=1e-6)
  np.testing.assert_array_equal(model_lib.negative_schedule_scale(jnp.array([0, 3]), 30, 0.0), [1.0, 1.0])


def test_optimizer_schedule_and_resume():
  schedule = optim_lib.inverse_sqrt_schedule(4e-4, 400, 1e-7)
  np.testing.assert_allclose([float(schedule(m)) for m in (0, 1, 399, 400, 401, 10000)],
                             [1e-7, 1.09975e-06, 3.9900025e-4, 4e-4, 4e-4 * math.sqrt(400 / 401), 8e-5], rtol=1e-6)
  tx = optim_lib.make_optimizer(cpl_config.get_config().optim, resume_num_updates=7)
  params = {'w': jnp.ones((3,))}
  state = tx.init(params)
  _, state = tx.update({'w': jnp.array([1.0, -2.0, 0.0])}, state, params)
  adam = state[-1]
  assert int(adam.count) == 1 and int(adam.num_updates) == 8
  reset = optim_lib.reset_adam_moments(state)[-1]
  assert int(reset.count) == 0 and int(reset.num_updates) == 8 and float(jnp.abs(reset.mu['w']).sum()) == 0.0
  np.testing.assert_allclose(float(optim_lib.current_lr(state, cpl_config.get_config().optim)), float(schedule(8)))


def test_inference_rules():
  iou = inference_lib.cpl_iou(np.float32([0.0, 0.0, 0.2]), np.float32([0.5, 0.5, 0.4]),
                              np.float32([0.5, 0.0, 0.6]), np.float32([1.0, 0.25, 0.8]))
  assert iou.dtype == np.float32 and 0 < iou[0] < 1e-9 and np.isclose(iou[1], 0.5) and iou[2] == 0
  windows = inference_lib.proposal_windows(jnp.array([[0.1, 0.9]]), jnp.array([[0.4, 0.4]]))
  np.testing.assert_allclose(windows, [[[0.0, 0.3], [0.7, 1.0]]], atol=1e-7)
  host = {'nll': np.array([[2.0, 1.0, 3.0]]), 'rank_order': np.array([[1, 0, 2]]),
          'center': np.array([[0.5, 0.3, 0.6]]), 'width': np.array([[0.2, 0.2, 0.6]]),
          'ranked_windows': np.float32([[[0.2, 0.4], [0.4, 0.6], [0.3, 0.9]]])}
  rows = inference_lib.prediction_rows(host, [10.0], top_k=2, top1_mode='vote', vote_weighting='uniform')
  row = rows[0]
  assert row['top1_loss']['proposal'] == 1 and len(row['top5_windows_sec']) == 2
  assert row['pred_windows_sec'][0] == row['top1_vote_activitynet']['window_sec']
  with pytest.raises(ValueError, match='vote_weighting'):
    inference_lib.prediction_rows(host, [10.0], vote_weighting='bad')


def test_configs_and_errors():
  c = cpl_config.get_config()
  assert (c.method, c.model.num_props, c.train.batch_size, c.data.max_num_words, c.data.max_num_frames) == \
      ('cpl', 8, 32, 20, 200)
  assert (c.optim.lr, c.optim.warmup_updates, c.optim.clip_norm, c.loss.lam, c.init.stage1_workdir) == \
      (4e-4, 400, 10.0, 0.146, '')
  model_cfg = model_lib.CPLModelConfig.from_config(c, {'frame_dim': 1024, 'word_dim': 300, 'vocab_size': 1112})
  assert model_cfg.num_props == 8 and model_cfg.hidden_size == 256 and model_cfg.end_target == 'batch_max'
  assert losses_lib.CPLLossConfig.from_config(cpl_config.get_config('activitynet')).alpha_2 == 0.1
  tiny = cpl_config.get_config('tiny')
  assert tiny.model.hidden_size == 32 and tiny.train.num_steps > 0
  with pytest.raises(ValueError, match='unknown config argument'):
    cpl_config.get_config('nope')
  with pytest.raises(ValueError, match='end_target.*keep_idx_rule'):
    model_lib.CPLModelConfig(end_target='x', keep_idx_rule='y')
  with pytest.raises(ValueError, match='missing'):
    torch_names.torch_to_flax({'mask_vec': np.zeros(3)}, SMALL)
  # A batch that does not fit the model: one error naming every problem.
  bad = dict(small_batch(), masked_words=np.ones((B, W), np.int32))
  bad['words_feat'] = bad['words_feat'][..., :4]
  bad['words_id'] = bad['words_id'] + 100
  with pytest.raises(ValueError) as err:
    model_lib.validate_batch(bad, SMALL, where='train batch 0')
  message = str(err.value)
  assert message.startswith('train batch 0: ') and '\n' not in message
  assert all(s in message for s in ('words_feat', 'words_id', 'masked_words'))
  model_lib.validate_batch(dict(small_batch(), masked_words=np.zeros((B, W), np.int32)), SMALL)


def test_every_alternative_switch_runs(small_setup):
  """All quirk switches flipped at once (one compile): finite loss, the expected shapes, the switch effects."""
  model, params, batch, _, _ = small_setup
  alt = dataclasses.replace(
      SMALL, pred_token_key_masked=False, causal_frames=False, causal_words=False, dropout_special_vectors=False,
      position_row0_zero=False, position_freq_half_minus_one=False, gauss_normalisation='grid_max_stable',
      neg_width_is_centre=False, detach_negative_masks=True, end_target='always', reference_downsampled=False,
      decoding2_from_projected_frames=False, gauss_params_interleaved=False, keep_idx_rule='exact')
  alt_loss = dataclasses.replace(SMALL_LOSS, smoothing_over_all_classes=False, negatives_at_kstar=False,
                                 ref_hinge_grad_to_ref=False, diversity_l1_normalise=False)
  alt_model = model_lib.CPL(alt)
  masked = np.zeros((B, W), np.int32)
  masked[:, 0] = 1
  run = jax.jit(lambda p, b: losses_lib.batch_loss(alt_model, p, b, alt_loss, None, train=False),
                compiler_options=FAST_COMPILE)
  total, aux = run(params, dict(batch, masked_words=masked))
  assert np.isfinite(float(total))
  assert aux['nll_tok.pos'].shape == (B, SMALL.num_props, W + 1)                      # 'always': W + 1 slots
  lengths = batch['words_mask'].sum(1)
  np.testing.assert_array_equal(np.asarray(aux['nll.num_target_tokens']), lengths + 1)  # every sentence ends
  # 'analytic' Gaussians peak at c itself (below 1 on the grid unless c is a grid point).
  grid = jnp.asarray(model_lib.linspace_float32(0.0, 1.0, 5))
  analytic = model_lib.gaussian_mask(grid, jnp.array([0.1]), jnp.array([0.9]), 9.0, normalisation='analytic')
  assert float(analytic.max()) < 1.0
