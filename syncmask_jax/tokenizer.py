"""BERT-uncased WordPiece tokenization (HF `tokenizers`), text cleaning, trained vocabularies,
and the special-token ids the step reads (`TokenInfo`, `text_maskable`).

`Tokenizer.from_file` takes a BERT `vocab.txt` (built into the BERT-uncased pipeline:
BertNormalizer lower-casing, accent stripping and CJK splitting, BertPreTokenizer,
WordPiece, [CLS] ... [SEP]) or a full `tokenizer.json`, used as saved.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import os
import re
import threading
from typing import Callable, Sequence

import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from syncmask_jax import paths

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# A tag: "<" then a letter or "/" (so "size < 5" and "<3" stay text), up to ">".
_HTML_TAG = re.compile(r"<\s*/?\s*[a-zA-Z][^<>]*>")
_WHITESPACE = re.compile(r"\s+")


def _bert_uncased_normalizer() -> normalizers.Normalizer:
  # strip_accents=None follows `lowercase`, as BERT uncased does.
  return normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                    strip_accents=None, lowercase=True)


def clean_text(text: str | bytes) -> str:
  """Listing text -> plain text: latin-1 bytes decoded, HTML unescaped and de-tagged.

  FashionGen stores latin-1 bytes with HTML such as "<br>" and "&amp;". Raises
  ValueError if nothing is left; callers add the file or record name.
  """
  if isinstance(text, (bytes, bytearray, memoryview)):
    text = bytes(text).decode("latin-1")
  if not isinstance(text, str):
    raise ValueError(f"text must be str or bytes, got {type(text).__name__}")
  # Unescape first so an escaped tag ("&lt;br&gt;") is removed as well.
  text = _HTML_TAG.sub(" ", html.unescape(text))
  text = _WHITESPACE.sub(" ", text).strip()
  if not text:
    raise ValueError("text is empty after cleaning (only whitespace or HTML tags)")
  return text


class Tokenizer:
  """A WordPiece tokenizer with [PAD] [UNK] [CLS] [SEP] [MASK], encoding to numpy."""

  def __init__(self, tokenizer: tokenizers.Tokenizer):
    ids = {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
    missing = [t for t, i in ids.items() if i is None]
    if missing:
      raise ValueError(f"tokenizer vocabulary lacks special tokens {missing}")
    self._tokenizer = tokenizer
    self._ids = ids
    # One configured copy per max_len: truncation/padding are tokenizer state, and
    # mutating a shared tokenizer per call would race between threads.
    self._by_len: dict[int, tokenizers.Tokenizer] = {}
    self._lock = threading.Lock()

  @classmethod
  def from_file(cls, path: str) -> Tokenizer:
    """A `vocab.txt` (one token per line, line number = id) or a `tokenizer.json`."""
    if not paths.path(path).is_file():
      raise FileNotFoundError(f"tokenizer file not found: {path}")
    # Read through the path layer (a vocabulary in a bucket): `tokenizers` opens only
    # local files by name.
    text = paths.path(path).read_text(encoding="utf-8")
    if path.endswith(".json"):
      return cls(tokenizers.Tokenizer.from_str(text))
    # WordPiece.read_file's parse: one token a line ("\n" only), right-trimmed, the line
    # number its id.
    lines = text.split("\n")
    if lines[-1] == "":
      lines.pop()
    vocab = {t.rstrip(): i for i, t in enumerate(lines)}
    for t in ("[CLS]", "[SEP]", "[UNK]"):
      if t not in vocab:
        raise ValueError(f"{path}: vocabulary lacks {t}")
    tok = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token="[UNK]",
                                                max_input_chars_per_word=100))
    tok.normalizer = _bert_uncased_normalizer()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.BertProcessing(("[SEP]", vocab["[SEP]"]),
                                                   ("[CLS]", vocab["[CLS]"]))
    tok.decoder = decoders.WordPiece(prefix="##")
    return cls(tok)

  def __getstate__(self) -> dict:
    return {"json": self._tokenizer.to_str()}

  def __setstate__(self, state: dict) -> None:
    self.__init__(tokenizers.Tokenizer.from_str(state["json"]))

  @property
  def vocab_size(self) -> int:
    return self._tokenizer.get_vocab_size(with_added_tokens=True)

  @property
  def pad_id(self) -> int:
    return self._ids["[PAD]"]

  @property
  def unk_id(self) -> int:
    return self._ids["[UNK]"]

  @property
  def cls_id(self) -> int:
    return self._ids["[CLS]"]

  @property
  def sep_id(self) -> int:
    return self._ids["[SEP]"]

  @property
  def mask_id(self) -> int:
    return self._ids["[MASK]"]

  def token_to_id(self, token: str) -> int | None:
    return self._tokenizer.token_to_id(token)

  def id_to_token(self, i: int) -> str | None:
    return self._tokenizer.id_to_token(i)

  def decode(self, ids: Sequence[int]) -> str:
    return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

  def _configured(self, max_len: int) -> tokenizers.Tokenizer:
    with self._lock:
      tok = self._by_len.get(max_len)
      if tok is None:
        tok = tokenizers.Tokenizer.from_str(self._tokenizer.to_str())
        # Truncation counts the special tokens, so a cut text still ends with [SEP].
        tok.enable_truncation(max_length=max_len)
        tok.enable_padding(length=max_len, pad_id=self.pad_id, pad_token="[PAD]")
        self._by_len[max_len] = tok
      return tok

  def encode(self, texts: Sequence[str], max_len: int) -> dict[str, np.ndarray]:
    """Batch-encodes texts to fixed length.

    Texts should already be cleaned (`clean_text`): `offsets` index into them.
    Returns numpy arrays: ids int32 (n, max_len), padded with pad_id, truncated
    keeping [SEP] last; mask int32 (n, max_len), 1 on real tokens; offsets int32
    (n, max_len, 2), [start, end) characters, (0, 0) on [CLS]/[SEP]/[PAD];
    special bool (n, max_len), True on [CLS]/[SEP]/[PAD].
    """
    if max_len < 2:
      raise ValueError(f"max_len={max_len}: needs room for [CLS] and [SEP]")
    texts = list(texts)
    n = len(texts)
    if not n:
      return dict(ids=np.zeros((0, max_len), np.int32), mask=np.zeros((0, max_len), np.int32),
                  offsets=np.zeros((0, max_len, 2), np.int32),
                  special=np.zeros((0, max_len), bool))
    encodings = self._configured(max_len).encode_batch(texts)
    ids = np.array([e.ids for e in encodings], np.int32)
    mask = np.array([e.attention_mask for e in encodings], np.int32)
    offsets = np.array([e.offsets for e in encodings], np.int32).reshape(n, max_len, 2)
    special = np.array([e.special_tokens_mask for e in encodings], bool) | (mask == 0)
    offsets[special] = 0
    return dict(ids=ids, mask=mask, offsets=offsets, special=special)


# ---------------------------------------------------------------------------
# Vocabularies trained for a word list (SynthFashion's: `synthfashion.vocab_file`).

_VOCAB_TRAINER_SIZE = 4096  # above what the corpus can fill: every word ends up whole
_VOCAB_VERSION = 1  # bump when train_wordpiece changes what it keeps


def default_cache_dir() -> str:
  return os.environ.get("SYNCMASK_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "syncmask_jax")


def _whole_words(words: Sequence[str]) -> list[str]:
  """The BERT-uncased pre-tokens of `words` ("Women's" -> "women", "'", "s")."""
  norm = _bert_uncased_normalizer()
  pre = pre_tokenizers.BertPreTokenizer()
  return [p for w in words for p, _ in pre.pre_tokenize_str(norm.normalize_str(w))]


def train_wordpiece(corpus: Sequence[str], words: Sequence[str]) -> list[str]:
  """A BERT-uncased WordPiece vocabulary for `corpus` in which every word of `words` is
  one token; ids in list order, the special tokens first ([PAD] = 0).

  The `tokenizers` trainer breaks ties between equally frequent merges by a hash order
  that changes from process to process, so its intermediate subwords differ between
  runs. Kept is only the tie-free part of what it learns: the special tokens, its
  alphabet (characters and ##characters) and the whole words, each group sorted, so
  every process, host and run writes the same file.
  """
  tok = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
  tok.normalizer = _bert_uncased_normalizer()
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  trainer = trainers.WordPieceTrainer(vocab_size=_VOCAB_TRAINER_SIZE, min_frequency=0,
                                      special_tokens=list(SPECIAL_TOKENS),
                                      continuing_subword_prefix="##", show_progress=False)
  tok.train_from_iterator(list(corpus) + list(words), trainer=trainer)
  learned = set(tok.get_vocab()) - set(SPECIAL_TOKENS)
  whole = set(_whole_words(words))
  missing = sorted(whole - learned)
  if missing:
    raise RuntimeError(f"the trainer did not learn these words whole: {missing}")
  chars = sorted(t for t in learned if len(t) == 1)
  suffix_chars = sorted(t for t in learned if t.startswith("##") and len(t) == 3)
  return [*SPECIAL_TOKENS, *chars, *suffix_chars, *sorted(whole - set(chars))]


def cached_vocab(name: str, words: Sequence[str], corpus: Callable[[], Sequence[str]],
                 cache_dir: str | None = None) -> str:
  """Path of a WordPiece `vocab.txt` for `words` (`train_wordpiece` over `corpus()`),
  trained once and cached.

  The file lives in `<cache_dir>/<name>-<hash>/`, the hash taken over the word list
  (all `train_wordpiece` keeps depends on it alone), so a grammar with new words trains
  a new vocabulary and an unchanged one reuses the file. `cache_dir` defaults to
  $SYNCMASK_CACHE or ~/.cache/syncmask_jax.
  """
  key = hashlib.sha256(json.dumps(
      [list(words), list(SPECIAL_TOKENS), _VOCAB_VERSION]).encode()).hexdigest()[:16]
  folder = os.path.join(cache_dir or default_cache_dir(), f"{name}-{key}")
  path = os.path.join(folder, "vocab.txt")
  if paths.path(path).is_file():
    return path
  tokens = train_wordpiece(corpus(), words)
  paths.path(folder).mkdir(parents=True, exist_ok=True)
  # paths.write_text writes then renames: concurrent processes (hosts, workers) never
  # read a partial file.
  paths.write_text(path, "".join(t + "\n" for t in tokens))
  return path


# ---------------------------------------------------------------------------
# What the train step and the evaluators need of the vocabulary.


@dataclasses.dataclass(frozen=True)
class TokenInfo:
  """Special-token ids the step needs (from the tokenizer of the data pipeline)."""
  vocab_size: int
  pad_id: int
  cls_id: int
  sep_id: int
  mask_id: int
  # First id of an ordinary word: MLM's random replacements are drawn from
  # [min_random_id, vocab_size) so they are never special tokens.
  min_random_id: int


def token_info(tokenizer: Tokenizer) -> TokenInfo:
  special = [tokenizer.pad_id, tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id,
             tokenizer.unk_id]
  return TokenInfo(
      vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id, cls_id=tokenizer.cls_id,
      sep_id=tokenizer.sep_id, mask_id=tokenizer.mask_id, min_random_id=max(special) + 1)


def text_maskable(text_ids, text_mask, tokens: TokenInfo):
  """Tokens MLM may mask: real tokens other than [CLS]/[SEP] (and never [PAD]).
  Elementwise, so it serves jax and numpy arrays alike."""
  return (text_mask.astype(bool) & (text_ids != tokens.cls_id) & (text_ids != tokens.sep_id)
          & (text_ids != tokens.pad_id))
