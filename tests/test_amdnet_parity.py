"""AMDNet port: parity with the PyTorch fixture (tests/fixtures/amdnet_reference), other sizes with fixed shapes,
8 simulated devices = 1 device, and padding invariance (padded frames / caption slots / video rows change nothing)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from amr_jax.projects.amdnet import losses as loss_lib
from amr_jax.projects.amdnet import model as model_lib
from amr_jax.projects.amdnet import optim as optim_lib
from amr_jax.projects.amdnet import reference
from amr_jax.projects.amdnet import torch_names

FIXTURE_DIR = os.path.join(os.path.dirname(__file__), 'fixtures', 'amdnet_reference')

# A second tiny case with other sizes than the fixture: d 24, 3 heads = 3 moments, 6 clips (not a power of two),
# 7-d frames, 5-d sentences.
SMALL = model_lib.AMDNetConfig(video_dim=7, text_dim=5, hidden_size=24, n_heads=3, event_size=3, map_size=6,
                               max_ctx_l=10, input_drop=0.2, drop=0.2)
LOSS = loss_lib.AMDNetLossConfig()


# ----------------------------------------------------------------------------------------------------
# The fixture
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def results():
  return reference.check_fixture(FIXTURE_DIR)


def test_checker_passes_on_fixture(results):
  text = reference.format_results(results)
  assert reference.all_ok(results), text + '\n' + '\n'.join(str(r) for r in results if not r.ok)
  assert text.count('\n') + 1 == len({r.name.split('/', 1)[0] for r in results})


def test_every_fixture_array_is_checked(results):
  names = {r.name for r in results}
  with np.load(os.path.join(FIXTURE_DIR, 'outputs.npz')) as outputs:
    for key in outputs.files:
      mode, short = key.split('.', 1)
      group = 'val_path' if short.startswith('val_path.') else (
          'losses' if short.startswith(('loss', 'nce.', 'div.', 'rel.')) else 'forward')
      name = f'{mode} {group}/{short.split(".", 1)[1] if group == "val_path" else short}'
      assert name in names, key
  for file_name, group in (('grads.npz', 'gradients'), ('params_after_step.npz', 'post-step params'),
                           ('params_after_step.npz', 'post-step params (own grads)'),
                           ('opt_state_after_step.npz', 'optimiser state')):
    with np.load(os.path.join(FIXTURE_DIR, file_name)) as data:
      for key in data.files:
        assert f'{group}/{key}' in names, (group, key)
  assert {'eval model_case/scores', 'eval model_case/clip_video_features', 'losses.json/loss_total'} <= names


def test_torch_names_round_trip_and_decay_groups():
  with np.load(os.path.join(FIXTURE_DIR, 'params.npz')) as data:
    state = {k: data[k] for k in data.files}
  tree = torch_names.torch_to_flax(state)
  back = torch_names.flax_to_torch(tree)
  assert list(back) == [name for name, _, _ in torch_names.name_table()]
  assert all(np.array_equal(back[k], state[k]) for k in state)
  with pytest.raises(ValueError, match='missing'):
    torch_names.torch_to_flax({k: v for k, v in state.items() if 'fc_gauss' not in k})
  # Quirk 17 off: the lowercase clip2video.layernorm.weight leaves the decay group too.
  decayed = torch_names.flax_to_torch(optim_lib.decay_mask(tree, decay_lowercase_layernorm=False))
  assert not decayed['clip_encoder.clip2video.layernorm.weight']
  assert decayed['clip_encoder.clip2video.fc_out1.weight'] and not decayed['clip_encoder.fc_gauss.bias']


# ----------------------------------------------------------------------------------------------------
# Synthetic batches
# ----------------------------------------------------------------------------------------------------
def make_batch(seed, cfg, frame_counts, caption_counts, frame_slots, caption_slots, video_rows=None, fill=0.0):
  """Random raw frames / sentence vectors, padded to fixed slots; padding (frames, caption slots and the rows past
  len(frame_counts)) holds `fill`."""
  rng = np.random.RandomState(seed)
  rows = video_rows or len(frame_counts)
  batch = {
      'video_feat': np.full((rows, frame_slots, cfg.video_dim), fill, np.float32),
      'video_mask': np.zeros((rows, frame_slots), np.float32),
      'caption_feat': np.full((rows, caption_slots, cfg.text_dim), fill, np.float32),
      'caption_mask': np.zeros((rows, caption_slots), np.float32),
      'sample_valid': np.zeros((rows,), np.float32),
  }
  for b, (frames, captions) in enumerate(zip(frame_counts, caption_counts)):
    batch['video_feat'][b, :frames] = rng.randn(frames, cfg.video_dim)
    batch['video_mask'][b, :frames] = 1.0
    batch['caption_feat'][b, :captions] = rng.randn(captions, cfg.text_dim)
    batch['caption_mask'][b, :captions] = 1.0
    batch['sample_valid'][b] = 1.0
  return batch


def perturbed_params(cfg, seed=0, wide_moments=False):
  """Random weights by the fixture's perturbation rule (tiny_config.json PERTURB): LayerNorm scale 1 + 0.1 N,
  biases 0.1 N, position table 0.5 N, kernels N / sqrt(fan_in), fc_gauss centre columns x2 and width columns x0.7
  (widths stay well above the 0.01 clamp).

  wide_moments: width logits = 1 + 0.3 x (rule), so w ~ 0.6-0.8 and sigma ~ 0.08: a well-conditioned case. With
  the rule's narrower masks the mask gradients carry 1/sigma^2 factors (~1e3-1e4) that amplify float32 rounding."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(model_lib.param_shapes(cfg))
  rng = np.random.RandomState(seed)
  leaves = []
  for path, leaf in flat:
    names = [p.key for p in path]
    noise = rng.randn(*leaf.shape)
    if names[-2].lower() == 'layernorm' and names[-1] == 'scale':
      leaves.append(1.0 + 0.1 * noise)
    elif names[-1] == 'bias':
      leaves.append(0.1 * noise)
    elif names[-1] == 'position_embeddings':
      leaves.append(0.5 * noise)
    else:
      scaled = noise / np.sqrt(leaf.shape[0])
      if names[-2] == 'fc_gauss':
        scaled = scaled * np.where(np.arange(leaf.shape[1]) % 2 == 0, 2.0, 0.3 if wide_moments else 0.7)[None, :]
      leaves.append(scaled)
    if wide_moments and names[-2] == 'fc_gauss' and names[-1] == 'bias':
      leaves[-1] = np.where(np.arange(leaf.shape[0]) % 2 == 1, 1.0, leaves[-1])
  return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(x, jnp.float32) for x in leaves])


