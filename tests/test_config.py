"""config_lib as the one place of defaults and allowed values: no config field is read
with a default of its own, the masking shares and SynthFashion's detail levers take their
one range, and a config.json written before a field existed reads as that field's
default."""

import ast
import json
import pathlib
import re

import pytest

from syncmask_jax import config_lib, resume

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "syncmask_jax"
# The names configs go by (`config`, `c`, `cfg`, `d = config.data`, `m = config.model`,
# `self.config`, `negatives_cfg` ...).
CONFIG_NAME = re.compile(r"(c|d|m|cfg|config|data|ev|\w+_cfg|\w+_config)")
# `.get` on dicts named like a config: a Hugging Face checkpoint's config.json.
NOT_CONFIG: set[tuple[str, str]] = set()


def _root(node: ast.AST) -> str:
  """The name an attribute chain starts from (`self._x.y` -> `x`)."""
  while isinstance(node, (ast.Attribute, ast.Subscript)):
    if isinstance(node, ast.Attribute) and ast.unparse(node.value) == "self":
      return node.attr.lstrip("_")
    node = node.value
  return node.id if isinstance(node, ast.Name) else ""


def config_gets(path: pathlib.Path, name: str) -> list[str]:
  found = []
  for node in ast.walk(ast.parse(path.read_text())):
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        and node.func.attr == "get" and CONFIG_NAME.fullmatch(_root(node.func.value))
        and (name, _root(node.func.value)) not in NOT_CONFIG):
      found.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
  return found


def test_no_config_field_is_read_with_a_hidden_default(tmp_path):
  found = [f for p in sorted(PACKAGE.rglob("*.py"))
           for f in config_gets(p, str(p.relative_to(PACKAGE)))]
  assert not found, "read these as attributes, their defaults in config_lib:\n" + "\n".join(
      found)
  source = tmp_path / "m.py"
  source.write_text("x = config.data.get('a', 1)\ny = self.config.get('b')\n"
                    "z = results.get('c')\nw = masking_cfg.get('d')\nv = self._data.get('e')\n")
  assert [f.split(":")[1] for f in config_gets(source, "m.py")] == ["1", "2", "4", "5"]


@pytest.mark.parametrize("block,field,value,ok", [
    ("masking", "ratio_img", 0.0, True), ("masking", "ratio_img", 0.999, True),
    ("masking", "ratio_img", 1.0, False), ("masking", "ratio_img", -0.01, False),
    ("masking", "ratio_txt", 0.0, True), ("masking", "ratio_txt", 1.0, False),
    ("masking", "random_fraction", 1.0, True), ("masking", "random_fraction", 1.01, False),
    ("data", "synth_detail_size", 0.5, True), ("data", "synth_detail_size", 2.0, True),
    ("data", "synth_detail_size", 0.49, False), ("data", "synth_detail_size", 2.01, False),
    ("data", "synth_detail_contrast", 150.0, True),
    ("data", "synth_detail_contrast", 0.0, False),
    ("data", "synth_detail_contrast", 150.5, False)])
def test_shares_and_levers_take_one_range(block, field, value, ok):
  validate = {"masking": config_lib.validate_masking,
              "data": config_lib.validate_detail_style}[block]
  b = config_lib.default_config()[block]
  b[field] = value
  if ok:
    validate(b)
  else:
    with pytest.raises(ValueError, match=f"config.{block}.{field}={value}"):
      validate(b)


def test_a_config_json_without_a_newer_field_reads_as_its_default():
  config = config_lib.default_config()
  stored = json.loads(config.to_json_best_effort())
  del stored["tgir"], stored["data"]["max_answers"]
  filled = config_lib.with_defaults(stored)
  assert filled["tgir"]["ks"] == [10, 50] and filled["data"]["max_answers"] == 10
  assert resume.config_changes(filled, config) == {}
  stored["data"]["max_text_len"] = 12  # what a run stored stays
  assert config_lib.with_defaults(stored)["data"]["max_text_len"] == 12


def test_albef_base_is_albefs():
  """configs/fashiongen.py:size=albef_base is ALBEF's released model and setting (its
  configs/Pretrain.yaml and models/model_pretrain.py): ViT-B/16 at 256 px, BERT-base
  split 6+6 with its 30522 tokens and token-type table, embed 256, queue 65536,
  momentum 0.995, temperature 0.07."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("fg", PACKAGE.parent / "configs/fashiongen.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("size=albef_base")
  m = c.model
  assert (m.image_size, m.patch_size, m.vision_width, m.vision_depth, m.vision_heads,
          m.vision_mlp_dim) == (256, 16, 768, 12, 12, 3072)
  assert (m.text_width, m.text_layers, m.fusion_layers, m.text_heads, m.text_mlp_dim,
          m.max_positions, m.vocab_size, m.type_vocab_size) == (768, 6, 6, 12, 3072, 512,
                                                                30522, 2)
  assert (m.embed_dim, c.queue_size, c.momentum, m.temp_init) == (256, 65536, 0.995, 0.07)
  assert (m.vision_ln_eps, m.text_ln_eps) == (1e-6, 1e-12)


@pytest.mark.parametrize("field,value", [("synth_detail_size", 1.5),
                                         ("synth_facing_marks", True)])
def test_detail_levers_only_where_they_are_read(field, value):
  d = config_lib.default_config().data
  d.name, d[field] = "synthfashion_vqa", value
  with pytest.raises(ValueError, match=f"config.data.{field}={value}: only"):
    config_lib.validate_detail_style(d)
