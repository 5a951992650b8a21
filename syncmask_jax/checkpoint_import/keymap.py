"""The key-mapping tables every layout module is written in, used in both directions.

A layout (Hugging Face BERT, timm/HF ViT, ALBEF, BLIP) is a list of `Rule`s, each
pairing some of our parameter paths with some checkpoint keys and carrying the two
conversions between them. `Importer.apply` reads a checkpoint through a table and
`export` writes our parameters through the same table, so import and export cannot
drift apart: a rule that is wrong one way is wrong the other way too, and a round trip
through both is the identity (tests/test_released_weights.py).

Our parameters are the functional pure dict of `nnx.split(model)[1].to_pure_dict()`,
flattened with "/" (`text/layer_0/self_attn/query/kernel`); Dense kernels are (in,
out), so torch Linear weights are transposed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Params = dict[str, Any]
Arrays = list[np.ndarray]


@dataclasses.dataclass
class ImportReport:
  """What one import did: our parameter paths written or left alone, checkpoint keys
  not used (with the reason where one is known), and warnings."""
  source: str
  loaded: list[str] = dataclasses.field(default_factory=list)
  initialised: list[str] = dataclasses.field(default_factory=list)
  unused: list[str] = dataclasses.field(default_factory=list)
  warnings: list[str] = dataclasses.field(default_factory=list)
  # checkpoint key -> why it is not used (a buffer, a tied copy, a head we do not have).
  reasons: dict[str, str] = dataclasses.field(default_factory=dict)

  def summary(self) -> str:
    lines = [f"{self.source}: loaded {len(self.loaded)} params, "
             f"{len(self.initialised)} left initialised, {len(self.unused)} checkpoint keys "
             "unused"]
    if self.initialised:
      lines.append("  left initialised: " + ", ".join(self.initialised))
    if self.unused:
      lines.append("  unused checkpoint keys: " + ", ".join(
          f"{k} ({self.reasons[k]})" if k in self.reasons else k for k in self.unused))
    lines += [f"  warning: {w}" for w in self.warnings]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- rules


@dataclasses.dataclass(frozen=True)
class Rule:
  """Our parameters `ours` <-> checkpoint tensors `keys`.

  `to_ours(checkpoint arrays) -> our arrays` and `to_ckpt(our arrays) -> checkpoint
  arrays`, in the order of the tuples. A `tied` rule names checkpoint copies of
  parameters another rule already maps (BERT's LM decoder = the word embeddings): the
  import checks that they agree, the export writes them.
  """
  ours: tuple[str, ...]
  keys: tuple[str, ...]
  to_ours: Callable[[Arrays], Arrays]
  to_ckpt: Callable[[Arrays], Arrays]
  tied: bool = False

  def under(self, ours_prefix: str, key_prefix: str) -> "Rule":
    return dataclasses.replace(self, ours=tuple(ours_prefix + o for o in self.ours),
                               keys=tuple(key_prefix + k for k in self.keys))


def _same(xs: Arrays) -> Arrays:
  return list(xs)


def same(ours: str, key: str, *, ours_shape: Callable | None = None,
         ckpt_shape: Callable | None = None) -> Rule:
  """One tensor, as it is (optionally reshaped: `*_shape(array) -> shape`)."""
  to_ours = (_same if ours_shape is None else
             lambda xs: [xs[0].reshape(ours_shape(xs[0]))])
  to_ckpt = (_same if ckpt_shape is None else
             lambda xs: [xs[0].reshape(ckpt_shape(xs[0]))])
  return Rule((ours,), (key,), to_ours, to_ckpt)


def _transpose(xs: Arrays) -> Arrays:
  return [xs[0].T]


def linear(ours: str, key: str) -> list[Rule]:
  """torch Linear (out, in) weight + bias <-> our Dense (in, out) kernel + bias."""
  return [Rule((f"{ours}/kernel",), (f"{key}.weight",), _transpose, _transpose),
          same(f"{ours}/bias", f"{key}.bias")]


def norm(ours: str, key: str) -> list[Rule]:
  """torch LayerNorm weight/bias <-> our LayerNorm scale/bias."""
  return [same(f"{ours}/scale", f"{key}.weight"), same(f"{ours}/bias", f"{key}.bias")]


def patch_conv(ours: str, key: str, channels: int = 3) -> list[Rule]:
  """The patch projection: torch Conv2d (D, C, p, p) <-> our Dense on patchify's
  (p, p, C) vectors, kernel (p*p*C, D)."""

  def to_ckpt(xs: Arrays) -> Arrays:
    kernel = xs[0]
    p = int(round((kernel.shape[0] / channels) ** 0.5))
    return [kernel.reshape(p, p, channels, -1).transpose(3, 2, 0, 1)]

  return [Rule((f"{ours}/kernel",), (f"{key}.weight",),
               lambda xs: [xs[0].transpose(2, 3, 1, 0).reshape(-1, xs[0].shape[0])], to_ckpt),
          same(f"{ours}/bias", f"{key}.bias")]


def fused_qkv(ours: str, key: str) -> list[Rule]:
  """timm's one qkv Linear, output rows [q; k; v] <-> our query/key/value Denses."""
  names = ("query", "key", "value")
  split = lambda xs: [w.T for w in np.split(xs[0], 3)]
  return [
      Rule(tuple(f"{ours}/{n}/kernel" for n in names), (f"{key}.weight",), split,
           lambda xs: [np.concatenate([w.T for w in xs])]),
      Rule(tuple(f"{ours}/{n}/bias" for n in names), (f"{key}.bias",),
           lambda xs: list(np.split(xs[0], 3)), lambda xs: [np.concatenate(xs)])]


def tied(ours: str, key: str, transform: Callable[[np.ndarray], np.ndarray] = lambda x: x
         ) -> Rule:
  """A checkpoint copy of our `ours` (import: checked equal; export: written)."""
  return Rule((ours,), (key,), _same, lambda xs: [transform(xs[0])], tied=True)


def export(rules: Iterable[Rule], flat: dict[str, Any]) -> dict[str, np.ndarray]:
  """Our flat parameters -> checkpoint tensors, through `rules` (tied copies included)."""
  out = {}
  for rule in rules:
    missing = [o for o in rule.ours if o not in flat]
    if missing:
      raise ValueError(f"cannot export {rule.keys}: the parameters lack {missing}")
    values = rule.to_ckpt([np.asarray(jax.device_get(flat[o]), np.float32)
                           for o in rule.ours])
    out.update(zip(rule.keys, values))
  return out


# ----------------------------------------------------------------------------- trees


def flatten(tree: Params, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    p = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(flatten(v, p + "/"))
    else:
      out[p] = v
  return out


def unflatten(flat: dict[str, Any]) -> Params:
  tree: Params = {}
  for p, v in flat.items():
    node = tree
    *parents, leaf = p.split("/")
    for k in parents:
      node = node.setdefault(k, {})
    node[leaf] = v
  return tree


def layer_count(flat_keys: Iterable[str], root: str) -> int:
  return sum(1 for k in flat_keys if k.startswith(f"{root}/layer_") and k.endswith(
      "/self_norm/scale"))


# ----------------------------------------------------------------------------- checks


# Our parameters (and the config field) whose size is the vocabulary's.
_VOCAB_SIZED = ("embeddings/word", "mlm_head/bias", "vocab_size")


def mismatch_cause(names: Iterable[str]) -> str:
  """The likely reason parameters (our paths, or config fields) of a checkpoint do not
  fit the model: another vocabulary, else another model size."""
  if any(n.endswith(_VOCAB_SIZED) for n in names):
    return ("likely another vocabulary: config.model.vocab_size follows "
            "config.data.vocab_path, which must be the checkpoint's")
  return ("likely another model size: config.model (the size variant: widths, depths, "
          "heads, patch and image size) must be the checkpoint's")


def check_fields(found: dict[str, Any], expected: dict[str, int | None], path: str,
                 ours: Callable[[str], str],
                 source: Callable[[str], str] = lambda field: "config.json") -> None:
  """Each `expected` field (None: unchecked) against the checkpoint's; `ours(field)`
  names our config field, `source(field)` says where the checkpoint's value comes from."""
  for field, want in expected.items():
    if want is None:
      continue
    got = found.get(field)
    if got != want:
      raise ValueError(f"checkpoint {path!r}: {source(field)} {field}={got} but the model "
                       f"has {ours(field)}={want} ({mismatch_cause([field])})")


def check_eps(found: dict[str, Any], ln_eps: float | None, field: str,
              report: ImportReport) -> None:
  got = found.get("layer_norm_eps")
  if ln_eps is not None and got is not None and not np.isclose(got, ln_eps, rtol=1e-6, atol=0):
    report.warnings.append(
        f"checkpoint layer_norm_eps={got} but the model uses {field}={ln_eps}; set "
        f"config.model.{field}={got} to reproduce the checkpoint exactly")


def find_prefix(tensors: dict[str, np.ndarray], anchor: str, path: str) -> str:
  """The key prefix before `anchor`; a momentum copy (`x_m.` beside `x.`) is skipped."""
  prefixes = sorted({k[:-len(anchor)] for k in tensors if k.endswith(anchor)}, key=len)
  if not prefixes:
    raise ValueError(f"checkpoint {path!r} has no key ending in {anchor!r}: not the expected "
                     "layout")
  online = [p for p in prefixes if p.replace("_m.", ".", 1) == p
            or p.replace("_m.", ".", 1) not in prefixes]
  if len(online) > 1:
    raise ValueError(f"checkpoint {path!r} holds several models ({online}); expected one "
                     "(a whole ALBEF or BLIP checkpoint is read by config.init_checkpoint, "
                     "checkpoint_import.released)")
  return online[0]


# ----------------------------------------------------------------------------- import


class Importer:
  """Copies checkpoint tensors into a flat copy of our params, tracking both sides."""

  def __init__(self, source: str, params: Params, tensors: dict[str, np.ndarray],
               scopes: tuple[str, ...], *, partial: bool = False):
    """`partial`: `params` is part of a model (a task reads only some of a checkpoint):
    rules for parameters it lacks are skipped, their keys reported unused."""
    self.partial = partial
    self.flat = flatten(params)
    self.tensors = tensors
    self.used: set[str] = set()
    self.written: set[str] = set()
    self.scopes = scopes
    self.report = ImportReport(source)

  def get(self, key: str) -> np.ndarray:
    if key not in self.tensors:
      raise ValueError(f"checkpoint {self.report.source!r} lacks {key!r}")
    self.used.add(key)
    return np.asarray(self.tensors[key], np.float32)

  def put(self, ours: str, value: np.ndarray, key: str = "") -> None:
    if ours not in self.flat:
      raise ValueError(f"model has no parameter {ours!r} (for checkpoint key {key!r})")
    old = self.flat[ours]
    if tuple(value.shape) != tuple(old.shape):
      raise ValueError(f"checkpoint {self.report.source!r}: {key!r} has shape "
                       f"{tuple(value.shape)}, model parameter {ours!r} is "
                       f"{tuple(old.shape)} ({mismatch_cause([ours])})")
    new = jnp.asarray(value, old.dtype)
    # Keep the placement of the parameter we replace (a sharded init stays sharded).
    self.flat[ours] = jax.device_put(new, old.sharding) if isinstance(old, jax.Array) else new
    self.written.add(ours)

  def skip(self, key: str, reason: str) -> None:
    """A checkpoint key read on purpose into nothing: reported unused, with why."""
    if key in self.tensors:
      self.report.reasons[key] = reason

  def apply(self, rules: Sequence[Rule]) -> None:
    for rule in rules:
      if self.partial and not any(o in self.flat for o in rule.ours):
        self.report.reasons.update({k: "not part of this model" for k in rule.keys})
        continue
      if rule.tied and not all(k in self.tensors for k in rule.keys):
        continue  # a tied copy may be left out (Hugging Face's save_pretrained does)
      values = [self.get(k) for k in rule.keys]
      if rule.tied:
        mine = [np.asarray(jax.device_get(self.flat[o]), np.float32) for o in rule.ours]
        for key, value, copy in zip(rule.keys, values, rule.to_ckpt(mine)):
          if not np.array_equal(value, copy):
            self.report.warnings.append(
                f"{key} differs from the tensor it is tied to ({rule.ours}); ours is tied, "
                "so it is not used")
        continue
      for ours, value in zip(rule.ours, rule.to_ours(values)):
        self.put(ours, value, rule.keys[0])

  def finish(self) -> tuple[Params, ImportReport]:
    r = self.report
    r.loaded = sorted(self.written)
    r.initialised = sorted(p for p in self.flat if p.split("/")[0] in self.scopes
                           and p not in self.written)
    r.unused = sorted(k for k in self.tensors if k not in self.used)
    return unflatten(self.flat), r
