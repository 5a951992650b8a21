"""What a person sees (console.py, cli.run): each mistake of the first hour ends in one
line and exit status 1, without a traceback unless SYNCMASK_TRACEBACK=1 asks for one;
`--help` lists every job and the flags a user types. Flags are parsed in-process; the
end-to-end cases run the entry point (no step compiles)."""

import json
import logging as py_logging
import os
import subprocess
import sys

import pytest
from absl import flags

from syncmask_jax import cli, console, tasks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "--config=configs/synthfashion.py"


def _command(module: str, *args: str, cwd=ROOT, **env) -> subprocess.CompletedProcess:
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT, **env}
  return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, text=True,
                        capture_output=True, timeout=300,
                        env={k: v for k, v in env.items() if v is not None})


def _one_line_error(out: subprocess.CompletedProcess) -> str:
  """The error line, checked to end the output alone, with exit status 1."""
  assert out.returncode == 1, out.stderr
  assert "Traceback" not in out.stderr, out.stderr
  last = out.stderr.rstrip("\n").splitlines()[-1]
  assert last.startswith("error: "), out.stderr
  return last


def _parse_error(*args: str) -> str:
  argv = ["prog", *args]
  flag_values = flags.FlagValues()
  cli.define_config_flag(flag_values, argv)
  with pytest.raises(SystemExit) as e:
    cli._parse_flags(argv, flag_values)  # pylint: disable=protected-access
  assert isinstance(e.value.code, str) and "\n" not in e.value.code  # status 1, one line
  return e.value.code


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
  monkeypatch.chdir(ROOT)
  monkeypatch.delenv(console.TRACEBACK_ENV, raising=False)


def test_a_mistyped_field_ends_in_one_line_with_the_hint_unescaped():
  out = _command("syncmask_jax.main", CONFIG, "--workdir=unused",
                 "--config.optim.lrr=1e-3")
  assert _one_line_error(out) == ('error: --config.optim.lrr: no field \'lrr\'; '
                                  'Did you mean "lr" instead of "lrr"?')
  assert out.stderr.count("\n") == 1  # nothing else was printed


def test_a_workdir_that_is_a_file_ends_in_one_line(tmp_path):
  (tmp_path / "configs").symlink_to(os.path.join(ROOT, "configs"))
  (tmp_path / "run").write_text("not a directory")
  # No JAX_PLATFORMS, as a user types it: JAX probes for a TPU and must not say so.
  out = _command("syncmask_jax.main", CONFIG, "--workdir=run", cwd=tmp_path,
                 JAX_PLATFORMS=None)
  assert _one_line_error(out) == (
      "error: --workdir=run is a file; a workdir is a directory (it holds the run's "
      "checkpoints, metrics and config)")
  assert "Unable to initialize backend" not in out.stderr
  assert sorted(os.listdir(tmp_path)) == ["configs", "run"]  # nothing written


def test_evaluating_a_run_that_is_not_there_ends_in_one_line(tmp_path):
  (tmp_path / "configs").symlink_to(os.path.join(ROOT, "configs"))
  out = _command("syncmask_jax.evaluate", CONFIG, "--workdir=runs/typo", cwd=tmp_path)
  assert _one_line_error(out) == (
      f"error: '{tmp_path}/runs/typo/checkpoints': no such directory (expected a run's "
      "checkpoints/ directory)")


@pytest.mark.parametrize("args, line", [
    ((CONFIG, "--config.optim.warmup_stepz=3"),
     "error: --config.optim.warmup_stepz: no field 'warmup_stepz'; Did you mean "
     '"warmup_steps" instead of "warmup_stepz"?'),
    (("--config=configs/synthfashion.py:recipe=simclr",),
     "error: flag --config=configs/synthfashion.py:recipe=simclr: recipe='simclr': "
     "expected one of ('syncmask', 'albef', 'semmim')"),
    (("--config=configs/synthfashion.py:steps=10,sise=small",),
     "error: flag --config=configs/synthfashion.py:steps=10,sise=small: config argument "
     "'sise': expected one of ['recipe', 'size', 'steps', 'testbed']"),
    ((CONFIG, "--config.optim.lr=1e-3x"),
     "error: flag --config.optim.lr=1e-3x: could not convert string to float: '1e-3x'"),
    ((CONFIG, "--workdr=runs/x"),
     "error: Unknown command line flag 'workdr'"),
])
def test_flag_mistakes_end_in_one_line(args, line):
  assert _parse_error(*args) == line


