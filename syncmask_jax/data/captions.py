"""Image captioning data: COCO Karpathy splits as BLIP ships them, and SynthFashion views.

COCO files under `root` (images under `image_root`, default `root`; `image` paths are
relative to it, e.g. `val2014/COCO_val2014_000000391895.jpg`):
  coco_karpathy_train.json       list of {image, caption, image_id}: one per caption
  coco_karpathy_{val,test}.json  list of {image, caption: [refs]}: one per image
  coco_karpathy_{val,test}_gt.json
                                 COCO caption format, what the metrics score against:
                                 {images: [{id}], annotations: [{image_id, caption, id}]}
The integer image id is the last `_` field of the file name, as BLIP derives it
(`COCO_val2014_000000391895.jpg` -> 391895); the train file's own `image_id`
("coco_391895") is not read. With `tfds_data_dir`, images come from the TFDS build of
the retrieval set (coco.KarpathyRetrieval, config coco): ALBEF's and BLIP's Karpathy
files name the same image paths.

SynthFashion: each view of a product is an image, captioned by what that view shows
(`synthfashion.view_caption`: no gender, no fabric, no detail of another side; the
product description names those and no caption model could see them). Caption k of a
view draws from (seed, product_id, view, k), so a view has as many distinct wordings as
`captions_per_view` asks, the references of the held-out (val / test) products and the
training captions of the train products alike. A view's image id is its record index in
`synthfashion.SynthFashion(split, ...)`.

Sources (Grain random access: `len`, `__getitem__`, `metadata()`):
  train `KarpathyCaptionPairs`, `SynthFashionCaptionPairs`: one record per caption:
        image, text (`pre_caption`), image_id int64, product_id int64, index int64;
  eval  `KarpathyCaptionImages`, `SynthFashionCaptionImages`: one record per image:
        image, image_id int64, product_id int64, index int64; `references()` gives
        {image_id: [captions]} (raw text: the metric's PTB tokenizer normalises it).
product_id is what the grouped batch sampler reads: the image for COCO, the product
(whose views share one description) for SynthFashion.

Bad input (COCO): a missing or undecodable image, an empty caption, or an image name
without an id is an error naming the file, record and field; with
`skip_bad_records=True` it is counted in `stats` and left out.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from syncmask_jax import config_lib, paths
from syncmask_jax.data import coco
from syncmask_jax.data import synthfashion
from syncmask_jax.data.image_folder import BadRecords, ImageChecks
from syncmask_jax.data.transforms import ImageFiles

# The library's keyword defaults are the config's (config_lib.default_config).
_DEFAULTS = config_lib.default_config().data
CAPTIONS_PER_VIEW = _DEFAULTS.captions_per_view
MAX_WORDS = _DEFAULTS.caption_max_words
_CAPTION_TAG = 0xCA  # folds "caption" into a SynthFashion caption's seed


def caption_file(root: str, split: str) -> str:
  return os.path.join(root, f"coco_karpathy_{split}.json")


def gt_file(root: str, split: str) -> str:
  return os.path.join(root, f"coco_karpathy_{split}_gt.json")


# BLIP's pre_caption: these characters become spaces; the rest of the punctuation stays.
_BLIP_PUNCTUATION = re.compile(r"([.!\"()*#:;~])")
_BLIP_SPACES = re.compile(r"\s{2,}")


def pre_caption(caption: str, max_words: int = MAX_WORDS) -> str:
  """BLIP's caption cleaning: lower case, `.!"()*#:;~` to spaces, runs of whitespace to
  one space, stripped, the first `max_words` space-separated words."""
  caption = _BLIP_SPACES.sub(" ", _BLIP_PUNCTUATION.sub(" ", caption.lower()))
  words = caption.rstrip("\n").strip(" ").split(" ")
  return " ".join(words[:max_words])


def image_id_from_path(path: str) -> int:
  """BLIP's image id: the last `_` field of the file name without its extension."""
  stem = os.path.splitext(os.path.basename(path))[0]
  field = stem.rsplit("_", 1)[-1]
  if not field.isdigit():
    raise ValueError(f"image {path!r}: no numeric id after the last '_' of the file "
                     "name (COCO's are COCO_<split>2014_<id>.jpg)")
  return int(field)


# -- ground truth in COCO caption format --------------------------------------------------


def coco_gt(references: Mapping[int, Sequence[str]]) -> dict[str, Any]:
  """{image_id: [captions]} -> the COCO caption-format ground truth."""
  images, annotations = [], []
  for image_id, captions in references.items():
    images.append({"id": int(image_id)})
    for caption in captions:
      annotations.append({"image_id": int(image_id), "caption": caption,
                          "id": len(annotations)})
  return {"images": images, "annotations": annotations}


