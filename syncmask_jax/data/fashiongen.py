"""FashionGen: the h5 files as a random-access source, and a TFDS builder to ArrayRecord.

Files (docs/method.md section 6): `fashiongen_256_256_{train,validation}.h5`, with
`input_image` (N, 256, 256, 3) uint8 and every other field (N, 1), read `[i][0]`;
strings are latin-1 bytes that may hold HTML such as `<br>`.

A record (one row, i.e. one view of a product):
  image uint8 (256, 256, 3), text str (the cleaned `input_description`), name str,
  product_id int64, category int32, subcategory int32, view int32 (the row's rank
  among its product's rows, which are contiguous), index int64 (position in the
  source, the key the batch sampler uses), row int64 (the h5 row).

Labels. Category and subcategory names map to ids through one sorted label list per
field built from the *train* file and saved as `fashiongen_labels.json` next to it,
so train and validation share ids; the file records the train file's size, mtime and
row counts and is rebuilt when they change. A validation name never seen in train gets id -1
and is counted in `stats["unseen_category"]` / `stats["unseen_subcategory"]`: the
classifier cannot predict it, and CR/SCR must drop or report those rows.

Bad input. A missing required key, a field whose per-row shape is not (1,), or images
of another size than the file name states (`_256_256_`: 256 x 256; a smaller release
would otherwise be upscaled without a word) fails at once. Per record (a field shorter than `input_image`, an empty description after
cleaning, an empty label, a product id that is not an integer) the error names the
file, the row and the field; with `skip_bad_records=True` the record is left out and
counted in `stats` (`report()` prints it).

`FashionGenH5` reads the h5 directly (fine for one host). For a pod, convert once to
ArrayRecord with the TFDS builder below and read shards from any host:

  python -m syncmask_jax.data.pipeline fashiongen --manual_dir=/path/to/dir/with/h5 \\
      --data_dir=/path/to/tfds [--skip_bad_records=true]

or, where apache-beam is installed (TFDS 4.9's CLI imports it),

  tfds build fashiongen --imports=syncmask_jax.data.fashiongen \\
      --manual_dir=/path/to/dir/with/h5 --data_dir=/path/to/tfds

(`'fashiongen/skip_bad_records=True'` skips bad records there). Skip counts land in
the dataset's metadata.json (`stats`), with the label lists and per-record keys. Train with
`config.data.source_format = "tfds"` and `config.data.tfds_data_dir` pointing at
`--data_dir`. `input_pose` and `index_2` are not read: the view index comes from the
row order, which is what the sampler and the 1+100 protocol need.
"""

from __future__ import annotations

import io
import os
import re
from typing import Any

from absl import logging
import h5py
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from syncmask_jax import paths
from syncmask_jax.tokenizer import clean_text

SPLIT_FILES = {"train": "fashiongen_256_256_train.h5",
               "validation": "fashiongen_256_256_validation.h5"}
LABELS_FILE = "fashiongen_labels.json"
REQUIRED_KEYS = ("input_image", "input_description", "input_productID", "input_category",
                 "input_subcategory")
OPTIONAL_KEYS = ("input_name",)
LABEL_FIELDS = {"category": "input_category", "subcategory": "input_subcategory"}
_MAX_REPORTED = 100  # skipped records listed one by one in stats; the rest only counted
_BLOCK = 8192  # rows read at once while validating (a column may not fit in memory)
_SIZE_IN_NAME = re.compile(r"_(\d+)_(\d+)_[^/]*\.h5$")  # fashiongen_<H>_<W>_<split>.h5


def _as_str(value: Any) -> str:
  if isinstance(value, (bytes, np.bytes_)):
    return bytes(value).decode("latin-1")
  return str(value)


def _label(value: Any) -> str:
  return re.sub(r"\s+", " ", _as_str(value)).strip()


def _product_id(value: Any) -> int:
  if isinstance(value, (bytes, np.bytes_, str)):
    return int(_as_str(value).strip())  # ValueError when not an integer
  return int(value)


def open_h5(path: str) -> h5py.File:
  """`path` for reading: a local file by name (h5py's own I/O), a bucket's through the
  path layer (h5py reads any seekable file object)."""
  if paths.is_remote(path):
    return h5py.File(paths.path(path).open("rb"), "r")
  return h5py.File(path, "r")


def build_labels(train_path: str) -> dict[str, list[str]]:
  """Sorted category and subcategory names of the train file."""
  with open_h5(train_path) as f:
    labels = {}
    for name, key in LABEL_FIELDS.items():
      if key not in f:
        raise ValueError(f"{train_path}: missing field {key!r}, cannot build labels")
      values = {_label(v) for v in f[key][:].reshape(-1)}
      values.discard("")
      labels[name] = sorted(values)
  return labels


