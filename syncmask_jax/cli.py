"""The command line's config, resolved into the values a run uses before anything is built.

`main.py` and `evaluate/__main__.py` run through `run` (a mistyped flag or field, like
every user's mistake, ends in one line: console.py) and read
`--config=configs/<exp>.py[:key=value,...]` and `--config.<field>=<value>` through this
module:

* Tuple fields take the comma form the README shows, `--config.eval.scoring=itc,itc+itm`
  (ml_collections alone reads an unquoted `itc,itc+itm` as one string); `'("a", "b")'`
  and repeated flags still work.
* `--config.model.preset=<size>` sets that size's model fields (a `--config.model.<field>`
  given too still wins); an unknown size is an error naming the field.
* Every path field is made absolute here, once (`paths.resolve`).
* A run whose parameters come from a checkpoint (fine-tuning from `init_checkpoint`, or
  evaluating a run) takes the model and the vocabulary from the resolved config of the
  run that wrote it, `config.json` beside its `checkpoints/`: the config file is read as
  if `:size=<that run's size>` had been given (so the size's own defaults, dtype and
  learning rate, follow), and a size, model field or vocabulary given on the command
  line that differs from that run's is an error naming both values.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from typing import Any, Callable

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags
from ml_collections.config_flags import tuple_parser

from syncmask_jax import config_lib, console, paths, tasks
from syncmask_jax.checkpoint_import import released

PATH_FIELDS = ("init_checkpoint", "compilation_cache_dir", "data.root", "data.image_root",
               "data.vg_image_root",
               "data.vocab_path", "data.tfds_data_dir", "model.text_init",
               "model.image_init")
# What a run from a checkpoint takes from the run that wrote it: the fields that shape
# the parameters, and the vocabulary file (model.vocab_size is the file's size).
MODEL_FIELDS = ("preset", *config_lib.MODEL_PRESETS["tiny"], "type_vocab_size",
                "vision_ln_eps", "text_ln_eps")
FROM_CHECKPOINT_RUN = (*(f"model.{k}" for k in MODEL_FIELDS), "data.vocab_path")


class CommaTupleParser(tuple_parser.TupleParser):
  """ml_collections' tuple parser, plus unquoted `a,b` lists of names or numbers."""

  def parse(self, argument):
    if isinstance(argument, str) and "," in argument:
      try:
        value = ast.literal_eval(argument)
      except (ValueError, SyntaxError):  # `itc,itc+itm`: names, not Python literals
        return tuple(_literal(s.strip()) for s in argument.split(",") if s.strip())
      return value if isinstance(value, tuple) else (value,)
    return super().parse(argument)


def _literal(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def define_config_flag(flag_values: flags.FlagValues = flags.FLAGS,
                       argv: list[str] | None = None) -> flags.FlagHolder:
  """The `--config` flag, its tuple fields parsed by CommaTupleParser."""
  config_flags.register_flag_parser_for_type(tuple, CommaTupleParser())
  jobs = " | ".join(("pretrain", *tasks.TASKS))
  return config_flags.DEFINE_config_file(
      "config", None, "Experiment config file[:key=value,...], e.g. "
      "configs/synthfashion.py:recipe=albef; --config.<field>=<value> overrides a field. "
      f"Its task field picks the job: {jobs}.", flag_values=flag_values, lock_config=True,
      sys_argv=argv)


def run(main: Callable[[list[str]], None]) -> None:
  """`app.run(main)` for the package's absl entry points, with the console's rules
  (console.py): users' mistakes in flags, config and paths end in one line; the
  libraries' chatter is dropped. `main` must have declared `--config` its key flag
  (`flags.declare_key_flag("config")`), so that `--help` lists it."""
  console.quiet_libraries()
  app.run(console.one_line_errors(main), flags_parser=_parse_flags)


def _parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  try:
    return flag_values(argv)
  except (flags.Error, AttributeError, KeyError) as e:
    if os.environ.get(console.TRACEBACK_ENV):
      raise
    if isinstance(e, flags.Error):
      # absl's "flag --config=...: <cause>", whose cause (ml_collections') holds the
      # config file's traceback as text: the first cause is what the user needs.
      first = cause = e.__cause__ or e.__context__
      message = str(e)
      if cause is not None and message.endswith(str(cause)):
        while (cause.__cause__ or cause.__context__) is not None:
          cause = cause.__cause__ or cause.__context__
        message = message[:len(message) - len(str(first))] + console.one_line(cause)
      console.exit_with(" ".join(message.split()))
    # ml_collections: an override names no field ("'lrr'\nDid you mean ...?").
    key, _, hint = console.one_line(e).partition(" ")
    named = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")
             and key.strip("'\"") in a.split("=", 1)[0].split(".")]
    console.exit_with(f"{named[0] if len(named) == 1 else '--config'}: no field {key}"
                      + (f"; {hint}" if hint else ""))


