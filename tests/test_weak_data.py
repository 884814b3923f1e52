"""Weak-MR data layer: loaders of every layout, feature stores and CPL pooling, vocabulary and word vectors,
the no-timestamp train batch, one-pass validation, and the planted weak-MR store.
"""
import json
import pickle

import numpy as np
import pytest

from amr_jax.data import planted_weak
from amr_jax.data import vocab as vocab_lib
from amr_jax.data import weak_mr
from amr_jax.data.validate import drop_bad
from amr_jax.metrics import weak_mr as weak_metrics
from data_pipelines import weak_batches

from conftest import ANNOTATIONS, FIXTURES

CHARADES = ANNOTATIONS / 'charades-sta'


def regex_encoder(sentences, top_k=50):
  tokenizer = vocab_lib.make_tokenizer('regex')
  vocab = vocab_lib.build_vocabulary(sentences, top_k, tokenizer)
  return vocab_lib.TextEncoder(vocab, tokenizer, vocab_lib.make_pos_weigher('lexicon'))


# ----------------------------------------------------------------------------------------------------
# Annotation loaders
# ----------------------------------------------------------------------------------------------------
def test_charades_sta_shipped_files():
  counts = {'charades_sta_train.txt': (12408, 5338), 'charades_sta_test.txt': (3720, 1334),
            'charades_train_release.jsonl': (12404, 5336), 'charades_test_release.jsonl': (3720, 1334)}
  for name, (queries, videos) in counts.items():
    records = weak_mr.load_weak_annotations(CHARADES / name)
    assert (len(records), len({r.vid for r in records})) == (queries, videos), name
  txt = weak_mr.load_weak_annotations(CHARADES / 'charades_sta_train.txt')
  assert txt[0].query == 'a person is putting a book on a shelf.' and txt[0].windows == ((0.0, 6.9),)
  assert txt[0].qid == 0 and txt[0].duration is None
  durations = weak_mr.read_durations([CHARADES / 'charades_train_release.jsonl',
                                      CHARADES / 'charades_test_release.jsonl'])
  assert len(durations) == 6670 and durations['AO8RW'] == 33.67
  filled = weak_mr.load_weak_annotations(CHARADES / 'charades_sta_train.txt', durations=durations)
  # Only the vids whose every row lighthouse dropped (start >= end) stay without a duration.
  assert sorted({r.vid for r in filled if r.duration is None}) == ['AKKWU', 'LEOL6']


def test_cpl_json_layout(tmp_path):
  rows = [['AO8RW', 33.67, [0.0, 6.9], 'a person is putting a book on a shelf.'],
          ['Y6R7T', '29.42', [7.3, 17.3], 'person pouring it into a glass.'],
          ['Y6R7T', 29.42, [7.3, 17.3], 'the person pours some water into the glass.']]
  path = tmp_path / 'train.json'
  path.write_text(json.dumps(rows))
  assert weak_mr.detect_weak_format(path) == 'cpl_json'
  records = weak_mr.load_weak_annotations(path)
  assert len(records) == 3 and len({r.vid for r in records}) == 2
  assert [r.qid for r in records] == [0, 1, 2] and [r.line for r in records] == [1, 2, 3]
  assert records[1].duration == 29.42 and records[2].windows == ((7.3, 17.3),)
  assert [r.qid for r in weak_mr.load_weak_annotations(path, qid_offset=100)] == [100, 101, 102]


def test_cpl_json_bad_rows_are_collected(tmp_path):
  rows = [['A', 10.0, [1, 2], 'ok.'], ['B', 'x', [1, 2], 's.'], ['C', 5.0, [1], 's.'], 'junk', ['D', 5.0, [1, 2], 7]]
  path = tmp_path / 'bad.json'
  path.write_text(json.dumps(rows))
  with pytest.raises(weak_mr.WeakDataError) as info:
    weak_mr.load_weak_annotations(path)
  assert '\n' not in str(info.value) and 'bad.json:2: vid=B qid=1 field=duration' in str(info.value)
  problems = []
  records = weak_mr.load_weak_annotations(path, problems=problems)
  assert [r.vid for r in records] == ['A']
  assert [(p.line, p.field) for p in problems] == [(2, 'duration'), (3, 'timestamps'), (4, 'row'), (5, 'sentence')]


