"""COCO / Flickr30K retrieval (Karpathy splits, as ALBEF ships them) and a TFDS builder.

Files: `{name}_{split}.json` with name coco | flickr30k and split train | val | test,
images under an image root (`image` paths are relative to it, e.g.
`val2014/COCO_val2014_000000391895.jpg` or `flickr30k-images/1000092795.jpg`):
  train  list of {image, caption}           one (image, caption) pair per entry
  eval   list of {image, caption: [5]}      one image with its captions (COCO has a
                                            few images with 6 or 7; all are kept)

Sources:
  `KarpathyPairs`  (train) image, text, product_id (the image's id: the other
                   captions of an image are positives, not negatives), index;
  `KarpathyImages` (eval)  image, product_id, index: one record per image, file order;
  `KarpathyTexts`  (eval)  text, image_index (its image's position in KarpathyImages:
                   i2t hits on any of them), product_id, index.
Image ids are ranks in the sorted union of every image path the splits mention.

Bad input: a missing or undecodable image (a header check at construction) or an
empty caption is an error naming the file, record (entry) and field; with
`skip_bad_records=True` it is counted in `stats` and left out (an image with all of
its captions).

TFDS: configs coco and flickr30k, one split `images` (path + original bytes), the
annotation lists in the dataset's metadata. `manual_dir` holds the JSON files and
the images at their relative paths (symlink the image folders):

  python -m syncmask_jax.data.pipeline coco --config=coco --manual_dir=/path/to/coco \\
      --data_dir=/path/to/tfds          (--config=flickr30k for Flickr30K)

or, with apache-beam installed, `tfds build karpathy_retrieval/coco
--imports=syncmask_jax.data.coco --manual_dir=... --data_dir=...`.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from syncmask_jax import paths
from syncmask_jax.data.image_folder import BadRecords, ImageChecks, ImageFolderBuilder
from syncmask_jax.data.transforms import ImageFiles

NAMES = ("coco", "flickr30k")
SPLITS = ("train", "val", "test")


def annotation_file(root: str, name: str, split: str) -> str:
  return os.path.join(root, f"{name}_{split}.json")


def read_entries(path: str, fields: tuple[str, ...]) -> list[dict[str, Any]]:
  """A JSON list of records, each with `fields`; errors name the file and entry."""
  try:
    entries = paths.read_json(path)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from e
  if not isinstance(entries, list):
    raise ValueError(f"{path}: expected a JSON list of records, got "
                     f"{type(entries).__name__}")
  for i, a in enumerate(entries):
    if not isinstance(a, dict):
      raise ValueError(f"{path}: entry {i}: expected an object, got {type(a).__name__}")
    for field in fields:
      if field not in a:
        raise ValueError(f"{path}: entry {i}: missing field {field!r}")
  return entries


class KarpathyIndex:
  """The annotation lists of one dataset, per split."""

  def __init__(self, name: str, annotations: dict[str, list[dict[str, Any]]], origin: str):
    if name not in NAMES:
      raise ValueError(f"Karpathy dataset {name!r}: expected one of {NAMES}")
    self.name, self.annotations, self.origin = name, annotations, origin
    every = {a["image"] for entries in annotations.values() for a in entries}
    self.image_ids = {p: i for i, p in enumerate(sorted(every))}

  @classmethod
  def from_root(cls, root: str, name: str) -> KarpathyIndex:
    annotations = {}
    for split in SPLITS:
      path = annotation_file(root, name, split)
      if paths.path(path).exists():
        annotations[split] = read_entries(path, ("image", "caption"))
    if not annotations:
      raise FileNotFoundError(f"{root}: no {name}_{{train,val,test}}.json")
    return cls(name, annotations, origin=root)

  def entries(self, split: str) -> list[dict[str, Any]]:
    if split not in self.annotations:
      raise FileNotFoundError(f"{self.file(split)}: missing")
    return self.annotations[split]

  def file(self, split: str) -> str:
    return annotation_file(self.origin, self.name, split)


def _captions(entry: dict[str, Any]) -> list[str]:
  c = entry["caption"]
  return [c] if isinstance(c, str) else list(c)


_ALBEF_REMOVED = re.compile(r"([,.'!?\"()*#:;~])")
_SPACES = re.compile(r"\s{2,}")


def pre_caption(caption: str, max_words: int) -> str:
  """ALBEF's caption cleaning (its `pre_caption`, retrieval and pretraining data): lower
  case, the marks ,.'!?"()*#:; and ~ removed, '-' and '/' to spaces, '<person>' to
  'person', runs of spaces to one, stripped, the first `max_words` words. (BLIP's, for
  captioning, keeps ,'? and makes the others spaces: `captions.pre_caption`.)"""
  caption = _ALBEF_REMOVED.sub("", caption.lower())
  caption = caption.replace("-", " ").replace("/", " ").replace("<person>", "person")
  words = _SPACES.sub(" ", caption).rstrip("\n").strip(" ").split(" ")
  return " ".join(words[:max_words])


def _clean_captions(entry: dict[str, Any], max_words: int) -> list[str]:
  """The entry's captions after `pre_caption` ("" where nothing is left)."""
  return [pre_caption(c, max_words) if isinstance(c, str) else "" for c in _captions(entry)]


class KarpathyPairs:
  """One record per (image, caption) pair of a split (train format; eval is expanded)."""

  def __init__(self, index: KarpathyIndex, store: Any, split: str = "train", *,
               skip_bad_records: bool = False, verify_images: bool = True,
               max_words: int = 30):
    self.index, self.store = index, store
    bad = BadRecords(index.file(split), skip_bad_records)
    image_problem = ImageChecks(store, verify_images)
    self.pairs: list[tuple[str, str]] = []
    for i, entry in enumerate(index.entries(split)):
      problem = image_problem(entry["image"])
      if problem is not None:
        bad(i, "image", problem)
        continue
      for caption in _clean_captions(entry, max_words):
        if caption:
          self.pairs.append((entry["image"], caption))
        else:
          bad(i, "caption", "empty caption (after ALBEF's pre_caption)")
    self.stats = bad.stats
    self.stats["num_records"] = len(self.pairs)

  def __len__(self) -> int:
    return len(self.pairs)

  def __getitem__(self, i: int) -> dict[str, Any]:
    i = int(i)
    path, caption = self.pairs[i]
    return {"image": self.store.load(path), "text": caption,
            "product_id": np.int64(self.index.image_ids[path]), "index": np.int64(i)}

  def metadata(self) -> dict[str, np.ndarray]:
    return {"product_id": np.array([self.index.image_ids[p] for p, _ in self.pairs],
                                   np.int64)}


class KarpathyImages:
  """The images of an eval split, one record each, in file order."""

  def __init__(self, index: KarpathyIndex, store: Any, split: str, *,
               skip_bad_records: bool = False, verify_images: bool = True,
               max_words: int = 30):
    self.index, self.store, self.split = index, store, split
    bad = BadRecords(index.file(split), skip_bad_records)
    image_problem = ImageChecks(store, verify_images)
    self.paths: list[str] = []
    self.captions: list[list[str]] = []  # per kept image, its non-empty captions
    for i, entry in enumerate(index.entries(split)):
      problem = image_problem(entry["image"])
      if problem is not None:
        bad(i, "image", problem)
        continue
      kept = []
      for caption in _clean_captions(entry, max_words):
        if caption:
          kept.append(caption)
        else:
          bad(i, "caption", "empty caption (after ALBEF's pre_caption)")
      self.paths.append(entry["image"])
      self.captions.append(kept)
    self.stats = bad.stats
    self.stats["num_records"] = len(self.paths)

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, i: int) -> dict[str, Any]:
    i = int(i)
    path = self.paths[i]
    return {"image": self.store.load(path),
            "product_id": np.int64(self.index.image_ids[path]), "index": np.int64(i)}

  def metadata(self) -> dict[str, np.ndarray]:
    return {"product_id": np.array([self.index.image_ids[p] for p in self.paths], np.int64)}