def resolved_config(flag: flags.Flag, checkpoints: str = "") -> ml_collections.ConfigDict:
  """The parsed `--config` flag (`flag_values["config"]`) with the rules of the module
  docstring applied.

  `checkpoints`: the directory the run's parameters come from; default (fine-tuning
  tasks) `config.init_checkpoint`.
  """
  filename, _, arg = flag.config_filename.partition(":")
  if not paths.path(filename).is_file():  # ml_collections defers this error to first use
    raise FileNotFoundError(f"--config={flag.config_filename}: no file {filename} (relative "
                            f"paths start in the current directory, {os.getcwd()})")
  config = flag.value
  overrides = config_flags.get_override_values(flag)
  stated = dict(item.split("=", 1) for item in filter(None, arg.split(",")) if "=" in item)
  if not checkpoints and config.task != "pretrain":
    checkpoints = config.init_checkpoint
  # A released file (ALBEF's .pth) has no run beside it: the config gives the model, and
  # the importer checks every size against it.
  run_json = (os.path.join(os.path.dirname(paths.resolve(checkpoints).rstrip("/")),
                           "config.json")
              if checkpoints and not released.is_released(checkpoints) else "")
  run = None
  if run_json and paths.path(run_json).is_file():
    run = paths.read_json(run_json)
  elif run_json:
    logging.warning("%s not found: the model is the config's, not the checkpoint run's",
                    run_json)
  if run is not None and "size" not in stated:
    size = run["model"]["preset"]
    rebuilt = _load(filename, {**stated, "size": size})
    if rebuilt is not None:
      rebuilt.update_from_flattened_dict(overrides)
      rebuilt.lock()
      config = rebuilt
  if "model.preset" in overrides:
    _apply_preset(config, overrides)
  if run is not None:
    explicit = set(overrides) | ({"model.preset"} if "size" in stated else set())
    _adopt(config, run, run_json, explicit)
  for field in PATH_FIELDS:
    node, _, leaf = field.rpartition(".")
    parent = config[node] if node else config
    if leaf in parent:
      parent[leaf] = paths.resolve(parent[leaf])
  return config


def _load(filename: str, args: dict[str, str]) -> ml_collections.ConfigDict | None:
  """`filename`'s get_config with `args`; None when it takes no `size` argument."""
  spec = importlib.util.spec_from_file_location("run_config_file", filename)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  try:
    return module.get_config(",".join(f"{k}={v}" for k, v in args.items()))
  except ValueError as e:
    if "'size'" not in str(e):
      raise
    return None


def _apply_preset(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> None:
  preset = config.model.preset
  fields = config_lib.model_config(preset)  # an unknown size: the error names the field
  for k in config_lib.MODEL_PRESETS[preset]:
    config.model[k] = overrides.get(f"model.{k}", fields[k])


def _adopt(config: ml_collections.ConfigDict, run: dict, run_json: str,
           explicit: set[str]) -> None:
  for field in FROM_CHECKPOINT_RUN:
    node, leaf = field.split(".")
    theirs = run.get(node, {}).get(leaf)
    if theirs is None or theirs == "":
      continue  # a config.json from before the field was recorded (or resolved)
    ours = config[node][leaf]
    if field == "data.vocab_path":
      ours = paths.resolve(ours)
      same = ours == theirs or (paths.path(ours).is_file() and paths.path(theirs).is_file()
                                and paths.path(ours).read_bytes()
                                == paths.path(theirs).read_bytes())
    else:
      same = ours == (tuple(theirs) if isinstance(ours, tuple) else theirs)
    if same:
      continue
    if field in explicit:
      raise ValueError(f"config.{field}={ours!r}, but the checkpoint's run ({run_json}) "
                       f"has {theirs!r}")
    config[node][leaf] = theirs
