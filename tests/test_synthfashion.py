"""SynthFashion: determinism, splits, and that the ground truth matches what is drawn."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from syncmask_jax import config_lib
from syncmask_jax.data import synthfashion as sf
from syncmask_jax.tokenizer import clean_text

_FIELDS = dict(image=np.uint8, product_id=np.int64, category=np.int32, subcategory=np.int32,
               view=np.int32, index=np.int64, gt_visible_spans=np.int32,
               gt_patch_part=np.int32, gt_patch_visible=np.bool_)


@pytest.fixture(scope="module")
def ds() -> sf.SynthFashion:
  return sf.SynthFashion("train", num_products=40, seed=7, image_size=64, patch_size=16)


@pytest.fixture(scope="module")
def records(ds) -> list[dict]:
  return [ds[i] for i in range(len(ds))]


def _digest(record: dict) -> str:
  h = hashlib.sha256()
  for k in sorted(record):
    v = record[k]
    h.update(k.encode())
    h.update(v.encode() if isinstance(v, str) else np.ascontiguousarray(v).tobytes())
  return h.hexdigest()


def test_class_attributes():
  assert sf.SynthFashion.num_categories == len(sf.SynthFashion.category_names) >= 8
  assert sf.SynthFashion.num_subcategories == len(sf.SynthFashion.subcategory_names) >= 16
  assert sf.SynthFashion.subcategory_names[3] == "men's dress"
  assert len(sf.COLOURS) >= 10 and len(sf.PATTERNS) >= 4


def test_fields_shapes_dtypes(ds, records):
  for r in records:
    for k, dtype in _FIELDS.items():
      assert np.asarray(r[k]).dtype == dtype, k
    assert r["image"].shape == (64, 64, 3)
    assert r["gt_patch_part"].shape == r["gt_patch_visible"].shape == (16,)
    assert r["gt_visible_spans"].ndim == 2 and r["gt_visible_spans"].shape[1] == 2
    np.testing.assert_array_equal(r["gt_patch_visible"], r["gt_patch_part"] > 0)
    assert r["subcategory"] == r["category"] * 2 + sf.make_product(
        ds.seed, int(r["product_id"])).gender
    assert clean_text(r["text"]) == r["text"]
  assert [int(r["index"]) for r in records] == list(range(len(ds)))


@pytest.mark.parametrize("size,patch,n", [(96, 16, 36), (128, 32, 16), (32, 8, 16)])
def test_patch_grid_follows_image_and_patch_size(size, patch, n):
  r = sf.SynthFashion("val", num_products=2, image_size=size, patch_size=patch)[1]
  assert r["image"].shape == (size, size, 3) and r["gt_patch_part"].shape == (n,)


def test_bad_arguments():
  with pytest.raises(ValueError, match="multiple"):
    sf.SynthFashion(image_size=100, patch_size=16)
  with pytest.raises(ValueError, match="split"):
    sf.SynthFashion("validation")
  with pytest.raises(IndexError):
    sf.SynthFashion(num_products=3)[10_000]


def test_deterministic_in_any_order_and_instance(ds, records):
  digests = [_digest(r) for r in records]
  fresh = sf.SynthFashion("train", num_products=40, seed=7, image_size=64, patch_size=16)
  sf.make_product.cache_clear()
  order = np.random.default_rng(0).permutation(len(fresh))
  for i in order:
    assert _digest(fresh[int(i)]) == digests[i]
  # A bigger split has the same records first: records do not depend on the split size.
  bigger = sf.SynthFashion("train", num_products=400, seed=7, image_size=64, patch_size=16)
  assert [_digest(bigger[i]) for i in range(5)] == digests[:5]
  other_seed = sf.SynthFashion("train", num_products=40, seed=8, image_size=64)
  assert [r["text"] for r in records[:20]] != [other_seed[i]["text"] for i in range(20)]


# sha256 of `_default_set_digest()` computed with the generator before DetailStyle existed
# (commit 9d17474): the default style must draw that set bit for bit.
_ORIGINAL_SET_DIGEST = "18892048a727f3cb09e180a4d2d169e7461f281aa84a32351e54a6823f85e7fd"


def _default_set_digest() -> str:
  """Train records at the study's 64 px / 8 px, and the twins of a few eval products."""
  h = hashlib.sha256()
  train = sf.SynthFashion("train", num_products=30, seed=0, image_size=64, patch_size=8)
  for i in range(len(train)):
    h.update(_digest(train[i]).encode())
  twins = sf.twin_records(0, sf.split_product_ids("val", 6), num_twins=3, image_size=64)
  h.update(twins["image"].tobytes())
  h.update("\n".join(twins["text"]).encode())
  return h.hexdigest()


