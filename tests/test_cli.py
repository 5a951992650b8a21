"""The command line's config (cli.py): tuple fields in the comma form, the preset flag,
paths resolved once, a fine-tuning run's model and vocabulary from its pretraining run;
and launch/local.sh's arguments. Flags are parsed in-process: nothing compiles."""

import os
import shutil
import stat
import subprocess
import sys

import pytest
from absl import flags

from syncmask_jax import cli, config_lib, paths
from syncmask_jax.data import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parse(*args, checkpoints=""):
  argv = ["prog", *args]
  flag_values = flags.FlagValues()
  cli.define_config_flag(flag_values, argv)
  flag_values(argv)
  return cli.resolved_config(flag_values["config"], checkpoints=checkpoints)


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
  monkeypatch.chdir(ROOT)  # the configs are named relative to the repository, as the README's


def test_tuple_fields_take_the_comma_form():
  c = _parse("--config=configs/synthfashion.py", "--config.eval.scoring=itc,itc+itm",
             "--config.masking.layers=-1,-2", "--config.data.crop_scale=(0.3, 1.0)")
  assert c.eval.scoring == ("itc", "itc+itm")
  assert c.masking.layers == (-1, -2)
  assert c.data.crop_scale == (0.3, 1.0)  # the quoted Python form still works
  assert _parse("--config=configs/synthfashion.py", "--config.eval.scoring=itc+itm",
                "--config.eval.scoring=itc").eval.scoring == ("itc+itm", "itc")


def test_model_preset_flag_sets_the_size_or_names_the_field():
  c = _parse("--config=configs/synthfashion.py", "--config.model.preset=small",
             "--config.model.vision_depth=1")
  small = config_lib.MODEL_PRESETS["small"]
  assert c.model.preset == "small" and c.model.vision_width == small["vision_width"] == 256
  assert c.model.text_layers == small["text_layers"]
  assert c.model.vision_depth == 1  # a field given too wins over the preset's
  with pytest.raises(ValueError, match=r"config.model.preset='huge': expected one of"):
    _parse("--config=configs/synthfashion.py", "--config.model.preset=huge")
  c = config_lib.default_config()
  c.model.preset = "huge"
  with pytest.raises(ValueError, match=r"config.model.preset='huge'"):
    config_lib.validate(c)