def test_activitynet_captions_layout(tmp_path):
  data = {'v_a': {'duration': 100.0, 'timestamps': [[0, 20.5], [18.2, 60.0]],
                  'sentences': ['A man walks in.', ' He sits down.']},
          'v_b': {'duration': 50.0, 'timestamps': [[1, 49.0]], 'sentences': ['A dog runs.']}}
  path = tmp_path / 'val_1.json'
  path.write_text(json.dumps(data))
  assert weak_mr.detect_weak_format(path) == 'activitynet_json'
  records = weak_mr.load_weak_annotations(path)
  assert len(records) == 3 and [r.qid for r in records] == [0, 1, 2]
  assert records[1].vid == 'v_a' and records[1].query == ' He sits down.' and records[1].windows == ((18.2, 60.0),)
  assert records[2].duration == 50.0
  data['v_b']['sentences'].append('extra.')
  path.write_text(json.dumps(data))
  problems = []
  weak_mr.load_weak_annotations(path, problems=problems)
  assert len(problems) == 1 and 'vid=v_b' in str(problems[0]) and 'field=sentences' in str(problems[0])


def test_unreadable_annotation_file_is_one_line(tmp_path):
  path = tmp_path / 'x.json'
  path.write_text('[["a", 1.0,')
  with pytest.raises(weak_mr.WeakDataError) as info:
    weak_mr.load_weak_annotations(path)
  assert 'x.json:1: field=file: invalid JSON' in str(info.value) and '\n' not in str(info.value)
  with pytest.raises(weak_mr.WeakDataError, match='no such annotation file'):
    weak_mr.load_weak_annotations(tmp_path / 'missing.json')


# ----------------------------------------------------------------------------------------------------
# Features and pooling
# ----------------------------------------------------------------------------------------------------
def test_pooling_follows_the_original_rule():
  raw = np.arange(70 * 3, dtype=np.float32).reshape(70, 3)
  pooled = weak_mr.pool_clips(raw, 48)
  assert pooled.shape == (48, 3) and pooled.dtype == np.float32
  # b_36 = round(52.5) = 52 (half to even), b_37 = round(53.96) = 54: clip 36 = mean of raw rows 52, 53.
  np.testing.assert_array_equal(pooled[36], raw[52:54].mean(0))
  np.testing.assert_array_equal(pooled[35], raw[51:52].mean(0))   # b_35 = round(51.04) = 51
  # The last boundary 70 is clamped to 69 = b_47: an empty last interval, so the last raw row alone.
  np.testing.assert_array_equal(pooled[47], raw[69])
  np.testing.assert_array_equal(pooled[46], raw[67:69].mean(0))
  short = weak_mr.pool_clips(raw[:31], 48)                         # T < n: single raw rows repeat
  assert all(any(np.array_equal(row, r) for r in raw[:31]) for row in short)
  np.testing.assert_array_equal(weak_mr.pool_clips(raw[:48], 48), raw[:48])
  np.testing.assert_array_equal(weak_mr.pool_clips(raw[:1], 4), np.repeat(raw[:1], 4, 0))
  uniform = weak_mr.pool_clips(raw, 48, mode='uniform')          # the alternative: every raw row used once
  np.testing.assert_array_equal(uniform[47], raw[68:70].mean(0))
  with pytest.raises(ValueError, match='unknown pooling'):
    weak_mr.pool_clips(raw, 4, mode='max')


def test_pooling_matches_the_fixture_batch_when_present():
  path = FIXTURES / 'cpl_reference' / 'inputs.npz'
  if not path.exists():
    pytest.skip('tests/fixtures/cpl_reference/inputs.npz is copied by the CPL model tests')
  inputs = np.load(path)
  for b, length in enumerate(inputs['raw_frame_lens']):
    np.testing.assert_array_equal(weak_mr.pool_clips(inputs['raw_frames'][b, :length], 48), inputs['frames_feat'][b])
  for b, length in enumerate(inputs['raw_word_lens']):
    probs = vocab_lib.masking_probabilities(inputs['raw_pos_weights'][b, :length].tolist(), 8)
    np.testing.assert_array_equal(probs, inputs['weights'][b, :len(probs)])


