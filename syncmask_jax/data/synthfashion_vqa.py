"""SynthFashion-VQA: questions about what a SynthFashion view shows, with true answers.

Built from the same products as synthfashion.py (`make_product`), one image per
(product, view) rendered on demand, so it needs no files: `questions` writes
ALBEF-format records (vqa.py) in memory and `source` reads them with the same
`VQAQuestions` as VQA v2, images coming from `ViewImages`.

Per view, every question that applies [ours]:
  colour         "what color is the hoodie?"        the body colour       other
  pattern        "what pattern is on the hoodie?"   the pattern           other
  garment        "what kind of garment is this?"    the garment type      other
  presence       "can you see a pocket?"            yes / no              yes/no
  count          "how many pockets are there?"      instances drawn       number
  side           "what is on the left side?"        the one detail there  other
  detail colour  "what color is the logo?"          that detail's colour  other
Gender and fabric are never asked: no view shows them. Details are asked about only
as the view draws them (its side's details; synthfashion.py's module doc): a presence
question is "yes" for a detail drawn in the view and "no" for a kind the view does
not draw (preferably one the product has on another side, which its description
names). A view that draws a detail gets one of each, a view that draws none gets
neither, so every split is exactly half yes and half no. A count question takes a
drawn pocket, patch or buttons detail (the kinds whose count varies); a side question
needs exactly one detail on the view's side; a detail-colour question takes one drawn
detail. The choices and wordings draw from (seed, product_id, view), so a product's
questions do not depend on how many products the split has.

Answers are written as the official metric normalises a prediction ("t-shirt" ->
"t shirt", counts as digits), since it leaves ten identical human answers untouched;
each question has ten copies of its one true answer. `answer_list` is every answer the
generator can give. Question ids: SPLIT_QUESTION_BASE[split] + (8 * (4 * p + view) +
question type), p the product's index in the split (int32 for up to 20M products).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from syncmask_jax import vqa_eval
from syncmask_jax.data import synthfashion as sf
from syncmask_jax.data import vqa

DATASET = "synthfashion"
NUM_HUMANS = 10
SPLIT_QUESTION_BASE = {"train": 0, "val": 700_000_000, "test": 1_400_000_000}
_IDS_PER_VIEW = 8
_MAX_PRODUCTS = (SPLIT_QUESTION_BASE["val"] - SPLIT_QUESTION_BASE["train"]) // (
    4 * _IDS_PER_VIEW)
COUNTED = (sf.POCKET, sf.PATCH, sf.BUTTONS)  # the detail kinds drawn 1-4 times

# question type -> (answer type, wordings). Slots: {garment} a garment word, {noun} a
# detail noun as counted, {a_noun} "a pocket" or "buttons", {plural} "pockets",
# {side} "front" or "left side"; {be} and {this} agree with the garment word or noun.
QUESTION_TYPES = {
    "colour": ("other", ("what color {be} the {garment}?", "what colour {be} {this} {garment}?")),
    "pattern": ("other", ("what pattern is on the {garment}?",
                          "what is the pattern of {this} {garment}?")),
    "garment": ("other", ("what kind of garment is this?", "what type of clothing is shown?")),
    "presence yes": ("yes/no", ("can you see {a_noun}?", "{be} there {a_noun} in the picture?")),
    "presence no": ("yes/no", ("can you see {a_noun}?", "{be} there {a_noun} in the picture?")),
    "count": ("number", ("how many {plural} are there?", "how many {plural} can you see?")),
    "side": ("other", ("what is on the {side}?",)),
    "detail colour": ("other", ("what color {be} the {noun}?", "what colour {be} the {noun}?")),
}
_CODES = {name: i for i, name in enumerate(QUESTION_TYPES)}
_PLURAL_GARMENT_WORDS = ("trousers", "pants", "shorts")


def _agree(plural: bool) -> dict[str, str]:
  return {"be": "are", "this": "these"} if plural else {"be": "is", "this": "this"}


def _noun(kind: int, count: int) -> str:
  singular, plural = sf.DETAIL_NOUNS[kind]
  return singular[0] if count == 1 and singular else plural[0]


def _detail_slots(kind: int, count: int) -> dict[str, str]:
  """{noun} as counted, {a_noun} (its presence form), {plural}, and agreement."""
  singular, plural = sf.DETAIL_NOUNS[kind]
  noun = _noun(kind, count)
  return {"noun": noun, "a_noun": f"a {singular[0]}" if singular else plural[0],
          "plural": plural[0] if plural else noun,
          **_agree(noun not in singular)}


def _side(view: int) -> str:
  name = sf.VIEW_NAMES[view]
  return name if view in (sf.FRONT, sf.BACK) else f"{name} side"


def _answer(text: str) -> str:
  return vqa_eval.normalize_answer(text)


def answer_list() -> list[str]:
  """Every answer the generator can give (the candidates a model ranks), sorted."""
  answers = {"yes", "no"}
  answers.update(c[0] for c in sf.COLOURS)
  answers.update(p[0] for p in sf.PATTERNS)
  answers.update(g.name for g in sf.GARMENTS)
  # Counts: 1 (a lone detail) and the numerals the descriptions write for more.
  answers.update(["1", *sf._NUMERALS.values()])  # pylint: disable=protected-access
  for singular, plural in sf.DETAIL_NOUNS.values():
    answers.update(words[0] for words in (singular, plural) if words)
  return sorted({_answer(a) for a in answers})


def vocabulary() -> list[str]:
  """Every word the questions and answers can use (for a vocabulary with them whole)."""
  texts = list(answer_list())
  for _, wordings in QUESTION_TYPES.values():
    texts += [sf._SLOT.sub(" ", w) for w in wordings]  # pylint: disable=protected-access
  for g in sf.GARMENTS:
    texts += g.words
  for plural in (False, True):
    texts += _agree(plural).values()
  for kind, (singular, plural) in sf.DETAIL_NOUNS.items():
    for count, words in ((1, singular), (2, plural)):
      if words:
        texts += _detail_slots(kind, count).values()
  texts += [_side(v) for v in range(len(sf.VIEW_NAMES))]
  return sorted({w for t in texts for w in vqa.clean_question(t, 10**6).split()})


def image_key(product_id: int, view: int) -> str:
  return f"{product_id}/{sf.VIEW_NAMES[view]}"


class ViewImages:
  """SynthFashion views as an image store: key "<product_id>/<view name>" -> render."""

  def __init__(self, seed: int = 0, image_size: int = 64):
    self.seed, self.image_size = seed, image_size

  def _parse(self, key: str) -> tuple[int, int] | None:
    """(product_id, view) of a key naming one of the product's views, else None."""
    pid, _, view = key.partition("/")
    if not pid.isdigit() or view not in sf.VIEW_NAMES:
      return None
    v = sf.VIEW_NAMES.index(view)
    # The view set comes from the counter-based table: no product is generated.
    return (int(pid), v) if v in sf.product_table(self.seed, int(pid))["views"] else None

  def __contains__(self, key: str) -> bool:
    return self._parse(key) is not None

  def check(self, key: str) -> str | None:
    return None if key in self else "not a view of a SynthFashion product"

  def load(self, key: str) -> np.ndarray:
    parsed = self._parse(key)
    if parsed is None:
      raise KeyError(key)
    product = sf.make_product(self.seed, parsed[0])
    return sf.render(product, parsed[1], self.image_size, self.seed)[0]


