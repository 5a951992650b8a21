"""Twins (products one attribute away) and the 1+K twins retrieval protocol."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from syncmask_jax import retrieval
from syncmask_jax.data import synthfashion as sf

SEED = 0
PIDS = range(10)
ATTRS = sf.TWIN_ATTRIBUTES


@pytest.fixture(scope="module")
def twins() -> dict[tuple[int, str], list[sf.Twin]]:
  return {(pid, a): sf.make_twins(SEED, pid, a, 3) for pid in PIDS for a in ATTRS}


def _fields(p: sf.Product) -> dict:
  return {f.name: getattr(p, f.name) for f in dataclasses.fields(p)
          if f.name not in ("text", "words")}


def _changed_detail(orig: sf.Product, twin: sf.Product) -> tuple[sf.Detail, sf.Detail]:
  (pair,) = [(d, e) for d, e in zip(orig.details, twin.details) if d != e]
  return pair


def test_twins_differ_from_the_product_in_exactly_one_attribute(twins):
  added = removed = 0
  for (pid, a), ts in twins.items():
    orig = sf.make_product(SEED, pid)
    for t in ts:
      f, g = _fields(orig), _fields(t.product)
      changed = {k for k in f if f[k] != g[k]}
      assert changed == ({a} if a in ("colour", "pattern") else {"details"}), (pid, a)
      if a == "detail_presence":
        big, small = sorted((orig.details, t.product.details), key=len, reverse=True)
        assert len(big) == len(small) + 1
        assert any(big[:i] + big[i + 1:] == small for i in range(len(big)))
        added += len(t.product.details) > len(orig.details)
        removed += len(t.product.details) < len(orig.details)
      elif a in ("detail_colour", "detail_side"):
        d, e = _changed_detail(orig, t.product)
        field = a[len("detail_"):]
        assert [k for k in ("kind", "side", "colour", "count", "boxes")
                if getattr(d, k) != getattr(e, k)] == [field]
  assert added and removed
  assert all(any(twins[pid, a] for pid in PIDS) for a in ATTRS)


def test_twin_texts_differ_in_the_attribute_words_alone(twins):
  for (pid, a), ts in twins.items():
    orig = sf.make_product(SEED, pid)
    for t in ts:
      rest = lambda p, ws: [(w.role, p.text[w.start:w.end].lower())  # noqa: E731
                            for w in p.words if w not in ws]
      assert rest(orig, t.words) == rest(t.product, t.twin_words), (orig.text, t.product.text)
      said = [t.product.text[w.start:w.end].lower() for w in t.twin_words]
      if a == "colour":
        assert len(said) == 1 and said[0] in sf.COLOURS[t.product.colour][2]
      elif a == "pattern":
        assert len(said) == 1 and said[0] in sf.PATTERNS[t.product.pattern][1]
      elif a == "detail_colour":
        assert said[0] in sf.COLOURS[_changed_detail(orig, t.product)[1].colour][2]
      elif a == "detail_side":
        assert said == [sf.VIEW_NAMES[_changed_detail(orig, t.product)[1].side]]
      elif len(t.product.details) < len(orig.details):  # removed: its words are gone
        assert not t.twin_words and {w.role for w in t.words} >= {"colour", "detail", "side"}
      else:  # added: its words are new
        new = t.product.details[-1]
        assert not t.words and sf.VIEW_NAMES[new.side] in said


def test_twins_are_deterministic_distinct_and_prefix_stable():
  a = sf.make_twins(3, 5, "detail_colour", 4)
  assert a == sf.make_twins(3, 5, "detail_colour", 4)
  assert sf.make_twins(3, 5, "detail_colour", 2) == a[:2]
  assert [t.k for t in a] == [0, 1, 2, 3]
  assert len({t.product for t in a}) == 4
  assert sf.make_twins(4, 5, "detail_colour", 4) != a
  with pytest.raises(ValueError, match="attribute='size'"):
    sf.make_twins(0, 0, "size", 1)
  with pytest.raises(ValueError, match="num_twins=0"):
    sf.twin_records(0, [0], 0)


def test_visibility_of_hand_picked_twins():
  # Product 1 (seed 0): a red emblem on the front, a navy zipper on the right and a blue
  # emblem on the left side; views front and back.
  orig = sf.make_product(0, 1)
  assert "red emblem on the front" in orig.text and orig.views == (sf.FRONT, sf.BACK)
  by_side = {}
  for t in sf.make_twins(0, 1, "detail_colour", 30):
    by_side.setdefault(_changed_detail(orig, t.product)[0].side, t)
  assert by_side[sf.FRONT].visible_views == (sf.FRONT,)
  assert by_side[sf.LEFT].visible_views == (sf.LEFT,)  # shown by no view of the product
  assert not by_side[sf.RIGHT].visible(sf.FRONT)
  sides = {_changed_detail(orig, t.product)[0].side: t.visible_views
           for t in sf.make_twins(0, 1, "detail_side", 10)}
  assert sides[sf.FRONT] == (sf.FRONT, sf.BACK)  # the emblem moved to the back
  # A back detail added: the front view cannot show it.
  (back,) = [t for t in sf.make_twins(0, 1, "detail_presence", 30)
             if len(t.product.details) == 4 and t.product.details[-1].side == sf.BACK
             and t.product.details[-1].kind == sf.LOGO]
  assert "navy back logo" in back.product.text
  assert back.visible_views == (sf.BACK,) and not back.visible(sf.FRONT)
  assert sf.make_twins(0, 1, "colour", 1)[0].visible_views == (0, 1, 2, 3)


def test_shown_by_names_the_image_that_shows_the_change(twins):
  # Derived from the details' sides, not from the word spans `_twin` reads.
  for (pid, a), ts in twins.items():
    orig = sf.make_product(SEED, pid)
    for t in ts:
      shown = [t.shown_by(v) for v in range(len(sf.VIEW_NAMES))]
      if a in ("colour", "pattern"):
        assert shown == [sf.SHOWN_IN_BOTH] * 4, (pid, a)
        continue
      gone = set(orig.details) - set(t.product.details)  # the original's changed detail
      new = set(t.product.details) - set(orig.details)  # the twin's
      expect = [sf.SHOWN_IN_PRODUCT * any(d.side == v for d in gone)
                + sf.SHOWN_IN_TWIN * any(d.side == v for d in new) for v in range(4)]
      assert shown == expect, (pid, a, t.k)
      if a == "detail_side":  # each side of the mirror pair shows one of the two
        assert sorted(s for s in shown if s) == [sf.SHOWN_IN_PRODUCT, sf.SHOWN_IN_TWIN]
      if a == "detail_colour":
        assert sorted(s for s in shown if s) == [sf.SHOWN_IN_BOTH]
      if a == "detail_presence":
        assert sorted(s for s in shown if s) == (
            [sf.SHOWN_IN_TWIN] if len(t.product.details) > len(orig.details)
            else [sf.SHOWN_IN_PRODUCT])
      assert t.visible_views == tuple(v for v in range(4) if shown[v])


def test_rendering_changes_only_the_attribute_pixels(twins):
  for (pid, a), ts in twins.items():
    if pid >= 3:
      continue
    orig = sf.make_product(SEED, pid)
    for t in ts:
      for view in range(4):
        img, parts = sf.render(orig, view, 48, SEED)
        timg, tparts = sf.render(t.product, view, 48, SEED)
        if not t.visible(view):
          assert np.array_equal(img, timg) and np.array_equal(parts, tparts), (pid, a, view)
          continue
        diff = (img != timg).any(-1)
        assert diff.any(), (pid, a, view)
        if a in ("colour", "pattern"):
          assert np.array_equal(parts, tparts)
          # Body (and, for colour, background: it follows the body's luminance).
          assert not diff[parts > 1].any()
          assert a == "colour" or not diff[parts == 0].any()
        else:
          d = (set(orig.details) ^ set(t.product.details)).pop()
          assert not diff[(parts != 2 + d.kind) & (tparts != 2 + d.kind)].any()


def _one_hot_features(g: dict) -> tuple[np.ndarray, np.ndarray]:
  """Each member's image and text on its own axis: a perfect scorer (images a view does
  not change share the product's row, as `twin_records` shares them)."""
  num_texts = len(g["text"])
  ident = np.full(len(g["image"]), -1)
  shows = g["member_visible"].copy()
  shows[:, 0] = True
  ident[g["member_image"][shows]] = g["member_text"][shows]
  assert (ident >= 0).all()
  return np.eye(num_texts)[ident], np.eye(num_texts)