class KarpathyTexts:
  """The captions of an eval split, one record each, with their image's position."""

  def __init__(self, images: KarpathyImages):
    self.images = images
    self.stats = images.stats  # the images' skips take their captions along
    self.items = [(caption, j) for j, captions in enumerate(images.captions)
                  for caption in captions]

  def __len__(self) -> int:
    return len(self.items)

  def __getitem__(self, i: int) -> dict[str, Any]:
    i = int(i)
    caption, j = self.items[i]
    return {"text": caption, "image_index": np.int64(j), "index": np.int64(i),
            "product_id": np.int64(self.images.index.image_ids[self.images.paths[j]])}

  def metadata(self) -> dict[str, np.ndarray]:
    ids = self.images.metadata()["product_id"]
    return {"product_id": np.array([ids[j] for _, j in self.items], np.int64)}


def load(root: str, name: str, *, image_root: str | None = None,
         tfds_data_dir: str | None = None) -> tuple[KarpathyIndex, Any]:
  """(index, image store) from files under `root` (images under `image_root`, default

  `root`) or from the TFDS build in `tfds_data_dir`.
  """
  if tfds_data_dir:
    builder = KarpathyRetrieval(config=name, data_dir=tfds_data_dir)
    index = KarpathyIndex(name, builder.info.metadata["annotations"],
                          origin=builder.data_dir)
    return index, builder.image_store()
  return KarpathyIndex.from_root(root, name), ImageFiles(image_root or root)


# -- TFDS builder -----------------------------------------------------------------------


class KarpathyRetrieval(ImageFolderBuilder):
  """COCO / Flickr30K images (Karpathy splits) as ArrayRecord; annotations in metadata."""

  name = "karpathy_retrieval"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Images as shipped; ALBEF annotation lists in metadata."}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n) for n in NAMES]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Place ALBEF's {coco,flickr30k}_{train,val,test}.json in `manual_dir`, with the "
      "images at the relative paths their `image` fields name (symlink train2014/, "
      "val2014/ or flickr30k-images/ there).")
  KEY, KEYS_METADATA = "path", "images"
  HOMEPAGE = "https://github.com/salesforce/ALBEF"

  def _read_manual_dir(self, root: str):
    index = KarpathyIndex.from_root(root, self.builder_config.name)
    return ImageFiles(root), index.image_ids, {"annotations": index.annotations}
