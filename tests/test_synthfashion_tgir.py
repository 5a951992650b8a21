"""SynthFashion-TGIR (data/synthfashion_tgir.py): FashionIQ-format triplets from the twins."""

import numpy as np
import pytest

from syncmask_jax.data import synthfashion as sf
from syncmask_jax.data import synthfashion_tgir as tgir


@pytest.mark.parametrize("attribute", tgir.ATTRIBUTES)
def test_each_query_names_the_one_change_its_target_shows(attribute):
  triplets, gallery = tgir.sources("val", 6, seed=0, image_size=32, attribute=attribute)
  assert len(triplets) > 0 and triplets.stats["target_not_in_gallery"] == 0
  items = triplets.items
  # Every query goes both ways: product -> twin and twin -> product.
  assert sorted((r, t) for r, t, _ in items) == sorted((t, r) for r, t, _ in items)
  for i in range(len(triplets)):
    record = triplets[i]
    reference, target = record["reference_asin"], record["target_asin"]
    assert reference.split("/")[0] == target.split("/")[0]  # one product and its twin
    assert reference.split("/")[-1] == target.split("/")[-1]  # the same view
    # The view shows the change: the two images differ.
    assert not np.array_equal(record["image"], record["target_image"])
    assert record["product_id"] == gallery[gallery.position[target]]["product_id"]
    assert record["target_index"] == gallery.position[target]
  # The text names the twin's value of the attribute (and the product's, to change).
  reference, target, text = items[0]
  twin_side = target if "/" + attribute + "/" in target else reference
  product_id, _, k, _ = twin_side.split("/")
  product = sf.make_product(0, int(product_id))
  twin = sf.make_twins(0, int(product_id), attribute, 1)[int(k)]
  forward = twin_side == target
  said = lambda p, ws: " ".join(p.text[w.start:w.end].lower() for w in ws)  # noqa: E731
  new, old = ((said(twin.product, twin.twin_words), said(product, twin.words)) if forward
              else (said(product, twin.words), said(twin.product, twin.twin_words)))
  for words in (new, old):
    for word in words.split():
      assert word in text, (text, new, old)
  if attribute in ("colour", "pattern"):
    assert text == f"is {new} instead of {old}"
  # Every view of the split's products is in the gallery, and every targeted twin view.
  views = sum(len(sf.make_product(0, int(p)).views) for p in sf.split_product_ids("val", 6))
  assert len(gallery) == views + len({t for _, t, _ in items if "/" + attribute + "/" in t})


def test_detail_presence_texts_add_or_remove_the_detail():
  for product_id in sf.split_product_ids("val", 6):
    product = sf.make_product(0, int(product_id))
    for twin in sf.make_twins(0, int(product_id), "detail_presence", 2):
      there = tgir.modification("detail_presence", product, twin.words, twin.product,
                                twin.twin_words)
      back = tgir.modification("detail_presence", twin.product, twin.twin_words, product,
                               twin.words)
      added = not twin.words
      assert there.startswith("also has " if added else "has no ")
      assert back.startswith("has no " if added else "also has ")
      assert there.split(" ", 2)[-1] == back.split(" ", 2)[-1]  # the same detail phrase


def test_bad_arguments_name_the_field():
  with pytest.raises(ValueError, match="attribute='sleeve'"):
    tgir.index("val", 2, 0, "sleeve", 1)
  with pytest.raises(ValueError, match="config.tgir.synth_twins=0"):
    tgir.index("val", 2, 0, "colour", 0)
  with pytest.raises(ValueError, match="split='dev'"):
    tgir.index("dev", 2, 0, "colour", 1)
