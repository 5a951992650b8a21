"""The README's commands, read out of its code blocks and run verbatim (tiny overrides
appended, nothing else changed) in a directory laid out like the repository, with its
relative workdirs, from a shell with nothing activated (no venv on PATH, no
VIRTUAL_ENV): the main job of ./launch/local.sh, evaluation under both scorings (the
tuple flag in the comma form) and the laptop fine-tuning from a relative
init_checkpoint. If the README and the code drift apart, this fails."""

import glob
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys

import flax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tiny data and steps; appended to the README's commands.
DATA = ["--config.data.synth_train_products=48", "--config.data.synth_val_products=16",
        "--config.data.eval_batch_size=16"]
TRAIN = ["--config.total_steps=2", "--config.data.global_batch_size=8",
         "--config.log_every=1", "--config.checkpoint_every=2",
         "--config.optim.warmup_steps=1", *DATA]


def readme_commands() -> list[list[str]]:
  """Every command of the README's bash blocks, continuation lines joined, comments
  dropped."""
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    blocks = re.findall(r"```bash\n(.*?)```", f.read(), re.S)
  lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
  return [words for words in (shlex.split(line, comments=True) for line in lines) if words]


def readme_command(*parts: str) -> list[str]:
  found = [c for c in readme_commands() if all(any(p in w for w in c) for p in parts)]
  assert len(found) == 1, f"README.md: {len(found)} commands with {parts}: {found}"
  return found[0]


def test_readme_commands_need_nothing_activated():
  """A fresh shell has no venv on PATH: the package's Python, and the tools installed
  with it, are reached through ./launch/ (or .venv/bin/), never by a bare name."""
  bare = {"python", "python3", "pip", "pytest", "tensorboard"}
  for argv in readme_commands():
    program = next(w for w in argv if not re.match(r"^[A-Z_]+=", w))  # after VAR=value
    assert program not in bare and "..." not in argv, argv


def _fresh_shell() -> dict:
  """The environment of a shell with nothing activated, where launch/venv.sh (VENV, LOCK)
  finds the venv running these tests, already filled from its lock (its stamp), so it
  installs nothing."""
  stamps = glob.glob(os.path.join(sys.prefix, ".lock-stamp-*"))
  if not stamps:
    pytest.skip(f"{sys.prefix} is not a venv of launch/venv.sh: run ./launch/test.sh")
  # launch/venv.sh reinstalls a venv whose stamp is not this checkout's lock and
  # pyproject.toml: never from a test (a venv shared with other checkouts or runs).
  stamp = max(stamps, key=lambda p: p.endswith("-test"))
  lock = os.path.join(ROOT, "requirements",
                      "lock-" + os.path.basename(stamp)[len(".lock-stamp-"):] + ".txt")
  with open(lock, "rb") as f, open(os.path.join(ROOT, "pyproject.toml"), "rb") as g:
    want = hashlib.sha256(f.read() + g.read()).hexdigest()
  with open(stamp, encoding="utf-8") as f:
    if f.read().strip() != want:
      pytest.fail(f"{sys.prefix} was installed from another {os.path.relpath(lock, ROOT)} "
                  "or pyproject.toml than this checkout's, so the README's commands would "
                  "reinstall it (launch/venv.sh): run ./launch/test.sh, which updates it")
  venv_bins = {os.path.join(sys.prefix, "bin"),
               os.path.join(os.environ.get("VIRTUAL_ENV", sys.prefix), "bin")}
  env = {k: v for k, v in os.environ.items()
         if k not in ("VIRTUAL_ENV", "PYTHONHOME", "LOCK", "UNLOCKED")}
  env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                if p not in venv_bins)
  # The package is this checkout (a venv's editable install may point at another).
  return dict(env, VENV=sys.prefix, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
              XLA_FLAGS="--xla_force_host_platform_device_count=1",
              **({"LOCK": "test"} if any(s.endswith("-test") for s in stamps) else {}))