DETERMINISTIC = SMALL.replace(input_drop=0.0, drop=0.0)
# 6 real videos (+ 2 padded rows), up to 3 captions and 12 frames each, in 17 frame and 5 caption slots.
FRAMES, CAPTIONS = [12, 3, 7, 9, 1, 10], [3, 1, 2, 3, 2, 1]
PADDED = dict(frame_slots=17, caption_slots=5, video_rows=8)


def _deterministic_loss(p, b):
  return loss_lib.batch_loss(p, b, None, DETERMINISTIC, LOSS, train=False)


@pytest.fixture(scope='module')
def deterministic_loss():
  """jit(value_and_grad) of the eval-mode loss of the SMALL case on one device; one compile per padded shape."""
  return jax.jit(jax.value_and_grad(_deterministic_loss, has_aux=True))


def test_other_sizes_run_with_fixed_shapes(deterministic_loss):
  params = perturbed_params(SMALL)
  shapes = jax.tree.map(lambda x: x.shape, params)
  assert shapes['clip_pos_embed']['position_embeddings'] == (10, 24)
  assert shapes['clip_encoder']['fc_gauss']['kernel'] == (24, 6)
  first = make_batch(1, SMALL, FRAMES, CAPTIONS, **PADDED)
  second = make_batch(2, SMALL, [2, 17, 6, 5, 1, 3, 8], [5, 1, 4, 3, 2, 2, 1], **PADDED)
  for batch in (first, second):
    (total, aux), grads = deterministic_loss(params, batch)
    assert np.isfinite(float(total)) and float(aux['loss/total']) == float(total)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  assert deterministic_loss._cache_size() == 1  # other frame / caption / video counts, same padded shapes

  model = model_lib.AMDNet(SMALL)
  out = jax.eval_shape(lambda p, b: model.apply({'params': p}, b['video_feat'], b['video_mask'], b['caption_feat'],
                                                b['caption_mask'], train=False), params, first)
  expect = {'clip_feat': (8, 6, 7), 'V': (8, 6, 24), 'global_vec': (8, 24), 'gauss_logits': (8, 6),
            'gauss_masks': (8, 3, 6), 'moment_feat': (8, 3, 24), 'attn1.logits_masked': (8, 3, 6, 6),
            'clip_tokens': (8, 6, 24), 'query_emb': (8, 5, 24), 'query_emb_first_call': (8, 5, 24)}
  assert {k: out[k].shape for k in expect} == expect
  queries = jax.eval_shape(lambda p, t: model.apply({'params': p}, t, method=model_lib.AMDNet.encode_queries),
                           params, jnp.zeros((11, 5)))
  assert queries.shape == (11, 24)
  assert jax.eval_shape(model_lib.score, queries, out['clip_tokens']).shape == (11, 8)

  # Train mode with dropout (both query-projection calls): finite, rng-dependent, and deterministic per rng.
  train_loss = jax.jit(lambda p, b, r: loss_lib.batch_loss(p, b, r, SMALL, LOSS, train=True)[0])
  losses = [float(train_loss(params, first, jax.random.PRNGKey(k))) for k in (0, 0, 1)]
  assert np.isfinite(losses).all() and losses[0] == losses[1] != losses[2]


