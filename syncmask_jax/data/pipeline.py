"""One Grain pipeline: source -> transforms -> per-host batches -> global jax.Arrays.

Train. The batch sampler (grouping.py) fixes each epoch's *global* order as
(steps, global_batch) record indices. Host p of P reads columns
[p * B/P, (p+1) * B/P) of every global batch, through
`grain.MapDataset.source(indices).map(load + transform).batch(B/P)` and a threaded
(optionally multi-process) prefetch. An example's augmentation draws from
(seed, epoch, record index), so the global multiset of an epoch, pixels included,
is the same for any process count. `make_global_batch` turns the host batches into
global arrays with `jax.make_array_from_process_local_data`; the host slices are
contiguous, so the mesh's batch axis must list devices process by process (as
`jax.make_mesh` does).

The train iterator is a `grain.DatasetIterator` with JSON-able `get_state` /
`set_state` (Grain's Orbax handler saves it as is): the sampler's epoch, position in
global batches and, for `embedding` grouping, the recorded embeddings and the epoch's
order. Restoring rebuilds the epoch's dataset from that position (random access, so
nothing is replayed), also under another process count.

Bad records. Sources leave out (`skip_bad_records`) or refuse what their up-front
checks find; an image that passes its header check but fails to decode is refused at
read time naming the file, or with `skip_bad_records` replaced by the next record in
source order that reads (`_LoadTrain`). Both counts go to the log
(`log_skipped`), the iterator's state and `TrainIterator.skip_report()`.

Eval iterators read a source in order, once: the last global batch is padded with
copies of record 0 and `valid` (bool) marks the real rows.

Batch fields (host batch b = B/P): image float32 (b, S, S, 3), text_ids int32 (b, T),
text_mask int32 (b, T), product_id, category, subcategory, view, index int32 (b,);
SynthFashion adds gt_token_visible bool (b, T), gt_token_part int32 (b, T),
gt_patch_visible bool (b, N), gt_patch_part int32 (b, N);
`two_views` adds image_view2; FashionIQ queries add target_image and target_index;
COCO texts carry image_index; VQA questions add question_id, answer_ids, answer_mask
and answer_weight (transforms.py); caption records (parts captions, caption_images) add
image_id; eval adds valid.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
from typing import Any, Callable

from absl import flags
from absl import logging
import grain
import jax
import ml_collections
import numpy as np

from syncmask_jax import console, paths
from syncmask_jax import tokenizer as tokenizer_lib
from syncmask_jax.data import grouping
from syncmask_jax.data import synthfashion
from syncmask_jax.data import synthfashion_tgir
from syncmask_jax.data import synthfashion_vqa
from syncmask_jax.data import transforms
from syncmask_jax.data import vqa

DATASETS = ("synthfashion", "fashiongen", "fashioniq", "coco", "vqa", "synthfashion_vqa",
            "synthfashion_tgir")
# Which sources ("parts") a dataset has; the first is what training reads.
# Captioning's parts: "captions" (one record per caption), "caption_images" (per image).
PARTS = {"synthfashion": ("pairs", "captions", "caption_images"), "fashiongen": ("pairs",),
         "fashioniq": ("queries", "gallery"),
         "coco": ("pairs", "images", "texts", "captions", "caption_images"),
         "vqa": ("questions",), "synthfashion_vqa": ("questions",),
         "synthfashion_tgir": ("queries", "gallery")}
EVAL_SPLIT = {"synthfashion": "val", "fashiongen": "validation", "fashioniq": "val",
              "coco": "test", "vqa": "test", "synthfashion_vqa": "val",
              "synthfashion_tgir": "val"}
# The datasets generated from SynthFashion's products: its vocabulary by default.
SYNTHETIC = ("synthfashion", "synthfashion_vqa", "synthfashion_tgir")
_AUGMENT_TAG = 0xA06  # folds "augmentation" into the per-example seed
# Host-only field of train examples: the records replaced at read time (see _LoadTrain).
SKIPPED_FIELD = "skipped_records"
_MAX_REPLACEMENTS = 64  # unreadable records in a row before a train read gives up


# -- sources ------------------------------------------------------------------------------


def vocab_path(config: ml_collections.ConfigDict) -> str:
  """The vocabulary file a run reads: `config.data.vocab_path`, or (empty) the cached
  SynthFashion vocabulary for SynthFashion."""
  path = config.data.vocab_path
  if not path:
    if config.data.name not in SYNTHETIC:
      raise ValueError(f"config.data.vocab_path is empty: {config.data.name} needs a "
                       "BERT vocab.txt or tokenizer.json (the SynthFashion vocabulary "
                       "only knows the generator's words)")
    path = synthfashion.vocab_file()
  return path


def resolve_vocab(config: ml_collections.ConfigDict) -> tokenizer_lib.TokenInfo:
  """Sets `data.vocab_path` to the file read and `model.vocab_size` to its size (the
  values config.json records), unless a text checkpoint fixes the size."""
  path = vocab_path(config)
  tokens = tokenizer_lib.token_info(tokenizer_lib.Tokenizer.from_file(path))
  if config.model.vocab_size != tokens.vocab_size and config.model.text_init:
    raise ValueError(f"config.model.vocab_size={config.model.vocab_size} but the tokenizer "
                     f"{path} has {tokens.vocab_size} entries")
  config.data.vocab_path = path
  config.model.vocab_size = tokens.vocab_size
  return tokens


def make_tokenizer(config: ml_collections.ConfigDict) -> tokenizer_lib.Tokenizer:
  return tokenizer_lib.Tokenizer.from_file(vocab_path(config))


@functools.lru_cache(maxsize=16)
def _fashioniq(root: str, category: str, split: str, protocol: str, skip: bool,
               verify: bool, tfds_dir: str) -> tuple[Any, Any]:
  from syncmask_jax.data import fashioniq  # pylint: disable=g-import-not-at-top
  return fashioniq.sources(root, category, split, gallery_protocol=protocol,
                           skip_bad_records=skip, verify_images=verify,
                           tfds_data_dir=tfds_dir or None)


@functools.lru_cache(maxsize=16)
def _karpathy(root: str, name: str, split: str, part: str, image_root: str, skip: bool,
              verify: bool, tfds_dir: str, max_words: int) -> Any:
  from syncmask_jax.data import coco  # pylint: disable=g-import-not-at-top
  index, store = coco.load(root, name, image_root=image_root or None,
                           tfds_data_dir=tfds_dir or None)
  if part == "pairs":
    return coco.KarpathyPairs(index, store, split, skip_bad_records=skip,
                              verify_images=verify, max_words=max_words)
  images = coco.KarpathyImages(index, store, split, skip_bad_records=skip,
                               verify_images=verify, max_words=max_words)
  return images if part == "images" else coco.KarpathyTexts(images)


# VQA's JSON files are parsed and their images header-checked once per process.
_vqa = functools.lru_cache(maxsize=8)(vqa.load)


def detail_style(d: ml_collections.ConfigDict) -> synthfashion.DetailStyle:
  """SynthFashion's detail levers of a `config.data` block."""
  return synthfashion.DetailStyle(size=float(d.synth_detail_size),
                                  contrast=float(d.synth_detail_contrast),
                                  facing=bool(d.synth_facing_marks))


