"""The ArrayRecord feature source: exact round trip, corrupt / missing shards named at start-up, identical batches,
resumable conversion, validation through `validate.validate`, and the launch script's one-line errors.

Tiny planted stores built from the shipped QVH annotations (no fixture files needed).
"""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from amr_jax.data import annotations, array_store, convert_store, features, planted, validate
from amr_jax.projects.amr import augment
from data_pipelines import batches
from data_pipelines import stream_cache
from data_pipelines.examples import PadSpec

ROOT = pathlib.Path(__file__).resolve().parents[1]
QVH = ROOT / 'data' / 'annotations' / 'qvhighlights'
SHARD_BYTES = 60_000     # tiny dims: ~4 videos or ~20 texts per shard, several shards of each kind


@pytest.fixture(scope='module')
def source(tmp_path_factory):
  """(records, planted source dir): 40 train + 16 val queries at tiny dims."""
  records = (annotations.load_annotations(QVH / 'highlight_train_release.jsonl')[:40]
             + annotations.load_annotations(QVH / 'highlight_val_release.jsonl')[:16])
  out = tmp_path_factory.mktemp('src')
  planted.write_planted_store(records, str(out), seed=0, dims='tiny')
  return records, str(out)


@pytest.fixture(scope='module')
def converted(source, tmp_path_factory):
  records, src = source
  out = str(tmp_path_factory.mktemp('ar') / 'store')
  manifest = convert_store.convert(src, records, out, shard_bytes=SHARD_BYTES, progress=False)
  return out, manifest


def _shard_digests(out):
  manifest = array_store.load_manifest(out)
  return [(s['file'], s['sha256']) for s in manifest['shards']], manifest['index']['sha256']


def test_round_trip_is_exact(source, converted):
  records, src = source
  out, manifest = converted
  kinds = [s['kind'] for s in manifest['shards']]
  assert kinds.count('video') >= 3 and kinds.count('text') >= 2
  assert manifest['num_videos'] == len({r.vid for r in records})
  assert manifest['num_texts'] == len({r.qid for r in records})
  assert manifest['skipped'] == []
  assert convert_store.verify(out, deep=True) == []
  for max_v_l in (75, 10, 10**9):     # the store keeps every clip; the cut on read equals the source's cut
    original = features.FeatureStore(src, max_v_l=max_v_l)
    store = array_store.ArrayStore(out, max_v_l=max_v_l)
    assert (store.video_dim, store.text_dim) == (original.video_dim, original.text_dim)
    assert store.describe_width('video') == original.describe_width('video')
    for r in records:
      for mine, theirs in ((store.video(r.vid), original.video(r.vid)), (store.text(r.qid), original.text(r.qid))):
        assert mine.dtype == theirs.dtype == np.float32 and mine.shape == theirs.shape
        assert mine.tobytes() == theirs.tobytes()
      assert store.video_length(r.vid) == len(original.video(r.vid))
    store.close()


def test_lru_stays_within_its_budget(source, converted):
  records, _ = source
  out, _ = converted
  store = array_store.ArrayStore(out, verify='size', cache_bytes=20_000)
  for r in records:
    store.video(r.vid)
    store.text(r.qid)
    assert store.cache.nbytes <= 20_000
  stats = store.cache.stats()
  assert stats['evictions'] > 0 and stats['misses'] > 0
  store.video(records[-1].vid)
  assert store.cache.stats()['hits'] == stats['hits'] + 1


def _corrupt_copy(out, tmp_path):
  """A copy of the store with bytes flipped in the middle of its second video shard; (copy, shard file)."""
  copy = tmp_path / 'corrupt'
  copy.mkdir()
  for name in os.listdir(out):
    (copy / name).write_bytes((pathlib.Path(out) / name).read_bytes())
  shard = array_store.load_manifest(str(copy))['shards'][1]
  assert shard['kind'] == 'video'
  path = copy / shard['file']
  data = bytearray(path.read_bytes())
  middle = len(data) // 2
  data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
  path.write_bytes(bytes(data))
  return str(copy), shard


def test_corrupt_shard_is_named_at_start_up(converted, tmp_path):
  out, _ = converted
  copy, shard = _corrupt_copy(out, tmp_path)
  path = os.path.join(copy, shard['file'])
  found = array_store.sha256_file(path)
  with pytest.raises(features.FeatureError) as err:
    array_store.ArrayStore(copy)
  message = str(err.value)
  assert '\n' not in message
  assert message.startswith(path + ': field=sha256: corrupt shard')
  assert f"expected sha256 {shard['sha256']}, found {found}" in message
  # Lazy verification: the shard is named by the first read that touches it; other shards still read.
  lazy = array_store.ArrayStore(copy, verify='lazy')
  index = json.loads(pathlib.Path(copy, 'index.json').read_text())
  bad_vid = next(v for v, s, *_ in index['video'] if s == 1)
  good_vid = next(v for v, s, *_ in index['video'] if s == 0)
  lazy.video(good_vid)
  with pytest.raises(features.FeatureError, match=f'{shard["file"]}: field=sha256: corrupt shard'):
    lazy.video(bad_vid)
  problems = convert_store.verify(copy)
  assert len(problems) == 1 and shard['file'] in problems[0] and found in problems[0]


