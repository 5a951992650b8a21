"""FashionIQ text-guided image retrieval: triplet and gallery sources, and a TFDS builder.

Files (docs/method.md section 6), per category c in dress | shirt | toptee:
  captions/cap.{c}.{train,val,test}.json   list of {candidate, target, captions[2]}
                                           (test has no target)
  image_splits/split.{c}.{train,val,test}.json   list of ASINs
  images/<ASIN>.{png,jpg}

Triplet record (one caption pair): image (the reference, uint8), text
"caption1 and caption2", target_image, product_id (the target's ASIN id: two queries
with the same target are both positives), target_index (the target's position in the
gallery source, -1 for test or when the target is not in the gallery), index.

Gallery record: image, product_id (ASIN id), index. Both gallery protocols of
docs/method.md section 7 are here and both must be reported:
  `split`     the category's full split list (image_splits/split.{c}.val.json);
  `val_union` the images appearing in the split's captions as candidate or target.
ASIN ids are ranks in the sorted union of every ASIN a category mentions, the same
for every split, source and storage.

Bad input: an image missing or undecodable (a header check at construction; a full
decode failure at read time still names the file) or a caption pair with no text is
an error naming the file, record and field; with `skip_bad_records=True` it is left
out and counted in `stats` (a triplet also goes when its reference or target image
is bad; a gallery image when it is bad).

TFDS: one config per category, one split `images` (ASIN + the original encoded
bytes, undecodable ones left out and counted); the caption and split lists travel in
the dataset's metadata, so both sources can be built on any host:

  python -m syncmask_jax.data.pipeline fashioniq --manual_dir=/path/to/fashioniq \\
      --data_dir=/path/to/tfds [--config=dress]     (all three categories by default)

or, with apache-beam installed, `tfds build fashion_iq --imports=syncmask_jax.data.fashioniq
--manual_dir=... --data_dir=...` (configs fashion_iq/dress, /shirt, /toptee).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from syncmask_jax import paths
from syncmask_jax.data.image_folder import BadRecords, ImageChecks, ImageFolderBuilder
from syncmask_jax.data.transforms import ImageFiles

CATEGORIES = ("dress", "shirt", "toptee")
SPLITS = ("train", "val", "test")
GALLERY_PROTOCOLS = ("split", "val_union")
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


class FashionIQIndex:
  """The JSON part of one category: caption triplets and split lists per split."""

  def __init__(self, category: str, captions: dict[str, list[dict[str, Any]]],
               splits: dict[str, list[str]], origin: str,
               categories: tuple[str, ...] = CATEGORIES):
    # `categories`: another set for records written in this format (synthfashion_tgir).
    if category not in categories:
      raise ValueError(f"FashionIQ category {category!r}: expected one of {categories}")
    self.category = category
    self.captions = captions
    self.splits = splits
    self.origin = origin  # the root or TFDS dir, for error messages
    every = set()
    for triplets in captions.values():
      for t in triplets:
        every.add(t["candidate"])
        if t.get("target"):
          every.add(t["target"])
    for asins in splits.values():
      every.update(asins)
    self.asin_ids = {a: i for i, a in enumerate(sorted(every))}

  @classmethod
  def from_root(cls, root: str, category: str) -> FashionIQIndex:
    captions, splits = {}, {}
    for split in SPLITS:
      for kind, name, table in (("captions", f"cap.{category}.{split}.json", captions),
                                ("image_splits", f"split.{category}.{split}.json", splits)):
        path = os.path.join(root, kind, name)
        if paths.path(path).exists():
          try:
            table[split] = paths.read_json(path)
          except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not captions and not splits:
      raise FileNotFoundError(f"{root}: no captions/cap.{category}.*.json or "
                              f"image_splits/split.{category}.*.json")
    return cls(category, captions, splits, origin=root)

  def caption_file(self, split: str) -> str:
    return os.path.join(self.origin, "captions", f"cap.{self.category}.{split}.json")

  def split_file(self, split: str) -> str:
    return os.path.join(self.origin, "image_splits", f"split.{self.category}.{split}.json")


def image_files(root: str) -> ImageFiles:
  """`images/<ASIN>.{png,jpg,jpeg}` by ASIN (one directory listing, no stat per image)."""
  directory = os.path.join(root, "images")
  resolve = {}
  for entry in sorted(p.name for p in paths.path(directory).iterdir()):
    stem, ext = os.path.splitext(entry)
    if ext.lower() in _IMAGE_EXTENSIONS:
      resolve.setdefault(stem, entry)  # .png sorts before .jpg: prefer the PNG
  return ImageFiles(directory, resolve)


class FashionIQGallery:
  """Gallery images of one category and split under a protocol (`split` | `val_union`)."""

  def __init__(self, index: FashionIQIndex, store: Any, split: str = "val",
               protocol: str = "split", *, skip_bad_records: bool = False,
               verify_images: bool = True):
    if protocol not in GALLERY_PROTOCOLS:
      raise ValueError(f"gallery protocol {protocol!r}: expected one of "
                       f"{GALLERY_PROTOCOLS}")
    self.index, self.store, self.split, self.protocol = index, store, split, protocol
    if protocol == "split":
      if split not in index.splits:
        raise FileNotFoundError(f"{index.split_file(split)}: missing")
      asins, where = list(dict.fromkeys(index.splits[split])), index.split_file(split)
    else:
      if split not in index.captions:
        raise FileNotFoundError(f"{index.caption_file(split)}: missing")
      seen = {}
      for t in index.captions[split]:
        seen.setdefault(t["candidate"], None)
        if t.get("target"):
          seen.setdefault(t["target"], None)
      asins, where = sorted(seen), index.caption_file(split)
    bad = BadRecords(where, skip_bad_records, target_not_in_gallery=0)
    self.stats = bad.stats
    problem = ImageChecks(store, verify_images)
    self.asins = []
    for i, a in enumerate(asins):
      if problem(a) is not None:
        bad(i, "image", f"ASIN {a}: {problem(a)}")
      else:
        self.asins.append(a)
    self.position = {a: i for i, a in enumerate(self.asins)}
    self.stats["num_records"] = len(self.asins)

  def __len__(self) -> int:
    return len(self.asins)

  def __getitem__(self, i: int) -> dict[str, Any]:
    i = int(i)
    a = self.asins[i]
    return {"image": self.store.load(a), "product_id": np.int64(self.index.asin_ids[a]),
            "index": np.int64(i), "asin": a}

  def metadata(self) -> dict[str, np.ndarray]:
    return {"product_id": np.array([self.index.asin_ids[a] for a in self.asins], np.int64)}


class FashionIQTriplets:
  """(reference image, "caption1 and caption2", target) triplets of one category/split."""

  def __init__(self, index: FashionIQIndex, store: Any, split: str, *,
               gallery: FashionIQGallery | None = None, skip_bad_records: bool = False,
               verify_images: bool = True):
    if split not in index.captions:
      raise FileNotFoundError(f"{index.caption_file(split)}: missing")
    self.index, self.store, self.split, self.gallery = index, store, split, gallery
    where = index.caption_file(split)
    bad = BadRecords(where, skip_bad_records, target_not_in_gallery=0)
    self.stats = bad.stats
    triplets = index.captions[split]
    problem = ImageChecks(store, verify_images)
    self.items: list[tuple[str, str, str]] = []  # (reference, target or "", text)
    for i, t in enumerate(triplets):
      text = " and ".join(c.strip() for c in t.get("captions", []) if c and c.strip())
      target = t.get("target") or ""
      if not text:
        bad(i, "captions", "no caption text")
      elif problem(t["candidate"]) is not None:
        bad(i, "candidate", f"ASIN {t['candidate']}: {problem(t['candidate'])}")
      elif target and problem(target) is not None:
        bad(i, "target", f"ASIN {target}: {problem(target)}")
      else:
        self.items.append((t["candidate"], target, text))
    self.stats["num_records"] = len(self.items)
    if gallery is not None:
      self.stats["target_not_in_gallery"] = sum(
          1 for _, target, _ in self.items if target and target not in gallery.position)

  def __len__(self) -> int:
    return len(self.items)

  def __getitem__(self, i: int) -> dict[str, Any]:
    i = int(i)
    reference, target, text = self.items[i]
    record = {"image": self.store.load(reference), "text": text, "index": np.int64(i),
              "reference_asin": reference, "target_asin": target,
              "product_id": np.int64(self.index.asin_ids[target] if target else -1),
              "target_index": np.int64(-1)}
    if target:
      record["target_image"] = self.store.load(target)
      if self.gallery is not None:
        record["target_index"] = np.int64(self.gallery.position.get(target, -1))
    return record

  def metadata(self) -> dict[str, np.ndarray]:
    # Queries with the same target are false negatives for each other: one product.
    ids = [self.index.asin_ids[target] if target else -1 - k
           for k, (_, target, _) in enumerate(self.items)]
    return {"product_id": np.array(ids, np.int64)}


def sources(root: str, category: str, split: str, *, gallery_protocol: str = "split",
            skip_bad_records: bool = False, verify_images: bool = True,
            tfds_data_dir: str | None = None
            ) -> tuple[FashionIQTriplets, FashionIQGallery | None]:
  """(triplets, gallery) of one category/split from files under `root`, or from the TFDS

  build in `tfds_data_dir` when given. The test split has no targets and its gallery
  is still built (for submission files) when the split list exists.
  """
  if tfds_data_dir:
    builder = FashionIq(config=category, data_dir=tfds_data_dir)
    index = FashionIQIndex(category, builder.info.metadata["captions"],
                           builder.info.metadata["splits"], origin=builder.data_dir)
    store = builder.image_store()
    verify_images = False  # the builder left bad images out
  else:
    index = FashionIQIndex.from_root(root, category)
    store = image_files(root)
  has_gallery = (split in index.splits) if gallery_protocol == "split" else True
  gallery = (FashionIQGallery(index, store, split, gallery_protocol,
                              skip_bad_records=skip_bad_records,
                              verify_images=verify_images) if has_gallery else None)
  triplets = FashionIQTriplets(index, store, split, gallery=gallery,
                               skip_bad_records=skip_bad_records,
                               verify_images=verify_images)
  return triplets, gallery


# -- TFDS builder -----------------------------------------------------------------------


class FashionIq(ImageFolderBuilder):
  """FashionIQ images per category as ArrayRecord; captions and splits in metadata.

  Bad images are left out (the default): the count lands in metadata["stats"] and the
  triplets that need them are counted again when the sources are built.
  """

  name = "fashion_iq"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Images as shipped; caption and split lists in metadata."}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=c) for c in CATEGORIES]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Place the FashionIQ release in `manual_dir`: captions/cap.{dress,shirt,toptee}."
      "{train,val,test}.json, image_splits/split.{dress,shirt,toptee}.{train,val,test}"
      ".json and images/<ASIN>.{png,jpg}.")
  KEY, KEYS_METADATA = "asin", "asins"
  HOMEPAGE = "https://github.com/XiaoxiaoGuo/fashion-iq"

  def _read_manual_dir(self, root: str):
    index = FashionIQIndex.from_root(root, self.builder_config.name)
    return (image_files(root), index.asin_ids,
            {"captions": index.captions, "splits": index.splits})