def test_twins_recall_perfect_and_blind_scorers_on_twin_records():
  g = sf.twin_records(SEED, [0, 1, 2], num_twins=2, image_size=16)
  q = sum(len(sf.make_product(SEED, p).views) for p in (0, 1, 2))
  assert len(g["query_image"]) == q and g["member_image"].shape == (q, 1 + 5 * 2)
  assert g["text"][g["query_text"][0]] == sf.make_product(SEED, 0).text
  image_feat, text_feat = _one_hot_features(g)
  out = retrieval.twins_recall(image_feat, text_feat, g, retrieval.Scorer("itc"))
  assert out["num_queries"] == q and out["num_queries_colour_invisible"] == 0
  for key, v in out.items():
    if "_r1" in key:  # every visible row perfect; t2i ties on the invisible ones
      assert v == (0.0 if key.startswith("t2i") and key.endswith("_invisible") else 100.0), key
  assert out["num_queries_detail_colour_invisible"] > 0
  # By chance: 1 in 1+2 against one attribute's twins (colour changes always show),
  # 1 in at most 1+10 against all the visible ones.
  assert out["r1_chance_colour"] == pytest.approx(100 / 3)
  assert 100 / 11 <= out["r1_chance"] < out["r1_chance_colour"]

  # Blind to detail colour: those twins' texts and images are the product's.
  attr = g["member_attribute"]
  blind = attr == ATTRS.index("detail_colour")
  text_feat[g["member_text"][blind]] = text_feat[np.broadcast_to(
      g["member_text"][:, :1], blind.shape)[blind]]
  image_feat[g["member_image"][blind]] = image_feat[np.broadcast_to(
      g["member_image"][:, :1], blind.shape)[blind]]
  out = retrieval.twins_recall(image_feat, text_feat, g, retrieval.Scorer("itc"))
  for d in ("i2t", "t2i"):
    assert out[f"{d}_r1_detail_colour"] == 0.0
    assert out[f"{d}_r1_detail_colour_invisible"] == 0.0
    assert out[f"{d}_r1_colour"] == out[f"{d}_r1_detail_side"] == 100.0
  in_overall = (g["member_visible"] & (attr >= 0)).any(1)
  has_blind = (g["member_visible"] & blind).any(1)[in_overall]
  assert out["i2t_r1"] == out["t2i_r1"] == pytest.approx(100 * np.mean(~has_blind))