def _view_questions(product: sf.Product, p: int, view: int, seed: int,
                    split: str) -> list[dict[str, Any]]:
  rng = np.random.default_rng([seed, product.product_id, 0x7A, view])
  garment = sf.GARMENTS[product.category]
  drawn = [d for d in product.details if d.side == view]
  word = garment.words[rng.integers(len(garment.words))]
  slots = {"garment": word, "side": _side(view), **_agree(word in _PLURAL_GARMENT_WORDS)}
  asked: list[tuple[str, str, dict[str, str]]] = [
      ("colour", sf.COLOURS[product.colour][0], {}),
      ("pattern", sf.PATTERNS[product.pattern][0], {}),
      ("garment", garment.name, {})]
  if drawn:
    yes = drawn[rng.integers(len(drawn))]
    shown = {d.kind for d in drawn}
    for pool in ({d.kind for d in product.details} - shown, set(garment.details) - shown,
                 set(range(len(sf.DETAIL_NAMES))) - shown):
      if pool:
        no = sorted(pool)[rng.integers(len(pool))]
        break
    asked += [("presence yes", "yes", _detail_slots(yes.kind, 1)),
              ("presence no", "no", _detail_slots(no, 1))]
    counted = [d for d in drawn if d.kind in COUNTED]
    if counted:
      d = counted[rng.integers(len(counted))]
      asked.append(("count", str(d.count), _detail_slots(d.kind, d.count)))
    if len(drawn) == 1:
      asked.append(("side", _noun(drawn[0].kind, drawn[0].count), {}))
    d = drawn[rng.integers(len(drawn))]
    asked.append(("detail colour", sf.COLOURS[d.colour][0],
                  _detail_slots(d.kind, d.count)))
  records = []
  for qtype, answer, extra in asked:
    answer_type, wordings = QUESTION_TYPES[qtype]
    wording = wordings[rng.integers(len(wordings))]
    records.append({
        "question_id": SPLIT_QUESTION_BASE[split] + _IDS_PER_VIEW * (4 * p + view)
                       + _CODES[qtype],
        "question": wording.format(**{**slots, **extra}),
        "answer": [_answer(answer)] * NUM_HUMANS,
        "image": image_key(product.product_id, view),
        "dataset": DATASET,
        "answer_type": answer_type,
        "question_type": qtype.split(" ")[0] if qtype.startswith("presence") else qtype,
    })
  return records


def questions(split: str = "train", num_products: int | None = None,
              seed: int = 0) -> list[dict[str, Any]]:
  """ALBEF-format records of every view of the split's first `num_products` products
  (with answer_type and question_type), in (product, view, question type) order."""
  if split not in sf.SPLIT_ID_BASE:
    raise ValueError(f"split={split!r}: expected one of {sorted(sf.SPLIT_ID_BASE)}")
  n = sf.DEFAULT_NUM_PRODUCTS[split] if num_products is None else num_products
  if not 0 < n <= _MAX_PRODUCTS:
    raise ValueError(f"num_products={n}: must be in [1, {_MAX_PRODUCTS}] (question ids "
                     "stay int32)")
  records = []
  for p in range(n):
    product = sf.make_product(seed, sf.SPLIT_ID_BASE[split] + p)
    for view in product.views:
      records += _view_questions(product, p, view, seed, split)
  return records


def source(split: str = "train", num_products: int | None = None, seed: int = 0,
           image_size: int = 64, max_answers: int = vqa.MAX_ANSWERS) -> vqa.VQAQuestions:
  """The split's questions as a `VQAQuestions` source (images rendered when read)."""
  origin = f"SynthFashion-VQA {split} (seed {seed})"
  bad = vqa.BadRecordsByFile(skip=False)
  parsed = vqa.parse_questions(questions(split, num_products, seed), origin, bad,
                               dataset=DATASET)
  return vqa.VQAQuestions(parsed, {DATASET: ViewImages(seed, image_size)},
                          max_answers=max_answers, bad=bad)
