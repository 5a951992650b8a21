"""SynthFashion-TGIR: text-guided image retrieval (FashionIQ's task) on SynthFashion's twins.

A query is a reference view and a modification text; its target is the same view of
a twin that differs from the reference in ONE attribute that view shows
(`synthfashion.make_twins`), e.g.

  reference  a navy striped hoodie with a red pocket on the front (front view)
  text       "has a white pocket instead of a red one"
  target     the same hoodie with a white pocket (front view)

Each (product, twin, view) gives two queries, one each way (product -> twin and twin ->
product, the text reversed). Views that do not show the change are left out: there the
twin is drawn exactly as the product and no text could tell them apart.

The records are FashionIQ's (fashioniq.py's module doc), written in memory: caption
triplets {candidate, target, captions} and split lists of image keys, read by
fashioniq.py's own `FashionIQTriplets` and `FashionIQGallery`, with images rendered when
read (`TwinImages`); so training, the in-batch positives and both gallery protocols
are the FashionIQ code paths, and nothing is downloaded.

FashionIQ's categories (dress | shirt | toptee) become the twin attributes (colour |
pattern | detail_presence | detail_colour | detail_side): each has its own triplets and
gallery, the tgir task trains on all of them and reports each and their mean. Gallery
of an attribute, protocol `split`: every view of the split's products and every twin
view its queries target; `val_union`: the images its triplets name. Image keys:
"<product_id>/<view>" for a product's view, "<product_id>/<attribute>/<k>/<view>" for
twin k's (the twin keeps its product's id, so the key carries the attribute and k).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np

from syncmask_jax.data import synthfashion as sf

ATTRIBUTES = sf.TWIN_ATTRIBUTES


def _span(product: sf.Product, words: Sequence[sf.WordSpan]) -> str:
  """The text of `product` from the first to the last of `words` ("red pocket on the
  front"), or "" for none."""
  if not words:
    return ""
  return product.text[min(w.start for w in words):max(w.end for w in words)].lower()


def _noun(product: sf.Product, words: Sequence[sf.WordSpan]) -> str:
  """The noun of the detail that `words` belong to ("pocket", "buttons")."""
  j = words[0].detail
  return _span(product, [w for w in product.words if w.detail == j and w.role == "detail"])


def modification(attribute: str, source: sf.Product, source_words: Sequence[sf.WordSpan],
                 target: sf.Product, target_words: Sequence[sf.WordSpan]) -> str:
  """The text that turns `source` into `target`, which differ in `attribute` alone;
  `*_words` are each side's words naming it (`synthfashion.Twin.words`/`twin_words`)."""
  old, new = _span(source, source_words), _span(target, target_words)
  if attribute in ("colour", "pattern"):
    return f"is {new} instead of {old}"
  if attribute == "detail_presence":  # one side has no words: the detail is not there
    return f"also has {new}" if new else f"has no {old}"
  noun = _noun(source, source_words)
  if attribute == "detail_colour":
    return f"has {new} {noun} instead of {old} {noun}"
  if attribute == "detail_side":
    return f"has the {noun} on the {new} instead of the {old}"
  raise ValueError(f"attribute={attribute!r}: expected one of {ATTRIBUTES}")


def product_key(product_id: int, view: int) -> str:
  return f"{product_id}/{sf.VIEW_NAMES[view]}"


def twin_key(product_id: int, attribute: str, k: int, view: int) -> str:
  return f"{product_id}/{attribute}/{k}/{sf.VIEW_NAMES[view]}"


@functools.lru_cache(maxsize=8192)
def _twin_product(seed: int, product_id: int, attribute: str, k: int) -> sf.Product:
  # A training batch reads a twin a few times (its views, both query directions).
  return sf.make_twins(seed, product_id, attribute, k + 1)[k].product


class TwinImages:
  """The image store of one split's triplets (`load`, `check`, `in`, as `ImageFiles`):
  the keys the index wrote, each rendered when read."""

  def __init__(self, seed: int, image_size: int, keys: dict[str, tuple]):
    self.seed, self.image_size = seed, image_size
    self.keys = keys  # key -> (product_id, view) or (product_id, view, attribute, k)

  def __contains__(self, key: str) -> bool:
    return key in self.keys

  def check(self, key: str) -> str | None:
    return None if key in self.keys else "not an image of this SynthFashion-TGIR split"

  def load(self, key: str) -> np.ndarray:
    product_id, view, *twin = self.keys[key]
    product = (_twin_product(self.seed, product_id, *twin) if twin
               else sf.make_product(self.seed, product_id))
    return sf.render(product, view, self.image_size, self.seed)[0]


def index(split: str, num_products: int, seed: int, attribute: str,
          num_twins: int) -> tuple[Any, dict[str, tuple]]:
  """The FashionIQ index of one attribute and split (every query both ways, every view
  of the split's products and of the targeted twins in the split list) and the image
  keys it names."""
  from syncmask_jax.data import fashioniq  # pylint: disable=g-import-not-at-top  # TFDS
  if split not in sf.SPLIT_ID_BASE:
    raise ValueError(f"split={split!r}: expected one of {sorted(sf.SPLIT_ID_BASE)}")
  if attribute not in ATTRIBUTES:
    raise ValueError(f"attribute={attribute!r}: expected one of {ATTRIBUTES}")
  if num_twins < 1:
    raise ValueError(f"config.tgir.synth_twins={num_twins}: must be >= 1")
  triplets, keys = [], {}
  for product_id in sf.split_product_ids(split, num_products):
    product = sf.make_product(seed, int(product_id))
    for view in product.views:
      keys[product_key(product.product_id, view)] = (product.product_id, view)
    for twin in sf.make_twins(seed, product.product_id, attribute, num_twins):
      there = modification(attribute, product, twin.words, twin.product, twin.twin_words)
      back = modification(attribute, twin.product, twin.twin_words, product, twin.words)
      for view in twin.visible_views:
        if view not in product.views:
          continue
        own = product_key(product.product_id, view)
        other = twin_key(product.product_id, attribute, twin.k, view)
        keys[other] = (product.product_id, view, attribute, twin.k)
        triplets += [{"candidate": own, "target": other, "captions": [there]},
                     {"candidate": other, "target": own, "captions": [back]}]
  origin = f"SynthFashion-TGIR {split} {attribute} (seed {seed}, {num_products} products)"
  idx = fashioniq.FashionIQIndex(attribute, {split: triplets}, {split: list(keys)},
                                 origin=origin, categories=ATTRIBUTES)
  return idx, keys


def sources(split: str, num_products: int, seed: int, image_size: int, attribute: str,
            num_twins: int = 1, gallery_protocol: str = "split") -> tuple[Any, Any]:
  """(triplets, gallery) of one attribute and split, as `fashioniq.sources` returns:
  a `FashionIQTriplets` and a `FashionIQGallery`."""
  from syncmask_jax.data import fashioniq  # pylint: disable=g-import-not-at-top  # TFDS
  idx, keys = index(split, num_products, seed, attribute, num_twins)
  store = TwinImages(seed, image_size, keys)
  gallery = fashioniq.FashionIQGallery(idx, store, split, gallery_protocol)
  return fashioniq.FashionIQTriplets(idx, store, split, gallery=gallery), gallery