def test_missing_or_truncated_shard_is_named_even_without_checksums(converted, tmp_path):
  out, manifest = converted
  copy, shard = _corrupt_copy(out, tmp_path)
  os.remove(os.path.join(copy, shard['file']))
  last = manifest['shards'][-1]
  with open(os.path.join(copy, last['file']), 'r+b') as f:
    f.truncate(10)
  with pytest.raises(features.FeatureError) as err:
    array_store.ArrayStore(copy, verify='size')
  message = str(err.value)
  assert shard['file'] in message and 'missing shard file' in message and last['file'] in message
  with pytest.raises(features.FeatureError, match='missing manifest'):
    array_store.ArrayStore(str(tmp_path))


def test_batches_equal_the_in_memory_cache(source, converted):
  records, src = source
  out, _ = converted
  memory_store = features.FeatureStore(src)
  stream_store = array_store.ArrayStore(out, cache_bytes=100_000)
  spec = PadSpec(video_dim=memory_store.video_dim, text_dim=memory_store.text_dim)
  memory = batches.FeatureCache(memory_store, records)
  stream = stream_cache.StreamCache(stream_store, records)
  assert stream.decoded_nbytes == memory.nbytes
  plain = [batches.Split(records=records, cache=c, spec=spec) for c in (memory, stream)]
  spliced = []
  for c in (memory, stream):
    split = batches.Split(records=records, cache=c, spec=spec)
    split.augmented, split.num_augmented, split.infos = augment.make_online_sampler(records, c.video, seed=3,
                                                                                   passes=2)
    spliced.append(split)
  assert spliced[0].infos == spliced[1].infos
  for splits in (plain, spliced):
    for seed, step in ((0, 0), (0, 5), (7, 2)):
      want, got = (batches.make_train_batch(s, seed, step, 8) for s in splits)
      assert sorted(want) == sorted(got)
      for key in want:
        assert want[key].dtype == got[key].dtype and want[key].tobytes() == got[key].tobytes(), key
  assert stream.nbytes <= 100_000     # only the LRU stays resident
  with pytest.raises(features.FeatureError, match='not in the store'):
    stream_cache.StreamCache(stream_store, records + [records[0].replace(vid='no_such_vid')])