def _caption_source(config: ml_collections.ConfigDict, split: str, part: str, skip: bool,
                    verify: bool, tfds_dir: str) -> Any:
  """data/captions.py's sources: SynthFashion views or BLIP's COCO Karpathy files."""
  from syncmask_jax.data import captions  # pylint: disable=g-import-not-at-top
  d = config.data
  max_words = int(d.caption_max_words)
  if d.name == "synthfashion":
    kw = dict(num_products=d[f"synth_{split}_products"], seed=int(d.synth_seed),
              image_size=int(config.model.image_size),
              captions_per_view=int(d.captions_per_view), style=detail_style(d))
    if part == "captions":
      return captions.SynthFashionCaptionPairs(split, max_words=max_words, **kw)
    return captions.SynthFashionCaptionImages(split, **kw)
  return _karpathy_captions(d.root, split, part, d.image_root, max_words, skip, verify,
                            tfds_dir)


@functools.lru_cache(maxsize=16)
def _karpathy_captions(root: str, split: str, part: str, image_root: str, max_words: int,
                       skip: bool, verify: bool, tfds_dir: str) -> Any:
  from syncmask_jax.data import captions  # pylint: disable=g-import-not-at-top
  store = captions.load_store(root, image_root=image_root or None,
                              tfds_data_dir=tfds_dir or None)
  if part == "captions":
    return captions.KarpathyCaptionPairs(root, store, split, max_words=max_words,
                                         skip_bad_records=skip, verify_images=verify)
  return captions.KarpathyCaptionImages(root, store, split, skip_bad_records=skip,
                                        verify_images=verify)


