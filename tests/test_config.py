"""config_lib as the one place of defaults and allowed values: the masking shares take
their one range."""

import pytest

from syncmask_jax import config_lib


@pytest.mark.parametrize("field,value,ok", [
    ("ratio_img", 0.0, True), ("ratio_img", 0.999, True), ("ratio_img", 1.0, False),
    ("ratio_img", -0.01, False), ("ratio_txt", 0.0, True), ("ratio_txt", 1.0, False),
    ("random_fraction", 1.0, True), ("random_fraction", 1.01, False)])
def test_masking_shares_take_one_range(field, value, ok):
  m = config_lib.default_config().masking
  m[field] = value
  if ok:
    config_lib.validate_masking(m)
  else:
    with pytest.raises(ValueError, match=f"config.masking.{field}={value}"):
      config_lib.validate_masking(m)