def test_a_missing_config_file_is_named():
  argv = ["prog", "--config=configs/synthfashon.py"]
  flag_values = flags.FlagValues()
  cli.define_config_flag(flag_values, argv)
  flag_values(argv)  # ml_collections defers a file it cannot load
  with pytest.raises(FileNotFoundError) as e:
    cli.resolved_config(flag_values["config"])
  assert console.one_line(e.value) == (
      f"--config=configs/synthfashon.py: no file configs/synthfashon.py (relative paths "
      f"start in the current directory, {ROOT})")


def _raises(error):
  raise error


def test_only_mistakes_named_by_the_package_lose_their_traceback(monkeypatch):
  from syncmask_jax import config_lib  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit) as e:
    console.one_line_errors(config_lib.model_config)("huge")
  assert e.value.code.startswith("error: config.model.preset='huge': expected one of")
  with pytest.raises(SystemExit):  # a file error, raised anywhere
    console.one_line_errors(_raises)(FileNotFoundError("/data/x.h5"))
  # A ValueError raised inside a library (here json) or an error of another kind is
  # more likely a bug: its traceback stays.
  with pytest.raises(json.JSONDecodeError):
    console.one_line_errors(json.loads)("{")
  with pytest.raises(TypeError):
    console.one_line_errors(config_lib.model_config)(1, 2, 3)
  monkeypatch.setenv(console.TRACEBACK_ENV, "1")
  with pytest.raises(ValueError):
    console.one_line_errors(config_lib.model_config)("huge")


def test_help_lists_every_job_and_the_flags_a_user_types():
  out = _command("syncmask_jax.main", "--help")
  text = " ".join(out.stdout.split())
  assert "pretrain | " + " | ".join(tasks.TASKS) + "." in text
  for flag in ("--config:", "--workdir:", "--[no]distributed:", "--coordinator_address:"):
    assert flag in text
  assert console.TRACEBACK_ENV in text


def test_countdown_logs_the_eta_of_a_long_pass_only(caplog):
  caplog.set_level(py_logging.INFO)
  # The clock starts at the first 10 pairs (after any compilation); a line every 30 s.
  clock = iter([0.0, 10.0, 40.0, 50.0, 80.0]).__next__
  countdown = console.Countdown("ITM re-ranking", 100, "pairs", every_s=30, clock=clock)
  for _ in range(5):
    countdown.add(10)
  assert [r.getMessage() for r in caplog.records] == [
      "ITM re-ranking: 30/100 pairs (30%), 0.5 pairs/s, ETA 2m20s",
      "ITM re-ranking: 50/100 pairs (50%), 0.5 pairs/s, ETA 1m40s"]
  caplog.clear()
  short = console.Countdown("encoding", 3, "batches", every_s=30,
                            clock=iter([0.0, 1.0, 2.0]).__next__)
  for _ in range(3):
    short.add(1)
  assert not caplog.records


def test_the_converter_names_a_missing_manual_dir(tmp_path, capsys):
  from syncmask_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit) as e:
    pipeline.main(["fashiongen", "--manual_dir", str(tmp_path / "nope"),
                   "--data_dir", str(tmp_path / "tfds")])
  assert e.value.code == 2  # argparse's usage error
  assert capsys.readouterr().err.splitlines()[-1].endswith(
      f"error: --manual_dir {tmp_path}/nope: no such directory (it holds the dataset's "
      "downloaded files)")
