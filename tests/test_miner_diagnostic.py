"""docs/study/miner.py's pixel test: a product and its one-attribute twin look alike in
exactly the views that do not show the change."""

import importlib.util
import os

import numpy as np

from syncmask_jax.data import synthfashion

_PATH = os.path.join(os.path.dirname(__file__), "..", "docs", "study", "miner.py")
_spec = importlib.util.spec_from_file_location("miner", _PATH)
miner = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(miner)


def test_pixel_identical_threshold():
  a = np.zeros((4, 4, 3), np.uint8)
  b = a.copy()
  assert miner.pixel_identical(a, b)
  b[0, 0, 0] = 3  # 3 / 48 = 0.0625 grey level on average
  assert miner.pixel_identical(a, b)
  b[0, 0, 1] = 3  # 0.125
  assert not miner.pixel_identical(a, b)


def test_looks_alike_twin_and_other_product():
  product = synthfashion.make_product(0, 1)
  twin = synthfashion.make_twins(0, 1, "detail_side", 1)[0]
  other = synthfashion.make_product(0, 2)
  for view in range(4):
    image = synthfashion.render(product, view, 32)[0]
    assert miner.looks_alike(product, view, image, twin.product, 0) == (not twin.visible(view))
    assert miner.looks_alike(product, view, image, product, 0)
    assert not miner.looks_alike(product, view, image, other, 0)