def train_identity(train_path: str) -> dict[str, Any]:
  """What the label cache is keyed to: the train file's size, mtime and row counts.

  Rows added, removed or relabelled change at least the mtime, so a cache built from
  other rows is rebuilt instead of reporting train labels as "unseen in train".
  """
  size, mtime_ns = paths.size_and_mtime_ns(train_path)
  with open_h5(train_path) as f:
    rows = {k: int(f[k].shape[0]) for k in ("input_image", *LABEL_FIELDS.values()) if k in f}
  return {"file": os.path.basename(train_path), "size": size, "mtime_ns": mtime_ns,
          "rows": rows}


def load_labels(directory: str) -> dict[str, list[str]]:
  """The label lists of `directory`: `fashiongen_labels.json` when it was built from the
  train file as it is now (`train_identity`), else built from train and saved."""
  path = os.path.join(directory, LABELS_FILE)
  train_path = os.path.join(directory, SPLIT_FILES["train"])
  cached = None
  if paths.path(path).exists():
    cached = paths.read_json(path)
  if not paths.path(train_path).exists():
    if cached is None:
      raise FileNotFoundError(f"neither {path} nor {train_path} exists: the label ids "
                              "come from the train file")
    logging.warning("%s: no train file to check the label cache %s against; using it",
                    directory, path)
    return {name: cached[name] for name in LABEL_FIELDS}
  identity = train_identity(train_path)
  if cached is not None:
    if cached.get("train") == identity:
      return {name: cached[name] for name in LABEL_FIELDS}
    logging.warning("%s was built from another %s (%s; now %s): rebuilding it", path,
                    SPLIT_FILES["train"], cached.get("train"), identity)
  labels = build_labels(train_path)
  try:
    paths.write_json(path, {**labels, "train": identity}, indent=1)
  except OSError:
    pass  # read-only data directory: the lists are rebuilt the same next time
  return labels