def run(argv: list[str], cwd) -> subprocess.CompletedProcess:
  assert argv[0].startswith("./launch/"), argv  # as typed, from the repository's root
  out = subprocess.run(argv, cwd=cwd, env=_fresh_shell(), capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, f"{' '.join(argv)}\n{out.stderr[-4000:]}"
  assert "Traceback" not in out.stderr, out.stderr[-4000:]
  return out


def _json(path):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _layout(tmp_path_factory, name: str):
  """A directory laid out like a checkout: what the launch scripts and commands read."""
  repo = tmp_path_factory.mktemp(name)
  for part in ("configs", "launch", "requirements", "pyproject.toml"):
    os.symlink(os.path.join(ROOT, part), repo / part)
  return repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
  """A checkout's layout with the README's main job, ./launch/local.sh, run in it: 2 steps
  of tiny data, one ViT block (which the commands below must take from the run's
  config.json: none of them says so)."""
  repo = _layout(tmp_path_factory, "repo")
  local = readme_command("./launch/local.sh")
  assert local == ["./launch/local.sh"]
  run(local + ["--config.eval_at_end=False", "--config.queue_size=16",
               "--config.model.vision_depth=1", *TRAIN], repo)
  return repo


@pytest.mark.slow
def test_pretraining_config_json_is_the_resolved_config(repo):
  config = _json(repo / "runs" / "synthfashion" / "config.json")
  with open(config["data"]["vocab_path"], encoding="utf-8") as f:
    assert config["model"]["vocab_size"] == len(f.read().splitlines()) < 1000
  assert config["model"]["preset"] == "tiny" and config["total_steps"] == 2


@pytest.mark.slow
def test_readme_evaluate_with_both_scorings(repo):
  argv = readme_command("syncmask_jax.evaluate", "--config.eval.scoring=")
  assert "--workdir=runs/synthfashion" in argv
  out = run(argv + DATA + ["--config.eval.pictures=0", "--config.eval.itm_batch_size=16"],
            repo)
  assert "Metadata file does not exist" not in out.stderr  # Orbax, on every restore once
  results = _json(repo / "runs" / "synthfashion" / "eval" / "pretrain.json")
  assert results["step"] == 2
  assert sorted((b["protocol"], b["scoring"]) for b in results["results"]) == [
      (p, s) for p in ("full_gallery", "one_plus_100", "twins") for s in ("itc", "itc+itm")]
  assert "retrieval full_gallery/itc+itm" in out.stdout


@pytest.mark.slow
def test_readme_laptop_finetuning_from_a_relative_checkpoint(repo):
  argv = readme_command("syncmask_jax.main", "finetune_category.py", "data=synthfashion")
  assert "--config.init_checkpoint=runs/synthfashion/checkpoints" in argv
  workdir = next(w.split("=", 1)[1] for w in argv if w.startswith("--workdir="))
  run(argv + TRAIN + ["--config.queue_size=8"], repo)
  results = _json(repo / workdir / "eval" / "category.json")
  assert results["init_checkpoint"] == str(repo / "runs" / "synthfashion" / "checkpoints")
  block = results["results"][0]
  assert block["label"] == "subcategory" and block["num_evaluated"] > 0
  # The model and the vocabulary are the pretraining run's (no size or vocab flag given).
  pre = _json(repo / "runs" / "synthfashion" / "config.json")
  tuned = _json(repo / workdir / "config.json")
  assert tuned["model"]["preset"] == pre["model"]["preset"] == "tiny"
  assert tuned["model"]["vision_depth"] == pre["model"]["vision_depth"] == 1
  assert tuned["data"]["vocab_path"] == pre["data"]["vocab_path"]
  assert tuned["model"]["vocab_size"] == pre["model"]["vocab_size"]


# -- released checkpoints ------------------------------------------------------------------

# The tiny model the stand-ins of ALBEF's files are made at; appended to the commands.
TINY_MODEL = dict(image_size=32, patch_size=16, vision_width=32, vision_depth=1,
                  vision_heads=2, vision_mlp_dim=64, text_width=32, text_layers=1,
                  fusion_layers=1, text_heads=2, text_mlp_dim=64, max_positions=128,
                  embed_dim=16)
MODEL = [f"--config.model.{k}={v}" for k, v in TINY_MODEL.items()] + [
    "--config.model.dtype=float32"]
SMALL_RUN = ["--config.total_steps=2", "--config.data.global_batch_size=4",
             "--config.data.eval_batch_size=4", "--config.queue_size=16",
             "--config.optim.warmup_steps=1", "--config.log_every=1",
             "--config.checkpoint_every=2", "--config.data.read_threads=1"]


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
  """A checkout's layout with ckpt/: a vocabulary and stand-ins of ALBEF.pth, mscoco.pth
  and vqa.pth (ALBEF's key layout, tiny random models, fakes.write_albef_checkpoint);
  data/: FashionGen, COCO (Karpathy) and VQA in their real formats. torch writes the .pth
  files, in a process of its own (tests/test_torch_parity.py says why)."""
  repo = _layout(tmp_path_factory, "released")
  sys.path.insert(0, os.path.dirname(__file__))
  import fakes  # pylint: disable=g-import-not-at-top
  os.makedirs(repo / "ckpt", exist_ok=True)
  vocab = fakes.write_vocab(str(repo / "ckpt" / "vocab.txt"))
  script = (
      "import sys; sys.path.insert(0, sys.argv[1]); import fakes\n"
      "from syncmask_jax import config_lib\n"
      f"m = config_lib.model_config('tiny', vocab_size={len(open(vocab).read().split())})\n"
      f"m.update({TINY_MODEL!r})\n"
      "for name, kind in (('ALBEF', 'pretrain'), ('mscoco', 'retrieval'), ('vqa', 'vqa')):\n"
      "  fakes.write_albef_checkpoint(f'ckpt/{name}.pth', m, kind)\n")
  out = subprocess.run([sys.executable, "-c", script, os.path.dirname(__file__)], cwd=repo,
                       env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"),
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-4000:]
  for split in ("train", "validation"):
    fakes.write_fashiongen(str(repo / "data" / "fashiongen"), n=12, split=split,
                           seed=split == "validation")
  fakes.write_karpathy(str(repo / "data" / "coco"))
  fakes.write_vqa(str(repo / "data" / "vqa"))
  return repo


@pytest.mark.slow
def test_readme_round_trip_through_albefs_layout(repo):
  """The laptop block: the main job's run exported to LAVIS's ALBEF layout, imported
  into a new run directory, evaluated. The imported parameters are the run's (LAVIS's
  BERT has no token-type table: row 0 travels in the positions)."""
  export = readme_command("syncmask_jax.convert", "--export=")
  back = readme_command("syncmask_jax.convert", "--checkpoint=runs/synthfashion/albef.pth")
  evaluate = readme_command("syncmask_jax.evaluate", "--workdir=runs/synthfashion_roundtrip")
  run(export, repo)
  run(back + TRAIN + ["--config.queue_size=16", "--config.model.vision_depth=1"], repo)
  out = run(evaluate + DATA + ["--config.eval.pictures=0"], repo)
  assert "retrieval full_gallery/itc" in out.stdout
  from syncmask_jax import checkpointing  # pylint: disable=g-import-not-at-top
  flat = lambda tree: {k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(
      tree, sep="/").items()}
  ours = flat(checkpointing.load_as_stored(str(repo / "runs/synthfashion/checkpoints"),
                                           "params")[0])
  back_params = flat(checkpointing.load_as_stored(
      str(repo / "runs/synthfashion_roundtrip/checkpoints"), "params")[0])
  shared = [k for k in ours if not k.startswith(("mim_", "vision/mask_token", "embeddings/"))]
  assert len(shared) > 50
  for k in shared:
    np.testing.assert_array_equal(back_params[k], ours[k], err_msg=k)
  np.testing.assert_allclose(back_params["embeddings/position"], ours["embeddings/position"]
                             + ours["embeddings/token_type"][0], rtol=0, atol=1e-6)
  np.testing.assert_array_equal(back_params["embeddings/token_type"], 0.0)


# The commands for ALBEF's released files, verbatim, on stand-ins with their key layout
# (`stand_ins`); three tests, so that the two workers can share them.


@pytest.mark.slow
def test_readme_fashiongen_pretraining_from_albef_pth(stand_ins):
  pretrain = readme_command("syncmask_jax.main", "--config.init_checkpoint=ckpt/ALBEF.pth")
  run(pretrain + MODEL + SMALL_RUN + ["--config.eval_at_end=False"], stand_ins)
  log = (stand_ins / "runs" / "fg_albef" / "metrics.jsonl").read_text().splitlines()
  assert json.loads(log[-1])["step"] == 2


@pytest.mark.slow
def test_readme_albef_coco_retrieval_checkpoint_converted_and_evaluated(stand_ins):
  coco = [readme_command("syncmask_jax.convert", "ckpt/mscoco.pth"),
          readme_command("syncmask_jax.evaluate", "--workdir=runs/albef_coco")]
  run(coco[0] + MODEL + SMALL_RUN + ["--config.data.global_batch_size=2"], stand_ins)
  out = run(coco[1] + ["--config.eval.itm_k=4", "--config.data.eval_batch_size=4"], stand_ins)
  assert "karpathy" in out.stdout


@pytest.mark.slow
def test_readme_albef_vqa_checkpoint_converted_and_evaluated(stand_ins):
  """A 32-px stand-in read at 48 px: its position table is resized."""
  vqa = [readme_command("syncmask_jax.convert", "ckpt/vqa.pth"),
         readme_command("syncmask_jax.evaluate", "--workdir=runs/albef_vqa")]
  run(vqa[0] + MODEL + SMALL_RUN + ["--config.model.image_size=48", "--config.vqa.k_test=2",
                                     "--config.data.global_batch_size=2"], stand_ins)
  run(vqa[1] + ["--config.vqa.k_test=2", "--config.data.eval_batch_size=4"], stand_ins)
  assert (stand_ins / "runs" / "albef_vqa" / "eval" / "vqa_test_results.json").exists()