@pytest.fixture(scope='module')
def raw_videos():
  rng = np.random.default_rng(0)
  return {'vidA': rng.standard_normal((70, 6)).astype(np.float32), 'vidB': rng.standard_normal((9, 6))}


def test_every_feature_layout_reads_the_same(tmp_path, raw_videos):
  h5py = pytest.importorskip('h5py')
  (tmp_path / 'npy').mkdir()
  (tmp_path / 'npz').mkdir()
  for vid, x in raw_videos.items():
    np.save(tmp_path / 'npy' / f'{vid}.npy', x)
    np.savez(tmp_path / 'npz' / f'{vid}.npz', features=x)
  with h5py.File(tmp_path / 'i3d.hdf5', 'w') as f:                 # Charades (LGI I3D): f[vid] = [T, D]
    for vid, x in raw_videos.items():
      f.create_dataset(vid, data=x)
  with h5py.File(tmp_path / 'c3d.hdf5', 'w') as f:                 # ActivityNet: f[vid]['c3d_features']
    for vid, x in raw_videos.items():
      f.create_group(vid).create_dataset('c3d_features', data=x)
  stores = [weak_mr.WeakFeatureStore(tmp_path / name) for name in ('npy', 'npz', 'i3d.hdf5', 'c3d.hdf5')]
  for vid, x in raw_videos.items():
    for store in stores:
      assert store.has(vid)
      got = store.raw(vid)
      assert got.dtype == np.float32
      np.testing.assert_array_equal(got, x.astype(np.float32))
      np.testing.assert_array_equal(store.pooled(vid, 16), weak_mr.pool_clips(x.astype(np.float32), 16))
  for store in stores:
    assert not store.has('nope')
    with pytest.raises(weak_mr.WeakDataError) as info:
      store.raw('nope')
    assert 'vid=nope field=features' in str(info.value) and '\n' not in str(info.value)
    store.close()


# ----------------------------------------------------------------------------------------------------
# Tokeniser, vocabulary, word vectors
# ----------------------------------------------------------------------------------------------------
def test_regex_tokenizer_cases():
  tok = vocab_lib.make_tokenizer('regex')
  assert tok('a person is putting a book on a shelf.') == ['a', 'person', 'is', 'putting', 'a', 'book', 'on', 'a',
                                                           'shelf', '.']
  assert tok("person they're drinking.") == ['person', 'they', "'re", 'drinking', '.']
  assert tok('a book off of a shelf,turns.') == ['a', 'book', 'off', 'of', 'a', 'shelf', ',', 'turns', '.']
  assert tok('person #1 smiled, 3,000 times') == ['person', '#', '1', 'smiled', ',', '3,000', 'times']
  assert tok('He walks in. Then he sits.') == ['He', 'walks', 'in', '.', 'Then', 'he', 'sits', '.']


def test_regex_tokenizer_agrees_with_nltk_on_charades():
  if not vocab_lib.nltk_status()['nltk']:
    pytest.skip('nltk is not installed')
  a, b = vocab_lib.make_tokenizer('nltk_rules'), vocab_lib.make_tokenizer('regex')
  sentences = [r.query for r in weak_mr.load_weak_annotations(CHARADES / 'charades_sta_test.txt')]
  assert sum(a(s) != b(s) for s in sentences) == 0
  if vocab_lib.nltk_status()['punkt']:
    nltk_tok = vocab_lib.make_tokenizer('nltk')
    assert all(nltk_tok(s) == a(s) for s in sentences[:500])


def test_pos_weights():
  assert vocab_lib.content_weight('NNS') == 2 and vocab_lib.content_weight('WRB') == 2   # substring rule
  assert vocab_lib.content_weight('DT') == 1 and vocab_lib.content_weight('IN') == 1
  lexicon = vocab_lib.make_pos_weigher('lexicon')
  assert lexicon(['a', 'person', 'opens', 'the', 'door', 'with', 'his', 'hand', '.']) == [1, 2, 2, 1, 2, 1, 1, 2, 1]
  assert vocab_lib.make_pos_weigher('uniform')(['a', 'b']) == [1, 1]
  auto = vocab_lib.make_pos_weigher('auto')
  assert auto.name == ('nltk' if vocab_lib.nltk_status()['tagger'] else 'lexicon')
  probs = vocab_lib.masking_probabilities([2, 1, 1], 20)
  np.testing.assert_allclose(probs, np.exp([2, 1, 1]) / np.exp([2, 1, 1]).sum(), rtol=1e-6)
  assert probs.dtype == np.float32 and len(vocab_lib.masking_probabilities([1] * 25, 20)) == 20


