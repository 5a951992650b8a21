"""config_lib as the one place of defaults and allowed values: the masking shares take
their one range, and a config.json written before a field existed reads as that field's
default."""

import json

import pytest

from syncmask_jax import config_lib, resume


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


def test_a_config_json_without_a_newer_field_reads_as_its_default():
  config = config_lib.default_config()
  stored = json.loads(config.to_json_best_effort())
  del stored["tgir"]
  filled = config_lib.with_defaults(stored)
  assert filled["tgir"]["ks"] == [10, 50]
  assert resume.config_changes(filled, config) == {}
  stored["data"]["max_text_len"] = 12  # what a run stored stays
  assert config_lib.with_defaults(stored)["data"]["max_text_len"] == 12