def make_source(config: ml_collections.ConfigDict, split: str,
                part: str | None = None) -> Any:
  """The raw record source (random access, `len`, `metadata()`) of a split and part."""
  d = config.data
  name = d.name
  if name not in DATASETS:
    raise ValueError(f"config.data.name={name!r}: expected one of {DATASETS}")
  part = part or PARTS[name][0]
  if part not in PARTS[name]:
    raise ValueError(f"{name} has no part {part!r}: expected one of {PARTS[name]}")
  use_tfds = d.source_format == "tfds"
  tfds_dir = d.tfds_data_dir if use_tfds else ""
  if use_tfds and not tfds_dir:
    raise ValueError("config.data.source_format='tfds' needs config.data.tfds_data_dir")
  if name in ("fashiongen", "fashioniq", "coco", "vqa") and not (d.root or tfds_dir):
    raise ValueError(f"config.data.root is empty: where are the {name} files?")
  skip = bool(d.skip_bad_records)
  verify = bool(d.verify_images)
  if part in ("captions", "caption_images"):
    return _caption_source(config, split, part, skip, verify, tfds_dir)
  if name == "synthfashion":
    return synthfashion.SynthFashion(
        split, num_products=d[f"synth_{split}_products"], seed=int(d.synth_seed),
        image_size=int(config.model.image_size), patch_size=int(config.model.patch_size),
        style=detail_style(d))
  if name in ("vqa", "synthfashion_vqa"):  # split: "+"-joined parts (vqa.load)
    answers = dict(max_answers=int(d.max_answers))
    if name == "synthfashion_vqa":
      return synthfashion_vqa.source(split, d[f"synth_{split}_products"], int(d.synth_seed),
                                     int(config.model.image_size), **answers)
    return _vqa(d.root, split, image_root=d.image_root, vg_image_root=d.vg_image_root,
                single_answer_weight=float(d.single_answer_weight),
                minival_size=int(d.minival_size), skip_bad_records=skip,
                verify_images=verify, **answers)
  if name == "fashiongen":
    from syncmask_jax.data import fashiongen  # pylint: disable=g-import-not-at-top
    if use_tfds:
      return fashiongen.FashionGenTfds(tfds_dir, split)
    return fashiongen.source(d.root, split, skip_bad_records=skip)
  if name in ("fashioniq", "synthfashion_tgir"):
    if name == "synthfashion_tgir":  # fashioniq_category: a twin attribute
      triplets, gallery = synthfashion_tgir.sources(
          split, d[f"synth_{split}_products"], int(d.synth_seed),
          int(config.model.image_size), d.fashioniq_category, int(config.tgir.synth_twins),
          d.fashioniq_gallery)
    else:
      triplets, gallery = _fashioniq(d.root, d.fashioniq_category, split,
                                     d.fashioniq_gallery, skip, verify, tfds_dir)
    if part == "gallery" and gallery is None:
      raise ValueError(f"FashionIQ {split}: no gallery (no split list)")
    return triplets if part == "queries" else gallery
  return _karpathy(d.root, d.karpathy_name, split, part, d.image_root, skip, verify,
                   tfds_dir, int(d.caption_max_words))