def write_gt(path: str, references: Mapping[int, Sequence[str]]) -> None:
  paths.write_json(path, coco_gt(references), indent=None)


def read_gt(path: str) -> dict[int, list[str]]:
  """A COCO caption-format ground-truth file -> {image_id: [captions]}, every image of
  `images` listed (with no caption it is an error)."""
  gt = paths.read_json(path)
  for field in ("images", "annotations"):
    if not isinstance(gt, dict) or not isinstance(gt.get(field), list):
      raise ValueError(f"{path}: expected a COCO caption file with a list {field!r}")
  references: dict[int, list[str]] = {}
  for i, image in enumerate(gt["images"]):
    if not isinstance(image, dict) or not isinstance(image.get("id"), int):
      raise ValueError(f"{path}: images[{i}]: field 'id' missing or not an integer")
    references[image["id"]] = []
  for i, a in enumerate(gt["annotations"]):
    for field, kind in (("image_id", int), ("caption", str)):
      if not isinstance(a, dict) or not isinstance(a.get(field), kind):
        raise ValueError(f"{path}: annotations[{i}]: field {field!r} missing or not "
                         f"{kind.__name__}")
    if a["image_id"] not in references:
      raise ValueError(f"{path}: annotations[{i}]: image_id {a['image_id']} is not in "
                       "'images'")
    references[a["image_id"]].append(a["caption"])
  empty = [i for i, c in references.items() if not c]
  if empty:
    raise ValueError(f"{path}: {len(empty)} images without a caption, e.g. {empty[:5]}")
  return references


# -- COCO (BLIP's Karpathy files) ---------------------------------------------------------


def load_store(root: str, *, image_root: str | None = None,
               tfds_data_dir: str | None = None) -> Any:
  """The image store: files under `image_root` (default `root`) or the TFDS build."""
  if tfds_data_dir:
    return coco.KarpathyRetrieval(config="coco", data_dir=tfds_data_dir).image_store()
  return ImageFiles(image_root or root)


def _usable_images(path: str, fields: tuple[str, ...], store: Any, bad: BadRecords,
                   verify_images: bool) -> Iterator[tuple[int, dict[str, Any], int]]:
  """(record number, entry, image id) of the entries of `path` whose image has an id
  and passes `ImageChecks`; the others go to `bad`."""
  image_problem = ImageChecks(store, verify_images)
  for i, entry in enumerate(coco.read_entries(path, fields)):
    try:
      image_id = image_id_from_path(entry["image"])
    except ValueError as e:
      bad(i, "image", str(e))
      continue
    problem = image_problem(entry["image"])
    if problem is not None:
      bad(i, "image", problem)
      continue
    yield i, entry, image_id


class _KarpathyCaptionSource:
  """What the COCO caption sources share: `items`, (image path, image id, ...) each."""

  store: Any
  items: list[tuple[Any, ...]]

  def _done(self, bad: BadRecords) -> None:
    self.stats = bad.stats
    self.stats["num_records"] = len(self.items)

  def __len__(self) -> int:
    return len(self.items)

  def __getitem__(self, i: int) -> dict[str, Any]:
    i = int(i)
    image_id = np.int64(self.items[i][1])
    return {"image": self.store.load(self.items[i][0]), "image_id": image_id,
            "product_id": image_id, "index": np.int64(i)}

  @property
  def image_ids(self) -> list[int]:
    return [x[1] for x in self.items]

  def metadata(self) -> dict[str, np.ndarray]:
    return {"product_id": np.array(self.image_ids, np.int64)}


class KarpathyCaptionPairs(_KarpathyCaptionSource):
  """coco_karpathy_train.json: one record per (image, caption)."""

  def __init__(self, root: str, store: Any, split: str = "train", *,
               max_words: int = MAX_WORDS, skip_bad_records: bool = False,
               verify_images: bool = True):
    self.store = store
    path = caption_file(root, split)
    bad = BadRecords(path, skip_bad_records)
    self.items = []  # (image path, image id, caption)
    for i, entry, image_id in _usable_images(path, ("image", "caption"), store, bad,
                                             verify_images):
      if not isinstance(entry["caption"], str):
        bad(i, "caption", f"expected a string, got {type(entry['caption']).__name__}")
        continue
      caption = pre_caption(entry["caption"], max_words)
      if not caption:
        bad(i, "caption", "empty caption (after pre_caption)")
        continue
      self.items.append((entry["image"], image_id, caption))
    self._done(bad)

  def __getitem__(self, i: int) -> dict[str, Any]:
    return {**super().__getitem__(i), "text": self.items[int(i)][2]}