def test_interrupted_conversion_resumes(source, converted, tmp_path):
  records, src = source
  reference, _ = converted
  out = str(tmp_path / 'store')
  calls = []

  def stop_midway(progress):   # stops once a shard is finished and the next one half written
    calls.append(progress)
    names = os.listdir(out)
    if any(n.endswith('.array_record') for n in names) and any(n.endswith('.array_record.tmp') for n in names):
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    convert_store.convert(src, records, out, shard_bytes=SHARD_BYTES, progress=stop_midway)
  assert calls[-1].eta_s is not None and calls[-1].total_records == calls[-1].total_videos + calls[-1].total_texts
  finished = json.loads(pathlib.Path(out, convert_store.JOURNAL_FILE).read_text())['shards']
  assert len(finished) >= 1 and any(name.endswith('.tmp') for name in os.listdir(out))
  assert not os.path.exists(os.path.join(out, array_store.MANIFEST_FILE))
  with pytest.raises(features.FeatureError, match='missing manifest'):
    array_store.ArrayStore(out)
  # A finished shard that was damaged since is redone too.
  manifest = convert_store.convert(src, records, out, shard_bytes=SHARD_BYTES, progress=False)
  assert manifest['conversion']['kept_shards'] == len(finished)
  assert not any(name.endswith('.tmp') for name in os.listdir(out))
  assert _shard_digests(out) == _shard_digests(reference)   # the same bytes as an uninterrupted conversion
  first = os.path.join(out, finished[0]['file'])
  data = bytearray(pathlib.Path(first).read_bytes())
  data[len(data) // 3] ^= 0xFF
  pathlib.Path(first).write_bytes(bytes(data))
  manifest = convert_store.convert(src, records, out, shard_bytes=SHARD_BYTES, progress=False)
  assert manifest['conversion']['kept_shards'] == sum(1 for s in manifest['shards'] if s['kind'] == 'text')
  assert _shard_digests(out) == _shard_digests(reference)
  assert convert_store.verify(out) == []
  with pytest.raises(features.FeatureError, match='another input'):
    convert_store.convert(src, records[:10], out, shard_bytes=SHARD_BYTES, progress=False)


def test_validate_reads_the_array_store(source, converted, tmp_path):
  records, src = source
  out, _ = converted
  store = array_store.ArrayStore(out)
  assert validate.validate(records, store, max_v_l=store.max_v_l) == []
  assert store.pinned_shape('video') == (store.video_dim,)
  assert validate.check_widths(store, {'video_dim': store.video_dim + 1, 'text_dim': store.text_dim})
  # A source with a missing video file and a NaN text, converted anyway, and a window past the video.
  broken = tmp_path / 'broken'
  planted.write_planted_store(records, str(broken), seed=0, dims='tiny')
  original = features.FeatureStore(str(broken))
  os.remove(original.video_path(records[1].vid)[0])
  text_file = original.text_path(records[2].qid)[0]
  text = np.load(text_file)
  text[0, 0, 0] = np.nan
  np.save(text_file, text)
  converted_broken = convert_store.convert(str(broken), records, str(tmp_path / 'ar'), progress=False)
  assert [s['key'] for s in converted_broken['skipped']] == [records[1].vid]
  end = 2.0 * len(original.video(records[3].vid)) + 4.0
  long_window = records[3].replace(windows=((0.0, end),), duration=end)
  checked = [records[1], records[2], long_window] + records[4:]
  problems = validate.validate(checked, array_store.ArrayStore(str(tmp_path / 'ar')))
  by_field = {(p.vid, p.field): str(p) for p in problems}
  assert 'missing record: the conversion skipped it' in by_field[(records[1].vid, 'video')]
  assert 'NaN/Inf' in by_field[(records[2].vid, 'text')]
  assert 'ends past the video features' in by_field[(records[3].vid, 'relevant_windows[0]')]
  assert len(problems) == 3 and all('\n' not in str(p) for p in problems)
  kept, dropped = validate.drop_bad(checked, problems)
  assert len(dropped) == 3 and len(kept) == len(checked) - 3


def test_launch_script_one_line_errors(converted, tmp_path):
  out, _ = converted
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  ok = subprocess.run([sys.executable, 'launch/convert_store.py', f'--out={out}', '--verify_only'], cwd=ROOT,
                      env=env, capture_output=True, text=True, timeout=60)
  assert ok.returncode == 0 and 'is sound' in ok.stdout, ok.stderr
  copy, shard = _corrupt_copy(out, tmp_path)
  bad = subprocess.run([sys.executable, 'launch/convert_store.py', f'--out={copy}', '--verify_only'], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=60)
  lines = bad.stderr.strip().splitlines()
  assert bad.returncode == 1 and len(lines) == 2 and shard['file'] in lines[0] and 'Traceback' not in bad.stderr
  missing = subprocess.run([sys.executable, 'launch/convert_store.py', f'--features={tmp_path}/nope',
                            f'--annotations={QVH}/highlight_val_release.jsonl', f'--out={tmp_path}/new'], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=60)
  assert missing.returncode == 1 and missing.stderr.strip().count('\n') == 0 and 'nope' in missing.stderr


def test_config_switch_trains_from_the_converted_store_with_the_same_digest(source, converted, tmp_path):
  """data.feature_dir = a converted store: the task streams it ('auto'), and a short AMR stage-1 run ends with the
  same parameters as the run on the source directory (same batches for every (seed, step), Splice included)."""
  from amr_jax.projects.moment_task import feature_cache
  from amr_jax.train import loop, registry
  from amr_jax.workflows import learning_check
  records, src = source
  out, _ = converted
  train = tmp_path / 'train.jsonl'
  annotations.write_jsonl(records[:40], train)
  digests = {}
  for name, feature_dir in (('memory', src), ('stream', out)):
    config = learning_check.tiny_config('amr_stage1', feature_dir, train, '', **{
        'train.num_steps': 3, 'train.checkpoint_every': 3, 'train.batch_size': 8, 'data.source_cache_mb': 1,
        'model.t2v_layers': 1, 'model.enc_layers': 1, 'model.dec_layers': 2})
    task = registry.make_task(config)
    assert isinstance(task.train_data().split.cache,
                      stream_cache.StreamCache if name == 'stream' else batches.FeatureCache), name
    digests[name] = loop.train_and_evaluate(config, str(tmp_path / name))['digest']
  assert digests['memory'] == digests['stream']
  with pytest.raises(ValueError, match="needs a converted store"):
    feature_cache(features.FeatureStore(src), records, 'stream')
  assert isinstance(feature_cache(array_store.ArrayStore(out), records, 'memory'), batches.FeatureCache)


def test_the_converted_store_is_a_tfds_dataset(source, converted):
  """tfds.builder_from_directory reads the store: every vid / qid record equals ours, and decodes to the source."""
  from amr_jax.data import tfds_store
  records, src = source
  out, _ = converted
  store = array_store.ArrayStore(out)
  memory = features.FeatureStore(src, max_v_l=10**9)
  sources = tfds_store.data_sources(out)
  assert sorted(sources) == ['text', 'video']
  assert len(sources['video']) == len(store.vids) and len(sources['text']) == len(store.qids)
  for kind in ('video', 'text'):
    for key, position in tfds_store.global_positions(store, kind).items():
      raw = sources[kind][position]
      assert raw == store.record_bytes(kind, key), (kind, key)
      want = memory.video(key) if kind == 'video' else memory.text(key)
      np.testing.assert_array_equal(array_store.decode_record(raw), want)