def test_vocabulary_top_k_ties_and_special_tokens(tmp_path):
  tok = vocab_lib.make_tokenizer('regex')
  sentences = ['the cat sat.', 'the dog ran.', 'A dog sat!']
  vocab = vocab_lib.build_vocabulary(sentences, 4, tok)
  # counts: the 2, dog 2, sat 2, . 2, cat 1, ...; ties keep first-seen order (Counter.most_common).
  assert vocab.words == ('the', 'sat', '.', 'dog') and vocab.counts == (2, 2, 2, 2)
  assert vocab.size == 5 and vocab.id('the') == 1 and vocab.id('dog') == 4 and vocab.id('cat') == -1
  assert vocab_lib.PAD_ID == 0 and vocab_lib.PAD_TOKEN not in vocab
  covered = vocab_lib.build_vocabulary(sentences, 10, tok, covered=lambda w: w != 'the')
  assert 'the' not in covered and covered.words[0] == 'sat'
  path = tmp_path / 'run' / 'vocab.json'
  vocab.save(path)
  assert vocab_lib.Vocabulary.load(path) == vocab
  encoder = vocab_lib.TextEncoder(vocab, tok, vocab_lib.make_pos_weigher('lexicon'))
  encoded = encoder.encode('The cat and the dog sat.')
  assert encoded.words == ('the', 'the', 'dog', 'sat', '.') and encoded.ids == (1, 1, 4, 2, 3)   # unknown dropped
  assert encoded.raw_weights == (1, 1, 2, 2, 1)
  doc = json.loads(path.read_text())
  doc['words'][1] = doc['words'][0]
  path.write_text(json.dumps(doc))
  with pytest.raises(vocab_lib.VocabError, match='field=words: repeated words'):
    vocab_lib.Vocabulary.load(path)


def test_charades_vocabulary_size():
  tok = vocab_lib.make_tokenizer('regex')
  sentences = [r.query for name in ('charades_sta_train.txt', 'charades_sta_test.txt')
               for r in weak_mr.load_weak_annotations(CHARADES / name)]
  vocab = vocab_lib.build_vocabulary(sentences, 1111, tok)
  assert vocab.size == 1112 and vocab.words[:3] == ('.', 'person', 'a')


def test_glove_text_missing_word_and_npz(tmp_path):
  vocab = vocab_lib.Vocabulary(('person', 'new york', 'door'), (3, 2, 1), 3)
  glove = tmp_path / 'glove.txt'
  glove.write_text('person 0.1 0.2 0.3\nnew york 1 2 3\nskip 9 9 9\nperson 0.5 0.5 0.5\n')
  read = vocab_lib.read_glove_text(glove, wanted=vocab.words, dim=3)
  assert sorted(read) == ['new york', 'person'] and read['person'].tolist() == [0.5, 0.5, 0.5]  # later line wins
  with pytest.raises(vocab_lib.VocabError) as info:
    vocab_lib.word_vector_table(vocab, str(glove))
  assert "1 vocabulary word(s) have no vector (first: 'door')" in str(info.value) and '\n' not in str(info.value)
  table = vocab_lib.word_vector_table(vocab, read, missing='zero')
  assert table.shape == (4, 3) and not table[0].any() and not table[3].any()
  np.testing.assert_array_equal(table[2], [1, 2, 3])
  planted = vocab_lib.word_vector_table(vocab, read, missing='planted')
  np.testing.assert_array_equal(planted[3], vocab_lib.planted_word_vector('door', 3))
  # As the original, a word without a GloVe vector is never counted, so it is dropped from every sentence.
  tok = vocab_lib.make_tokenizer('regex')
  covered = vocab_lib.vector_coverage(str(glove), ['person', 'opens', 'door', '.'])
  assert covered == {'person'}
  glove_vocab = vocab_lib.build_vocabulary(['person opens door.'], 10, tok, covered=covered.__contains__)
  assert glove_vocab.words == ('person',)
  assert vocab_lib.vector_coverage('planted', ['x', 'y']) == {'x', 'y'}
  npz = tmp_path / 'vectors.npz'
  vocab_lib.save_word_vectors(npz, ['door', 'person', 'new york'], np.eye(3))
  np.testing.assert_array_equal(vocab_lib.word_vector_table(vocab, str(npz))[1:], np.eye(3)[[1, 2, 0]])
  npy = tmp_path / 'table.npy'
  np.save(npy, np.ones((4, 5)))
  assert vocab_lib.word_vector_table(vocab, str(npy))[0].sum() == 0      # row 0 is PAD
  np.save(npy, np.ones((3, 5)))
  with pytest.raises(vocab_lib.VocabError, match='needs 4 rows'):
    vocab_lib.word_vector_table(vocab, str(npy))