def test_twins_recall_splits_detail_twins_by_the_image_that_shows_them():
  # A scorer that finds a detail where it is shown but cannot tell what an image lacks:
  # every twin whose view shows the change only in the twin ties with the product.
  g = sf.twin_records(SEED, list(PIDS), num_twins=3, image_size=16)
  image_feat, text_feat = _one_hot_features(g)
  out = retrieval.twins_recall(image_feat, text_feat, g, retrieval.Scorer("itc"))
  shown, attr = g["member_shown"], g["member_attribute"]
  assert g["member_visible"].tolist() == (shown != sf.SHOWN_NOWHERE).tolist()
  lacks = shown == sf.SHOWN_IN_TWIN
  for d in ("i2t", "t2i"):  # the perfect scorer is perfect on both halves
    assert out[f"{d}_r1_detail_side_in_twin"] == out[f"{d}_r1_detail_side_in_product"] == 100
  # t2i: each in-twin slot's image (one per view) is the product's view. i2t (a text
  # serves every view of its product, so the view's image carries the blindness): the
  # product's view matches its own text and its in-twin twins' texts equally.
  blind_image = image_feat.copy()
  blind_image[g["member_image"][lacks]] = image_feat[np.broadcast_to(
      g["member_image"][:, :1], lacks.shape)[lacks]]
  t2i = retrieval.twins_recall(blind_image, text_feat, g, retrieval.Scorer("itc"))
  blind_view = image_feat.copy()
  for q in np.flatnonzero(lacks.any(1)):
    blind_view[g["query_image"][q], g["member_text"][q][lacks[q]]] = 1.0
  i2t = retrieval.twins_recall(blind_view, text_feat, g, retrieval.Scorer("itc"))
  out = {k: v for k, v in t2i.items() if not k.startswith("i2t")}
  out.update({k: v for k, v in i2t.items() if k.startswith("i2t")})
  for a in ("detail_presence", "detail_side"):
    mine = attr == ATTRS.index(a)
    rows_product = (mine & (shown == sf.SHOWN_IN_PRODUCT)).any(1)
    rows_twin = (mine & lacks).any(1)
    assert out[f"num_queries_{a}_in_product"] == rows_product.sum() > 0
    assert out[f"num_queries_{a}_in_twin"] == rows_twin.sum() > 0
    rows = (mine & g["member_visible"]).any(1)
    for d in ("i2t", "t2i"):
      assert out[f"{d}_r1_{a}_in_product"] == 100.0 and out[f"{d}_r1_{a}_in_twin"] == 0.0
      # The attribute's row: a query is lost when any of its twins is an in-twin one.
      assert out[f"{d}_r1_{a}"] == pytest.approx(100 * np.mean(~rows_twin[rows]))
  for a in ("colour", "pattern", "detail_colour"):  # changes shown by both images
    assert out[f"num_queries_{a}_in_product"] == out[f"num_queries_{a}_in_twin"] == 0
    assert out[f"i2t_r1_{a}"] == out[f"t2i_r1_{a}"] == 100.0