def test_default_style_draws_the_original_set():
  assert _default_set_digest() == _ORIGINAL_SET_DIGEST


def _instance_pixels(style: sf.DetailStyle, kind: int) -> float:
  """Mean pixels of one drawn instance of a detail of `kind`, over 60 products at 128 px."""
  pixels, instances = 0, 0
  for pid in range(60):
    p = sf.make_product(0, pid, style)
    for view in p.views:
      drawn = [d for d in p.details if d.kind == kind and d.side == view]
      if drawn:
        pixels += int((sf.render(p, view, 128)[1] == 2 + kind).sum())
        instances += drawn[0].count
  return pixels / instances


def test_bigger_details_cover_more_pixels():
  # Free details scale in both sides, so their area with the square of the size.
  for kind in (sf.POCKET, sf.LOGO):
    ratio = (_instance_pixels(sf.DetailStyle(size=1.5), kind)
             / _instance_pixels(sf.DetailStyle(), kind))
    assert 2.0 < ratio < 2.5, (sf.DETAIL_NAMES[kind], ratio)
  # Collar and hood keep their boxes.
  assert (_instance_pixels(sf.DetailStyle(size=1.5), sf.COLLAR)
          == _instance_pixels(sf.DetailStyle(), sf.COLLAR))


def test_contrast_bounds_the_detail_colours():
  lo, hi = config_lib.SYNTH_DETAIL_CONTRASTS
  style = sf.DetailStyle(contrast=hi)
  for pid in range(40):
    p = sf.make_product(0, pid, style)
    for d in p.details:
      assert np.linalg.norm(np.subtract(sf.COLOURS[d.colour][1], sf.COLOURS[p.colour][1])) >= hi
  # At the highest contrast allowed every body still leaves a detail two colours.
  assert min(len(sf.detail_colours(c, patterned, hi)) for c in range(len(sf.COLOURS))
             for patterned in (False, True)) == 2
  for field, value in (("size", 2.5), ("contrast", 0.0)):
    with pytest.raises(ValueError, match=f"DetailStyle.{field}={value}"):
      sf.DetailStyle(**{field: value})


def test_facing_marks_cut_the_front_edge_of_each_view():
  # Per garment, per view: what the marks change against the same product without them.
  # A profile's mark sits in its front half (the left view faces the image's left), the
  # front view gets one only without a neck opening, the back view none; a mark is
  # background (image and part map) wherever a detail does not cover it.
  first = {}
  for pid in range(200):
    first.setdefault(sf.make_product(0, pid).category, pid)
  assert len(first) == len(sf.GARMENTS)
  size = 64
  for category, pid in first.items():
    plain, marked = (sf.make_product(0, pid, sf.DetailStyle(facing=f)) for f in (False, True))
    assert marked.facing and marked.details == plain.details
    for view in range(len(sf.VIEW_NAMES)):
      (a, _), (b, parts) = sf.render(plain, view, size), sf.render(marked, view, size)
      changed = np.any(a != b, axis=-1)
      cols = np.flatnonzero(changed.any(0))
      where = (sf.GARMENTS[category].name, sf.VIEW_NAMES[view])
      if view == sf.BACK or (view == sf.FRONT and sf.GARMENTS[category].front_cut):
        assert not changed.any(), where
        continue
      assert changed.sum() >= 6, where  # a few pixels at 64 px: visible at a patch
      assert np.all(parts[changed] == 0), where
      assert np.all(b[changed] == sf.BACKGROUND_RGB[plain.colour]), where
      rows = np.flatnonzero(changed.any(1))
      assert rows.max() < size * (sf.GARMENTS[category].neck_y + 0.15), where
      # Against the silhouette's centre column (the framing jitters per view).
      centre = np.flatnonzero(np.any(a != sf.BACKGROUND_RGB[plain.colour], -1).any(0))
      centre = (centre.min() + centre.max()) / 2
      if view == sf.LEFT:
        assert cols.mean() < centre - 3 and cols.max() < centre + 1, where
      elif view == sf.RIGHT:
        assert cols.mean() > centre + 3 and cols.min() > centre - 1, where
      else:  # front: a notch at the centre
        assert abs(cols.mean() - centre) <= 1, where