def test_build_text_side_switches(tmp_path):
  glove = tmp_path / 'glove.txt'
  glove.write_text('person 1 0\nopens 0 1\n. 1 1\n')
  train, test = ['A person opens it.'], ['person sits.']
  encoder, table = vocab_lib.build_text_side(train, test, top_k=10, tokenizer='regex', word_vectors=str(glove))
  assert encoder.vocab.words == ('person', '.', 'opens') and table.shape == (4, 2)   # counted train + test
  encoder, _ = vocab_lib.build_text_side(train, test, top_k=10, tokenizer='regex', count_eval=False,
                                         word_vectors=str(glove))
  assert encoder.vocab.counts == (1, 1, 1)
  encoder, table = vocab_lib.build_text_side(train, test, top_k=10, tokenizer='regex', word_vectors=str(glove),
                                             require_vector=False, missing_word='zero')
  assert 'sits' in encoder.vocab and not table[encoder.vocab.id('sits')].any()
  assert vocab_lib.content_weight('WRB', 'prefix') == 1 and vocab_lib.content_weight('NNS', 'prefix') == 2
  again, _ = vocab_lib.build_text_side([], top_k=10, tokenizer='regex', vocab=encoder.vocab, word_dim=2)
  assert again.vocab is encoder.vocab


def test_pickled_vectors_are_refused(tmp_path):
  vocab = vocab_lib.Vocabulary(('person',), (1,), 1)
  obj = tmp_path / 'obj.npy'
  np.save(obj, np.array([{'person': 1}], dtype=object), allow_pickle=True)
  pkl = tmp_path / 'glove.pkl'
  with open(pkl, 'wb') as f:
    pickle.dump({'w2id': {'person': 1}}, f)
  npz = tmp_path / 'obj.npz'
  np.savez(npz, words=np.array(['person'], dtype=object), vectors=np.ones((1, 3)))
  for path in (obj, pkl, npz):
    with pytest.raises(vocab_lib.VocabError) as info:
      vocab_lib.word_vector_table(vocab, str(path))
    message = str(info.value)
    assert message.startswith(str(path)) and 'pickle' in message and '\n' not in message


def test_planted_word_vectors_are_deterministic_per_word():
  a = vocab_lib.planted_word_vectors(['door', 'person'], 8, seed=0)
  b = vocab_lib.planted_word_vectors(['person', 'door'], 8, seed=0)
  np.testing.assert_array_equal(a[0], b[1])
  assert not np.array_equal(a[0], vocab_lib.planted_word_vector('door', 8, seed=1))
  vocab = vocab_lib.Vocabulary(('person', 'door'), (2, 1), 2)
  table = vocab_lib.word_vector_table(vocab, 'planted', dim=8)
  assert table.dtype == np.float32 and not table[0].any()
  np.testing.assert_array_equal(table[2], a[0])


def test_bad_switches_are_one_line():
  for call in (lambda: vocab_lib.make_tokenizer('spacy'), lambda: vocab_lib.make_pos_weigher('x'),
               lambda: vocab_lib.word_vector_table(vocab_lib.Vocabulary((), (), 0), 'planted', missing='x')):
    with pytest.raises(vocab_lib.VocabError) as info:
      call()
    assert 'field=text.' in str(info.value) and '\n' not in str(info.value)


