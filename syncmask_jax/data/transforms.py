"""Per-example transforms: a source record (dict) -> model fields with static shapes.

Records come from any source (SynthFashion, FashionGen, FashionIQ, COCO/Flickr, or
their TFDS ArrayRecord versions). Whatever keys a record holds are turned into model
fields by one `ExampleTransform`:

  image / target_image  uint8 (H, W, 3) or encoded bytes -> float32 (S, S, 3), normalised
  text                  str -> text_ids int32 (T,), text_mask int32 (T,)
  gt_visible_spans      int32 (K, 2) char spans -> gt_token_visible bool (T,)
  gt_word_parts         int32 (W, 3) (start, end, part) -> gt_token_part int32 (T,)
  gt_patch_visible      bool (N,), gt_patch_part int32 (N,), passed through
  product_id, category, subcategory, view, index, target_index, image_index,
  question_id           -> int32
  answers, answer_weight, answer_valid (VQA, data/vqa.py) -> answer_ids, answer_mask
                        int32 (A, max_answer_len) ([CLS] answer [SEP], mask 0 on the
                        padding answers), answer_weight float32 (A,)

Datasets without categories (FashionIQ, COCO) get category = subcategory = -1, the
same "unknown" id FashionGen validation labels unseen in train get, so every
pretraining batch has the same fields.

Geometric augmentation and SynthFashion: random crops and flips would move the patches
the ground truth `gt_patch_visible` points at (and a flip swaps left and right
details), so with `geometric_aug=False` (the SynthFashion default) the first view is
only resized. With `two_views` (SemMIM agreement learning) the second view is always
cropped and flipped: it feeds only the agreement loss, which has no patch ground truth.
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Any, Sequence

import numpy as np
from PIL import Image

from syncmask_jax import paths
from syncmask_jax.tokenizer import clean_text

# Fields that reach the batch as int32 ids; -1 is "unknown / padding".
INT_FIELDS = ("product_id", "category", "subcategory", "view", "index", "target_index",
              "image_index", "question_id", "image_id")
_INT32_MAX = np.iinfo(np.int32).max


class BadRecord(ValueError):
  """A record whose content cannot be used (an image that fails to decode past the
  header check): what `skip_bad_records` replaces at read time (pipeline.py)."""


def decode_image(data: bytes | np.ndarray, *, where: str = "image") -> np.ndarray:
  """Encoded bytes (PNG/JPEG/...) or an array -> uint8 RGB (H, W, 3).

  `where` names the file or record in the error (BadRecord) so a bad image can be found.
  """
  if isinstance(data, (bytes, bytearray, memoryview)):
    try:
      with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))
    except Exception as e:  # PIL raises several types for corrupt data.
      raise BadRecord(f"{where}: cannot decode image ({type(e).__name__}: {e})") from e
  a = np.asarray(data)
  if a.dtype != np.uint8:
    raise BadRecord(f"{where}: image dtype {a.dtype}, expected uint8")
  if a.ndim == 2:
    a = np.repeat(a[..., None], 3, axis=-1)
  if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
    raise BadRecord(f"{where}: image shape {a.shape}, expected (H, W, 3)")
  if a.shape[-1] == 1:
    a = np.repeat(a, 3, axis=-1)
  return a[..., :3]


def resize(image: np.ndarray, size: int,
           box: tuple[float, float, float, float] | None = None) -> np.ndarray:
  """Bicubic resize of (a `box` crop of) `image` to (size, size), as ALBEF's eval."""
  if box is None and image.shape[0] == size and image.shape[1] == size:
    return image
  im = Image.fromarray(image)
  # PIL crops and resamples in one pass when given the box.
  return np.asarray(im.resize((size, size), Image.Resampling.BICUBIC, box=box))


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator,
                            scale: tuple[float, float] = (0.5, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)
                            ) -> tuple[int, int, int, int]:
  """A crop box (x0, y0, x1, y1) as torchvision's RandomResizedCrop draws it."""
  area = height * width
  log_ratio = np.log(ratio)
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = np.exp(rng.uniform(*log_ratio))
    w = int(round(np.sqrt(target * aspect)))
    h = int(round(np.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      y0 = int(rng.integers(0, height - h + 1))
      x0 = int(rng.integers(0, width - w + 1))
      return x0, y0, x0 + w, y0 + h
  # Fallback of torchvision: the central crop with the aspect ratio clamped.
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    h, w = height, int(round(height * ratio[1]))
  else:
    w, h = width, height
  y0, x0 = (height - h) // 2, (width - w) // 2
  return x0, y0, x0 + w, y0 + h


def horizontal_flip(image: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(image[:, ::-1])


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """uint8 -> float32 (x / 255 - mean) / std."""
  std = np.asarray(std, np.float32)
  scale = 1 / (255 * std)
  shift = -np.asarray(mean, np.float32) / std
  # One multiply into a new float32 array and one in-place add: the host's costliest
  # per-pixel step at 256 px after the resize.
  out = np.multiply(image, scale, dtype=np.float32)
  out += shift
  return out


def _inside_spans(offsets: np.ndarray, special: np.ndarray, mask: np.ndarray,
                  spans: np.ndarray) -> np.ndarray:
  """bool (T, K): token t's char span lies inside span k (never for special, padding or
  empty-span tokens)."""
  start, end = offsets[:, 0:1], offsets[:, 1:2]
  inside = (spans[None, :, 0] <= start) & (end <= spans[None, :, 1])
  real = (end[:, 0] > start[:, 0]) & ~special.astype(bool) & (mask > 0)
  return inside & real[:, None]


def token_visibility(offsets: np.ndarray, special: np.ndarray, mask: np.ndarray,
                     spans: np.ndarray) -> np.ndarray:
  """bool (T,): a token is visible when its char span lies inside a visible-word span.

  Special tokens, padding and empty-span tokens are never visible.
  """
  spans = np.asarray(spans, np.int64).reshape(-1, 2)
  return _inside_spans(offsets, special, mask, spans).any(axis=1)


def token_parts(offsets: np.ndarray, special: np.ndarray, mask: np.ndarray,
                word_parts: np.ndarray) -> np.ndarray:
  """int32 (T,): the part label of the content word a token belongs to (>= 1: the
  patches of that part show it; 0: a content word the view cannot show), -1 for
  function words, special tokens and padding (`SynthFashion` `gt_word_parts`)."""
  word_parts = np.asarray(word_parts, np.int64).reshape(-1, 3)
  inside = _inside_spans(offsets, special, mask, word_parts[:, :2])
  part = np.where(inside, word_parts[None, :, 2], -1).max(axis=1, initial=-1)
  return part.astype(np.int32)


@dataclasses.dataclass(frozen=True)
class TransformConfig:
  """What `ExampleTransform` does; `from_config` fills it from the config (config_lib
  holds the defaults)."""
  image_size: int
  max_text_len: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  train: bool
  geometric_aug: bool  # random resized crop + flip on the first view
  two_views: bool
  crop_scale: tuple[float, float]
  flip: bool
  max_answer_len: int  # VQA answers' tokens, [CLS] and [SEP] included


class ExampleTransform:
  """record -> model fields; call as `transform(record, rng)` (rng None for eval)."""

  def __init__(self, tokenizer: Any, cfg: TransformConfig):
    self.tokenizer = tokenizer
    self.cfg = cfg

  def _image(self, image: np.ndarray, rng: np.random.Generator | None,
             augment: bool) -> np.ndarray:
    c = self.cfg
    if augment:
      if rng is None:
        raise ValueError("a train transform needs an rng")
      box = random_resized_crop_box(image.shape[0], image.shape[1], rng, c.crop_scale)
      out = resize(image, c.image_size, box)
      if c.flip and rng.random() < 0.5:
        out = horizontal_flip(out)
    else:
      out = resize(image, c.image_size)
    return normalize(out, c.mean, c.std)

  def __call__(self, record: dict[str, Any],
               rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    c = self.cfg
    where = f"record {record.get('index', '?')}"
    out: dict[str, np.ndarray] = {}
    augment = c.train and c.geometric_aug
    if augment and ("gt_patch_visible" in record or "gt_patch_part" in record):
      raise ValueError(f"{where}: geometric augmentation would move the patches "
                       "gt_patch_visible points at; set config.data.geometric_aug=False")
    if "image" in record:
      image = decode_image(record["image"], where=f"{where} field 'image'")
      out["image"] = self._image(image, rng, augment)
      if c.two_views:
        out["image_view2"] = self._image(image, rng, c.train)
    if "target_image" in record:
      target = decode_image(record["target_image"], where=f"{where} field 'target_image'")
      out["target_image"] = self._image(target, rng, augment)
    if "text" in record:
      try:
        text = clean_text(record["text"])
      except ValueError as e:
        raise ValueError(f"{where} field 'text': {e}") from e
      if "gt_visible_spans" in record and text != record["text"]:
        # The spans index the generator's text; cleaning must not move characters.
        raise ValueError(f"{where} field 'text': cleaning changed a text that carries "
                         "gt_visible_spans")
      enc = self.tokenizer.encode([text], c.max_text_len)
      out["text_ids"] = np.asarray(enc["ids"][0], np.int32)
      out["text_mask"] = np.asarray(enc["mask"][0], np.int32)
      if "gt_visible_spans" in record:
        out["gt_token_visible"] = token_visibility(
            np.asarray(enc["offsets"][0]), np.asarray(enc["special"][0]),
            out["text_mask"], record["gt_visible_spans"])
      if "gt_word_parts" in record:
        out["gt_token_part"] = token_parts(
            np.asarray(enc["offsets"][0]), np.asarray(enc["special"][0]),
            out["text_mask"], record["gt_word_parts"])
    if "answers" in record:
      if c.max_answer_len < 2:
        raise ValueError(f"{where} field 'answers': config.data.max_answer_len="
                         f"{c.max_answer_len}: needs room for [CLS] and [SEP]")
      # Answers are not cleaned: they are matched as written (the official metric's form).
      enc = self.tokenizer.encode(list(record["answers"]), c.max_answer_len)
      valid = np.asarray(record["answer_valid"], bool)
      out["answer_ids"] = np.asarray(enc["ids"], np.int32)
      out["answer_mask"] = np.asarray(enc["mask"], np.int32) * valid[:, None]
      out["answer_weight"] = np.asarray(record["answer_weight"], np.float32)
    if "gt_patch_visible" in record:
      out["gt_patch_visible"] = np.asarray(record["gt_patch_visible"], bool)
    if "gt_patch_part" in record:
      out["gt_patch_part"] = np.asarray(record["gt_patch_part"], np.int32)
    for key in INT_FIELDS:
      if key in record:
        value = int(record[key])
        if not -1 <= value <= _INT32_MAX:
          raise ValueError(f"{where} field {key!r}: {value} does not fit int32")
        out[key] = np.int32(value)
    if "image" in record and "text" in record:
      for key in ("category", "subcategory"):
        out.setdefault(key, np.int32(-1))
    return out


def from_config(config: Any, tokenizer: Any, *, train: bool) -> ExampleTransform:
  """The transform for `config.data`, images at `config.model.image_size`."""
  d = config.data
  return ExampleTransform(tokenizer, TransformConfig(
      image_size=int(config.model.image_size), max_text_len=int(d.max_text_len),
      mean=tuple(d.mean), std=tuple(d.std), train=train,
      geometric_aug=bool(d.geometric_aug), two_views=bool(d.two_views) and train,
      crop_scale=tuple(d.crop_scale), flip=bool(d.flip),
      max_answer_len=int(d.max_answer_len)))


# -- Image stores: encoded images by key, from files or from a TFDS split --------------


class ImageFiles:
  """Images by key under a directory (FashionIQ: key = ASIN; Karpathy: relative path).

  `resolve` maps a key to a file; the default is `root/key`.
  """

  def __init__(self, root: str, resolve: dict[str, str] | None = None):
    self.root = os.fspath(root)
    self._resolve = resolve

  def path(self, key: str) -> str:
    if self._resolve is not None:
      if key not in self._resolve:
        raise KeyError(key)
      return os.path.join(self.root, self._resolve[key])
    return os.path.join(self.root, key)

  def __contains__(self, key: str) -> bool:
    try:
      return paths.path(self.path(key)).exists()
    except KeyError:
      return False

  def check(self, key: str) -> str | None:
    """None when the image can be read, else why not (header check, no full decode)."""
    try:
      path = self.path(key)
    except KeyError:
      return "no image file"
    try:
      with paths.path(path).open("rb") as fh, Image.open(fh) as im:
        im.verify()
    except FileNotFoundError:
      return f"{path}: no such file"
    except Exception as e:  # PIL raises several types for corrupt data.
      return f"{path}: cannot decode image ({type(e).__name__}: {e})"
    return None

  def load(self, key: str) -> np.ndarray:
    path = self.path(key)
    try:
      data = paths.path(path).read_bytes()
    except OSError as e:
      raise BadRecord(f"{path}: cannot read image ({e})") from e
    return decode_image(data, where=path)


class TfdsImages:
  """Images by key from a TFDS split of records {key_field: str, "image": bytes}.

  Its builder already left out (and counted) undecodable images, so `check` only asks
  whether the key is present.
  """

  def __init__(self, data_source: Any, keys: Sequence[str], key_field: str):
    self.data_source = data_source
    self.key_field = key_field
    self._position = {k: i for i, k in enumerate(keys)}

  def __contains__(self, key: str) -> bool:
    return key in self._position

  def check(self, key: str) -> str | None:
    return None if key in self._position else "not in the TFDS image split"

  def load(self, key: str) -> np.ndarray:
    i = self._position[key]
    return decode_image(self.data_source[i]["image"], where=f"TFDS image {key!r} ({i})")