def test_deterministic_across_processes(records):
  code = ("import hashlib, numpy as np; from syncmask_jax.data import synthfashion as sf; "
          "ds = sf.SynthFashion('train', num_products=40, seed=7); "
          "r = ds[17]; print(hashlib.sha256(r['image'].tobytes() + r['text'].encode() "
          "+ r['gt_patch_part'].tobytes() + r['gt_visible_spans'].tobytes()).hexdigest())")
  out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                       text=True, env={**os.environ, "PYTHONHASHSEED": "123"}).stdout.strip()
  r = records[17]
  assert out == hashlib.sha256(r["image"].tobytes() + r["text"].encode()
                               + r["gt_patch_part"].tobytes()
                               + r["gt_visible_spans"].tobytes()).hexdigest()


def test_splits_disjoint_by_product():
  ids = {s: set(sf.SynthFashion(s, num_products=300).metadata()["product_id"].tolist())
         for s in ("train", "val", "test")}
  assert all(len(v) == 300 for v in ids.values())
  assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"]
  assert not ids["val"] & ids["test"]


def test_metadata_matches_records(ds, records):
  meta = ds.metadata()
  assert all(len(v) == len(ds) for v in meta.values())
  for k in ("product_id", "category", "subcategory", "view"):
    np.testing.assert_array_equal(meta[k], [r[k] for r in records])
  # A product's views are consecutive records, 2-4 of them, the front always first.
  _, first, counts = np.unique(meta["product_id"], return_index=True, return_counts=True)
  assert counts.min() >= 2 and counts.max() <= 4
  assert np.all(meta["view"][first] == sf.FRONT)


@pytest.mark.parametrize("style", [sf.DetailStyle(), sf.DetailStyle(size=0.5),
                                   sf.DetailStyle(size=2.0, contrast=150.0)])
def test_products_carry_two_to_four_placed_details(style):
  for pid in range(300):
    p = sf.make_product(0, pid, style)
    assert 2 <= len(p.details) <= 4
    assert len({(d.kind, d.side) for d in p.details}) == len(p.details)
    for d in p.details:
      assert d.side in sf.DETAIL_SIDES[d.kind] and d.kind in sf.GARMENTS[p.category].details
      assert len(d.boxes) == (d.count if d.kind in (sf.POCKET, sf.PATCH) else 1)


def test_descriptions_use_only_vocabulary_words():
  vocab = set(sf.vocabulary())
  for text in sf.descriptions(300, seed=1):
    words = text.lower().replace(".", " . ").replace(",", " , ").split()
    assert set(words) <= vocab, set(words) - vocab


def _is_word_boundary(text: str, start: int, end: int) -> bool:
  return ((start == 0 or not text[start - 1].isalnum())
          and (end == len(text) or not text[end].isalnum()))


def test_visible_spans_are_the_drawn_words(ds, records):
  function_words = {"a", "an", "the", "with", "and", "on", "at", "for", "in", "side",
                    "features", "it", "has", "of"}
  for r in records:
    text, view = r["text"], int(r["view"])
    p = sf.make_product(ds.seed, int(r["product_id"]))
    spans = {tuple(s) for s in r["gt_visible_spans"].tolist()}
    assert [list(s) for s in sorted(spans)] == r["gt_visible_spans"].tolist()
    for s, e in spans:
      assert _is_word_boundary(text, s, e) and text[s:e].lower() not in function_words
    garment = [w for w in p.words if w.role == "garment"]
    assert len(garment) == 1 and (garment[0].start, garment[0].end) in spans
    assert text[garment[0].start:garment[0].end].lower() in sf.GARMENTS[p.category].words
    colour = [w for w in p.words if w.role == "colour" and w.detail < 0]
    assert text[colour[0].start:colour[0].end].lower() in sf.COLOURS[p.colour][2]
    for w in p.words:
      if w.role in ("gender", "fabric"):
        assert (w.start, w.end) not in spans  # never drawn
      if w.detail >= 0:
        d = p.details[w.detail]
        # Side views see no front/back details; front never sees back ones.
        assert ((w.start, w.end) in spans) == (d.side == view)
        if w.role == "detail":
          assert re.fullmatch("|".join(sf.DETAIL_NOUNS[d.kind][0] + sf.DETAIL_NOUNS[
              d.kind][1]), text[w.start:w.end].lower())
        if w.role == "side":
          assert text[w.start:w.end].lower() == sf.VIEW_NAMES[d.side]