# ----------------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def planted_split(tmp_path_factory):
  """A planted store over 60 train + 60 test Charades-STA queries, and a tiny split over the train part."""
  train = weak_mr.load_weak_annotations(CHARADES / 'charades_train_release.jsonl')[:60]
  test = weak_mr.load_weak_annotations(CHARADES / 'charades_test_release.jsonl')[:60]
  out = tmp_path_factory.mktemp('planted_weak')
  summary = planted_weak.write_planted_weak_store(train + test, str(out))
  store = weak_mr.WeakFeatureStore(summary.feature_path)
  encoder = regex_encoder([r.query for r in train + test], top_k=120)
  table = vocab_lib.word_vector_table(encoder.vocab, 'planted', dim=32)
  spec = weak_batches.WeakPadSpec(num_clips=16, max_words=6)
  split = weak_batches.build_weak_split(train, store, encoder, table, spec)
  return {'train': train, 'test': test, 'out': out, 'summary': summary, 'store': store, 'encoder': encoder,
          'table': table, 'spec': spec, 'split': split}


def test_train_batch_has_exactly_the_contract_and_no_timestamp(planted_split):
  split = planted_split['split']
  batch = weak_batches.make_train_batch(split, seed=3, step=5, global_batch=8)
  assert tuple(sorted(batch)) == tuple(sorted(weak_batches.TRAIN_KEYS))
  assert not any(word in key for key in batch for word in ('time', 'window', 'duration', 'gt', 'span', 'sec'))
  shapes = {k: (v.shape, str(v.dtype)) for k, v in batch.items()}
  assert shapes == {'frames_feat': ((8, 16, 64), 'float32'), 'frames_mask': ((8, 16), 'float32'),
                    'words_id': ((8, 6), 'int32'), 'words_feat': ((8, 6, 32), 'float32'),
                    'words_mask': ((8, 6), 'float32'), 'weights': ((8, 6), 'float32'),
                    'sample_valid': ((8,), 'float32')}
  assert batch['frames_mask'].all() and batch['sample_valid'].all()
  n = batch['words_mask'].sum(1)
  np.testing.assert_allclose(batch['weights'].sum(1), 1.0, rtol=1e-6)
  assert ((batch['words_id'] > 0) == (batch['words_mask'] > 0)).all() and (n >= 1).all()
  expected_feat = split.word_table[batch['words_id']] * batch['words_mask'][..., None]
  np.testing.assert_array_equal(batch['words_feat'], expected_feat)
  # The labels never reach a train batch: other windows and durations give the very same batch.
  moved = [r.replace(windows=((0.0, 1.0),), duration=999.0) for r in planted_split['train']]
  other = weak_batches.build_weak_split(moved, planted_split['store'], planted_split['encoder'],
                                        planted_split['table'], planted_split['spec'])
  again = weak_batches.make_train_batch(other, seed=3, step=5, global_batch=8)
  assert all(np.array_equal(batch[k], again[k]) for k in batch)


def test_train_batch_is_a_pure_function_of_seed_and_step(planted_split):
  split = planted_split['split']
  a = weak_batches.make_train_batch(split, 1, 7, 8)
  b = weak_batches.make_train_batch(split, 1, 7, 8)
  c = weak_batches.make_train_batch(split, 1, 8, 8)
  assert all(np.array_equal(a[k], b[k]) for k in a)
  assert not np.array_equal(a['words_id'], c['words_id'])
  halves = [weak_batches.make_train_batch(split, 1, 7, 8, process_index=i, process_count=2) for i in range(2)]
  assert all(np.array_equal(np.concatenate([h[k] for h in halves]), a[k]) for k in a)


