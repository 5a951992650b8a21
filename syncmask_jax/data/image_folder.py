"""What the image-folder datasets (FashionIQ, COCO / Flickr30K) share: the bad-record
rule, cached image checks, and the TFDS builder that stores their images as shipped.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import tensorflow_datasets as tfds

from syncmask_jax import paths
from syncmask_jax.data.transforms import ImageFiles, TfdsImages

MAX_REPORTED = 100  # skipped records listed one by one in stats; the rest only counted


class BadRecords:
  """The bad-input rule for the records of one file (`origin`): an error naming the
  file, the record and the field, or, with `skip`, a count in `stats` (the first
  MAX_REPORTED listed) and the record left out."""

  def __init__(self, origin: str, skip: bool, **extra_stats: Any):
    self.origin, self.skip = origin, skip
    self.stats: dict[str, Any] = {"origin": origin, "num_records": 0, "num_skipped": 0,
                                  "skipped": [], **extra_stats}

  def __call__(self, record: int, field: str, reason: str) -> None:
    message = f"{self.origin}: record {record}, field {field!r}: {reason}"
    if not self.skip:
      raise ValueError(message + " (skip_bad_records=True leaves such records out)")
    self.stats["num_skipped"] += 1
    if len(self.stats["skipped"]) < MAX_REPORTED:
      self.stats["skipped"].append(message)


class ImageChecks:
  """Why the image of a key cannot be used, or None; once per key. `verify`: a header
  check (`ImageFiles.check`), else only whether the file exists (a TFDS build, whose
  builder already left bad images out)."""

  def __init__(self, store: Any, verify: bool):
    self.store, self.verify = store, verify
    self._problems: dict[str, str | None] = {}

  def __call__(self, key: str) -> str | None:
    if key not in self._problems:
      self._problems[key] = (self.store.check(key) if self.verify
                             else None if key in self.store else "no image file")
    return self._problems[key]


class ImageFolderBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Images as shipped (original bytes, not re-encoded) in one split `images`, one
  example per key (`KEY` feature), ArrayRecord by default; what a dataset's annotation
  files hold goes into the dataset's metadata.

  Subclasses set `KEY`, `KEYS_METADATA` (the metadata field listing the kept keys) and
  `HOMEPAGE`, and read `manual_dir` in `_read_manual_dir`. Bad images are left out by
  default and counted in metadata["stats"].
  """

  KEY = "path"
  KEYS_METADATA = "images"
  HOMEPAGE = ""

  def __init__(self, *, skip_bad_records: bool = True, file_format=None, **kwargs):
    self.skip_bad_records = skip_bad_records
    super().__init__(file_format=file_format or "array_record", **kwargs)

  def image_store(self) -> TfdsImages:
    """The built `images` split as an image store (bytes decoded when loaded)."""
    ds = self.as_data_source(split="images", decoders={"image": tfds.decode.SkipDecoding()})
    return TfdsImages(ds, self.info.metadata[self.KEYS_METADATA], key_field=self.KEY)

  def _read_manual_dir(self, root: str) -> tuple[ImageFiles, Sequence[str], dict[str, Any]]:
    """(image store, every key the annotations name, metadata fields) of `root`."""
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            self.KEY: tfds.features.Text(),
            "image": tfds.features.Image(shape=(None, None, 3)),  # the original bytes
        }),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(),
        homepage=self.HOMEPAGE,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = os.fspath(dl_manager.manual_dir)
    store, keys, metadata = self._read_manual_dir(root)
    bad, check = BadRecords(root, self.skip_bad_records), ImageChecks(store, verify=True)
    kept = []
    for k, key in enumerate(sorted(keys)):
      problem = check(key)
      if problem is None:
        kept.append(key)
      else:
        bad(k, "image", f"{key}: {problem}")
    self.info.metadata.update(**metadata, **{self.KEYS_METADATA: kept}, stats=bad.stats)
    return {"images": self._generate_examples(store, kept)}

  def _generate_examples(self, store: ImageFiles, keys: Sequence[str]):
    for i, key in enumerate(keys):
      yield i, {self.KEY: key, "image": paths.path(store.path(key)).read_bytes()}
