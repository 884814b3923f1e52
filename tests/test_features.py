"""Tests of the feature stores: both official layouts, normalisation before reshape, length alignment, errors.

Stores are written by hand here so every expected value can be computed independently.
"""
import os

import numpy as np
import pytest

from amr_jax.data import features
from amr_jax.data.features import FeatureError, FeatureStore


def _norm(x):
  x = np.asarray(x, np.float32)
  return x / (np.sqrt((x * x).sum(-1, keepdims=True)) + 1e-5)


def _qvh_store(root, rng, vid="vidA", qid=3, sf_len=80, clip_len=77, suffix=""):
  os.makedirs(root / f"slowfast_features{suffix}", exist_ok=True)
  os.makedirs(root / f"clip_b32_vid_k4{suffix}", exist_ok=True)
  os.makedirs(root / "clip_b32_txt_k4", exist_ok=True)
  slowfast = rng.normal(size=(sf_len, 6)).astype(np.float32)     # [L, Dsf]
  clip = rng.normal(size=(clip_len, 4, 5)).astype(np.float16)    # [L, 4, Dc]
  text = rng.normal(size=(9, 4, 3)).astype(np.float32)           # [Ntok, 4, Dt]
  np.savez(root / f"slowfast_features{suffix}" / f"{vid}.npz", features=slowfast)
  np.save(root / f"clip_b32_vid_k4{suffix}" / f"{vid}.npy", clip)
  np.save(root / "clip_b32_txt_k4" / f"{qid}.npy", text)
  return slowfast, clip, text


def test_qvh_layout_normalises_before_reshape_and_aligns(tmp_path):
  rng = np.random.default_rng(0)
  slowfast, clip, text = _qvh_store(tmp_path, rng)
  store = FeatureStore(str(tmp_path))
  assert store.layout.name == "qvh"
  video = store.video("vidA")
  assert video.dtype == np.float32 and video.shape == (75, 6 + 20)   # SlowFast cut to 75, CLIP to the min
  expected = np.concatenate([_norm(slowfast[:75]), _norm(clip[:75]).reshape(75, 20)], axis=1)
  np.testing.assert_allclose(video, expected, rtol=1e-6, atol=1e-6)
  # Each 5-d CLIP layer vector has unit norm (not the 20-d row).
  np.testing.assert_allclose(np.linalg.norm(video[:, 6:11], axis=1), 1.0, atol=1e-4)
  q = store.text(3)
  assert q.shape == (9, 12)
  np.testing.assert_allclose(q, _norm(text).reshape(9, 12), rtol=1e-6, atol=1e-6)
  assert store.video_dim == 26 and store.text_dim == 12
  assert store.has_video("vidA") and not store.has_video("nope") and store.has_text(3) and not store.has_text(4)
  assert store.video_path("vidA") == [str(tmp_path / "slowfast_features" / "vidA.npz"),
                                      str(tmp_path / "clip_b32_vid_k4" / "vidA.npy")]
  assert store.text_path(3) == [str(tmp_path / "clip_b32_txt_k4" / "3.npy")]


def test_short_clip_part_sets_the_length(tmp_path):
  _qvh_store(tmp_path, np.random.default_rng(1), sf_len=40, clip_len=38)
  assert FeatureStore(str(tmp_path)).video("vidA").shape == (38, 26)


def test_aug_suffix(tmp_path):
  rng = np.random.default_rng(2)
  _qvh_store(tmp_path, rng)
  slowfast, _, _ = _qvh_store(tmp_path, rng, vid="vidA_aug_3", suffix="_aug")
  store = FeatureStore(str(tmp_path), video_suffix="_aug")
  assert store.video_path("vidA_aug_3")[0].endswith(os.path.join("slowfast_features_aug", "vidA_aug_3.npz"))
  np.testing.assert_allclose(store.video("vidA_aug_3")[:, :6], _norm(slowfast[:75]), atol=1e-6)
  assert store.text(3).shape == (9, 12)


def test_lighthouse_layout(tmp_path):
  rng = np.random.default_rng(3)
  for name in ("clip_features", "slowfast_features", "clip_text_features"):
    os.makedirs(tmp_path / name)
  clip = rng.normal(size=(90, 7)).astype(np.float32)
  slowfast = rng.normal(size=(88, 4)).astype(np.float32)
  text = rng.normal(size=(11, 7)).astype(np.float32)
  np.savez(tmp_path / "clip_features" / "v1.npz", pooler_output=clip)
  np.savez(tmp_path / "slowfast_features" / "v1.npz", features=slowfast)
  np.savez(tmp_path / "clip_text_features" / "qid42.npz", last_hidden_state=text)
  store = FeatureStore(str(tmp_path))
  assert store.layout.name == "lighthouse"
  video = store.video("v1")
  assert video.shape == (75, 11)
  np.testing.assert_allclose(video, np.concatenate([_norm(slowfast[:75]), _norm(clip[:75])], 1), atol=1e-6)
  np.testing.assert_allclose(store.text(42), _norm(text), atol=1e-6)
  assert (store.video_dim, store.text_dim) == (11, 7)
  # The other CLIP key and a CLIP-only store also work.
  np.savez(tmp_path / "clip_features" / "v2.npz", features=clip[:10])
  np.savez(tmp_path / "slowfast_features" / "v2.npz", features=slowfast[:10])
  assert store.video("v2").shape == (10, 11)


def test_cache_returns_the_same_array(tmp_path):
  _qvh_store(tmp_path, np.random.default_rng(4))
  store = FeatureStore(str(tmp_path), cache=True)
  assert store.video("vidA") is store.video("vidA")
  assert store.text(3) is store.text(3)


def test_errors(tmp_path):
  rng = np.random.default_rng(5)
  _qvh_store(tmp_path, rng)
  store = FeatureStore(str(tmp_path))
  with pytest.raises(FeatureError, match=r"nope.npz: field=slowfast: missing file"):
    store.video("nope")
  np.save(tmp_path / "clip_b32_txt_k4" / "8.npy", np.zeros((9, 12), np.float32))
  with pytest.raises(FeatureError, match=r"8.npy: field=text: wrong rank"):
    store.text(8)
  np.savez(tmp_path / "slowfast_features" / "badkey.npz", other=np.zeros((3, 6)))
  with pytest.raises(FeatureError, match=r"badkey.npz: field=features: no key features"):
    store.video("badkey")
  (tmp_path / "clip_b32_txt_k4" / "9.npy").write_bytes(b"not a numpy file")
  with pytest.raises(FeatureError, match=r"9.npy: field=text: unreadable"):
    store.text(9)
  with pytest.raises(FeatureError, match="no known feature layout"):
    FeatureStore(str(tmp_path / "clip_b32_txt_k4"))
  with pytest.raises(FeatureError, match="does not exist"):
    FeatureStore(str(tmp_path / "missing"))
  os.rename(tmp_path / "slowfast_features", tmp_path / "sf_moved")
  with pytest.raises(FeatureError, match="slowfast_features: field=slowfast: feature directory is missing"):
    FeatureStore(str(tmp_path))


def test_l2_normalize_eps():
  x = np.array([[3.0, 4.0], [0.0, 0.0]])
  np.testing.assert_allclose(features.l2_normalize(x), [[3 / (5 + 1e-5), 4 / (5 + 1e-5)], [0, 0]], rtol=1e-6)
