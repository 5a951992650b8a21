"""Makes Salesforce LAVIS 1.0.2 importable on a CPU machine that has no network.

Import this module, then call `install(vocab_file)`, before anything imports lavis. It

1. declares the `torchvision::nms` and `torchvision::qnms` operator schemas when
   torchvision's own extension cannot load (PyPI's torchvision wheel is built against CUDA
   torch, and without its ops `torchvision._meta_registrations` fails at import);
2. registers bare `lavis` and `lavis.models` packages in `sys.modules`, so that their
   `__init__`s (which import every dataset builder, hence `decord`, and every model family)
   never run; `lavis.models.albef_models` and the like are then imported one by one;
3. sets `np.Inf = np.inf` (removed in NumPy 2; albef_pretrain.py uses it);
4. replaces the tokenizers' hub download (`BertTokenizer.from_pretrained("bert-base-
   uncased")` in `AlbefBase.init_tokenizer` and `BlipBase.init_tokenizer`) by a
   `BertTokenizer` built from a local `vocab.txt`. BLIP's version then adds its special
   tokens exactly as LAVIS does ([DEC] as bos, [ENC] as an extra token, `enc_token_id`).

It also sets HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, so any other download fails loudly.
"""

import glob
import importlib.machinery
import importlib.util
import os
import sys
import types
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

_VOCAB = {"file": None}


def _declare_torchvision_ops() -> None:
  spec = importlib.util.find_spec("torchvision")
  if spec is None or spec.submodule_search_locations is None:
    return
  folder = list(spec.submodule_search_locations)[0]
  for path in glob.glob(os.path.join(folder, "_C*.so")):
    try:
      torch.ops.load_library(path)
      return  # the real extension loads: it defines the ops itself
    except OSError:
      pass
  schemas = {
      "nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
      "qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
  }
  for name, schema in schemas.items():
    try:
      getattr(torch.ops.torchvision, name)
    except (AttributeError, RuntimeError):
      torch.library.define(f"torchvision::{name}", schema)


def _bare_package(name: str, root: str) -> None:
  """An empty package `name` (inside lavis, whose folder is `root`) whose submodules
  import from the installed files, without running its __init__.py."""
  if name in sys.modules:
    return
  folder = os.path.join(root, *name.split(".")[1:])
  spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
  spec.submodule_search_locations = [folder]
  module = importlib.util.module_from_spec(spec)
  module.__file__ = os.path.join(folder, "__init__.py")
  sys.modules[name] = module
  parent, _, child = name.rpartition(".")
  if parent:
    setattr(sys.modules[parent], child, module)


def local_tokenizer():
  """A BertTokenizer (lower-casing, like bert-base-uncased) from the installed vocab."""
  from transformers import BertTokenizer
  if _VOCAB["file"] is None:
    raise RuntimeError("lavis_shims.install(vocab_file) was not called")
  return BertTokenizer(_VOCAB["file"], do_lower_case=True)


def _albef_tokenizer(cls):
  return local_tokenizer()


def _blip_tokenizer(cls):
  # What BlipBase.init_tokenizer does after its download.
  tokenizer = local_tokenizer()
  tokenizer.add_special_tokens({"bos_token": "[DEC]"})
  tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
  tokenizer.enc_token_id = tokenizer.additional_special_tokens_ids[0]
  return tokenizer


def install(vocab_file: str) -> None:
  """Applies the four shims; `vocab_file` is the tokenizer's vocab.txt."""
  _VOCAB["file"] = os.path.abspath(vocab_file)
  if not hasattr(np, "Inf"):
    np.Inf = np.inf
  _declare_torchvision_ops()
  import torchvision  # noqa: F401  (now imports; timm needs it)
  if "lavis" not in sys.modules:
    spec = importlib.util.find_spec("lavis")
    if spec is None:
      raise ImportError("lavis is not installed (run tests/reference/lavis_env.sh)")
    root = list(spec.submodule_search_locations)[0]
    _bare_package("lavis", root)
    _bare_package("lavis.models", root)
    # registry.register_model checks its classes against lavis.models.BaseModel.
    from lavis.models.base_model import BaseModel
    sys.modules["lavis.models"].BaseModel = BaseModel
  with warnings.catch_warnings():  # fairscale's torch.cuda.amp deprecations
    warnings.simplefilter("ignore", FutureWarning)
    from lavis.models.albef_models import AlbefBase
  AlbefBase.init_tokenizer = classmethod(_albef_tokenizer)
  from lavis.models.blip_models.blip import BlipBase
  BlipBase.init_tokenizer = classmethod(_blip_tokenizer)
