"""SynthFashion: a procedural fashion set with ground-truth co-occurrence (docs/method.md 8).

Each *product* is a garment type (the category) for a gender (category x gender is the
subcategory), a colour, a pattern, a fabric and 2-4 *details* (pocket, logo, zipper, ...),
each on one side of the garment (front, back, left or right) at a position. A product
has 2-4 *views* (front always, then some of back / left / right) and ONE description
that names everything, as a real listing does (SyncMask's problem: most views show only
part of what the text says).

What a view shows [ours]:

* front / back views draw the full silhouette (the front has the neck opening cut out,
  so front and back can be told apart) and the details on that side;
* left / right views draw the silhouette squeezed to a profile and only the details on
  that side: a profile sees the front and back surfaces edge-on, so their details are
  NOT drawn there;
* the garment type, colour and pattern show in every view; gender and fabric are
  never drawn (they are words no image can confirm, like much of a real listing).

How visible details are (`DetailStyle`, config `data.synth_detail_size`,
`data.synth_detail_contrast` and `data.synth_facing_marks`) [ours]: a scale of the small
details' boxes, the least RGB distance of a detail's colour from the body, and whether
every view shows which way the garment faces; the defaults draw the original set.
Without facing marks a left profile is drawn as the right one (and the front of
trousers, skirts and shorts as their back), so the image cannot tell those sides apart.

Which words are visible (`gt_visible_spans`) [ours]: the garment noun, the body colour
word and the pattern word in every view; for a detail drawn in the view, its count
numeral ("two"), colour word, noun and side word ("front", "left"). Never: gender
("women's", "men"), fabric ("cotton"), determiners, prepositions, conjunctions, intro
words ("features", "it has"), punctuation, the word "side". A multi-word filler
("hooded sweatshirt", "polka-dot") is one span.

Patch ground truth (`gt_patch_part`, row-major on the model's patch grid): the detail
type d (label 2 + d) covering the most pixels among those covering >= 1/8 of the patch,
where each drawn detail also claims the patch holding most of its pixels; otherwise 1
(garment body) when the garment covers at least half the patch; otherwise 0
(background). A detail left without a patch (a bigger one won them all) then takes its
best patch whose owner keeps another, so small details are not lost at a coarse grid.
`gt_patch_visible` is `gt_patch_part > 0`: the body is named (garment, colour,
pattern) and only visible details are drawn.

Twins (`make_twins`, `twin_records`) [ours]: products one attribute away from a product
(its colour, pattern, a detail's presence, a detail's colour or side), worded by the same
`_describe` with the same draws, so the two texts differ in that attribute's words alone;
a view that does not show the change draws the twin exactly as the original. They make
the 1+K twins retrieval protocol (`retrieval.twins_recall`).

Random access: a record is (product, view). Category, gender, view count and view set
come from a counter-based hash of (seed, product_id), so the per-record tables of a
split are a few vectorised numpy ops even for millions of products; the rest of a
product comes from a numpy Generator seeded with (seed, product_id), and the view's
framing jitter from (seed, product_id, view). Splits are disjoint by product id
(train ids from 0, val from 1e9, test from 2e9).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from syncmask_jax import config_lib, tokenizer

FRONT, BACK, LEFT, RIGHT = 0, 1, 2, 3
VIEW_NAMES = ("front", "back", "left", "right")
SPLIT_ID_BASE = {"train": 0, "val": 1_000_000_000, "test": 2_000_000_000}
DEFAULT_NUM_PRODUCTS = {"train": 20_000, "val": 1_000, "test": 1_000}

GENDERS = ("women", "men")
_GENDER_ADJ = ("women's", "men's")

# (name, RGB, synonyms used in text).
COLOURS = (
    ("black", (28, 28, 28), ("black",)),
    ("white", (242, 242, 242), ("white",)),
    ("grey", (128, 128, 128), ("grey", "gray")),
    ("navy", (24, 32, 96), ("navy",)),
    ("blue", (40, 104, 216), ("blue",)),
    ("red", (200, 32, 40), ("red",)),
    ("green", (32, 136, 64), ("green",)),
    ("yellow", (240, 208, 48), ("yellow",)),
    ("pink", (240, 144, 184), ("pink",)),
    ("beige", (216, 196, 152), ("beige",)),
    ("brown", (112, 72, 40), ("brown",)),
    ("purple", (120, 56, 160), ("purple",)),
    ("orange", (240, 128, 32), ("orange",)),
)
_COLOUR_RGB = np.array([c[1] for c in COLOURS], np.float64)

PATTERNS = (
    ("plain", ("plain", "solid")),
    ("striped", ("striped", "stripy")),
    ("checked", ("checked", "plaid", "checkered")),
    ("dotted", ("dotted", "polka-dot", "spotted")),
    ("zigzag", ("zigzag", "chevron")),
)
PLAIN = 0

FABRICS = ("cotton", "wool", "linen", "denim", "silk", "polyester", "fleece", "jersey")

# Detail types; part label in gt_patch_part is 2 + index.
DETAIL_NAMES = ("pocket", "logo", "zipper", "buttons", "collar", "hood", "patch", "bow")
POCKET, LOGO, ZIPPER, BUTTONS, COLLAR, HOOD, PATCH, BOW = range(8)
NUM_PARTS = 2 + len(DETAIL_NAMES)
DETAIL_NOUNS = {  # (singular synonyms, plural synonyms)
    POCKET: (("pocket",), ("pockets",)),
    LOGO: (("logo", "emblem"), ()),
    ZIPPER: (("zipper", "zip"), ()),
    BUTTONS: ((), ("buttons",)),
    COLLAR: (("collar",), ()),
    HOOD: (("hood",), ()),
    PATCH: (("patch",), ("patches",)),
    BOW: (("bow",), ()),
}
DETAIL_SIDES = {
    POCKET: (FRONT, BACK, LEFT, RIGHT), LOGO: (FRONT, BACK, LEFT, RIGHT),
    ZIPPER: (FRONT, BACK, LEFT, RIGHT), BUTTONS: (FRONT, BACK), COLLAR: (FRONT,),
    HOOD: (BACK,), PATCH: (FRONT, BACK, LEFT, RIGHT), BOW: (FRONT, BACK),
}
_FREE_SIZE = {POCKET: (0.11, 0.11), LOGO: (0.11, 0.11), PATCH: (0.11, 0.11),
              BOW: (0.15, 0.09)}  # (w, h) as a fraction of the canvas, at DetailStyle.size 1
_COLUMN_WIDTH = {ZIPPER: 0.05, BUTTONS: 0.07}  # at DetailStyle.size 1
_NUMERALS = {2: "two", 3: "three", 4: "four"}
_MARGIN = 0.015  # gap kept between details on one side
_SIDE_SQUEEZE = 0.6  # profile width relative to the front silhouette


def _mirror(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
  return [(1.0 - x, y) for x, y in reversed(points)]


def _sleeves(points: Sequence[tuple[float, float]]) -> list[tuple[str, Any]]:
  return [("poly", list(points)), ("poly", _mirror(points))]


@dataclasses.dataclass(frozen=True)
class GarmentType:
  """A garment category: its words and its drawing in the front-view frame ([0, 1]^2)."""
  name: str
  words: tuple[str, ...]
  body: tuple[tuple[str, Any], ...]  # drawn in every view (squeezed in profile)
  sleeves: tuple[tuple[str, Any], ...]  # front/back only
  front_cut: tuple[tuple[str, Any], ...]  # neck/face opening, front view only
  neck_y: float  # top of the body at the centre line: where a collar or hood sits
  panel: tuple[float, float, float, float]  # box inside the body where details go
  details: tuple[int, ...]  # detail types this garment can carry


GARMENTS = (
    GarmentType(
        "t-shirt", ("t-shirt", "tee"),
        body=(("poly", [(0.31, 0.20), (0.69, 0.20), (0.69, 0.86), (0.31, 0.86)]),),
        sleeves=tuple(_sleeves([(0.31, 0.20), (0.17, 0.31), (0.23, 0.42), (0.31, 0.37)])),
        front_cut=(("ellipse", (0.42, 0.15, 0.58, 0.26)),),
        neck_y=0.20, panel=(0.34, 0.33, 0.66, 0.83),
        details=(POCKET, LOGO, BUTTONS, COLLAR, PATCH, BOW)),
    GarmentType(
        "dress", ("dress",),
        body=(("poly", [(0.37, 0.14), (0.63, 0.14), (0.62, 0.45), (0.38, 0.45)]),
              ("poly", [(0.38, 0.44), (0.62, 0.44), (0.80, 0.94), (0.20, 0.94)])),
        sleeves=(),
        front_cut=(("ellipse", (0.43, 0.10, 0.57, 0.20)),),
        neck_y=0.14, panel=(0.39, 0.27, 0.61, 0.88),
        details=(POCKET, LOGO, ZIPPER, BUTTONS, COLLAR, PATCH, BOW)),
    GarmentType(
        "trousers", ("trousers", "pants"),
        body=(("poly", [(0.32, 0.07), (0.68, 0.07), (0.69, 0.38), (0.31, 0.38)]),
              ("poly", [(0.31, 0.36), (0.49, 0.36), (0.47, 0.96), (0.33, 0.96)]),
              ("poly", _mirror([(0.31, 0.36), (0.49, 0.36), (0.47, 0.96), (0.33, 0.96)]))),
        sleeves=(), front_cut=(),
        neck_y=0.07, panel=(0.34, 0.10, 0.66, 0.36),
        details=(POCKET, LOGO, ZIPPER, PATCH)),
    GarmentType(
        "skirt", ("skirt",),
        body=(("poly", [(0.35, 0.24), (0.65, 0.24), (0.78, 0.74), (0.22, 0.74)]),),
        sleeves=(), front_cut=(),
        neck_y=0.24, panel=(0.37, 0.27, 0.63, 0.71),
        details=(POCKET, LOGO, ZIPPER, BUTTONS, PATCH, BOW)),
    GarmentType(
        "jacket", ("jacket",),
        body=(("poly", [(0.30, 0.18), (0.70, 0.18), (0.71, 0.80), (0.29, 0.80)]),),
        sleeves=tuple(_sleeves([(0.30, 0.18), (0.22, 0.22), (0.15, 0.77), (0.23, 0.79),
                                (0.30, 0.40)])),
        front_cut=(("poly", [(0.43, 0.18), (0.57, 0.18), (0.50, 0.28)]),),
        neck_y=0.18, panel=(0.33, 0.31, 0.67, 0.77),
        details=(POCKET, LOGO, ZIPPER, BUTTONS, COLLAR, HOOD, PATCH)),
    GarmentType(
        "hoodie", ("hoodie", "hooded sweatshirt"),
        body=(("ellipse", (0.37, 0.05, 0.63, 0.30)),
              ("poly", [(0.31, 0.22), (0.69, 0.22), (0.68, 0.84), (0.32, 0.84)]),
              ("poly", [(0.33, 0.83), (0.67, 0.83), (0.66, 0.89), (0.34, 0.89)])),
        sleeves=tuple(_sleeves([(0.31, 0.22), (0.23, 0.26), (0.17, 0.80), (0.25, 0.82),
                                (0.31, 0.44)])),
        front_cut=(("ellipse", (0.42, 0.09, 0.58, 0.24)),),
        neck_y=0.22, panel=(0.34, 0.30, 0.66, 0.80),
        details=(POCKET, LOGO, ZIPPER, PATCH)),
    GarmentType(
        "shorts", ("shorts",),
        body=(("poly", [(0.31, 0.28), (0.69, 0.28), (0.70, 0.50), (0.30, 0.50)]),
              ("poly", [(0.30, 0.48), (0.495, 0.48), (0.48, 0.72), (0.31, 0.72)]),
              ("poly", _mirror([(0.30, 0.48), (0.495, 0.48), (0.48, 0.72), (0.31, 0.72)]))),
        sleeves=(), front_cut=(),
        neck_y=0.28, panel=(0.33, 0.30, 0.67, 0.48),
        details=(POCKET, LOGO, ZIPPER, PATCH)),
    GarmentType(
        "coat", ("coat", "overcoat"),
        body=(("poly", [(0.30, 0.16), (0.70, 0.16), (0.74, 0.95), (0.26, 0.95)]),),
        sleeves=tuple(_sleeves([(0.30, 0.16), (0.22, 0.20), (0.15, 0.78), (0.23, 0.80),
                                (0.30, 0.38)])),
        front_cut=(("poly", [(0.43, 0.16), (0.57, 0.16), (0.50, 0.27)]),),
        neck_y=0.16, panel=(0.33, 0.29, 0.67, 0.92),
        details=(POCKET, LOGO, ZIPPER, BUTTONS, COLLAR, HOOD, PATCH)),
)

# The phrase grammar. `vocabulary()` reads these tables, so every word the generator
# can write is listed there (the tokenizer's vocab trainer relies on it).
_HEAD_TEMPLATES = (
    "{colour} {pattern} {gender_adj} {garment}",
    "{gender_adj} {colour} {pattern} {garment}",
    "{colour} {pattern} {garment} for {gender_noun}",
    "{pattern} {colour} {gender_adj} {garment}",
)
# A caption of one view names only what the view shows: no gender, no fabric.
_VIEW_HEAD_TEMPLATES = ("{colour} {pattern} {garment}", "{pattern} {colour} {garment}")
_FABRIC_SUFFIX = " in {fabric}"
_FABRIC_SENTENCES = ("made of {fabric}.", "crafted in soft {fabric}.", "{fabric} fabric.")
_INTROS = ("features", "it has", "comes with", "details include", "finished with")
_DETAIL_TEMPLATES_FRONT_BACK = (
    "{colour} {noun} on the {side}", "{colour} {noun} at the {side}", "{colour} {side} {noun}")
_DETAIL_TEMPLATES_LEFT_RIGHT = (
    "{colour} {noun} on the {side} side", "{colour} {noun} on the {side}")
_DETERMINERS = ("a", "an")
_GLUE = ("with", "and", ",", ".")
_SLOT = re.compile(r"(\{\w+\})")


def vocabulary() -> list[str]:
  """Every word (whitespace-separated unit, punctuation split off) the grammar can write.

  Lower case; descriptions capitalise the first letter of each sentence.
  """
  texts = [*_HEAD_TEMPLATES, *_VIEW_HEAD_TEMPLATES, _FABRIC_SUFFIX, *_FABRIC_SENTENCES, *_INTROS,
           *_DETAIL_TEMPLATES_FRONT_BACK, *_DETAIL_TEMPLATES_LEFT_RIGHT, *_DETERMINERS,
           *_GLUE, *GENDERS, *_GENDER_ADJ, *FABRICS, *VIEW_NAMES, *_NUMERALS.values()]
  for g in GARMENTS:
    texts += g.words
  for _, _, words in COLOURS:
    texts += words
  for _, words in PATTERNS:
    texts += words
  for singular, plural in DETAIL_NOUNS.values():
    texts += singular + plural
  words = set()
  for t in texts:
    t = _SLOT.sub(" ", t).replace(".", " . ").replace(",", " , ")
    words.update(t.split())
  return sorted(words)


@dataclasses.dataclass(frozen=True)
class DetailStyle:
  """How visible the details are [ours]: two levers of how hard the detail attributes
  are to learn (issue 30's calibration). The defaults are the generator's original
  values, which draw the original set bit for bit.

  `size` scales the details that are small on a patch grid: the boxes of pockets, logos,
  patches and bows, and the width of the zipper and buttons columns (their length spans
  the panel). Collar and hood keep their boxes: they already span several patches.
  Placement is drawn among the boxes that fit at that size, so a size changes which
  placements (and hence which products) are drawn, never their overlap.

  `contrast` is the least RGB distance of a detail's colour from the body colour; from
  the pattern's shade it is 70/110 of that (the original 110 and 70). A higher contrast
  leaves fewer colours a detail may take.

  `facing` cuts a facing mark into the silhouette (`_facing_mark`): a notch at the top
  of the front edge in a profile (the left view faces the image's left, the right view
  its right) and at the top centre of the front view of a garment without a neck
  opening. Without it (the original) a left and a right profile are drawn alike and so
  are the front and back of trousers, skirts and shorts: a detail's side is then
  readable from the image only on the other garments' front and back views.
  """
  size: float = 1.0
  contrast: float = 110.0
  facing: bool = False

  def __post_init__(self):
    lo, hi = config_lib.SYNTH_DETAIL_SIZES
    if not lo <= self.size <= hi:
      raise ValueError(f"DetailStyle.size={self.size!r}: must be in [{lo}, {hi}]")
    lo, hi = config_lib.SYNTH_DETAIL_CONTRASTS
    if not lo < self.contrast <= hi:
      raise ValueError(f"DetailStyle.contrast={self.contrast!r}: must be in ({lo}, {hi}]")


@dataclasses.dataclass(frozen=True)
class Detail:
  kind: int  # index into DETAIL_NAMES
  side: int  # the view that shows it: FRONT, BACK, LEFT or RIGHT
  colour: int  # index into COLOURS
  count: int  # instances drawn (pockets, patches: 1-2; buttons: 3-4)
  boxes: tuple[tuple[float, float, float, float], ...]  # (x0, y0, x1, y1) per instance,
  # in the normalised frame of its side's view (profile frame for left/right)


@dataclasses.dataclass(frozen=True)
class WordSpan:
  start: int
  end: int
  role: str  # garment | colour | pattern | gender | fabric | count | detail | side
  detail: int  # index into Product.details for detail words, else -1


@dataclasses.dataclass(frozen=True)
class Product:
  """One product: its attributes, details, views and the description naming them all."""
  product_id: int
  category: int
  gender: int
  colour: int
  pattern: int
  fabric: int
  details: tuple[Detail, ...]
  views: tuple[int, ...]
  text: str
  words: tuple[WordSpan, ...]  # every content word of `text`
  facing: bool = False  # its views carry facing marks (`DetailStyle.facing`)

  @property
  def subcategory(self) -> int:
    return self.category * len(GENDERS) + self.gender

  def visible_spans(self, view: int) -> np.ndarray:
    """[start, end) character spans of the words this view shows (see module doc)."""
    parts = self.word_parts(view)
    return parts[parts[:, 2] > 0, :2]

  def word_parts(self, view: int) -> np.ndarray:
    """(start, end, part) of every content word, sorted: what the word names in this view.

    part is the `gt_patch_part` label of the patches showing it: 2 + detail type for a
    detail's words (numeral, colour, noun, side) when the view shows that detail, 1
    (the garment: patches of part >= 1) for the garment noun and the body's colour and
    pattern, 0 for a word the view cannot show (gender, fabric, another side's detail).
    """
    rows = []
    for w in self.words:
      if w.detail >= 0:
        d = self.details[w.detail]
        part = 2 + d.kind if d.side == view else 0
      else:
        part = 1 if w.role in ("garment", "colour", "pattern") else 0
      rows.append((w.start, w.end, part))
    return np.array(sorted(rows), np.int32).reshape(-1, 3)


# ---------------------------------------------------------------------------
# Counter-based draws: per-product values without generating other products.

_SALT_CATEGORY, _SALT_GENDER, _SALT_NUM_VIEWS, _SALT_VIEW_SET = 11, 12, 13, 14
_M64 = (1 << 64) - 1


def _hash(seed: int, product_id: Any, salt: int) -> Any:
  """splitmix64 of (seed, product_id, salt): a uniform 64-bit value.

  Works on a Python int (one product, fast) and on a uint64 array (a whole split) alike.
  """
  x = product_id
  for k in (seed, salt):
    x = (x * 0x9E3779B97F4A7C15 + k) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    x = x ^ (x >> 31)
  return x


def _view_sets() -> np.ndarray:
  """Views by (number of views, choice in 0..2), -1 padded: front always, as listings."""
  sets = np.full((5, 3, 4), -1, np.int32)
  others = (BACK, LEFT, RIGHT)
  for j in range(3):
    sets[2, j, :2] = (FRONT, others[j])
    sets[3, j, :3] = (FRONT,) + tuple(v for i, v in enumerate(others) if i != j)
    sets[4, j] = (FRONT, BACK, LEFT, RIGHT)
  return sets


_VIEW_SETS = _view_sets()


def split_product_ids(split: str, num_products: int) -> np.ndarray:
  """The ids of a split's first `num_products` products (int64): each split numbers its
  products from its own base, so a larger split only appends to a smaller one."""
  return SPLIT_ID_BASE[split] + np.arange(num_products, dtype=np.int64)


def product_table(seed: int, product_ids: Any) -> dict[str, Any]:
  """category, gender, num_views and views (-1 padded to 4) of one product or many.

  `product_ids` an int: Python ints and a views tuple; an array: arrays, views (P, 4).
  """
  scalar = isinstance(product_ids, (int, np.integer))
  pid = int(product_ids) if scalar else np.asarray(product_ids, np.int64).astype(np.uint64)
  with np.errstate(over="ignore"):
    draws = [_hash(seed, pid, salt) % n for salt, n in (
        (_SALT_CATEGORY, len(GARMENTS)), (_SALT_GENDER, len(GENDERS)),
        (_SALT_NUM_VIEWS, 3), (_SALT_VIEW_SET, 3))]
  if scalar:
    category, gender, extra, choice = (int(d) for d in draws)
    return dict(category=category, gender=gender, num_views=2 + extra,
                views=tuple(int(v) for v in _VIEW_SETS[2 + extra, choice]))
  category, gender, extra, choice = (d.astype(np.int32) for d in draws)
  return dict(category=category, gender=gender, num_views=2 + extra,
              views=_VIEW_SETS[2 + extra, choice])


# ---------------------------------------------------------------------------
# Product generation.


def _luminance(rgb: Sequence[float]) -> float:
  return (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]) / 255.0


def _pattern_shade(rgb: Sequence[float]) -> tuple[int, int, int]:
  """The pattern's second colour: a lighter or darker shade of the body colour."""
  c = np.asarray(rgb, np.float64)
  c = c + 0.45 * (255 - c) if _luminance(rgb) < 0.5 else 0.65 * c
  return tuple(int(round(v)) for v in c)


def _accent(rgb: Sequence[float]) -> tuple[int, int, int]:
  """A detail's secondary colour (pocket flap, logo centre, zipper pull, buttons)."""
  c = np.asarray(rgb, np.float64)
  c = 0.55 * c if _luminance(rgb) >= 0.35 else c + 0.5 * (255 - c)
  return tuple(int(round(v)) for v in c)


def _background(rgb: Sequence[float]) -> tuple[int, int, int]:
  return (52, 54, 60) if _luminance(rgb) > 0.6 else (232, 232, 226)


# Per-colour lookups, so rendering does no colour arithmetic.
SHADE_RGB = np.array([_pattern_shade(c[1]) for c in COLOURS], np.uint8)
ACCENT_RGB = np.array([_accent(c[1]) for c in COLOURS], np.uint8)
BACKGROUND_RGB = np.array([_background(c[1]) for c in COLOURS], np.uint8)


def _overlaps(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
  return (a[0] < b[2] + _MARGIN and b[0] < a[2] + _MARGIN
          and a[1] < b[3] + _MARGIN and b[1] < a[3] + _MARGIN)


def _side_panel(garment: GarmentType, side: int) -> tuple[float, float, float, float]:
  x0, y0, x1, y1 = garment.panel
  if side in (LEFT, RIGHT):
    x0, x1 = 0.5 + (x0 - 0.5) * _SIDE_SQUEEZE, 0.5 + (x1 - 0.5) * _SIDE_SQUEEZE
  return x0, y0, x1, y1


@functools.lru_cache(maxsize=None)
def _candidates(category: int, kind: int, side: int, count: int, size: float
                ) -> tuple[tuple[tuple[float, float, float, float], ...], ...]:
  """Every placement (a box per instance) of a detail on `side` that fits the panel, at
  `DetailStyle.size` `size`."""
  garment = GARMENTS[category]
  px0, py0, px1, py1 = _side_panel(garment, side)
  n = garment.neck_y
  if kind == COLLAR:
    return (((0.37, n - 0.01, 0.63, n + 0.10),),)
  if kind == HOOD:
    return (((0.36, n - 0.12, 0.64, n + 0.12),),)
  if kind in _COLUMN_WIDTH:
    w = _COLUMN_WIDTH[kind] * size
    return (((0.5 - w / 2, py0 + 0.01, 0.5 + w / 2, py1 - 0.01),),)
  w, h = (v * size for v in _FREE_SIZE[kind])
  side_by_side = count == 2 and side in (FRONT, BACK)  # a mirrored pair
  stacked = count == 2 and not side_by_side  # one above the other, in profile
  ys = np.linspace(py0 + h / 2, py1 - h / 2 - stacked * (h + _MARGIN), 5)
  xs = np.linspace(px0 + w / 2, px1 - w / 2, 4)
  out = []
  for cx in xs:
    for cy in ys:
      box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
      if side_by_side:
        boxes = (box, (1 - box[2], box[1], 1 - box[0], box[3]))
      elif stacked:
        boxes = (box, (box[0], box[1] + h + _MARGIN, box[2], box[3] + h + _MARGIN))
      else:
        boxes = (box,)
      if (min(b[0] for b in boxes) >= px0 - 1e-9 and max(b[2] for b in boxes) <= px1 + 1e-9
          and min(b[1] for b in boxes) >= py0 - 1e-9 and max(b[3] for b in boxes) <= py1 + 1e-9
          and not (side_by_side and _overlaps(*boxes))):
        out.append(tuple(tuple(float(v) for v in b) for b in boxes))
  return tuple(out)


def _place(kind: int, side: int, count: int, category: int,
           taken: list[tuple[float, ...]], rng: np.random.Generator, size: float
           ) -> tuple[tuple[float, float, float, float], ...] | None:
  """A random placement of a detail on `side` clear of `taken`, at `DetailStyle.size`
  `size`; None if none fits."""
  candidates = _candidates(category, kind, side, count, size)
  order = rng.permutation(len(candidates)) if len(candidates) > 1 else range(len(candidates))
  for i in order:
    boxes = candidates[i]
    if not any(_overlaps(b, t) for b in boxes for t in taken):
      return boxes
  return None


class _TextBuilder:
  """Concatenates pieces, remembering the spans of content words and sentence starts."""

  def __init__(self):
    self.pieces: list[str] = []
    self.length = 0
    self.words: list[WordSpan] = []
    self._capitalise = True

  def add(self, text: str, role: str | None = None, detail: int = -1) -> None:
    if self._capitalise and text.strip():
      text = text[0].upper() + text[1:]
      self._capitalise = False
    if role is not None:
      self.words.append(WordSpan(self.length, self.length + len(text), role, detail))
    self.pieces.append(text)
    self.length += len(text)

  def template(self, template: str, **slots: tuple[str, str | None, int]) -> None:
    for piece in _SLOT.split(template):
      if not piece:
        continue
      if piece.startswith("{"):
        self.add(*slots[piece[1:-1]])
      else:
        self.add(piece)

  def end_sentence(self) -> None:
    self.add(".")
    self._capitalise = True

  def text(self) -> str:
    return "".join(self.pieces)


def _detail_phrase(b: _TextBuilder, details: Sequence[Detail], j: int,
                   rng: np.random.Generator) -> None:
  d = details[j]
  singular, plural = DETAIL_NOUNS[d.kind]
  nouns = singular if d.count == 1 else plural
  colour_words = COLOURS[d.colour][2]
  colour_word = colour_words[rng.integers(len(colour_words))]
  if d.count == 1:
    b.add("an" if colour_word[0] in "aeiou" else "a")
    b.add(" ")
  elif d.kind != BUTTONS or rng.random() < 0.5:  # "white buttons" needs no numeral
    b.add(_NUMERALS[d.count], "count", j)
    b.add(" ")
  templates = (_DETAIL_TEMPLATES_FRONT_BACK if d.side in (FRONT, BACK)
               else _DETAIL_TEMPLATES_LEFT_RIGHT)
  b.template(templates[rng.integers(len(templates))],
             colour=(colour_word, "colour", j),
             noun=(nouns[rng.integers(len(nouns))], "detail", j),
             side=(VIEW_NAMES[d.side], "side", j))


def _detail_list(b: _TextBuilder, details: Sequence[Detail], order: Sequence[int],
                 rng: np.random.Generator) -> None:
  """"A, B and C": the details `order` names, in that order."""
  for i, j in enumerate(order):
    if i:
      b.add(" and " if i == len(order) - 1 else ", ")
    _detail_phrase(b, details, j, rng)


def _describe(category: int, gender: int, colour: int, pattern: int, fabric: int,
              details: Sequence[Detail], rng: np.random.Generator
              ) -> tuple[str, tuple[WordSpan, ...]]:
  """One description naming everything, from the phrase grammar above."""
  b = _TextBuilder()
  head = _HEAD_TEMPLATES[rng.integers(len(_HEAD_TEMPLATES))]
  if pattern == PLAIN and rng.random() < 0.5:
    head = head.replace("{pattern} ", "")  # listings often leave "plain" unsaid
  fabric_form = rng.integers(3)  # adjective | " in cotton" | a sentence of its own
  if fabric_form == 0:
    head = head.replace("{garment}", "{fabric} {garment}")
  garments = GARMENTS[category].words
  slots = dict(
      colour=(COLOURS[colour][2][rng.integers(len(COLOURS[colour][2]))], "colour", -1),
      pattern=(PATTERNS[pattern][1][rng.integers(len(PATTERNS[pattern][1]))], "pattern", -1),
      gender_adj=(_GENDER_ADJ[gender], "gender", -1),
      gender_noun=(GENDERS[gender], "gender", -1),
      garment=(garments[rng.integers(len(garments))], "garment", -1),
      fabric=(FABRICS[fabric], "fabric", -1))
  b.template(head, **slots)
  if fabric_form == 1:
    b.template(_FABRIC_SUFFIX, **slots)

  order = [int(j) for j in rng.permutation(len(details))]
  form = rng.integers(3)
  intro = _INTROS[rng.integers(len(_INTROS))]
  if form == 0:  # "... with A, B and C."
    b.add(" with ")
    _detail_list(b, details, order, rng)
    b.end_sentence()
  elif form == 1:  # "... . Features A, B and C."
    b.end_sentence()
    b.add(" ")
    b.add(intro + " ")
    _detail_list(b, details, order, rng)
    b.end_sentence()
  else:  # "... with A. It has B and C."
    b.add(" with ")
    _detail_list(b, details, order[:1], rng)
    b.end_sentence()
    b.add(" ")
    b.add(intro + " ")
    _detail_list(b, details, order[1:], rng)
    b.end_sentence()
  if fabric_form == 2:
    b.add(" ")
    b.template(_FABRIC_SENTENCES[rng.integers(len(_FABRIC_SENTENCES))][:-1], **slots)
    b.end_sentence()
  return b.text(), tuple(b.words)


def view_caption(product: Product, view: int, rng: np.random.Generator) -> str:
  """A caption of one view of `product`: only what the view shows (module doc).

  The garment with its colour and pattern, then the details on this view's side
  ("Navy striped hoodie with a white pocket on the front."); never gender or fabric
  (not drawn) nor another side's details. Drawn from the description's phrase grammar,
  so different `rng`s give the different wordings a set of references needs.
  """
  if view not in product.views:
    raise ValueError(f"product {product.product_id} has no {VIEW_NAMES[view]} view "
                     f"(views {[VIEW_NAMES[v] for v in product.views]})")
  head = _VIEW_HEAD_TEMPLATES[rng.integers(len(_VIEW_HEAD_TEMPLATES))]
  if product.pattern == PLAIN and rng.random() < 0.5:
    head = head.replace("{pattern} ", "")
  colours = COLOURS[product.colour][2]
  patterns = PATTERNS[product.pattern][1]
  garments = GARMENTS[product.category].words
  slots = dict(colour=(colours[rng.integers(len(colours))], "colour", -1),
               pattern=(patterns[rng.integers(len(patterns))], "pattern", -1),
               garment=(garments[rng.integers(len(garments))], "garment", -1))
  b = _TextBuilder()
  b.template(head, **slots)
  shown = [j for j, d in enumerate(product.details) if d.side == view]
  if shown:
    b.add(" with ")
    _detail_list(b, product.details, [shown[int(i)] for i in rng.permutation(len(shown))],
                 rng)
  b.end_sentence()
  return b.text()


@functools.lru_cache(maxsize=None)
def detail_colours(colour: int, patterned: bool, contrast: float = DetailStyle.contrast
                   ) -> np.ndarray:
  """The colours a detail may take on a body of `colour` (patterned or not): those at
  RGB distance >= `contrast` from the body and (patterned) >= 70/110 of it from the
  pattern's shade. Closer ones are hard to see. At most contrast
  `config_lib.SYNTH_DETAIL_CONTRASTS[1]`, every body leaves a detail two colours, so that
  it has a detail-colour twin (`test_synthfashion` checks the bound)."""
  body = _COLOUR_RGB[colour]
  ok = np.linalg.norm(_COLOUR_RGB - body, axis=1) >= contrast
  if patterned:
    # contrast * 70 / 110 is exactly 70.0 at the default 110 (the original threshold).
    ok &= np.linalg.norm(_COLOUR_RGB - SHADE_RGB[colour], axis=1) >= contrast * 70.0 / 110.0
  out = np.flatnonzero(ok)
  out.flags.writeable = False  # shared by the cache
  return out


def _detail_count(kind: int, rng: np.random.Generator) -> int:
  """Instances of a new detail: pockets and patches 1-2, buttons 3-4, else 1."""
  if kind in (POCKET, PATCH):
    return 2 if rng.random() < 0.35 else 1
  if kind == BUTTONS:
    return int(rng.integers(3, 5))
  return 1


def _draw_product(seed: int, product_id: int, style: DetailStyle
                  ) -> tuple[dict[str, Any], np.random.Generator]:
  """The attributes and details of a product, and its generator as `_describe` gets it
  (twins replay that generator's draws to word a changed product the same way)."""
  table = product_table(seed, product_id)
  category, gender = table["category"], table["gender"]
  views = tuple(v for v in table["views"] if v >= 0)
  garment = GARMENTS[category]
  rng = np.random.default_rng([seed, product_id, 0x5F])
  colour = int(rng.integers(len(COLOURS)))
  pattern = int(rng.integers(len(PATTERNS)))
  fabric = int(rng.integers(len(FABRICS)))
  allowed = detail_colours(colour, pattern != PLAIN, style.contrast)

  num_details = int(rng.integers(2, 5))
  options = [(k, s) for k in garment.details for s in DETAIL_SIDES[k]]
  taken: dict[int, list[tuple[float, ...]]] = {v: [] for v in range(4)}
  details = []
  for i in rng.permutation(len(options)):
    if len(details) == num_details:
      break
    kind, side = options[i]
    count = _detail_count(kind, rng)
    boxes = _place(kind, side, count, category, taken[side], rng, style.size)
    if boxes is None:
      continue
    taken[side].extend(boxes)
    details.append(Detail(kind, side, int(allowed[rng.integers(len(allowed))]),
                          count, boxes))
  if len(details) < 2:
    raise RuntimeError(f"product {product_id}: only {len(details)} details fit")
  return dict(product_id=product_id, category=category, gender=gender, colour=colour,
              pattern=pattern, fabric=fabric, details=tuple(details), views=views,
              facing=style.facing), rng


@functools.lru_cache(maxsize=512)
def make_product(seed: int, product_id: int, style: DetailStyle = DetailStyle()) -> Product:
  """The product `product_id` of the set generated from `seed` with details drawn in
  `style` (pure, cached)."""
  fields, rng = _draw_product(seed, product_id, style)
  return _with_text(fields, rng)


def _with_text(fields: dict[str, Any], rng: Any) -> Product:
  """The product of `fields` (Product's fields but text and words), described by `rng`."""
  text, words = _describe(fields["category"], fields["gender"], fields["colour"],
                          fields["pattern"], fields["fabric"], fields["details"], rng)
  return Product(**fields, text=text, words=words)


def descriptions(num_products: int, seed: int = 0, split: str = "train") -> list[str]:
  """The descriptions of the first `num_products` products of a split."""
  base = SPLIT_ID_BASE[split]
  return [make_product(seed, base + i).text for i in range(num_products)]


# ---------------------------------------------------------------------------
# Rendering. Shapes are drawn once into a code map; colours come from a palette.
# Code 0 background, 1 body, 2 + d detail d, 12 + d detail d's accent colour,
# 20 body in the pattern's colour.

_ACCENT = 10
_SHADE_CODE = 2 + _ACCENT + len(DETAIL_NAMES)  # body pixels in the pattern's colour
_PART_OF_CODE = np.zeros(_SHADE_CODE + 1, np.uint8)
_PART_OF_CODE[[1, _SHADE_CODE]] = 1
_PART_OF_CODE[2:2 + len(DETAIL_NAMES)] = np.arange(2, NUM_PARTS)
_PART_OF_CODE[2 + _ACCENT:2 + _ACCENT + len(DETAIL_NAMES)] = np.arange(2, NUM_PARTS)


def _pattern_mask(kind: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Where the pattern's second colour goes, in garment coordinates (u, v)."""
  if kind == 1:  # striped
    return np.floor(v / 0.07).astype(np.int64) % 2 == 1
  if kind == 2:  # checked
    return (np.floor(u / 0.08).astype(np.int64) + np.floor(v / 0.08).astype(np.int64)) % 2 == 1
  if kind == 3:  # dotted
    du, dv = np.mod(u, 0.08) - 0.04, np.mod(v, 0.08) - 0.04
    return du * du + dv * dv < 0.022 ** 2
  if kind == 4:  # zigzag
    tri = np.abs(np.mod(u / 0.06, 2.0) - 1.0) * 0.04
    return np.floor((v + tri) / 0.07).astype(np.int64) % 2 == 1
  return np.zeros(np.broadcast(u, v).shape, bool)


def _draw_detail(draw: ImageDraw.ImageDraw, detail: Detail, pt) -> None:
  main, accent = 2 + detail.kind, 2 + _ACCENT + detail.kind
  for (x0, y0, x1, y1) in detail.boxes:
    box = [pt(x0, y0), pt(x1, y1)]
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    if detail.kind == POCKET:  # square with a flap
      draw.rectangle(box, fill=main)
      draw.rectangle([pt(x0, y0), pt(x1, y0 + 0.3 * h)], fill=accent)
    elif detail.kind == LOGO:  # disc with a centre
      draw.ellipse(box, fill=main)
      draw.ellipse([pt(cx - 0.2 * w, cy - 0.2 * h), pt(cx + 0.2 * w, cy + 0.2 * h)],
                   fill=accent)
    elif detail.kind == PATCH:  # diamond
      draw.polygon([pt(cx, y0), pt(x1, cy), pt(cx, y1), pt(x0, cy)], fill=main)
    elif detail.kind == BOW:  # two triangles and a knot
      draw.polygon([pt(x0, y0), pt(cx, cy), pt(x0, y1)], fill=main)
      draw.polygon([pt(x1, y0), pt(cx, cy), pt(x1, y1)], fill=main)
      draw.rectangle([pt(cx - 0.15 * w, cy - 0.25 * h), pt(cx + 0.15 * w, cy + 0.25 * h)],
                     fill=accent)
    elif detail.kind == ZIPPER:  # tape with a pull tab
      draw.rectangle(box, fill=main)
      draw.rectangle([pt(cx - 0.7 * w, y0), pt(cx + 0.7 * w, y0 + 0.05)], fill=accent)
    elif detail.kind == BUTTONS:  # placket with a column of buttons
      # The placket is most of the pixels, so it takes the colour chosen to contrast.
      draw.rectangle(box, fill=main)
      step = h / detail.count
      for i in range(detail.count):
        by = y0 + (i + 0.5) * step
        r = min(0.35 * w, 0.4 * step)
        draw.ellipse([pt(cx - r, by - r), pt(cx + r, by + r)], fill=accent)
    elif detail.kind == COLLAR:  # two flaps around the neck
      draw.polygon([pt(x0, y0), pt(cx, y0 + 0.45 * h), pt(cx - 0.25 * w, y1)], fill=main)
      draw.polygon([pt(x1, y0), pt(cx, y0 + 0.45 * h), pt(cx + 0.25 * w, y1)], fill=main)
    elif detail.kind == HOOD:  # hood lying on the back, with its lining
      draw.ellipse(box, fill=main)
      draw.ellipse([pt(x0 + 0.2 * w, y0 + 0.15 * h), pt(x1 - 0.2 * w, y1 - 0.45 * h)],
                   fill=accent)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: tuple[str, Any], fill: int, pt,
                squeeze: float) -> None:
  kind, geom = shape
  sq = lambda x: 0.5 + (x - 0.5) * squeeze  # noqa: E731
  if kind == "poly":
    draw.polygon([pt(sq(x), y) for x, y in geom], fill=fill)
  else:
    x0, y0, x1, y1 = geom
    draw.ellipse([pt(sq(x0), y0), pt(sq(x1), y1)], fill=fill)


_FACING_NOTCH = (0.09, 0.08)  # (width, depth) of a facing mark, as a canvas fraction


def _facing_mark(garment: GarmentType, view: int) -> list[tuple[float, float]]:
  """The facing mark of a view (`DetailStyle.facing`): a triangle cut from the top of the
  silhouette, in the view's frame; [] where the view needs none (the back, and a front
  that its neck opening already tells)."""
  top = next(geom for kind, geom in garment.body
             if kind == "poly" and geom[0][1] == garment.neck_y)
  w, h = _FACING_NOTCH
  y0 = garment.neck_y - 0.01  # from just above the edge, so the cut opens it
  if view in (LEFT, RIGHT):
    x = 0.5 + (top[0][0] - 0.5) * _SIDE_SQUEEZE - 0.01  # the profile's left edge
    corner = [(x, y0), (x + w, y0), (x, garment.neck_y + h)]
    return corner if view == LEFT else [(1.0 - cx, cy) for cx, cy in corner]
  if view == FRONT and not garment.front_cut:
    return [(0.5 - w / 2, y0), (0.5 + w / 2, y0), (0.5, garment.neck_y + h)]
  return []


def render(product: Product, view: int, size: int, seed: int = 0
           ) -> tuple[np.ndarray, np.ndarray]:
  """(image uint8 (S, S, 3), part map uint8 (S, S)) of one view of a product."""
  rng = np.random.default_rng([seed, product.product_id, 0x71, view])
  # A little framing jitter per view, as photos of one product never line up exactly.
  scale = rng.uniform(0.94, 1.04)
  tx, ty = rng.uniform(-0.03, 0.03, size=2)

  def pt(x: float, y: float) -> tuple[float, float]:
    return ((0.5 + (x - 0.5) * scale + tx) * size, (0.5 + (y - 0.5) * scale + ty) * size)

  garment = GARMENTS[product.category]
  canvas = Image.new("L", (size, size), 0)
  draw = ImageDraw.Draw(canvas)
  profile = view in (LEFT, RIGHT)
  squeeze = _SIDE_SQUEEZE if profile else 1.0
  for shape in garment.body + (() if profile else garment.sleeves):
    _draw_shape(draw, shape, 1, pt, squeeze)
  if view == FRONT:
    for shape in garment.front_cut:
      _draw_shape(draw, shape, 0, pt, 1.0)
  if product.facing:
    mark = _facing_mark(garment, view)
    if mark:
      draw.polygon([pt(x, y) for x, y in mark], fill=0)
  for detail in product.details:
    if detail.side == view:
      _draw_detail(draw, detail, pt)
  codes = np.asarray(canvas)
  if product.pattern != PLAIN:
    centres = (np.arange(size) + 0.5) / size
    u = (centres[None, :] - 0.5 - tx) / scale + 0.5
    v = (centres[:, None] - 0.5 - ty) / scale + 0.5
    codes = np.where((codes == 1) & _pattern_mask(product.pattern, u, v), _SHADE_CODE, codes)

  palette = np.zeros((256, 3), np.uint8)
  palette[0] = BACKGROUND_RGB[product.colour]
  palette[1] = COLOURS[product.colour][1]
  palette[_SHADE_CODE] = SHADE_RGB[product.colour]
  for detail in product.details:
    if detail.side == view:  # one detail per (kind, side): codes are unique per view
      palette[2 + detail.kind] = COLOURS[detail.colour][1]
      palette[2 + _ACCENT + detail.kind] = ACCENT_RGB[detail.colour]
  # PIL's palette lookup is several times faster than numpy fancy indexing.
  indexed = Image.frombytes("P", (size, size), codes.tobytes())
  indexed.putpalette(palette.tobytes())
  image = np.asarray(indexed.convert("RGB"))
  return image, np.take(_PART_OF_CODE, codes)


def patch_parts(parts: np.ndarray, patch_size: int) -> np.ndarray:
  """Per-patch part label (N,), row-major, from a pixel part map (see module doc)."""
  size = parts.shape[0]
  g = size // patch_size
  area = patch_size * patch_size
  patch_index = (np.arange(size) // patch_size)
  patch_index = patch_index[:, None] * g + patch_index[None, :]
  counts = np.bincount((patch_index * NUM_PARTS + parts).ravel(),
                       minlength=g * g * NUM_PARTS).reshape(g * g, NUM_PARTS)
  det = counts[:, 2:]
  claim = det * 8 >= area
  present = np.flatnonzero(det.sum(0) > 0)
  claim[det[:, present].argmax(0), present] = True
  claimed = np.where(claim & (det > 0), det, 0)
  garment = counts[:, 1:].sum(1) * 2 >= area
  label = np.where(claimed.max(1) > 0, 2 + claimed.argmax(1), garment.astype(np.int64))
  # A detail that lost all its patches to bigger ones takes its best patch whose owner
  # keeps another: two small details sharing a coarse patch both stay visible.
  for k in present:
    if np.any(label == 2 + k):
      continue
    for patch in np.argsort(-det[:, k], kind="stable"):
      if det[patch, k] == 0:
        break
      owner = label[patch]
      if owner < 2 or np.count_nonzero(label == owner) > 1:
        label[patch] = 2 + k
        break
  return label.astype(np.int32)


class SynthFashion:
  """Grain random-access source of SynthFashion records (one record per product view).

  Record fields: image uint8 (S, S, 3), text str, product_id int64, category int32,
  subcategory int32, view int32, index int64, gt_visible_spans int32 (K, 2),
  gt_word_parts int32 (W, 3) (`Product.word_parts`), gt_patch_part int32 (N,),
  gt_patch_visible bool (N,), N = (S / patch_size)^2.
  """

  num_categories = len(GARMENTS)
  num_subcategories = len(GARMENTS) * len(GENDERS)
  category_names = tuple(g.name for g in GARMENTS)
  subcategory_names = tuple(f"{a} {g.name}" for g in GARMENTS for a in _GENDER_ADJ)
  part_names = ("background", "body") + DETAIL_NAMES

  def __init__(self, split: str = "train", num_products: int | None = None, seed: int = 0,
               image_size: int = 64, patch_size: int = 16,
               style: DetailStyle = DetailStyle()):
    if split not in SPLIT_ID_BASE:
      raise ValueError(f"split={split!r}: expected one of {sorted(SPLIT_ID_BASE)}")
    num_products = DEFAULT_NUM_PRODUCTS[split] if num_products is None else num_products
    if not 0 < num_products <= 1_000_000_000:
      raise ValueError(f"num_products={num_products}: must be in [1, 1e9]")
    if seed < 0:
      raise ValueError(f"seed={seed}: must be >= 0")
    if image_size % patch_size:
      raise ValueError(f"image_size={image_size} is not a multiple of patch_size={patch_size}")
    self.split, self.num_products, self.seed = split, num_products, seed
    self.image_size, self.patch_size, self.style = image_size, patch_size, style
    self.product_ids = split_product_ids(split, num_products)
    table = product_table(seed, self.product_ids)
    self._views = table["views"]
    self._starts = np.concatenate([[0], np.cumsum(table["num_views"], dtype=np.int64)])

  def __len__(self) -> int:
    return int(self._starts[-1])

  def __repr__(self) -> str:
    return (f"SynthFashion(split={self.split!r}, num_products={self.num_products}, "
            f"seed={self.seed}, image_size={self.image_size}, patch_size={self.patch_size}, "
            f"style={self.style})")

  def locate(self, index: int) -> tuple[int, int]:
    """Record index -> (product index within the split, view)."""
    if not 0 <= index < len(self):
      raise IndexError(f"record {index} out of range [0, {len(self)})")
    p = int(np.searchsorted(self._starts, index, side="right")) - 1
    return p, int(self._views[p, index - self._starts[p]])

  def product(self, p: int) -> Product:
    """The p-th product of this split."""
    return make_product(self.seed, int(self.product_ids[p]), self.style)

  def metadata(self) -> dict[str, np.ndarray]:
    """Per-record product_id, category, subcategory, view (for samplers; no rendering)."""
    num_views = np.diff(self._starts)
    p = np.repeat(np.arange(self.num_products), num_views)
    slot = np.arange(len(self)) - self._starts[p]
    table = product_table(self.seed, self.product_ids)
    return dict(product_id=self.product_ids[p], category=table["category"][p],
                subcategory=table["category"][p] * len(GENDERS) + table["gender"][p],
                view=self._views[p, slot])

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    p, view = self.locate(index)
    product = self.product(p)
    image, parts = render(product, view, self.image_size, self.seed)
    patch_part = patch_parts(parts, self.patch_size)
    return dict(
        image=image,
        text=product.text,
        product_id=np.int64(product.product_id),
        category=np.int32(product.category),
        subcategory=np.int32(product.subcategory),
        view=np.int32(view),
        index=np.int64(index),
        gt_visible_spans=product.visible_spans(view),
        gt_word_parts=product.word_parts(view),
        gt_patch_part=patch_part,
        gt_patch_visible=patch_part > 0,
    )


# ---------------------------------------------------------------------------
# Twins: products one attribute away from a product (the attribute-swap protocol).

TWIN_ATTRIBUTES = ("colour", "pattern", "detail_presence", "detail_colour", "detail_side")
# Which image of a view shows a twin's change (`Twin.shown_by`): bit 1 the product's,
# bit 2 the twin's.
SHOWN_NOWHERE, SHOWN_IN_PRODUCT, SHOWN_IN_TWIN, SHOWN_IN_BOTH = 0, 1, 2, 3
_SALT_TWIN = 0x7A
_MIRROR_SIDE = {FRONT: BACK, BACK: FRONT, LEFT: RIGHT, RIGHT: LEFT}
# `_describe`'s integers draws before the detail phrases (head, fabric form, colour,
# pattern, garment, list form, intro) and per detail phrase (colour word, template,
# noun). Only detail_presence twins rely on them; `_twin` checks every twin's words.
_HEAD_DRAWS, _PHRASE_DRAWS = 7, 3
_KEEP_PATTERN_WORD = 0.75  # the plain coin of `_describe`: >= 0.5 writes "plain"


class _Draws:
  """A Generator's draws made by `_describe`, recorded, or replayed for a twin.

  Each method has its own queue, so a twin's description that flips one coin more or
  less, or writes one phrase more or less, edits one queue at a known place instead of
  shifting everything after it. Recording goes through here even where numpy draws
  nothing (`integers(1)`), so queues line up call by call. A replayed `integers(n)`
  is capped at n - 1 (a colour with fewer synonyms takes its last); a float u in the
  integers queue is a fresh draw, int(u * n).
  """

  def __init__(self, rng: np.random.Generator | None = None,
               queues: dict[str, list[Any]] | None = None):
    self.rng = rng
    self.queues = ({m: list(q) for m, q in queues.items()} if queues is not None
                   else {"integers": [], "random": [], "permutation": []})
    self.used = dict.fromkeys(self.queues, 0)

  def _next(self, method: str, draw) -> Any:
    if self.rng is not None:
      self.queues[method].append(draw())
      return self.queues[method][-1]
    i = self.used[method]
    if i >= len(self.queues[method]):
      raise RuntimeError(f"a twin's description drew more {method} than its original")
    self.used[method] = i + 1
    return self.queues[method][i]

  def integers(self, n: int) -> int:
    v = self._next("integers", lambda: int(self.rng.integers(n)))
    return int(v * n) if isinstance(v, float) else min(v, n - 1)

  def random(self) -> float:
    return self._next("random", lambda: float(self.rng.random()))

  def permutation(self, n: int) -> list[int]:
    order = self._next("permutation", lambda: [int(i) for i in self.rng.permutation(n)])
    if len(order) != n:
      raise RuntimeError(f"a twin's description lists {n} details, its draws {len(order)}")
    return order


@dataclasses.dataclass(frozen=True)
class Twin:
  """A product that differs from `make_product(seed, product.product_id, style)` in ONE
  attribute.

  `attribute` is one of TWIN_ATTRIBUTES, `k` its rank among that attribute's twins.
  `words` / `twin_words` are the content words of the original's / the twin's text
  that name the changed attribute; every other content word is the same, in the same
  order. `visible_views` are the views whose image shows the change: those where one
  of those words is visible (`Product.visible_spans`); any other view of the twin is
  drawn pixel for pixel as the original's (the twin keeps the product id, from which
  `render` draws the framing). `shown` says, per view, which image shows the change
  (`shown_by`).
  """
  product: Product
  attribute: str
  k: int
  words: tuple[WordSpan, ...]
  twin_words: tuple[WordSpan, ...]
  visible_views: tuple[int, ...]
  shown: tuple[int, ...]  # per view: SHOWN_NOWHERE, SHOWN_IN_PRODUCT, SHOWN_IN_TWIN or both

  def visible(self, view: int) -> bool:
    return view in self.visible_views

  def shown_by(self, view: int) -> int:
    """Which image of `view` shows the changed words: SHOWN_IN_BOTH (a colour or pattern
    changed in place: both show it), SHOWN_IN_PRODUCT (the original's detail is on this
    side and the twin's is not: a detail removed, or moved to the mirror side),
    SHOWN_IN_TWIN (only the twin's: a detail added, or moved here from the mirror
    side), SHOWN_NOWHERE (the view does not show the change). In SHOWN_IN_TWIN views a
    model must tell the product by what its image lacks."""
    return self.shown[view]


def _twin_edits(seed: int, fields: dict[str, Any], product: Product, attribute: str,
                style: DetailStyle) -> list[tuple[int, Any]]:
  """Every valid one-attribute change of a product, as (detail index or -1, new value):
  a colour or pattern index, a Detail (replacing detail i, or added when i is the
  number of details), or None (detail i removed). Valid means `make_product` could have
  drawn it: detail colours contrast with the body (and pattern), 2-4 details, one per
  (kind, side), placements clear of each other."""
  colour, details = fields["colour"], fields["details"]
  patterned = fields["pattern"] != PLAIN
  allowed = lambda c, p: detail_colours(c, p, style.contrast)  # noqa: E731
  contrasting = lambda c, p: all(d.colour in allowed(c, p) for d in details)  # noqa: E731
  if attribute == "colour":
    return [(-1, c) for c in range(len(COLOURS))
            if c != colour and contrasting(c, patterned)]
  if attribute == "pattern":
    # A caption that leaves "plain" unsaid does not tell a plain product from a striped
    # one: it has no pattern twin.
    if not any(w.role == "pattern" for w in product.words):
      return []
    return [(-1, p) for p in range(len(PATTERNS))
            if p != fields["pattern"] and contrasting(colour, p != PLAIN)]
  if attribute == "detail_colour":
    return [(j, dataclasses.replace(d, colour=int(c))) for j, d in enumerate(details)
            for c in allowed(colour, patterned) if c != d.colour]
  if attribute == "detail_side":
    # The mirror side only (front <-> back, left <-> right): the same frame, so the same
    # boxes, and the same phrase template with its side word changed.
    out = []
    for j, d in enumerate(details):
      side = _MIRROR_SIDE[d.side]
      others = [e for i, e in enumerate(details) if i != j and e.side == side]
      if (side in DETAIL_SIDES[d.kind] and all(e.kind != d.kind for e in others)
          and not any(_overlaps(b, t) for b in d.boxes for e in others for t in e.boxes)):
        out.append((j, dataclasses.replace(d, side=side)))
    return out
  if attribute == "detail_presence":
    out: list[tuple[int, Any]] = []
    if len(details) > 2:
      out += [(j, None) for j in range(len(details))]
    if len(details) < 4:
      present = {(d.kind, d.side) for d in details}
      for kind in GARMENTS[fields["category"]].details:
        for side in DETAIL_SIDES[kind]:
          if (kind, side) in present:
            continue
          rng = np.random.default_rng([seed, fields["product_id"], _SALT_TWIN, kind, side])
          count = _detail_count(kind, rng)
          taken = [b for d in details if d.side == side for b in d.boxes]
          boxes = _place(kind, side, count, fields["category"], taken, rng, style.size)
          if boxes is not None:
            options = allowed(colour, patterned)
            out.append((len(details), Detail(kind, side, int(options[rng.integers(len(options))]),
                                             count, boxes)))
    return out
  raise ValueError(f"attribute={attribute!r}: expected one of {TWIN_ATTRIBUTES}")


def _attribute_words(product: Product, attribute: str, detail: int | None
                     ) -> tuple[WordSpan, ...]:
  """The content words of a product's text naming `attribute`: of detail `detail` (-1:
  the body's; None: no words, the detail is not there)."""
  if detail is None:
    return ()
  role = {"colour": "colour", "pattern": "pattern", "detail_colour": "colour",
          "detail_side": "side"}.get(attribute)  # detail_presence: all the detail's words
  return tuple(w for w in product.words
               if w.detail == detail and (role is None or w.role == role))


def _twin(seed: int, product_id: int, attribute: str, k: int, edit: tuple[int, Any],
          style: DetailStyle) -> Twin:
  """The twin made by `edit` (`_twin_edits`), worded by replaying the original's draws,
  and checked: its text differs from the original's in the attribute's words alone."""
  fields, rng = _draw_product(seed, product_id, style)
  draws = _Draws(rng)
  original = _with_text(fields, draws)
  if original.text != make_product(seed, product_id, style).text:
    raise RuntimeError(f"product {product_id}: recorded draws do not reproduce its text")
  queues = draws.queues
  j, value = edit
  removed, added = value is None, attribute == "detail_presence" and value is not None
  details = list(fields["details"])
  plain_coin = int(fields["pattern"] == PLAIN)  # `_describe`'s first `random` draw, if any
  order = queues["permutation"][0]
  if attribute in ("colour", "pattern"):
    fields = dict(fields, **{attribute: value})
    if attribute == "pattern" and plain_coin:
      queues["random"].pop(0)
    elif attribute == "pattern" and value == PLAIN:
      queues["random"].insert(0, _KEEP_PATTERN_WORD)
  elif removed:  # a detail removed: its phrase's draws go
    at = order.index(j)
    queues["permutation"][0] = [i - (i > j) for i in order if i != j]
    del queues["integers"][_HEAD_DRAWS + _PHRASE_DRAWS * at:
                           _HEAD_DRAWS + _PHRASE_DRAWS * (at + 1)]
    if details[j].kind == BUTTONS:  # buttons (3-4 of them) flip a numeral coin
      coins_before = sum(details[i].kind == BUTTONS for i in order[:at])
      del queues["random"][plain_coin + coins_before]
    del details[j]
  elif added:  # a detail added: its phrase last, fresh draws for its words
    fresh = np.random.default_rng([seed, product_id, _SALT_TWIN, k, len(details)])
    queues["permutation"][0] = order + [j]
    at = _HEAD_DRAWS + _PHRASE_DRAWS * len(details)
    queues["integers"][at:at] = [float(u) for u in fresh.random(_PHRASE_DRAWS)]
    if value.kind == BUTTONS:
      queues["random"].append(float(fresh.random()))
    details.append(value)
  else:
    details[j] = value
  twin = _with_text(dict(fields, details=tuple(details)), _Draws(queues=queues))
  words = _attribute_words(original, attribute, None if added else j)
  twin_words = _attribute_words(twin, attribute, None if removed else j)
  rest = lambda p, skip: [(w.role, p.text[w.start:w.end].lower())  # noqa: E731
                          for w in p.words if w not in skip]
  said = lambda p, ws: [p.text[w.start:w.end].lower() for w in ws]  # noqa: E731
  if (rest(original, words) != rest(twin, twin_words)
      or said(original, words) == said(twin, twin_words)):
    raise RuntimeError(f"product {product_id}: the {attribute} twin {k}'s text does not "
                       f"differ from the original's in the {attribute} words alone:\n"
                       f"{original.text}\n{twin.text}")
  shows = lambda p, ws, v: any((w.start, w.end) in {tuple(s) for s in p.visible_spans(v)}  # noqa: E731
                                for w in ws)
  shown = tuple(SHOWN_IN_PRODUCT * shows(original, words, v)
                + SHOWN_IN_TWIN * shows(twin, twin_words, v) for v in range(len(VIEW_NAMES)))
  visible = tuple(v for v, s in enumerate(shown) if s != SHOWN_NOWHERE)
  return Twin(twin, attribute, k, words, twin_words, visible, shown)


def make_twins(seed: int, product_id: int, attribute: str, num: int,
               style: DetailStyle = DetailStyle()) -> list[Twin]:
  """The first min(num, available) twins of a product for one attribute (TWIN_ATTRIBUTES),
  in the set drawn with details in `style`.

  Deterministic in (seed, product_id, attribute, k): twin k is the k-th of every valid
  one-attribute change (`_twin_edits`) in an order drawn from (seed, product_id,
  attribute), so the twins of one attribute are distinct products. What a twin changes:
  colour, the garment colour; pattern, the pattern (none when the text leaves "plain"
  unsaid); detail_presence, one detail removed (of 3-4) or one added (to 2-3; a free
  (kind, side) slot with a placement that fits); detail_colour, one detail's colour;
  detail_side, one detail moved to the mirror side (front <-> back, left <-> right).
  Colours stay ones `make_product` allows (details contrasting with the body).
  """
  if attribute not in TWIN_ATTRIBUTES:
    raise ValueError(f"attribute={attribute!r}: expected one of {TWIN_ATTRIBUTES}")
  if num < 0:
    raise ValueError(f"num={num}: must be >= 0")
  fields, _ = _draw_product(seed, product_id, style)
  edits = _twin_edits(seed, fields, make_product(seed, product_id, style), attribute, style)
  rng = np.random.default_rng([seed, product_id, _SALT_TWIN,
                               TWIN_ATTRIBUTES.index(attribute)])
  order = rng.permutation(len(edits))[:num]
  return [_twin(seed, product_id, attribute, k, edits[i], style) for k, i in enumerate(order)]


def twin_records(seed: int, product_ids: Sequence[int], num_twins: int, image_size: int = 64,
                 attributes: Sequence[str] = TWIN_ATTRIBUTES,
                 style: DetailStyle = DetailStyle()) -> dict[str, Any]:
  """Images, texts and per-query candidate groups of the 1+K twins protocol
  (`retrieval.twins_recall`) for held-out products of the set drawn in `style`.

  Texts: each product's own text, then its twins' (up to `num_twins` per attribute).
  Images: every view of each product, and of each twin whose change that view shows;
  a twin's view that does not show it is drawn exactly as the original's, so its slot
  reuses the original's image (a model can only tie them). One query per product view;
  its candidate row has 1 + len(attributes) * num_twins slots: slot 0 the product, slot
  1 + a * num_twins + k twin k of attribute a; a slot without a twin (fewer valid ones)
  holds the product again with attribute -1, which no protocol row selects.

  Returns image uint8 (I, S, S, 3), image_product_id (I,), image_view (I,), text (list
  of T str), text_product_id (T,), text_attribute (T,) (index into `attributes`, -1 for
  a product's own text), attributes (tuple), and per query (Q,) query_image,
  query_text, query_product_id, query_view, and (Q, C) member_image, member_text,
  member_attribute, member_visible (whether the query's view shows the slot's change),
  member_shown (which image of the query's view shows it: `Twin.shown_by`).
  """
  attributes = tuple(attributes)
  unknown = [a for a in attributes if a not in TWIN_ATTRIBUTES]
  if unknown or not attributes:
    raise ValueError(f"attributes={attributes!r}: expected a non-empty subset of "
                     f"{TWIN_ATTRIBUTES}")
  if num_twins < 1:
    raise ValueError(f"num_twins={num_twins}: must be >= 1")
  if not len(product_ids):
    raise ValueError("product_ids: empty, expected at least one product")
  if image_size < 1:
    raise ValueError(f"image_size={image_size}: must be >= 1")
  width = 1 + len(attributes) * num_twins
  images, image_product_id, image_view = [], [], []
  texts, text_product_id, text_attribute = [], [], []
  rows: dict[str, list[Any]] = {k: [] for k in (
      "query_image", "query_text", "query_product_id", "query_view", "member_image",
      "member_text", "member_attribute", "member_visible", "member_shown")}

  def add_image(product: Product, view: int) -> int:
    images.append(render(product, view, image_size, seed)[0])
    image_product_id.append(product.product_id)
    image_view.append(view)
    return len(images) - 1

  for pid in product_ids:
    product = make_product(seed, int(pid), style)
    twins: list[Twin | None] = [None] * width
    member_text = np.full(width, len(texts), np.int64)
    member_attribute = np.full(width, -1, np.int32)
    texts.append(product.text)
    text_product_id.append(product.product_id)
    text_attribute.append(-1)
    for a, attribute in enumerate(attributes):
      for twin in make_twins(seed, product.product_id, attribute, num_twins, style):
        slot = 1 + a * num_twins + twin.k
        twins[slot], member_text[slot], member_attribute[slot] = twin, len(texts), a
        texts.append(twin.product.text)
        text_product_id.append(product.product_id)
        text_attribute.append(a)
    for view in product.views:
      own = add_image(product, view)
      member_image = np.full(width, own, np.int64)
      shown = np.array([SHOWN_NOWHERE if t is None else t.shown_by(view) for t in twins],
                       np.int8)
      visible = shown != SHOWN_NOWHERE
      for slot in np.flatnonzero(visible):
        member_image[slot] = add_image(twins[slot].product, view)
      for k, v in (("query_image", own), ("query_text", member_text[0]),
                   ("query_product_id", product.product_id), ("query_view", view),
                   ("member_image", member_image), ("member_text", member_text),
                   ("member_attribute", member_attribute), ("member_visible", visible),
                   ("member_shown", shown)):
        rows[k].append(v)
  out = {k: np.asarray(v) for k, v in rows.items()}
  out.update(image=np.stack(images), image_product_id=np.asarray(image_product_id, np.int64),
             image_view=np.asarray(image_view, np.int32), text=texts,
             text_product_id=np.asarray(text_product_id, np.int64),
             text_attribute=np.asarray(text_attribute, np.int32), attributes=attributes)
  return out


_VOCAB_CORPUS_PRODUCTS = 500  # descriptions the trainer sees, beside the word list


def vocab_file(cache_dir: str | None = None) -> str:
  """Path of the SynthFashion `vocab.txt` (every generator word one token), trained once
  and cached under `<cache_dir>/synthfashion_vocab-<hash>/` (`tokenizer.cached_vocab`)."""
  return tokenizer.cached_vocab(
      "synthfashion_vocab", vocabulary(),
      lambda: descriptions(_VOCAB_CORPUS_PRODUCTS), cache_dir)