def test_loader_side_masking_option(planted_split):
  split = planted_split['split']
  batch = weak_batches.make_train_batch(split, 2, 0, 8, mask_in_loader=True)
  assert weak_batches.MASKED_KEY in batch
  again = weak_batches.make_train_batch(split, 2, 0, 8, mask_in_loader=True)
  np.testing.assert_array_equal(batch['masked_words'], again['masked_words'])
  n = batch['words_mask'].sum(1).astype(int)
  np.testing.assert_array_equal(batch['masked_words'].sum(1), np.maximum(n // 3, 1))
  assert (batch['masked_words'] <= batch['words_mask']).all()
  # CPL's rule on a known draw: RandomState.choice over positions 1..n with the weights, without replacement.
  weights = np.array([0.5, 0.25, 0.25, 0, 0, 0], np.float32)
  expected = np.random.RandomState(4).choice(np.arange(1, 4), 1, replace=False, p=weights[:3])
  got = weak_batches.draw_masked_words(weights, 3, np.random.RandomState(4))
  assert np.flatnonzero(got).tolist() == [int(expected[0]) - 1]


def test_eval_batches(planted_split):
  test = planted_split['test']
  split = weak_batches.build_weak_split(test, planted_split['store'], planted_split['encoder'],
                                        planted_split['table'], planted_split['spec'])
  batches = list(weak_batches.eval_batches(split, 16))
  assert len(batches) == 4
  assert sorted(batches[0]) == sorted(weak_batches.batch_keys(eval_batch=True))
  last = batches[-1]
  assert last['sample_valid'].tolist() == [1.0] * 12 + [0.0] * 4
  assert last['qid'][:12].tolist() == [r.qid for r in test[48:]] and last['qid'].dtype == np.int64
  np.testing.assert_array_equal(batches[0]['gt_sec'][0], np.float32(test[0].windows[0]))
  assert batches[0]['duration'][0] == np.float32(test[0].duration)


# ----------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------
def test_validation_names_every_injected_fault(tmp_path):
  feats = tmp_path / 'feats'
  feats.mkdir()
  good = np.ones((10, 4), np.float32)
  np.save(feats / 'ok.npy', good)
  np.save(feats / 'nan.npy', np.full((10, 4), np.nan, np.float32))
  np.save(feats / 'wide.npy', np.ones((10, 5), np.float32))
  np.save(feats / 'rank.npy', np.ones((10,), np.float32))
  np.save(feats / 'empty.npy', np.ones((0, 4), np.float32))
  (feats / 'broken.npy').write_bytes(b'not numpy')
  rows = [['ok', 10.0, [1.0, 2.0], 'a person opens a door.'],
          ['ok', 10.0, [1.0, 2.0], '   '],                          # empty sentence
          ['ok', 10.0, [1.0, 2.0], 'zzz qqq'],                      # no vocabulary word
          ['ok', 0.0, [3.0, 2.0], 'a person opens a door.'],        # bad duration + start >= end
          ['ok', 10.0, [-1.0, 12.0], 'a person opens a door.'],     # negative start (past duration is kept)
          ['missing', 10.0, [1.0, 2.0], 'a person opens a door.'],
          ['nan', 10.0, [1.0, 2.0], 'a person opens a door.'],
          ['wide', 10.0, [1.0, 2.0], 'a person opens a door.'],
          ['rank', 10.0, [1.0, 2.0], 'a person opens a door.'],
          ['empty', 10.0, [1.0, 2.0], 'a person opens a door.'],
          ['broken', 10.0, [1.0, 2.0], 'a person opens a door.']]
  ann = tmp_path / 'test.json'
  ann.write_text(json.dumps(rows))
  records = weak_mr.load_weak_annotations(ann)
  store = weak_mr.WeakFeatureStore(feats)
  encoder = regex_encoder(['a person opens a door.'])
  problems = weak_mr.validate_weak(records, store, encoder, need_labels=True, frame_dim=4)
  lines = [str(p) for p in problems]
  assert all('\n' not in line for line in lines)
  expected = [f'{ann}:2: vid=ok qid=1 field=sentence: empty sentence',
              f'{ann}:3: vid=ok qid=2 field=sentence: no vocabulary word',
              f'{ann}:4: vid=ok qid=3 field=duration',
              f'{ann}:4: vid=ok qid=3 field=timestamps: start 3 >= end 2',
              f'{ann}:5: vid=ok qid=4 field=timestamps: negative start -1',
              'missing.npy: vid=missing field=features: missing file',
              'nan.npy: vid=nan field=features: 40 NaN/Inf',
              'wide.npy: vid=wide field=features: width 5 differs from the configured frame_dim 4',
              'rank.npy: vid=rank field=features: wrong rank',
              'empty.npy: vid=empty field=features: no clips',
              'broken.npy: vid=broken field=features: unreadable file']
  for needle in expected:
    assert sum(needle in line for line in lines) == 1, (needle, lines)
  assert len(lines) == len(expected)
  kept, dropped = drop_bad(records, problems)
  assert [r.qid for r in kept] == [0] and len(dropped) == 10
  strict = weak_mr.validate_weak(records[4:5], None, None, need_labels=True, window_past_duration='problem')
  assert any('past the duration 10s' in str(p) for p in strict)
  assert not weak_mr.validate_weak(records[3:5], None, None, need_labels=False)   # train needs no labels
  with pytest.raises(weak_mr.WeakDataError) as info:
    weak_mr.preflight(records, store, encoder, what='test', need_labels=True, drop=False, frame_dim=4)
  assert str(info.value).count('\n') == len(expected)
  assert [r.qid for r in weak_mr.preflight(records, store, encoder, what='test', need_labels=True, drop=True,
                                           frame_dim=4, log=None)] == [0]


def test_duplicate_qid_is_reported():
  records = weak_mr.load_weak_annotations(CHARADES / 'charades_test_release.jsonl')[:3]
  problems = weak_mr.validate_weak(records + records[:1])
  assert len(problems) == 1 and 'field=qid: duplicate qid' in str(problems[0])


# ----------------------------------------------------------------------------------------------------
# Planted weak-MR store
# ----------------------------------------------------------------------------------------------------
def test_planted_store_is_deterministic(planted_split, tmp_path):
  records = planted_split['train'] + planted_split['test']
  planted_weak.write_planted_weak_store(records, str(tmp_path / 'again'))
  first = planted_split['out']
  for vid in sorted({r.vid for r in records})[:10]:
    assert (first / 'features' / f'{vid}.npy').read_bytes() == (tmp_path / 'again' / 'features' / f'{vid}.npy'
                                                                ).read_bytes()
  for name in ('word_vectors.npz', 'shuffled_queries.json', 'planted_weak.json'):
    assert (first / name).read_bytes() == (tmp_path / 'again' / name).read_bytes()
  pytest.importorskip('h5py')
  h5 = planted_weak.write_planted_weak_store(records[:20], str(tmp_path / 'h5'), fmt='hdf5')
  npy = planted_weak.write_planted_weak_store(records[:20], str(tmp_path / 'npy'))
  a, b = weak_mr.WeakFeatureStore(h5.feature_path), weak_mr.WeakFeatureStore(npy.feature_path)
  for vid in {r.vid for r in records[:20]}:
    np.testing.assert_array_equal(a.raw(vid), b.raw(vid))
  a.close()


def test_planted_word_vectors_and_shuffled_map(planted_split):
  summary = planted_split['summary']
  vectors = vocab_lib.read_vector_file(summary.word_vectors_path)
  np.testing.assert_array_equal(vectors['person'], vocab_lib.planted_word_vector('person', 32))
  encoder = planted_split['encoder']
  assert all(w in vectors for w in encoder.vocab.words)
  records = planted_split['train'] + planted_split['test']
  shuffled = planted_weak.load_shuffled_map(summary.shuffled_path)
  sentence = {r.qid: r.query for r in records}
  assert sorted(shuffled) == sorted(sentence)
  assert all(sentence[q] != sentence[p] for q, p in shuffled.items())
  assert len(set(shuffled.values())) > 0.8 * len(shuffled)
  assert shuffled == planted_weak.shuffled_query_map(records, 0)


def test_oracle_reading_the_planted_moment_beats_query_blind_guesses(planted_split):
  records = planted_split['test']
  store = planted_split['store']
  model = planted_weak.PlantedWeakModel.from_store(str(planted_split['out']))
  duration = np.array([r.duration for r in records])
  gt = np.array([r.windows[0] for r in records]) / duration[:, None]

  def r1(windows_sec):
    return weak_metrics.weak_mr_metrics((windows_sec / duration[:, None])[:, None], gt, top_n=1)['R@1,IoU@0.5']

  oracle = r1(planted_weak.oracle_windows(store, records, model))
  shuffled = r1(planted_weak.oracle_windows(store, records, model,
                                            query_of=planted_weak.shuffled_query_map(records, 1)))
  prior = r1(planted_weak.prior_windows(records))
  assert oracle >= 0.8, oracle
  assert oracle >= shuffled + 0.4 and oracle >= prior + 0.4, (oracle, shuffled, prior)