def source_metadata(source: Any) -> dict[str, np.ndarray]:
  """Per-record product_id (and subcategory where known) without decoding images."""
  if hasattr(source, "metadata"):
    return source.metadata()
  records = [source[i] for i in range(len(source))]
  meta = {"product_id": np.array([r["product_id"] for r in records], np.int64)}
  if all("subcategory" in r for r in records):
    meta["subcategory"] = np.array([r["subcategory"] for r in records], np.int64)
  return meta


def skipped_records(source: Any) -> dict[str, Any]:
  """{"num_skipped": n, "skipped": [lines]}: the bad records `source` left out when it
  was built (`skip_bad_records`), from its `stats` (a union of sources: summed)."""
  if hasattr(source, "sources"):
    parts = [skipped_records(s) for s in source.sources]
    return {"num_skipped": sum(p["num_skipped"] for p in parts),
            "skipped": [line for p in parts for line in p["skipped"]]}
  stats = getattr(source, "stats", None) or {}
  where = stats.get("file", stats.get("origin", ""))
  # FashionGen lists {row, field, reason}; the image-folder datasets whole messages.
  lines = [x if isinstance(x, str) else
           f"{where}: record {x['row']}, field {x['field']!r}: {x['reason']}"
           for x in stats.get("skipped", [])]
  return {"num_skipped": int(stats.get("num_skipped", 0)), "skipped": lines}


def log_skipped(what: str, report: dict[str, Any]) -> None:
  """The skip count (and the listed records) of `report` in the run's log."""
  n = report["num_skipped"]
  (logging.warning if n else logging.info)(
      "%s: %d bad records skipped%s", what, n,
      "".join(f"\n  {line}" for line in report["skipped"]))


def make_sampler(config: ml_collections.ConfigDict, source: Any,
                 global_batch_size: int | None = None) -> grouping.GroupedBatchSampler:
  d = config.data
  meta = source_metadata(source)
  return grouping.GroupedBatchSampler(
      num_records=len(source), global_batch_size=global_batch_size or d.global_batch_size,
      seed=int(config.seed), grouping=d.grouping, product_id=meta.get("product_id"),
      subcategory=meta.get("subcategory"),
      subcategories_per_batch=int(d.subcategories_per_batch),
      views_per_batch=int(d.views_per_batch),
      search_size=int(d.embedding_search_size))


# -- per-example work ---------------------------------------------------------------------


class _LoadTrain:
  """record index -> transformed example; a class (not a closure) so it pickles.

  With `skip`, a record that fails at read time (transforms.BadRecord: an image that
  passed the header check but does not decode) is replaced by the next record in
  source order that reads; what was replaced travels in the example's
  SKIPPED_FIELD (JSON {index: error}, "" when nothing was) to the TrainIterator, which
  counts it. The replacement depends only on the data, never on when the record was
  hit, so a resumed run reads the same stream as an uninterrupted one.
  """

  def __init__(self, source: Any, transform: Callable, seed: int, epoch: int,
               skip: bool = False):
    self.source, self.transform, self.seed, self.epoch = source, transform, seed, epoch
    self.skip = skip

  def _example(self, index: int) -> dict[str, np.ndarray]:
    # Keyed by the record, not by the host or position: any process count, any
    # resume point draws the same augmentation.
    rng = np.random.default_rng([self.seed, _AUGMENT_TAG, self.epoch, index])
    return self.transform(self.source[index], rng)

  def __call__(self, index: Any) -> dict[str, np.ndarray]:
    index = int(index)
    skipped = {}
    for offset in range(min(_MAX_REPLACEMENTS, len(self.source))):
      candidate = (index + offset) % len(self.source)
      try:
        example = self._example(candidate)
      except transforms.BadRecord as e:
        if not self.skip:
          raise transforms.BadRecord(
              f"record {candidate}: {e} (skip_bad_records=True replaces such records "
              "with the next one)") from e
        skipped[candidate] = f"record {candidate}: {e}"
        continue
      example[SKIPPED_FIELD] = json.dumps(skipped) if skipped else ""
      return example
    raise transforms.BadRecord(f"records {index}..{candidate}: none of {len(skipped)} "
                               f"records in a row reads, the last: {skipped[candidate]}")


