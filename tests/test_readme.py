"""The README's commands, read out of its code blocks and run verbatim (tiny overrides
appended, nothing else changed) in a directory laid out like the repository, with its
relative workdirs: evaluation under both scorings (the tuple flag in the comma form)
and the laptop fine-tuning from a relative init_checkpoint. If the README and the code
drift apart, this fails."""

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
  """Every command of the README's bash blocks, continuation lines joined, comments and
  optional `[...]` arguments dropped; a line starting with `...` continues the previous
  command."""
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    blocks = re.findall(r"```bash\n(.*?)```", f.read(), re.S)
  commands = []
  for line in "\n".join(blocks).replace("\\\n", " ").splitlines():
    words = [w for w in shlex.split(line, comments=True) if not w.startswith("[")]
    if words[:1] == ["..."]:
      commands.append(commands[-1] + words[1:])
    elif words:
      commands.append(words)
  return commands


def readme_command(*parts: str) -> list[str]:
  found = [c for c in readme_commands() if all(any(p in w for w in c) for p in parts)]
  assert len(found) == 1, f"README.md: {len(found)} commands with {parts}: {found}"
  return found[0]


def run(argv: list[str], cwd) -> subprocess.CompletedProcess:
  assert argv[0] == "python", argv
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  out = subprocess.run([sys.executable, *argv[1:]], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, f"{' '.join(argv)}\n{out.stderr[-4000:]}"
  return out


def _json(path):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
  """A checkout's layout (configs/) with the pretraining run of ./launch/local.sh in
  runs/synthfashion: the command it runs, 2 steps of tiny data, one ViT block (which the
  commands below must take from the run's config.json: none of them says so)."""
  repo = tmp_path_factory.mktemp("repo")
  os.symlink(os.path.join(ROOT, "configs"), repo / "configs")
  with open(os.path.join(ROOT, "launch", "local.sh"), encoding="utf-8") as f:
    local = f.read()
  assert "CONFIG=configs/synthfashion.py" in local and "WORKDIR=runs/synthfashion" in local
  run(["python", "-m", "syncmask_jax.main", "--config=configs/synthfashion.py",
       "--workdir=runs/synthfashion", "--config.eval_at_end=False", "--config.queue_size=16",
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