def _repo_average(frames, num_clips):
  """The repo's `average_to_fixed_length` loop on one video, float32 (test oracle)."""
  count = len(frames)
  idx = np.arange(num_clips + 1, dtype=np.float32) / np.float32(num_clips) * np.float32(count)
  idx = np.minimum(np.round(idx).astype(np.int64), count - 1)
  return np.stack([frames[s:e].mean(0) if s < e else frames[s] for s, e in zip(idx[:-1], idx[1:])])


@pytest.mark.parametrize('num_clips', [6, 8])
def test_clip_pooling_matches_the_repo_loop(num_clips):
  counts = [1, 2, 5, 6, 7, 8, 12, 13, 30]
  rng = np.random.RandomState(num_clips)
  frames = rng.randn(len(counts), 33, 4).astype(np.float32)
  mask = (np.arange(33)[None] < np.asarray(counts)[:, None]).astype(np.float32)
  got = np.asarray(jax.jit(lambda f, m: model_lib.average_to_fixed_length(f, m, num_clips))(
      np.where(mask[..., None] > 0, frames, np.nan), mask))
  for b, count in enumerate(counts):
    np.testing.assert_allclose(got[b], _repo_average(frames[b, :count], num_clips), rtol=1e-6, atol=1e-6)
  exact = counts.index(num_clips)  # N frames pool to themselves: a loader may pass pre-pooled clips
  np.testing.assert_array_equal(got[exact], frames[exact, :num_clips])


def test_quirk_switches_of_the_masks():
  def masks(**switches):
    cfg = model_lib.AMDNetConfig(map_size=8, **switches)
    centres = jnp.array([[0.5, 1 / 14]])  # the second centre sits half-way between two clips
    widths = jnp.array([[0.3, 0.005]])   # ... with its width clamped to 0.01: every clip underflows
    return np.asarray(model_lib.gaussian_moment_masks(centres, widths, model_lib.clip_positions(cfg), cfg))

  repo, guarded = masks(), masks(mask_nan_guard=True)
  assert np.isnan(repo[0, 1]).all() and np.isfinite(repo[0, 0]).all()      # quirk 5: 0/0
  assert np.isfinite(guarded).all() and np.allclose(guarded.max(-1), 1.0)
  np.testing.assert_allclose(guarded[0, 0], repo[0, 0], atol=1e-6)
  assert repo[0, 0].max() == 1.0                                           # quirk 4: peak 1
  np.testing.assert_allclose(masks(mask_norm='sum')[0, 0].sum(), 1.0, rtol=1e-6)
  grid = model_lib.clip_positions(model_lib.AMDNetConfig(map_size=8))
  np.testing.assert_allclose(grid, np.arange(8) / 7, atol=1e-7)            # quirk 6: linspace
  np.testing.assert_allclose(model_lib.clip_positions(model_lib.AMDNetConfig(map_size=8, t_grid='centers')),
                             (np.arange(8) + 0.5) / 8, atol=1e-7)
  with pytest.raises(ValueError, match='n_heads=3 must equal event_size=4'):
    model_lib.AMDNetConfig(n_heads=3)


def test_every_quirk_alternative_runs():
  """All alternatives of the model / optimiser switches at once: a finite train-mode loss that differs from the
  repo's, and a BertAdam-free ('adamw') step that moves the weights at step 0."""
  alternative = SMALL.replace(clip_avg='inclusive', moment_mask='log_add', mask_norm='sum', mask_nan_guard=True,
                              t_grid='centers', moment_pool='mean', share_query_dropout=True, score_mode='moment')
  params = perturbed_params(SMALL, seed=5)
  batch = make_batch(6, SMALL, FRAMES, CAPTIONS, **PADDED)
  losses = {}
  for name, cfg in (('repo', SMALL), ('alternative', alternative)):
    fn = jax.jit(lambda p, b, r, cfg=cfg: loss_lib.batch_loss(p, b, r, cfg, LOSS, train=True)[0])
    losses[name] = float(fn(params, batch, jax.random.PRNGKey(0)))
  assert np.isfinite(list(losses.values())).all() and losses['repo'] != losses['alternative']
  optim_cfg = dict(lr=3e-4, warmup_proportion=0.01, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-6,
                   max_grad_norm=1.0)
  grads = jax.tree.map(jnp.ones_like, params)
  for kind, moves in (('bertadam_repo', False), ('adamw', True)):
    tx = optim_lib.make_optimizer(optim_cfg, {'optimizer': kind}, t_total=100)
    updates, _ = jax.jit(tx.update)(grads, jax.jit(tx.init)(params), params)
    assert any(bool(jnp.any(u != 0)) for u in jax.tree.leaves(updates)) == moves, kind
  with pytest.raises(ValueError, match='quirks.optimizer'):
    optim_lib.make_optimizer(optim_cfg, {'optimizer': 'sgd'}, t_total=100)