class _LoadEval:
  """position -> example with `valid`; negative positions are padding (record 0)."""

  def __init__(self, source: Any, transform: Callable):
    self.source, self.transform = source, transform

  def __call__(self, index: Any) -> dict[str, np.ndarray]:
    index = int(index)
    example = self.transform(self.source[max(index, 0)], None)
    example["valid"] = np.bool_(index >= 0)
    return example


def _host_slice(global_batch: int, process_index: int, process_count: int) -> slice:
  if global_batch % process_count:
    raise ValueError(f"global batch {global_batch} is not divisible by "
                     f"{process_count} processes")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, {process_count})")
  h = global_batch // process_count
  return slice(process_index * h, (process_index + 1) * h)


def _processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  return (jax.process_index() if process_index is None else int(process_index),
          jax.process_count() if process_count is None else int(process_count))


def _batches(indices: np.ndarray, load: Callable, host_batch: int,
             data: ml_collections.ConfigDict) -> grain.DatasetIterator:
  """A Grain iterator over host batches of `load(i)` for i in `indices` (in order)."""
  ds = grain.MapDataset.source(indices).map(load).batch(host_batch, drop_remainder=True)
  threads = int(data.read_threads)
  it = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=threads, prefetch_buffer_size=int(data.prefetch_batches)))
  if data.num_workers > 0:
    # Grain reads absl flags when it starts workers; outside `app.run` (tests,
    # notebooks) they are unparsed and reading them raises.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    # Batching happened before: worker processes split whole batches, so batch
    # composition does not depend on the worker count.
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(data.num_workers)))
  return iter(it)


# -- iterators ----------------------------------------------------------------------------


class TrainIterator(grain.DatasetIterator):
  """Endless host batches in the sampler's order; checkpointable, elastic."""

  def __init__(self, source: Any, transform: transforms.ExampleTransform,
               sampler: grouping.GroupedBatchSampler, tokenizer: tokenizer_lib.Tokenizer,
               data: ml_collections.ConfigDict, *, seed: int, process_index: int,
               process_count: int):
    super().__init__()
    self.source, self.transform, self.sampler = source, transform, sampler
    self.tokenizer, self._data, self._seed = tokenizer, data, seed
    self.process_index, self.process_count = process_index, process_count
    self._columns = _host_slice(sampler.global_batch_size, process_index, process_count)
    self._inner: grain.DatasetIterator | None = None
    self._built_skips = skipped_records(source)
    self.skipped: dict[int, str] = {}  # records this host replaced at read time
    log_skipped(f"train data {source!r}", self._built_skips)

  @property
  def num_examples(self) -> int:
    return len(self.source)

  @property
  def steps_per_epoch(self) -> int:
    return self.sampler.steps_per_epoch

  @property
  def global_batch_size(self) -> int:
    return self.sampler.global_batch_size

  @property
  def host_batch_size(self) -> int:
    return self.sampler.global_batch_size // self.process_count

  @property
  def epoch(self) -> int:
    return self.sampler.epoch

  def _open(self) -> grain.DatasetIterator:
    s = self.sampler
    order = s.epoch_order()[s.position:, self._columns]
    load = _LoadTrain(self.source, self.transform, self._seed, s.epoch,
                      skip=bool(self._data.skip_bad_records))
    return _batches(order.reshape(-1), load, self.host_batch_size, self._data)

  def _close_inner(self) -> None:
    if self._inner is not None:
      self._inner.close()
      self._inner = None

  def __next__(self) -> dict[str, np.ndarray]:
    if self._inner is None:
      self._inner = self._open()
    batch = next(self._inner)
    for replaced in batch.pop(SKIPPED_FIELD):
      for index, message in (json.loads(replaced) if replaced else {}).items():
        if int(index) not in self.skipped:
          logging.warning("bad record replaced by the next one that reads: %s", message)
          self.skipped[int(index)] = message
    self.sampler.advance()
    if self.sampler.position == 0:  # the epoch is over: the next one has a new order
      self._close_inner()
    return batch

  def skip_report(self) -> dict[str, Any]:
    """skipped_records of the source plus the records replaced at read time (each
    counted once, however many epochs meet it)."""
    b = self._built_skips
    return {"num_skipped": b["num_skipped"] + len(self.skipped),
            "skipped": b["skipped"] + [self.skipped[k] for k in sorted(self.skipped)]}

  def record_embeddings(self, indices: Any, embeddings: Any) -> None:
    """Hands the *global* batch's ITC embeddings back for `embedding` grouping.

    Every host passes the same global `index` and embeddings. Record before
    `get_state`, so a resumed run orders the next epoch from the same table.
    """
    self.sampler.record_embeddings(indices, embeddings)

  def get_state(self) -> dict[str, Any]:
    return {"sampler": self.sampler.get_state(),
            "skipped": {str(k): v for k, v in self.skipped.items()}}

  def set_state(self, state: dict[str, Any]) -> None:
    self._close_inner()
    self.sampler.set_state(state["sampler"])
    # Checkpoints from before read-time skips were counted have none.
    self.skipped = {int(k): v for k, v in state.get("skipped", {}).items()}

  def close(self) -> None:
    self._close_inner()
    super().close()

  def __str__(self) -> str:
    return (f"TrainIterator({self.source!r}, grouping={self.sampler.grouping}, "
            f"process {self.process_index}/{self.process_count})")


