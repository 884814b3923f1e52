"""Weak-MR text side: tokeniser, POS masking weights, the top-K query vocabulary (JSON) and its word vectors.

Mirrors CPL's `vocab.py` + `datasets/base.py` text handling (fixture cpl_reference README §1.2, quirks Q28/Q29).
"""
from __future__ import annotations

import collections
import dataclasses
import io
import json
import os
import re
import zipfile
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from amr_jax.data.planted import stable_rng

try:                                      # optional: the original tokeniser and tagger
  import nltk                             # pylint: disable=g-import-not-at-top
except ImportError:                       # pragma: no cover - depends on the environment
  nltk = None

PAD_TOKEN = '<PAD>'      # id 0: padding, and the end-of-sentence target of shorter sentences (Q13)
PAD_ID = 0
VOCAB_FORMAT = 'amr_jax.weak_vocab'
VOCAB_VERSION = 1
CONTENT_TAGS = ('NN', 'VB', 'JJ', 'RB')   # substring test on the tag, so WRB counts too (Q29)
CONTENT_WEIGHT = 2
OTHER_WEIGHT = 1
PLANTED_VECTOR_STD = 0.4                  # per component, about GloVe's spread


class VocabError(ValueError):
  """A bad vocabulary / word-vector file or setting; the message is one line naming the file and field."""

  def __init__(self, path, field: str, message: str):
    self.path = str(path)
    self.field = field
    self.message = message
    super().__init__(f'{self.path}: field={field}: {message}')


# ----------------------------------------------------------------------------------------------------
# Tokenisers
# ----------------------------------------------------------------------------------------------------
def nltk_status() -> Dict[str, bool]:
  """Which parts of nltk this machine has: the package, the punkt sentence model, the POS tagger model."""
  status = {'nltk': nltk is not None, 'punkt': False, 'tagger': False}
  if nltk is None:
    return status
  for key, names in (('punkt', ('tokenizers/punkt_tab/english/', 'tokenizers/punkt')),
                     ('tagger', ('taggers/averaged_perceptron_tagger_eng/', 'taggers/averaged_perceptron_tagger'))):
    for name in names:
      try:
        nltk.data.find(name)
        status[key] = True
        break
      except LookupError:
        continue
  return status


# A sentence ends at . ! or ? (plus closing quotes/brackets) before whitespace, unless the word is a known
# abbreviation or a single letter (an initial); punkt decides the same way for plain sentences.
_ABBREVIATIONS = frozenset('mr mrs ms dr st jr sr vs etc prof mt no approx'.split())
_SENTENCE_END = re.compile(r'([.!?]+["\')\]]*)\s+')


def split_sentences(text: str) -> List[str]:
  """Rule-based sentence split (used when nltk's punkt model is not installed)."""
  sentences, start = [], 0
  for match in _SENTENCE_END.finditer(text):
    word = text[start:match.start()].split()[-1:] or ['']
    stem = word[0].lower().strip('"\'([')
    if match.group(1).startswith('.') and (stem in _ABBREVIATIONS or len(stem) == 1 and stem.isalpha()):
      continue
    sentences.append(text[start:match.end(1)])
    start = match.end()
  if text[start:].strip():
    sentences.append(text[start:])
  return sentences