class FashionGenH5:
  """Random-access source over one FashionGen h5 file (a grain RandomAccessDataSource).

  Validation reads every non-image column once at construction; the image is read
  per record. The file handle opens lazily per process, so the source pickles into
  Grain worker processes.
  """

  def __init__(self, path: str, *, labels: dict[str, list[str]] | None = None,
               skip_bad_records: bool = False):
    self.path = os.fspath(path)
    self.skip_bad_records = skip_bad_records
    self.labels = labels if labels is not None else load_labels(os.path.dirname(self.path))
    self._file: dict[str, h5py.Dataset] | None = None
    self._pid = -1
    self.stats: dict[str, Any] = {"file": self.path, "num_rows": 0, "num_records": 0,
                                  "num_skipped": 0, "skipped": [],
                                  "unseen_category": 0, "unseen_subcategory": 0}
    self._scan()

  # -- validation ----------------------------------------------------------------------

  def _bad(self, row: int, field: str, reason: str, bad: np.ndarray) -> None:
    message = f"{self.path}: record {row}, field {field!r}: {reason}"
    if not self.skip_bad_records:
      raise ValueError(message + " (skip_bad_records=True leaves such records out)")
    if not bad[row]:
      bad[row] = True
      if len(self.stats["skipped"]) < _MAX_REPORTED:
        self.stats["skipped"].append({"row": row, "field": field, "reason": reason})

  def _scan(self) -> None:
    with open_h5(self.path) as f:
      for key in REQUIRED_KEYS:
        if key not in f:
          raise ValueError(f"{self.path}: missing field {key!r} (every record needs it; "
                           f"present: {sorted(f.keys())})")
      images = f["input_image"]
      if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"{self.path}: field 'input_image' has shape {images.shape} "
                         f"dtype {images.dtype}, expected (N, H, W, 3) uint8")
      named = _SIZE_IN_NAME.search(os.path.basename(self.path))
      if named and images.shape[1:3] != tuple(int(x) for x in named.groups()):
        raise ValueError(f"{self.path}: field 'input_image' holds {images.shape[1]}x"
                         f"{images.shape[2]} images but the file name says "
                         f"{named.group(1)}x{named.group(2)}")
      n = images.shape[0]
      self.image_shape = tuple(images.shape[1:])
      self.has_name = "input_name" in f
      bad = np.zeros(n, bool)
      columns = [k for k in REQUIRED_KEYS[1:] + OPTIONAL_KEYS if k in f]
      for key in columns:
        d = f[key]
        if d.shape[1:] not in ((1,), ()):
          raise ValueError(f"{self.path}: field {key!r} has shape {d.shape}, expected "
                           f"(N, 1) with N = {n} rows of 'input_image'")
        for row in range(d.shape[0], n):
          self._bad(row, key, f"missing: the field has only {d.shape[0]} rows", bad)

      product = np.full(n, -1, np.int64)
      ids = {name: np.full(n, -1, np.int32) for name in LABEL_FIELDS}
      lookup = {name: {v: i for i, v in enumerate(vals)} for name, vals in self.labels.items()}
      for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        block = {k: f[k][start:min(stop, f[k].shape[0])].reshape(-1) for k in columns}
        for j in range(stop - start):
          row = start + j
          if bad[row]:
            continue
          try:
            clean_text(block["input_description"][j])
          except ValueError as e:
            self._bad(row, "input_description", f"empty after cleaning ({e})", bad)
            continue
          try:
            product[row] = _product_id(block["input_productID"][j])
          except ValueError:
            self._bad(row, "input_productID",
                      f"not an integer: {block['input_productID'][j]!r}", bad)
            continue
          for name, key in LABEL_FIELDS.items():
            value = _label(block[key][j])
            if not value:
              self._bad(row, key, "empty label", bad)
              break
            ids[name][row] = lookup[name].get(value, -1)
    self._rows = np.flatnonzero(~bad)
    if not len(self._rows):
      raise ValueError(f"{self.path}: no valid record left ({self.stats['num_skipped']})")
    self.product_id = product[self._rows]
    self.category = ids["category"][self._rows]
    self.subcategory = ids["subcategory"][self._rows]
    # Rows of a product are contiguous: a view is the row's rank within its run.
    starts = np.r_[0, np.flatnonzero(np.diff(self.product_id)) + 1]
    run_start = np.zeros(len(self._rows), np.int64)
    run_start[starts] = starts
    self.view = (np.arange(len(self._rows)) - np.maximum.accumulate(run_start)).astype(np.int32)
    self.stats.update(num_rows=n, num_records=len(self._rows), num_skipped=int(bad.sum()),
                      unseen_category=int((self.category < 0).sum()),
                      unseen_subcategory=int((self.subcategory < 0).sum()))

  def report(self) -> str:
    s = self.stats
    lines = [f"{s['file']}: {s['num_records']} records of {s['num_rows']} rows, "
             f"{s['num_skipped']} skipped, labels unseen in train: "
             f"{s['unseen_category']} category, {s['unseen_subcategory']} subcategory"]
    lines += [f"  skipped row {x['row']} field {x['field']!r}: {x['reason']}"
              for x in s["skipped"]]
    if s["num_skipped"] > len(s["skipped"]):
      lines.append(f"  ... and {s['num_skipped'] - len(s['skipped'])} more")
    return "\n".join(lines)

  # -- access --------------------------------------------------------------------------

  def _h5(self) -> dict[str, h5py.Dataset]:
    # One handle per process: h5py handles do not survive fork/pickle. The datasets
    # are looked up once; a lookup per record costs as much as reading the text.
    if self._file is None or self._pid != os.getpid():
      f = open_h5(self.path)
      self._file = {k: f[k] for k in ("input_image", "input_description", "input_name")
                    if k in f}
      self._pid = os.getpid()
    return self._file

  def __getstate__(self) -> dict[str, Any]:
    state = self.__dict__.copy()
    state["_file"] = None
    return state

  def __len__(self) -> int:
    return len(self._rows)

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    row = int(self._rows[index])
    f = self._h5()
    return {
        "image": f["input_image"][row],
        "text": clean_text(f["input_description"][row][0]),
        "name": _label(f["input_name"][row][0]) if self.has_name else "",
        "product_id": np.int64(self.product_id[index]),
        "category": np.int32(self.category[index]),
        "subcategory": np.int32(self.subcategory[index]),
        "view": np.int32(self.view[index]),
        "index": np.int64(index),
        "row": np.int64(row),
    }

  def metadata(self) -> dict[str, np.ndarray]:
    """Per-record ids the batch sampler groups by, without reading any image."""
    return {"product_id": self.product_id, "subcategory": self.subcategory,
            "category": self.category}

  def __repr__(self) -> str:
    return f"FashionGenH5({self.path!r}, records={len(self)})"


def source(root: str, split: str, *, skip_bad_records: bool = False) -> FashionGenH5:
  """The h5 source of `split` ('train' | 'validation') under `root`."""
  if split not in SPLIT_FILES:
    raise ValueError(f"FashionGen split {split!r}: expected one of {sorted(SPLIT_FILES)}")
  return FashionGenH5(os.path.join(root, SPLIT_FILES[split]),
                      skip_bad_records=skip_bad_records)