class EvalIterator(grain.DatasetIterator):
  """One ordered pass over a source in padded global batches, with `valid`."""

  def __init__(self, source: Any, transform: transforms.ExampleTransform,
               tokenizer: tokenizer_lib.Tokenizer, data: ml_collections.ConfigDict, *,
               global_batch_size: int, process_index: int, process_count: int):
    super().__init__()
    self.source, self.transform, self.tokenizer, self._data = source, transform, tokenizer, data
    self.global_batch_size = global_batch_size
    self.process_index, self.process_count = process_index, process_count
    self.host_batch_size = global_batch_size // process_count
    self.steps = math.ceil(len(source) / global_batch_size)
    positions = np.arange(self.steps * global_batch_size, dtype=np.int64)
    positions[len(source):] = -1
    columns = _host_slice(global_batch_size, process_index, process_count)
    self._order = positions.reshape(self.steps, global_batch_size)[:, columns]
    self.position = 0
    self._inner: grain.DatasetIterator | None = None
    log_skipped(f"eval data {source!r}", skipped_records(source))

  @property
  def num_examples(self) -> int:
    return len(self.source)

  @property
  def steps_per_epoch(self) -> int:
    return self.steps

  def __next__(self) -> dict[str, np.ndarray]:
    if self.position >= self.steps:
      raise StopIteration
    if self._inner is None:
      self._inner = _batches(self._order[self.position:].reshape(-1),
                             _LoadEval(self.source, self.transform),
                             self.host_batch_size, self._data)
    batch = next(self._inner)
    self.position += 1
    return batch

  def get_state(self) -> dict[str, Any]:
    return {"position": self.position}

  def set_state(self, state: dict[str, Any]) -> None:
    if self._inner is not None:
      self._inner.close()
      self._inner = None
    self.position = int(state["position"])

  def close(self) -> None:
    if self._inner is not None:
      self._inner.close()
      self._inner = None
    super().close()


def make_train_iterator(config: ml_collections.ConfigDict, split: str = "train",
                        process_index: int | None = None, process_count: int | None = None,
                        *, part: str | None = None, source: Any = None,
                        tokenizer: tokenizer_lib.Tokenizer | None = None) -> TrainIterator:
  """Endless shuffled/grouped, augmented host batches of `config.data`'s train split."""
  process_index, process_count = _processes(process_index, process_count)
  source = source if source is not None else make_source(config, split, part)
  tokenizer = tokenizer or make_tokenizer(config)
  transform = transforms.from_config(config, tokenizer, train=True)
  return TrainIterator(source, transform, make_sampler(config, source), tokenizer,
                       config.data, seed=int(config.seed), process_index=process_index,
                       process_count=process_count)


def make_eval_source(config: ml_collections.ConfigDict, split: str | None = None,
                     part: str | None = None) -> Any:
  """The raw eval records (for protocols that pick records, e.g. FashionGen 1+100)."""
  return make_source(config, split or EVAL_SPLIT[config.data.name], part)


