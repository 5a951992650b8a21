"""Pictures: the patch-mask overlay, the chosen words, and the PNG files."""

import numpy as np
import pytest
from PIL import Image

from syncmask_jax import visualize
from syncmask_jax.data import transforms


def _pair(seed=0, size=64, patch=16):
  rs = np.random.RandomState(seed)
  # Mid-range noise: no pixel is already the overlay colour.
  image = rs.randint(40, 200, (size, size, 3)).astype(np.uint8)
  n = (size // patch) ** 2
  patch_mask = np.zeros(n, bool)
  patch_mask[[0, 5, 6, 15]] = True
  words = ["[CLS]", "red", "dress", "with", "a", "zip", "##per", "[SEP]"]
  token_mask = np.array([0, 1, 0, 0, 0, 1, 0, 0], bool)
  attn = rs.rand(len(words), n).astype(np.float32)
  return image, patch_mask, words, token_mask, attn


def test_overlay_changes_exactly_the_masked_patches():
  image, patch_mask, *_ = _pair()
  out = visualize.overlay_patch_mask(image, patch_mask)
  inside = visualize.patch_grid(patch_mask, 64)
  assert inside.sum() == 4 * 16 * 16
  assert (out[inside] != image[inside]).any(axis=-1).all()
  np.testing.assert_array_equal(out[~inside], image[~inside])


def test_draw_pair_writes_non_empty_pngs_and_the_exact_mask_overlay(tmp_path):
  image, patch_mask, words, token_mask, attn = _pair(seed=1)
  chosen = visualize.chosen_words(attn, token_mask, np.ones(len(words), bool), 2)
  paths = visualize.draw_pair(str(tmp_path / "pair0.png"), image, patch_mask, words,
                              token_mask, attn, chosen, title="test")
  assert [p.rsplit("/", 1)[1] for p in paths] == ["pair0.png", "pair0_mask.png"]
  figure = np.asarray(Image.open(paths[0]).convert("RGB"))
  assert figure.shape[0] > 100 and figure.shape[1] > 400 and figure.std() > 0
  # The mask PNG is the overlay, nearest-neighbour upscaled: read it back per pixel.
  mask_png = np.asarray(Image.open(paths[1]).convert("RGB"))[::4, ::4]
  assert mask_png.shape == image.shape
  inside = visualize.patch_grid(patch_mask, 64)
  assert (mask_png[inside] != image[inside]).any(axis=-1).all()
  np.testing.assert_array_equal(mask_png[~inside], image[~inside])


def test_chosen_words_are_masked_words_by_attention_mass_first():
  attn = np.array([[9.0, 9.0], [1.0, 0.0], [5.0, 5.0], [3.0, 3.0], [0.0, 0.1]])
  token_mask = np.array([0, 1, 0, 1, 0], bool)
  maskable = np.array([0, 1, 1, 1, 1], bool)
  # Masked: 3 (mass 6) before 1 (mass 1); then maskable unmasked by mass: 2, then 4.
  assert visualize.chosen_words(attn, token_mask, maskable, 3) == [3, 1, 2]
  assert visualize.chosen_words(attn, token_mask, maskable, 1) == [3]


def test_to_uint8_undoes_the_pipeline_normalisation():
  image = np.random.RandomState(0).randint(0, 256, (8, 8, 3)).astype(np.uint8)
  mean, std = (0.48, 0.45, 0.40), (0.27, 0.26, 0.28)
  np.testing.assert_array_equal(
      visualize.to_uint8(transforms.normalize(image, mean, std), mean, std), image)


def test_patch_grid_rejects_a_count_that_does_not_tile():
  with pytest.raises(ValueError, match="do not tile"):
    visualize.patch_grid(np.zeros(15), 64)