def test_back_detail_hidden_in_front_view():
  ds = sf.SynthFashion("val", num_products=60, seed=0)
  meta = ds.metadata()
  checked = 0
  for p_index in range(ds.num_products):
    p = ds.product(p_index)
    back = [j for j, d in enumerate(p.details) if d.side == sf.BACK]
    if not back or sf.BACK not in p.views:
      continue
    recs = {int(meta["view"][i]): ds[i]
            for i in np.flatnonzero(meta["product_id"] == p.product_id)}
    words = {(w.start, w.end) for w in p.words if w.detail in back}
    front_spans = {tuple(s) for s in recs[sf.FRONT]["gt_visible_spans"].tolist()}
    back_spans = {tuple(s) for s in recs[sf.BACK]["gt_visible_spans"].tolist()}
    assert words and not words & front_spans and words <= back_spans
    front_kinds = {d.kind for d in p.details if d.side == sf.FRONT}
    _, front_parts = sf.render(p, sf.FRONT, ds.image_size, ds.seed)
    _, back_parts = sf.render(p, sf.BACK, ds.image_size, ds.seed)
    for j in back:
      kind = p.details[j].kind
      assert np.any(back_parts == 2 + kind)
      if kind not in front_kinds:
        assert not np.any(front_parts == 2 + kind)
        assert 2 + kind not in recs[sf.FRONT]["gt_patch_part"]
    checked += 1
  assert checked >= 5


def test_detail_patches_lie_where_the_detail_is_drawn(ds, records):
  area = ds.patch_size ** 2
  g = ds.image_size // ds.patch_size
  for r in records:
    p, view = sf.make_product(ds.seed, int(r["product_id"])), int(r["view"])
    image, parts = sf.render(p, view, ds.image_size, ds.seed)
    np.testing.assert_array_equal(image, r["image"])
    visible = {d.kind: d for d in p.details if d.side == view}
    assert set(np.unique(parts)) <= {0, 1} | {2 + k for k in visible}
    body = np.array(sf.COLOURS[p.colour][1], np.uint8)
    shade = sf.SHADE_RGB[p.colour]
    labels = r["gt_patch_part"].reshape(g, g)
    for kind, d in visible.items():
      colour = np.array(sf.COLOURS[d.colour][1], np.uint8)
      assert not np.array_equal(colour, body) and not np.array_equal(colour, shade)
      # Pixels drawn as this detail have its colours, never the body's.
      drawn = parts == 2 + kind
      assert drawn.any()
      assert np.all(np.all(image[drawn] == colour, -1)
                    | np.all(image[drawn] == sf.ACCENT_RGB[d.colour], -1))
      assert not np.any(np.all(image[drawn] == body, -1))
      per_patch = drawn.reshape(g, ds.patch_size, g, ds.patch_size).sum((1, 3))
      assert np.any(labels == 2 + kind), "a drawn detail claims at least one patch"
      for y, x in zip(*np.nonzero(labels == 2 + kind)):
        tile = image[y * ds.patch_size:(y + 1) * ds.patch_size,
                     x * ds.patch_size:(x + 1) * ds.patch_size]
        assert np.all(tile == colour, -1).sum() > 0  # the detail's colour is there
        assert per_patch[y, x] > 0
      # A patch an eighth covered by a detail is labelled with a detail.
      assert np.all(labels[per_patch * 8 >= area] >= 2)
    # Body and background patches: decided by how much of the patch the garment covers.
    garment = (parts > 0).reshape(g, ds.patch_size, g, ds.patch_size).sum((1, 3))
    plain = labels < 2
    np.testing.assert_array_equal(labels[plain], (garment[plain] * 2 >= area).astype(int))


def test_profile_views_are_narrower_than_front():
  p = sf.make_product(0, 5)
  widths = {}
  for v in range(4):
    _, parts = sf.render(p, v, 128)
    cols = np.flatnonzero((parts == 1).any(0))
    widths[v] = cols[-1] - cols[0]
  assert widths[sf.LEFT] < 0.8 * widths[sf.FRONT] and widths[sf.RIGHT] < 0.8 * widths[sf.BACK]