def test_paths_are_resolved_once_and_urls_left_alone(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  c = _parse(f"--config={ROOT}/configs/synthfashion.py", "--config.init_checkpoint=runs/a",
             "--config.data.root=gs://bucket/fashiongen", "--config.data.vocab_path=~/v.txt")
  assert c.init_checkpoint == str(tmp_path / "runs" / "a")
  assert c.data.root == "gs://bucket/fashiongen"
  assert c.data.vocab_path == os.path.expanduser("~/v.txt")
  assert c.data.image_root == "" and paths.resolve("s3://b/k") == "s3://b/k"


@pytest.fixture
def pretraining_run(tmp_path):
  """runs/pre: a tiny pretraining run's resolved config.json (one ViT block, a copy of
  the SynthFashion vocabulary) beside its checkpoints/."""
  run = tmp_path / "runs" / "pre"
  (run / "checkpoints").mkdir(parents=True)
  vocab = str(tmp_path / "vocab.txt")
  shutil.copyfile(pipeline.vocab_path(config_lib.default_config()), vocab)
  c = _parse("--config=configs/synthfashion.py", "--config.model.vision_depth=1",
             f"--config.data.vocab_path={vocab}")
  pipeline.resolve_vocab(c)
  with open(run / "config.json", "w", encoding="utf-8") as f:
    f.write(c.to_json_best_effort())
  return {"dir": run, "vocab": vocab, "vocab_size": c.model.vocab_size}


def test_finetuning_takes_model_and_vocabulary_from_the_pretraining_run(pretraining_run,
                                                                        monkeypatch):
  monkeypatch.chdir(pretraining_run["dir"].parent.parent)
  laptop = ("--config=configs/finetune_category.py:label=subcategory,data=synthfashion",
            "--config.init_checkpoint=runs/pre/checkpoints")
  c = _parse(laptop[0].replace("configs/", f"{ROOT}/configs/"), laptop[1])
  tiny = config_lib.MODEL_PRESETS["tiny"]
  # The config file read as with size=tiny (its tiny dtype and learning rate), the run's
  # one-block ViT and its vocabulary file.
  assert c.model.preset == "tiny" and c.model.vision_width == tiny["vision_width"]
  assert c.model.vision_depth == 1
  assert c.model.dtype == "float32" and c.optim.lr == 1e-4
  assert c.data.vocab_path == pretraining_run["vocab"]
  assert c.finetune.label == "subcategory" and c.data.name == "synthfashion"
  config_lib.validate(c)
  # A size or vocabulary given that differs from the run's: an error naming both values.
  with pytest.raises(ValueError, match=r"config.model.preset='small', but the checkpoint's "
                     r"run \(.*runs/pre/config.json\) has 'tiny'"):
    _parse(f"--config={ROOT}/configs/finetune_category.py:data=synthfashion,size=small",
           laptop[1])
  with pytest.raises(ValueError, match=r"config.model.vision_depth=3, .* has 1"):
    _parse(f"--config={ROOT}/configs/finetune_category.py:data=synthfashion", laptop[1],
           "--config.model.vision_depth=3")
  with pytest.raises(ValueError, match=r"config.data.vocab_path='.*README.md', .* has "
                     r"'.*vocab.txt'"):
    _parse(f"--config={ROOT}/configs/finetune_category.py:data=synthfashion", laptop[1],
           f"--config.data.vocab_path={ROOT}/README.md")
  # The same vocabulary under another name, and the same size, stated, are no conflict.
  copy = str(pretraining_run["dir"] / "vocab_copy.txt")
  shutil.copyfile(pretraining_run["vocab"], copy)
  c = _parse(f"--config={ROOT}/configs/finetune_category.py:data=synthfashion,size=tiny",
             laptop[1], f"--config.data.vocab_path={copy}")
  assert c.data.vocab_path == copy and c.model.vision_depth == 1


def test_a_named_testbed_draws_its_set_in_pretraining_the_study_and_fine_tuning():
  generator = ("synth_detail_size", "synth_detail_contrast", "synth_facing_marks")
  default = config_lib.default_config().data
  details = config_lib.SYNTH_TESTBEDS["details"]
  assert set(details) <= set(generator) and details
  for config in ("configs/synthfashion.py", "configs/study.py:variant=albef",
                 "configs/finetune_category.py:data=synthfashion,size=tiny"):
    sep = "," if ":" in config else ":"
    original = _parse(f"--config={config}").data
    assert all(original[f] == default[f] for f in generator), config
    drawn = _parse(f"--config={config}{sep}testbed=details").data
    assert {f: drawn[f] for f in details} == details, config
    assert pipeline.detail_style(drawn) == pipeline.synthfashion.DetailStyle(
        size=2.0, contrast=150.0, facing=True)
  with pytest.raises(ValueError, match="testbed='laptop': expected one of"):
    config_lib.apply_synth_testbed(config_lib.default_config().data, "laptop")


def test_config_json_records_the_vocabulary_used(tmp_path):
  c = _parse("--config=configs/synthfashion.py")
  tokens = pipeline.resolve_vocab(c)
  assert c.data.vocab_path == pipeline.vocab_path(config_lib.default_config())
  assert c.model.vocab_size == tokens.vocab_size < 1000  # SynthFashion's, not BERT's 30522
  with open(c.data.vocab_path, encoding="utf-8") as f:
    assert len(f.read().splitlines()) == tokens.vocab_size


def test_local_sh_takes_overrides_alone(tmp_path):
  """launch/local.sh with a stand-in virtual environment whose python prints its argv
  (but answers launch/venv.sh's `python -c` question about its version)."""
  bin_dir = tmp_path / "venv" / "bin"
  bin_dir.mkdir(parents=True)
  python = f'[ "$1" = "-c" ] && exec {sys.executable} "$@"\nprintf "%s\\n" "$@"'
  for name, body in (("python", python), ("pip", "true")):
    (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
    (bin_dir / name).chmod(stat.S_IRWXU)
  env = dict(os.environ, VENV=str(tmp_path / "venv"))

  def argv(*args):
    return subprocess.run([os.path.join(ROOT, "launch", "local.sh"), *args], env=env,
                          capture_output=True, text=True, check=True,
                          timeout=60).stdout.splitlines()

  assert argv("--config.total_steps=30")[-3:] == [
      "--config=configs/synthfashion.py", "--workdir=runs/synthfashion",
      "--config.total_steps=30"]
  assert argv("configs/synthfashion.py:recipe=albef", "runs/albef", "--config.seed=1")[-3:] \
      == ["--config=configs/synthfashion.py:recipe=albef", "--workdir=runs/albef",
          "--config.seed=1"]
  assert argv("configs/coco.py")[-2:] == ["--config=configs/coco.py",
                                          "--workdir=runs/synthfashion"]