def write_h5(path: str, images: np.ndarray, columns: dict[str, list[Any]]) -> None:
  """Writes the FashionGen layout: `input_image` (N, H, W, 3) uint8, each column (N, 1).

  Strings are stored as fixed-length latin-1 bytes, as the released files do. For
  tests and benchmarks, and to bring other product data into this reader. `path` is
  local (h5py writes only seekable files; an object store's uploads are not).
  """
  with h5py.File(path, "w") as f:
    f.create_dataset("input_image", data=np.asarray(images, np.uint8))
    for key, values in columns.items():
      if values and isinstance(values[0], str):
        values = [v.encode("latin-1") for v in values]
      f.create_dataset(key, data=np.asarray(values).reshape(-1, 1))


# -- TFDS builder -----------------------------------------------------------------------


class Fashiongen(tfds.core.GeneratorBasedBuilder):
  """FashionGen 256x256 rows as ArrayRecord, PNG images, in h5 row order."""

  name = "fashiongen"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "h5 rows in order; labels from train; PNG (lossless)."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Request FashionGen from its authors and place fashiongen_256_256_train.h5 and "
      "fashiongen_256_256_validation.h5 in `manual_dir`.")

  def __init__(self, *, skip_bad_records: bool = False, file_format=None, **kwargs):
    self.skip_bad_records = skip_bad_records
    # ArrayRecord (random access for Grain) unless the caller asks otherwise.
    super().__init__(file_format=file_format or "array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    f = tfds.features
    return self.dataset_info_from_configs(
        features=f.FeaturesDict({
            # PNG: lossless, so ArrayRecord and h5 give the same pixels.
            "image": f.Image(shape=(None, None, 3), encoding_format="png"),
            "text": f.Text(), "name": f.Text(),
            "product_id": np.int64, "category": np.int32, "subcategory": np.int32,
            "view": np.int32, "index": np.int64, "row": np.int64,
        }),
        # Record i of an ArrayRecord split is record i of the h5 source, so the
        # per-record keys stored in metadata line up with positions.
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(),
        homepage="https://arxiv.org/abs/1806.08317",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = os.fspath(dl_manager.manual_dir)
    labels = load_labels(root)
    self.info.metadata.update(labels=labels, stats={}, keys={})
    return {split: self._generate_examples(os.path.join(root, fname), split, labels)
            for split, fname in SPLIT_FILES.items()
            if paths.path(os.path.join(root, fname)).exists()}

  def _generate_examples(self, path: str, split: str, labels: dict[str, list[str]]):
    src = FashionGenH5(path, labels=labels, skip_bad_records=self.skip_bad_records)
    self.info.metadata["stats"][split] = src.stats
    self.info.metadata["keys"][split] = {k: v.tolist()
                                         for k, v in src.metadata().items()}
    for i in range(len(src)):
      record = src[i]
      record["image"] = encode_png(record["image"])
      yield i, record


def encode_png(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return buf.getvalue()


class FashionGenTfds:
  """The records of a `fashiongen` TFDS split (ArrayRecord), as `FashionGenH5` gives them.

  Images stay PNG bytes here (the transform decodes them); the per-record keys for
  the sampler come from the dataset's metadata, not from reading every record.
  """

  def __init__(self, data_dir: str, split: str):
    builder = Fashiongen(data_dir=data_dir)
    self.data_dir = builder.data_dir
    self.data_source = builder.as_data_source(
        split=split, decoders={"image": tfds.decode.SkipDecoding()})
    meta = builder.info.metadata
    self.labels = meta["labels"]
    self.stats = meta["stats"][split]
    self._metadata = {k: np.asarray(v, np.int64 if k == "product_id" else np.int32)
                      for k, v in meta["keys"][split].items()}
    if len(self._metadata["product_id"]) != len(self.data_source):
      raise ValueError(f"{self.data_dir}: metadata lists {len(self._metadata['product_id'])} "
                       f"records, split {split!r} has {len(self.data_source)}")

  def __len__(self) -> int:
    return len(self.data_source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    record = dict(self.data_source[int(index)])
    for key in ("text", "name"):
      value = record[key]
      # TFDS stores Text as UTF-8 (the h5's latin-1 was decoded before writing).
      record[key] = bytes(value).decode("utf-8") if isinstance(value, bytes) else str(value)
    return record

  def metadata(self) -> dict[str, np.ndarray]:
    return self._metadata

  def __repr__(self) -> str:
    return f"FashionGenTfds({self.data_dir!r}, records={len(self)})"