# ----------------------------------------------------------------------------------------------------
# Sharding and padding
# ----------------------------------------------------------------------------------------------------
def _assert_same(one, other, tol):
  """(loss, grads) pairs: the loss to `tol` relative, each gradient tensor to `tol` x max(1, its max |g|)."""
  assert abs(one[0] - other[0]) <= tol * abs(one[0]), (one[0], other[0])
  for path, a in jax.tree_util.tree_flatten_with_path(one[1])[0]:
    b = other[1]
    for key in path:
      b = b[key.key]
    assert np.abs(a - b).max() <= tol * max(1.0, float(np.abs(a).max())), (jax.tree_util.keystr(path),
                                                                             np.abs(a - b).max())


@pytest.fixture(scope='module')
def padded_case(deterministic_loss):
  """(params, batch, (loss, grads) on one device) of the 8-row padded SMALL batch (mask widths ~0.6-0.8)."""
  params = perturbed_params(SMALL, seed=3, wide_moments=True)
  batch = make_batch(4, SMALL, FRAMES, CAPTIONS, **PADDED)
  (loss, _), grads = jax.device_get(deterministic_loss(params, batch))
  return params, batch, (float(loss), grads)


def test_eight_devices_give_the_one_device_loss_and_gradients(padded_case):
  """The global-batch loss under jit with a batch-sharded NamedSharding over 8 devices (XLA forms the cross-device
  caption x video scores): the loss to 1e-6 of the 1-device value, every gradient to 1e-5 of its scale.

  1e-6 is out of reach for the gradients: the per-device XLA programs already round the per-video forward
  differently from the single-device one (clip_proj differs by 1 ulp: another dot kernel for [6, 7] x [7, 24]
  than for [48, 7] x [7, 24]), and the Gaussian-mask path amplifies that by ~1/sigma^2 (measured worst 7e-7 -
  2e-6 of the scale here, 4e-5 with the fixture's narrower masks)."""
  assert len(jax.devices()) >= 8, 'conftest forces 8 host devices'
  params, batch, one = padded_case
  mesh = Mesh(np.asarray(jax.devices()[:8]), ('data',))
  replicated, sharded = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec('data'))
  fn = jax.jit(jax.value_and_grad(_deterministic_loss, has_aux=True), in_shardings=(replicated, sharded),
               out_shardings=replicated)
  (loss, _), grads = jax.device_get(fn(jax.device_put(params, replicated), jax.device_put(batch, sharded)))
  assert abs(one[0] - float(loss)) <= 1e-6 * abs(one[0]), (one[0], float(loss))
  _assert_same(one, (float(loss), grads), 1e-5)


def test_padding_values_change_nothing(deterministic_loss, padded_case):
  """NaN / huge values in padded frames, caption slots and video rows: bit-identical loss and gradients."""
  params, _, one = padded_case
  garbage = make_batch(4, SMALL, FRAMES, CAPTIONS, fill=np.nan, **PADDED)
  garbage['video_feat'][6] = 1e4
  (loss, _), grads = jax.device_get(deterministic_loss(params, garbage))
  assert float(loss) == one[0]
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(one[1])))


def test_padding_amount_changes_nothing(deterministic_loss, padded_case):
  """Fewer slots (no padded frames, caption slots or video rows) give the same loss and gradients."""
  params, _, one = padded_case
  tight = make_batch(4, SMALL, FRAMES, CAPTIONS, frame_slots=max(FRAMES), caption_slots=max(CAPTIONS))
  (loss, _), grads = jax.device_get(deterministic_loss(params, tight))
  assert abs(float(loss) - one[0]) <= 1e-6 * abs(one[0])
  _assert_same(one, (float(loss), grads), 1e-5)  # other shapes: other kernels (see the 8-device test)