def test_twins_recall_of_a_rotating_itm_scorer_is_one_in_k_plus_one():
  # 6 queries x (product + K = 2 colour twins); ITM ranks the product 1st, 2nd, 3rd in
  # turn (ITC ties everywhere; k = 3 re-ranks the whole row): R@1 = 1 / (K + 1).
  q, c = 6, 3
  idx = np.arange(q * c).reshape(q, c)
  logit = np.zeros((q * c, q * c))
  for i in range(q):
    for j, s in enumerate(np.roll([0.9, 0.5, 0.1], i % c)):
      logit[idx[i, j], idx[i, 0]] = logit[idx[i, 0], idx[i, j]] = s
  g = dict(attributes=("colour",), query_image=idx[:, 0], query_text=idx[:, 0],
           member_image=idx, member_text=idx, member_attribute=np.array([[-1, 0, 0]] * q),
           member_visible=np.ones((q, c), bool))
  feat = np.zeros((q * c, 4))
  scorer = retrieval.Scorer("itc+itm", k=c, itm=lambda im, tx: logit[im, tx])
  out = retrieval.twins_recall(feat, feat, g, scorer)
  assert out["i2t_r1"] == out["t2i_r1"] == out["t2i_r1_colour"] == pytest.approx(100 / 3)
  assert out["r1_chance"] == out["r1_chance_colour"] == pytest.approx(100 / 3)  # 1+2
  assert "i2t_r1_colour_invisible" not in out and out["num_queries_colour_invisible"] == 0
  # ITC alone ties every candidate: ties count against the query.
  out = retrieval.twins_recall(feat, feat, g, retrieval.Scorer("itc"))
  assert out["i2t_r1"] == out["t2i_r1"] == 0.0
