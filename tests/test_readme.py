"""The README's commands, read out of its code blocks and run verbatim (tiny overrides
appended, nothing else changed) in a directory laid out like the repository, with its
relative workdirs, from a shell with nothing activated (no venv on PATH, no
VIRTUAL_ENV): the main job of ./launch/local.sh, evaluation under both scorings (the
tuple flag in the comma form) and the laptop fine-tuning from a relative
init_checkpoint. If the README and the code drift apart, this fails."""

import glob
import json
import os
import re
import shlex
import subprocess
import sys

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


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
  """A checkout's layout (what the launch scripts read) with the README's main job,
  ./launch/local.sh, run in it: 2 steps of tiny data, one ViT block (which the commands
  below must take from the run's config.json: none of them says so)."""
  repo = tmp_path_factory.mktemp("repo")
  for name in ("configs", "launch", "requirements", "pyproject.toml"):
    os.symlink(os.path.join(ROOT, name), repo / name)
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
