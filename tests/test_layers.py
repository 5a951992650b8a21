"""The package's import graph: no cycles, and no module imports a higher layer.

Read from the source with `ast` (nothing is imported): module-level and function-level
imports alike. A function may import only the optional heavy dependencies below.
"""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "syncmask_jax"

# Bottom up; a module may import its own layer and those below. Names are relative to
# the package; the longest matching prefix decides (`evaluate.__main__` over `evaluate`).
LAYERS = (
    ("config", ("paths", "config_lib", "cluster", "study", "console")),
    # Host-side metrics (VQA accuracy, caption scores) sit here: data.vqa reads
    # vqa_eval's answer normalisation.
    ("models, objectives, metrics, data", (
        "models", "data", "tokenizer", "masking", "negatives", "losses", "queue", "semmim",
        "grounding", "vqa_eval", "caption_eval", "results_file", "decoding")),
    ("core", ("sharding", "optim", "train_state", "checkpoint_import", "checkpointing",
              "resume")),
    ("loop and evaluators", ("loop", "train_step", "evaluate", "retrieval", "visualize")),
    ("pretraining and tasks", ("train", "tasks", "finetune")),
    ("entry points", ("main", "evaluate.__main__", "report", "cli", "convert")),
)

# What a function may import: heavy dependencies only some runs need, imported where
# they are used (TensorFlow Datasets' builders behind the dataset modules, the PyTorch
# checkpoint reader, the COCO caption scorers (Java), JAX where a config file or the
# sweep parent must not start it).
LAZY_ALLOWED = ("jax", "torch", "safetensors", "matplotlib", "tensorflow_datasets",
                "pycocoevalcap",
                "syncmask_jax.data.coco", "syncmask_jax.data.fashiongen",
                "syncmask_jax.data.captions",
                "syncmask_jax.data.fashioniq")


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(["syncmask_jax", *parts])] = path
  return out


def _imports(path: pathlib.Path, modules: dict) -> list[tuple[str, bool]]:
  """(imported name, inside a function) for every import in the file; `from pkg import
  mod` names the submodule where one exists."""
  out = []

  def visit(node: ast.AST, in_function: bool) -> None:
    for child in ast.iter_child_nodes(node):
      inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                ast.Lambda))
      if isinstance(child, ast.Import):
        out.extend((alias.name, in_function) for alias in child.names)
      elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
        for alias in child.names:
          sub = f"{child.module}.{alias.name}"
          out.append((sub if sub in modules else child.module, in_function))
      visit(child, inner)

  visit(ast.parse(path.read_text()), False)
  return out


def _layer(module: str) -> int:
  name = module[len("syncmask_jax."):]
  best = None
  for index, (_, prefixes) in enumerate(LAYERS):
    for prefix in prefixes:
      if name == prefix or name.startswith(prefix + "."):
        if best is None or len(prefix) > best[0]:
          best = (len(prefix), index)
  assert best is not None, f"{module} is in no layer of LAYERS"
  return best[1]


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  return {m: {name for name, _ in _imports(p, modules)
              if name in modules and name != m} for m, p in modules.items()}


def test_every_module_has_a_layer():
  for module in _modules():
    if module != "syncmask_jax":
      _layer(module)


def test_no_import_reaches_a_higher_layer():
  bad = [f"{m} ({LAYERS[_layer(m)][0]}) imports {i} ({LAYERS[_layer(i)][0]})"
         for m, imported in _graph().items() if m != "syncmask_jax"
         for i in sorted(imported) if _layer(i) > _layer(m)]
  assert not bad, "\n".join(bad)


def _cycles(graph: dict[str, set[str]]) -> list[str]:
  state, cycles = {}, []

  def visit(module: str, stack: list[str]) -> None:
    state[module] = "open"
    for other in sorted(graph[module]):
      if state.get(other) == "open":
        path = stack + [module]
        cycles.append(" -> ".join(path[path.index(other):] + [other]))
      elif other not in state:
        visit(other, stack + [module])
    state[module] = "done"

  for module in sorted(graph):
    if module not in state:
      visit(module, [])
  return cycles


def test_no_import_cycle():
  cycles = _cycles(_graph())
  assert not cycles, "\n".join(cycles)


def test_functions_import_only_heavy_optional_dependencies():
  modules = _modules()
  bad = [f"{m}: {name}" for m, path in modules.items()
         for name, in_function in _imports(path, modules)
         if in_function and not any(name == a or name.startswith(a + ".")
                                    for a in LAZY_ALLOWED)]
  assert not bad, "imports inside functions:\n" + "\n".join(bad)


def test_the_checks_catch_what_they_are_for(tmp_path):
  assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a -> b -> c -> a"]
  source = tmp_path / "m.py"
  source.write_text("import os\ndef f():\n  from syncmask_jax import train\n")
  assert _imports(source, {"syncmask_jax.train": None}) == [
      ("os", False), ("syncmask_jax.train", True)]
  assert _layer("syncmask_jax.evaluate.__main__") > _layer("syncmask_jax.evaluate")
  assert _layer("syncmask_jax.config_lib") < _layer("syncmask_jax.models.layers")