def make_eval_iterator(config: ml_collections.ConfigDict, split: str | None = None,
                       part: str | None = None, process_index: int | None = None,
                       process_count: int | None = None, *, source: Any = None,
                       tokenizer: tokenizer_lib.Tokenizer | None = None,
                       global_batch_size: int | None = None) -> EvalIterator:
  """Every record of an eval split exactly once, in order, padded, with `valid`."""
  process_index, process_count = _processes(process_index, process_count)
  source = source if source is not None else make_eval_source(config, split, part)
  tokenizer = tokenizer or make_tokenizer(config)
  transform = transforms.from_config(config, tokenizer, train=False)
  batch = global_batch_size or int(config.data.eval_batch_size)
  return EvalIterator(source, transform, tokenizer, config.data, global_batch_size=batch,
                      process_index=process_index, process_count=process_count)


# -- global arrays ------------------------------------------------------------------------


def make_global_batch(host_batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh,
                      sharding: jax.sharding.Sharding | dict[str, Any] | None = None
                      ) -> dict[str, jax.Array]:
  """Host batches of every process -> global arrays sharded on the batch axis.

  `sharding` defaults to the leading dimension split over the mesh's `data` and
  `fsdp` axes (the `batch` rule of config_lib.DEFAULT_AXIS_RULES); a dict gives one
  sharding per field.
  """
  if sharding is None:
    axes = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axes))
  out = {}
  for key, value in host_batch.items():
    s = sharding[key] if isinstance(sharding, dict) else sharding
    out[key] = jax.make_array_from_process_local_data(s, np.asarray(value))
  return out


# -- TFDS conversion ----------------------------------------------------------------------


def build_tfds(name: str, manual_dir: str, data_dir: str, *, config: str | None = None,
               skip_bad_records: bool | None = None) -> str:
  """Converts a dataset once to ArrayRecord (`tfds build` without its CLI).

  `name`: fashiongen | fashioniq | coco; `config`: the FashionIQ category or the
  Karpathy set (coco | flickr30k). Returns the dataset's directory. TFDS 4.9's
  `tfds build` CLI imports apache_beam; this needs only the builders.
  """
  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds
  from syncmask_jax.data import coco, fashiongen, fashioniq
  # pylint: enable=g-import-not-at-top
  builders = {"fashiongen": fashiongen.Fashiongen, "fashioniq": fashioniq.FashionIq,
              "coco": coco.KarpathyRetrieval}
  if name not in builders:
    raise ValueError(f"no TFDS builder for {name!r}: expected one of {sorted(builders)}")
  cls = builders[name]
  kwargs = {} if skip_bad_records is None else {"skip_bad_records": skip_bad_records}
  builder = cls(data_dir=data_dir, config=config, **kwargs)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder.data_dir


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      description="Convert a dataset to ArrayRecord: python -m syncmask_jax.data.pipeline "
                  "fashiongen --manual_dir M --data_dir D")
  parser.add_argument("name", choices=("fashiongen", "fashioniq", "coco"))
  parser.add_argument("--manual_dir", required=True)
  parser.add_argument("--data_dir", required=True)
  parser.add_argument("--config", default=None,
                      help="fashioniq: dress | shirt | toptee; coco: coco | flickr30k")
  parser.add_argument("--skip_bad_records", default=None,
                      type=lambda s: s.lower() in ("1", "true", "yes"))
  args = parser.parse_args(argv)
  if not paths.path(args.manual_dir).is_dir():  # TFDS would fail on an assert, later
    parser.error(f"--manual_dir {args.manual_dir}: no such directory (it holds the "
                 "dataset's downloaded files)")
  configs = [args.config] if args.config else {
      "fashiongen": [None], "fashioniq": ["dress", "shirt", "toptee"],
      "coco": ["coco", "flickr30k"]}[args.name]
  for config in configs:
    print(build_tfds(args.name, args.manual_dir, args.data_dir, config=config,
                     skip_bad_records=args.skip_bad_records))


if __name__ == "__main__":
  console.one_line_errors(main)()