# Own approximation of the Penn Treebank conventions (used only when nltk is not importable): split final periods,
# commas/colons not followed by a digit, ; @ # $ % & ? ! brackets, double dashes, quotes and English clitics.
_RULES = (
    (re.compile(r'^"'), ' `` '),
    (re.compile(r'([ (\[{<])"'), r'\1 `` '),
    (re.compile(r"(?i)(?:^|(?<=\s))'(?!(?:re|ve|ll|m|t|s|d|n)\b)(?=\w)"), "' "),
    (re.compile(r'([:,])([^\d])'), r' \1 \2'),
    (re.compile(r'([:,])$'), r' \1 '),
    (re.compile(r'\.\.\.'), ' ... '),
    (re.compile(r'[;@#$%&?!]'), r' \g<0> '),
    (re.compile(r'([^.])(\.)([\])}>"\']*)\s*$'), r'\1 \2 \3 '),
    (re.compile(r"([^'])' "), r"\1 ' "),
    (re.compile(r'[\[\](){}<>]'), r' \g<0> '),
    (re.compile(r'--'), ' -- '),
    (re.compile(r'"'), " '' "),
    (re.compile(r"([^' ])('[sSmMdD]|') "), r'\1 \2 '),
    (re.compile(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) "), r'\1 \2 '),
    (re.compile(r'(?i)\b(can)(not)\b'), r' \1 \2 '),
    (re.compile(r'(?i)\b(gon|wan)(na)\s'), r' \1 \2 '),
)
_FIRST_PASS = 11    # rules applied before the sentence is padded with spaces (the quote/clitic rules need them)


def regex_word_tokenize(sentence: str) -> List[str]:
  """Treebank-style tokens of one sentence without nltk (an approximation of nltk's word tokenizer)."""
  text = sentence
  for pattern, replacement in _RULES[:_FIRST_PASS]:
    text = pattern.sub(replacement, text)
  text = f' {text} '
  for pattern, replacement in _RULES[_FIRST_PASS:]:
    text = pattern.sub(replacement, text)
  return text.split()


@dataclasses.dataclass(frozen=True)
class Tokenizer:
  """A named sentence -> tokens function (tokens keep their case; the vocabulary lowercases them)."""
  name: str
  fn: Callable[[str], List[str]]

  def __call__(self, sentence: str) -> List[str]:
    return self.fn(sentence)


TOKENIZERS = ('auto', 'nltk', 'nltk_rules', 'regex')


def make_tokenizer(kind: str = 'auto') -> Tokenizer:
  """The tokeniser named by `kind`.

  'nltk': `nltk.word_tokenize`, the original (needs nltk and its punkt model). 'nltk_rules': nltk's Treebank word
  tokenizer on rule-split sentences (nltk without data files; equal to 'nltk' on single-sentence queries).
  'regex': this module's approximation (no nltk). 'auto': the first of these that this machine can run.

  Raises:
    VocabError: unknown kind, or the requested one cannot run here.
  """
  if kind not in TOKENIZERS:
    raise VocabError('config', 'text.tokenizer', f'unknown tokenizer {kind!r} (known: {", ".join(TOKENIZERS)})')
  status = nltk_status()
  if kind == 'auto':
    kind = 'nltk' if status['punkt'] else 'nltk_rules' if status['nltk'] else 'regex'
  if kind == 'nltk':
    if not status['punkt']:
      raise VocabError('config', 'text.tokenizer', "'nltk' needs nltk and its punkt_tab model "
                       "(nltk.download('punkt_tab')); use 'auto' or 'nltk_rules'")
    return Tokenizer('nltk', nltk.tokenize.word_tokenize)
  if kind == 'nltk_rules':
    if not status['nltk']:
      raise VocabError('config', 'text.tokenizer', "'nltk_rules' needs the nltk package; use 'regex'")
    words = nltk.tokenize.NLTKWordTokenizer()
    return Tokenizer('nltk_rules', lambda s: [t for part in split_sentences(s) for t in words.tokenize(part)])
  return Tokenizer('regex', lambda s: [t for part in split_sentences(s) for t in regex_word_tokenize(part)])


# ----------------------------------------------------------------------------------------------------
# POS masking weights
# ----------------------------------------------------------------------------------------------------
# Fallback when no tagger model is installed: closed-class words that the Penn tagger gives a tag without
# NN/VB/JJ/RB (DT, IN, TO, CC, PRP, PRP$, WP, WDT, MD, EX, PDT, POS, RP, CD, punctuation) get weight 1.
_FUNCTION_WORDS = frozenset("""
a an the this that these those another each every either neither some any no all both half such what which
whose who whom whatever whichever
in on at of to from with into onto upon by for about through throughout over under above below off out up down
near behind across toward towards around before after while as than like if because since until till unless
during without within against between beside besides among amongst along inside outside beneath underneath
onto via per whether though although
and or but nor yet plus
i you he she it we they me him her us them myself yourself himself herself itself ourselves themselves one
my your his its our their mine yours hers ours theirs
can could will would shall should may might must 'll 'd wo ca
there 's '
""".split())


TAG_RULES = ('substring', 'prefix')


def content_weight(tag: str, rule: str = 'substring') -> int:
  """2 when the Penn tag contains NN, VB, JJ or RB ('substring', the original: WRB counts) or starts with one
  ('prefix': WRB does not), else 1."""
  if rule == 'prefix':
    return CONTENT_WEIGHT if tag.startswith(CONTENT_TAGS) else OTHER_WEIGHT
  return CONTENT_WEIGHT if any(t in tag for t in CONTENT_TAGS) else OTHER_WEIGHT


def lexicon_weight(token: str) -> int:
  """The fallback weight of one token: 1 for closed-class words, numbers and punctuation, else 2."""
  word = token.lower()
  if word in _FUNCTION_WORDS or not any(c.isalpha() for c in word):
    return OTHER_WEIGHT
  return CONTENT_WEIGHT


POS_TAGGERS = ('auto', 'nltk', 'lexicon', 'uniform')


@dataclasses.dataclass(frozen=True)
class PosWeigher:
  """A named tokens -> raw masking weights (2 content / 1 other) function, applied to the whole sentence."""
  name: str
  fn: Callable[[List[str]], List[int]]

  def __call__(self, tokens: List[str]) -> List[int]:
    return self.fn(tokens)


def make_pos_weigher(kind: str = 'auto', tag_rule: str = 'substring') -> PosWeigher:
  """The masking-weight rule named by `kind`.

  'nltk': nltk's perceptron tagger on the full token list, then `content_weight(tag, tag_rule)` (the original;
  needs the tagger model). 'lexicon': `lexicon_weight` per token (closed-class word list). 'uniform': weight 1
  everywhere.
  'auto': 'nltk' when nltk and its tagger model are present, else 'lexicon'.
  """
  if kind not in POS_TAGGERS:
    raise VocabError('config', 'text.pos_tagger', f'unknown POS tagger {kind!r} (known: {", ".join(POS_TAGGERS)})')
  if tag_rule not in TAG_RULES:
    raise VocabError('config', 'text.tag_rule', f'unknown tag rule {tag_rule!r} (known: {", ".join(TAG_RULES)})')
  status = nltk_status()
  if kind == 'auto':
    kind = 'nltk' if status['tagger'] else 'lexicon'
  if kind == 'nltk':
    if not status['tagger']:
      raise VocabError('config', 'text.pos_tagger', "'nltk' needs nltk and its averaged_perceptron_tagger_eng "
                       "model; use 'auto' or 'lexicon'")
    return PosWeigher('nltk', lambda tokens: [content_weight(tag, tag_rule) for _, tag in nltk.pos_tag(tokens)])
  if kind == 'lexicon':
    return PosWeigher('lexicon', lambda tokens: [lexicon_weight(t) for t in tokens])
  return PosWeigher('uniform', lambda tokens: [OTHER_WEIGHT] * len(tokens))


# ----------------------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """The kept words: id 0 = PAD_TOKEN, ids 1..K = `words` in count order (ties: first seen first).

  Attributes:
    words: the K kept words (lowercased).
    counts: their counts in the counted sentences.
    top_k: the K asked for (`len(words)` can be smaller when fewer words exist).
    tokenizer: the tokeniser name it was counted with.
    sources: the files whose sentences were counted (provenance only).
  """
  words: Tuple[str, ...]
  counts: Tuple[int, ...]
  top_k: int
  tokenizer: str = ''
  sources: Tuple[str, ...] = ()

  def __post_init__(self):
    object.__setattr__(self, '_ids', {w: i + 1 for i, w in enumerate(self.words)})

  @property
  def size(self) -> int:
    """Classes of the reconstruction output: K + 1 (id 0 included)."""
    return len(self.words) + 1

  def id(self, word: str) -> int:
    """The id of a lowercased word, or -1 when it is not kept."""
    return self._ids.get(word, -1)

  def __contains__(self, word: str) -> bool:
    return word in self._ids

  def to_json(self) -> dict:
    return {'format': VOCAB_FORMAT, 'version': VOCAB_VERSION, 'pad_token': PAD_TOKEN, 'pad_id': PAD_ID,
            'top_k': self.top_k, 'tokenizer': self.tokenizer, 'sources': list(self.sources),
            'words': list(self.words), 'counts': list(self.counts)}

  @classmethod
  def from_json(cls, data: Mapping, path: str = '<json>') -> 'Vocabulary':
    """Inverse of `to_json`; raises VocabError (one line) on a malformed document."""
    if not isinstance(data, Mapping) or data.get('format') != VOCAB_FORMAT:
      raise VocabError(path, 'format', f'not a vocabulary file (expected format {VOCAB_FORMAT!r})')
    words, counts = data.get('words'), data.get('counts')
    if not isinstance(words, list) or not all(isinstance(w, str) and w for w in words):
      raise VocabError(path, 'words', 'expected a list of non-empty strings')
    if len(set(words)) != len(words):
      raise VocabError(path, 'words', 'repeated words')
    if PAD_TOKEN in words:
      raise VocabError(path, 'words', f'{PAD_TOKEN} is id 0 and must not be listed')
    if not isinstance(counts, list) or len(counts) != len(words) or not all(isinstance(c, int) for c in counts):
      raise VocabError(path, 'counts', 'expected one integer count per word')
    top_k = data.get('top_k', len(words))
    if not isinstance(top_k, int) or top_k < len(words):
      raise VocabError(path, 'top_k', f'expected an integer >= {len(words)}, got {top_k!r}')
    return cls(tuple(words), tuple(counts), top_k, str(data.get('tokenizer', '')),
               tuple(str(s) for s in data.get('sources', ())))

  def save(self, path: Union[str, os.PathLike]) -> None:
    path = os.fspath(path)
    if os.path.dirname(path):
      os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
      json.dump(self.to_json(), f, indent=1, ensure_ascii=False)
      f.write('\n')

  @classmethod
  def load(cls, path: Union[str, os.PathLike]) -> 'Vocabulary':
    path = os.fspath(path)
    try:
      with open(path, encoding='utf-8') as f:
        data = json.load(f)
    except FileNotFoundError:
      raise VocabError(path, 'file', 'no such file') from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
      raise VocabError(path, 'file', f'unreadable vocabulary ({type(e).__name__}: {e})') from None
    return cls.from_json(data, path)


def count_words(sentences: Iterable[str], tokenizer: Tokenizer) -> collections.Counter:
  """Lowercased token counts over `sentences`, in first-seen order (the original's Counter)."""
  counter: collections.Counter = collections.Counter()
  for sentence in sentences:
    for token in tokenizer(sentence):
      counter[token.lower()] += 1
  return counter


def build_vocabulary(sentences: Iterable[str], top_k: int, tokenizer: Tokenizer,
                     covered: Optional[Callable[[str], bool]] = None, sources: Sequence[str] = ()) -> Vocabulary:
  """The top-K words of `sentences` as the original (Q28).

  Tokens are lowercased; a word without a vector (`covered(word)` False) is not counted, so it never enters the
  vocabulary and is later dropped from every sentence. Order: count descending, ties in first-seen order
  (`Counter.most_common`). Id 0 stays PAD_TOKEN.
  """
  counter = count_words(sentences, tokenizer)
  items = [(w, c) for w, c in counter.items() if covered is None or covered(w)]
  items.sort(key=lambda wc: -wc[1])            # stable: ties keep first-seen order
  kept = items[:top_k]
  return Vocabulary(tuple(w for w, _ in kept), tuple(c for _, c in kept), int(top_k), tokenizer.name,
                    tuple(str(s) for s in sources))


@dataclasses.dataclass(frozen=True)
class EncodedQuery:
  """One sentence after tokenisation, POS weighting and the vocabulary filter (nothing truncated yet).

  Attributes:
    words: the kept words, in sentence order.
    ids: their vocabulary ids (1..K).
    raw_weights: 2 (content tag) / 1 per kept word.
  """
  words: Tuple[str, ...]
  ids: Tuple[int, ...]
  raw_weights: Tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class TextEncoder:
  """Sentence -> EncodedQuery, as the original dataset: tag the full sentence, lowercase, drop unknown words."""
  vocab: Vocabulary
  tokenizer: Tokenizer
  pos_weigher: PosWeigher

  def encode(self, sentence: str) -> EncodedQuery:
    tokens = self.tokenizer(sentence)
    weights = self.pos_weigher(tokens)
    words, ids, raw = [], [], []
    for token, weight in zip(tokens, weights):
      word = token.lower()
      index = self.vocab.id(word)
      if index > 0:
        words.append(word)
        ids.append(index)
        raw.append(int(weight))
    return EncodedQuery(tuple(words), tuple(ids), tuple(raw))


def masking_probabilities(raw_weights: Sequence[int], max_words: int) -> np.ndarray:
  """float32 [min(n, max_words)]: softmax of the raw weights of the kept (truncated) words, as the collate.

  The original exponentiates the Python ints in float64, normalises in float64 and stores float32.
  """
  tmp = np.exp(list(raw_weights[:max_words]))
  return (tmp / np.sum(tmp)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# Word vectors
# ----------------------------------------------------------------------------------------------------
def planted_word_vector(word: str, dim: int, seed: int = 0) -> np.ndarray:
  """float32 [dim]: a deterministic vector per (word, seed), N(0, PLANTED_VECTOR_STD^2) per component."""
  return (stable_rng(int(seed), 'word_vector', int(dim), word).standard_normal(dim)
          * PLANTED_VECTOR_STD).astype(np.float32)


def planted_word_vectors(words: Sequence[str], dim: int, seed: int = 0) -> np.ndarray:
  """float32 [len(words), dim], one `planted_word_vector` per word."""
  out = np.zeros((len(words), dim), np.float32)
  for i, word in enumerate(words):
    out[i] = planted_word_vector(word, dim, seed)
  return out


def read_glove_text(path: Union[str, os.PathLike], wanted: Optional[Iterable[str]] = None,
                    dim: Optional[int] = None) -> Dict[str, np.ndarray]:
  """Word -> float32 vector from a GloVe text file (`word v1 .. vD` per line), streamed.

  As the original: the last `dim` fields are the vector and the fields before them, joined by one space, the
  word (GloVe 840B has words with spaces); a later line of the same word replaces an earlier one. Only words in
  `wanted` are kept (None = all). `dim` = None reads it from the first line (fields - 1).

  Raises:
    VocabError: missing/unreadable file, a line with too few fields or a non-number (named by its line).
  """
  path = os.fspath(path)
  wanted = None if wanted is None else set(wanted)
  vectors: Dict[str, np.ndarray] = {}
  try:
    with open(path, encoding='utf-8', errors='strict') as f:
      for line_no, line in enumerate(f, start=1):
        fields = line.split()
        if not fields:
          continue
        if dim is None:
          dim = len(fields) - 1
          if dim < 1:
            raise VocabError(f'{path}:{line_no}', 'vector', 'a line needs a word and at least one number')
        if len(fields) < dim + 1:
          raise VocabError(f'{path}:{line_no}', 'vector', f'{len(fields) - 1} number(s), expected {dim}')
        word = ' '.join(fields[:-dim])
        if wanted is not None and word not in wanted:
          continue
        try:
          vectors[word] = np.asarray([float(x) for x in fields[-dim:]], dtype=np.float32)
        except ValueError:
          raise VocabError(f'{path}:{line_no}', 'vector', f'not a number in the vector of {word!r}') from None
  except FileNotFoundError:
    raise VocabError(path, 'file', 'no such word-vector file') from None
  except UnicodeDecodeError as e:
    raise VocabError(path, 'file', f'not UTF-8 text ({e.reason} at byte {e.start})') from None
  except OSError as e:
    raise VocabError(path, 'file', f'unreadable ({e})') from None
  return vectors


def _load_numpy(path: str):
  """np.load without pickles; a pickled or object array is refused with a one-line VocabError."""
  try:
    data = np.load(path, allow_pickle=False)
    if isinstance(data, np.lib.npyio.NpzFile):
      with data:
        return {k: data[k] for k in data.files}
    return data
  except FileNotFoundError:
    raise VocabError(path, 'file', 'no such word-vector file') from None
  except ValueError as e:
    if 'pickle' in str(e).lower() or 'object' in str(e).lower():
      raise VocabError(path, 'file', 'pickled/object arrays are refused (np.load(allow_pickle=False)); store '
                       "words as a unicode array ('words') and vectors as a float array ('vectors')") from None
    raise VocabError(path, 'file', f'unreadable ({e})') from None
  except (OSError, EOFError, zipfile.BadZipFile) as e:
    raise VocabError(path, 'file', f'unreadable ({type(e).__name__}: {e})') from None


def _looks_pickled(path: str) -> bool:
  try:
    with open(path, 'rb') as f:
      head = f.read(2)
  except OSError:
    return False
  return len(head) == 2 and head[0] == 0x80 and head[1] <= 5


VectorSource = Union[Dict[str, np.ndarray], np.ndarray]


def read_vector_file(path: Union[str, os.PathLike], wanted: Optional[Iterable[str]] = None,
                     dim: Optional[int] = None) -> VectorSource:
  """A user's word vectors.

  Formats (by suffix): '.npz' with 'words' (unicode [N]) and 'vectors' (float [N, D]) -> dict word -> vector;
  '.npy' float [K + 1, D] in vocabulary-id order (row 0 = PAD) -> that array; anything else: GloVe text.
  Pickles and object arrays are refused (np.load(allow_pickle=False)).
  """
  path = os.fspath(path)
  if _looks_pickled(path):
    raise VocabError(path, 'file', 'a pickle file is refused (np.load(allow_pickle=False)); convert it to a GloVe '
                     "text file or an npz with 'words' and 'vectors'")
  if path.endswith('.npz'):
    arrays = _load_numpy(path)
    if not isinstance(arrays, dict):
      raise VocabError(path, 'file', 'expected an npz archive')
    for key in ('words', 'vectors'):
      if key not in arrays:
        raise VocabError(path, key, f"missing array (keys: {', '.join(sorted(arrays)) or 'none'})")
    words, table = arrays['words'], arrays['vectors']
    if words.dtype.kind != 'U' or words.ndim != 1:
      raise VocabError(path, 'words', f'expected a 1-d unicode array, got {words.dtype} {words.shape}')
    if table.dtype.kind not in 'fiu' or table.ndim != 2 or len(table) != len(words):
      raise VocabError(path, 'vectors', f'expected float [{len(words)}, D], got {table.dtype} {table.shape}')
    keep = None if wanted is None else set(wanted)
    return {str(w): table[i].astype(np.float32) for i, w in enumerate(words.tolist())
            if keep is None or w in keep}
  if path.endswith('.npy'):
    table = _load_numpy(path)
    if table.dtype.kind not in 'fiu' or table.ndim != 2:
      raise VocabError(path, 'vectors', f'expected a float [K + 1, D] array, got {table.dtype} {table.shape}')
    return table.astype(np.float32)
  return read_glove_text(path, wanted, dim)


def vector_coverage(source: Union[str, VectorSource], words: Iterable[str]) -> set:
  """The words of `words` that `source` has a vector for ('planted' covers every word): pass
  `covered=coverage.__contains__` to `build_vocabulary`, as the original only counts GloVe words (Q28)."""
  words = set(words)
  if isinstance(source, str) and source == 'planted':
    return words
  if isinstance(source, (str, os.PathLike)):
    source = read_vector_file(source, wanted=words)
  if isinstance(source, np.ndarray):
    raise VocabError('<vectors>', 'vectors', 'an id-ordered .npy table has no words; build the vocabulary first')
  return words & set(source)


MISSING_WORDS = ('error', 'zero', 'planted')


def word_vector_table(vocab: Vocabulary, source: Union[str, VectorSource] = 'planted', *, dim: int = 300,
                      seed: int = 0, missing: str = 'error', path: str = '<vectors>') -> np.ndarray:
  """float32 [K + 1, D]: row 0 = zeros (PAD, as the original), row i = the vector of `vocab.words[i - 1]`.

  Args:
    vocab: the vocabulary.
    source: 'planted' (deterministic per word, the default), a file path (`read_vector_file`), a dict
      word -> vector or an array in id order.
    dim: the width of planted vectors (files give their own).
    seed: the seed of planted vectors.
    missing: a vocabulary word the source lacks: 'error' (the original cannot have one: its vocabulary only counts
      covered words), 'zero' or 'planted'.
    path: the name used in messages when `source` is not a path.

  Raises:
    VocabError: unknown `missing`, a width mismatch, or missing words under 'error' (one line, with a count).
  """
  if missing not in MISSING_WORDS:
    raise VocabError('config', 'text.missing_word', f'unknown policy {missing!r} (known: {", ".join(MISSING_WORDS)})')
  if isinstance(source, str) and source == 'planted':
    table = np.zeros((vocab.size, dim), np.float32)
    table[1:] = planted_word_vectors(vocab.words, dim, seed)
    return table
  if isinstance(source, (str, os.PathLike)):
    path = os.fspath(source)
    source = read_vector_file(path, wanted=vocab.words)
  if isinstance(source, np.ndarray):
    if source.ndim != 2 or len(source) != vocab.size:
      raise VocabError(path, 'vectors', f'an id-ordered table needs {vocab.size} rows (K + 1), got {source.shape}')
    table = source.astype(np.float32)
    table[0] = 0.0
    return table
  widths = {v.shape[-1] for v in source.values()}
  if len(widths) > 1:
    raise VocabError(path, 'vectors', f'vectors of different widths {sorted(widths)}')
  width = widths.pop() if widths else dim
  table = np.zeros((vocab.size, width), np.float32)
  absent = []
  for i, word in enumerate(vocab.words, start=1):
    vector = source.get(word)
    if vector is None:
      absent.append(word)
      if missing == 'planted':
        table[i] = planted_word_vector(word, width, seed)
    else:
      table[i] = vector
  if absent and missing == 'error':
    raise VocabError(path, 'vectors', f'{len(absent)} vocabulary word(s) have no vector (first: '
                     f'{", ".join(repr(w) for w in absent[:5])}); set text.missing_word to zero or planted')
  return table


def save_word_vectors(path: Union[str, os.PathLike], words: Sequence[str], vectors: np.ndarray) -> None:
  """Writes an npz {'words': unicode [N], 'vectors': float32 [N, D]} (readable without pickles)."""
  path = os.fspath(path)
  if os.path.dirname(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
  arrays = {'words': np.asarray(list(words), dtype=str), 'vectors': np.asarray(vectors, np.float32)}
  with zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_STORED) as archive:
    for key, array in arrays.items():
      info = zipfile.ZipInfo(key + '.npy', date_time=(1980, 1, 1, 0, 0, 0))
      info.external_attr = 0o644 << 16
      buffer = io.BytesIO()
      np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
      archive.writestr(info, buffer.getvalue())


# ----------------------------------------------------------------------------------------------------
# Everything at once, from the text switches
# ----------------------------------------------------------------------------------------------------
def build_text_side(train_sentences: Sequence[str], eval_sentences: Sequence[str] = (), *, top_k: int,
                    tokenizer: str = 'auto', pos_tagger: str = 'auto', tag_rule: str = 'substring',
                    count_eval: bool = True, word_vectors: str = 'planted', word_dim: int = 300,
                    word_vector_seed: int = 0, missing_word: str = 'error', require_vector: bool = True,
                    vocab: Optional[Vocabulary] = None,
                    sources: Sequence[str] = ()) -> Tuple[TextEncoder, np.ndarray]:
  """(encoder, word table [K + 1, D]) from the text switches; defaults reproduce the original (Q28/Q29).

  Args:
    train_sentences / eval_sentences: the sentences counted (eval ones only with count_eval: the shipped
      Charades glove.pkl counts train and test).
    top_k: kept words (1111 Charades-STA, 8000 ActivityNet).
    tokenizer / pos_tagger / tag_rule: `make_tokenizer`, `make_pos_weigher`.
    word_vectors: 'planted' or a vector file (`read_vector_file`); word_dim / word_vector_seed: planted vectors.
    missing_word: `word_vector_table`.
    require_vector: count only words the vector source covers (the original); False counts every word and
      fills absent vectors by `missing_word`.
    vocab: a saved vocabulary (a run's or an export's) to use instead of counting.
  """
  tok = make_tokenizer(tokenizer)
  if vocab is None:
    sentences = list(train_sentences) + (list(eval_sentences) if count_eval else [])
    covered = None
    if require_vector and word_vectors != 'planted':
      candidates = count_words(sentences, tok)
      covered = vector_coverage(word_vectors, candidates).__contains__
    vocab = build_vocabulary(sentences, top_k, tok, covered=covered, sources=sources)
  table = word_vector_table(vocab, word_vectors, dim=word_dim, seed=word_vector_seed, missing=missing_word)
  return TextEncoder(vocab, tok, make_pos_weigher(pos_tagger, tag_rule)), table