class KarpathyCaptionImages(_KarpathyCaptionSource):
  """coco_karpathy_{val,test}.json: one record per image, file order; the references
  come from coco_karpathy_{split}_gt.json, what BLIP's evaluation scores against."""

  def __init__(self, root: str, store: Any, split: str, *, skip_bad_records: bool = False,
               verify_images: bool = True):
    self.store = store
    self.gt_path = gt_file(root, split)
    path = caption_file(root, split)
    bad = BadRecords(path, skip_bad_records)
    self.items = []  # (image path, image id)
    seen: dict[int, int] = {}
    for i, entry, image_id in _usable_images(path, ("image",), store, bad, verify_images):
      if image_id in seen:
        raise ValueError(f"{path}: record {i}, field 'image': image id {image_id} again "
                         f"(first in record {seen[image_id]})")
      seen[image_id] = i
      self.items.append((entry["image"], image_id))
    self._done(bad)

  def references(self) -> dict[int, list[str]]:
    """{image_id: [captions]} of this split's images, from the gt file."""
    if not paths.path(self.gt_path).exists():
      raise FileNotFoundError(f"{self.gt_path}: missing (BLIP's Karpathy caption "
                              "ground truth, coco_karpathy_{val,test}_gt.json)")
    gt = read_gt(self.gt_path)
    missing = [i for i in self.image_ids if i not in gt]
    if missing:
      raise ValueError(f"{self.gt_path}: no captions for {len(missing)} images of the "
                       f"split, e.g. image_id {missing[:5]}")
    return {i: gt[i] for i in self.image_ids}


# -- SynthFashion -------------------------------------------------------------------------


class _SynthFashionViews:
  """The views of a SynthFashion split (`synthfashion.SynthFashion`'s records) and their
  captions."""

  def __init__(self, split: str, num_products: int | None, seed: int, image_size: int,
               captions_per_view: int, style: synthfashion.DetailStyle):
    if captions_per_view < 1:
      raise ValueError(f"captions_per_view={captions_per_view}: must be >= 1")
    # Patches are not used here: one patch spanning the image passes the size check.
    self.views = synthfashion.SynthFashion(split, num_products, seed, image_size,
                                           patch_size=image_size, style=style)
    self.seed, self.image_size = seed, image_size
    self.captions_per_view = captions_per_view

  def caption(self, view_index: int, k: int) -> str:
    p, view = self.views.locate(view_index)
    product = self.views.product(p)
    rng = np.random.default_rng([self.seed, product.product_id, _CAPTION_TAG, view, k])
    return synthfashion.view_caption(product, view, rng)

  def view_record(self, view_index: int) -> dict[str, Any]:
    p, view = self.views.locate(view_index)
    product = self.views.product(p)
    image, _ = synthfashion.render(product, view, self.image_size, self.seed)
    return {"image": image, "image_id": np.int64(view_index),
            "product_id": np.int64(product.product_id)}


class SynthFashionCaptionPairs(_SynthFashionViews):
  """One record per (view, caption k): `captions_per_view` records per view."""

  def __init__(self, split: str = "train", num_products: int | None = None, seed: int = 0,
               image_size: int = 64, captions_per_view: int = CAPTIONS_PER_VIEW,
               max_words: int = MAX_WORDS,
               style: synthfashion.DetailStyle = synthfashion.DetailStyle()):
    super().__init__(split, num_products, seed, image_size, captions_per_view, style)
    self.max_words = max_words

  def __len__(self) -> int:
    return len(self.views) * self.captions_per_view

  def __getitem__(self, i: int) -> dict[str, Any]:
    i = int(i)
    if not 0 <= i < len(self):
      raise IndexError(f"record {i} out of range [0, {len(self)})")
    view_index, k = divmod(i, self.captions_per_view)
    return {**self.view_record(view_index), "index": np.int64(i),
            "text": pre_caption(self.caption(view_index, k), self.max_words)}

  def metadata(self) -> dict[str, np.ndarray]:
    return {k: np.repeat(v, self.captions_per_view)
            for k, v in self.views.metadata().items()}


class SynthFashionCaptionImages(_SynthFashionViews):
  """One record per view of a held-out split; `references()` its captions."""

  def __init__(self, split: str = "val", num_products: int | None = None, seed: int = 0,
               image_size: int = 64, captions_per_view: int = CAPTIONS_PER_VIEW,
               style: synthfashion.DetailStyle = synthfashion.DetailStyle()):
    super().__init__(split, num_products, seed, image_size, captions_per_view, style)

  def __len__(self) -> int:
    return len(self.views)

  def __getitem__(self, i: int) -> dict[str, Any]:
    i = int(i)
    return {**self.view_record(i), "index": np.int64(i)}

  def metadata(self) -> dict[str, np.ndarray]:
    return self.views.metadata()

  def references(self) -> dict[int, list[str]]:
    return {i: [self.caption(i, k) for k in range(self.captions_per_view)]
            for i in range(len(self))}
