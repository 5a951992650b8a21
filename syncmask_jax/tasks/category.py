"""Category / subcategory recognition (CR / SCR, docs/method.md 7), `config.task='category'`.

A new Dense head on the fused [CLS] of (image, text), trained with cross-entropy on
`config.finetune.label`. Rows whose label is unknown (-1: a FashionGen validation label
unseen in train) carry no loss, and evaluation excludes and counts them: accuracy and
macro-F1 over the classes present in the labels or the predictions (scikit-learn's
`average="macro"`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from syncmask_jax import evaluate
from syncmask_jax import train_state as train_state_lib
from syncmask_jax.data import pipeline
from syncmask_jax.models import layers
from syncmask_jax.models.vlp import VLP
from syncmask_jax.tasks import base

LABELS = ("category", "subcategory")  # config.finetune.label


class CategoryModel(VLP):
  """The shared VLP with a classifier (one Dense layer) on the fused [CLS]."""

  def __init__(self, cfg: ml_collections.ConfigDict, num_classes: int, *, rngs: nnx.Rngs):
    super().__init__(cfg, rngs=rngs)
    self.classifier = layers.Dense(cfg.text_width, num_classes, ("embed", "classes"),
                                   rngs=rngs, dtype=jnp.dtype(cfg.dtype))

  def class_logits(self, fused: jax.Array) -> jax.Array:
    return self.classifier(fused[:, 0]).astype(jnp.float32)


def num_classes(config: ml_collections.ConfigDict) -> int:
  """config.finetune.num_classes, or the size of the label list (train's labels)."""
  field = config.finetune.label
  source = pipeline.make_eval_source(config)
  labels = getattr(source, "labels", None)
  known = (len(labels[field]) if labels else
           {"category": getattr(source, "num_categories", 0),
            "subcategory": getattr(source, "num_subcategories", 0)}[field])
  if not known:
    known = int(pipeline.source_metadata(source)[field].max()) + 1
  n = int(config.finetune.num_classes) or known
  if n < known:
    raise ValueError(f"config.finetune.num_classes={n}: the {field} labels have {known} "
                     "classes")
  return n


def _fused(model: VLP, batch: dict, rngs: nnx.Rngs | None = None) -> jax.Array:
  image_tokens = model.encode_image(batch["image"], rngs=rngs)
  text_hidden = model.encode_text(batch["text_ids"], batch["text_mask"], rngs=rngs)
  fused, _ = model.fuse(text_hidden, batch["text_mask"], image_tokens, rngs=rngs)
  return fused


@functools.lru_cache(maxsize=16)
def _classify_fn(graphdef: Any, field: str) -> Callable:
  """(params, batch) -> predicted class of the fine-tuned classifier and the label."""

  def fn(params, batch):
    model = nnx.merge(graphdef, params)
    return {"pred": jnp.argmax(model.class_logits(_fused(model, batch)), axis=-1),
            "label": batch[field]}

  return fn


def classification_metrics(pred: np.ndarray, label: np.ndarray) -> dict[str, Any]:
  """Accuracy and macro-F1 (in %) over rows with a known label (>= 0).

  Macro-F1 averages F1 = 2TP / (2TP + FP + FN) over the classes present in the labels
  or the predictions of those rows (scikit-learn's `average="macro"`).
  """
  pred, label = np.asarray(pred), np.asarray(label)
  known = label >= 0
  p, y = pred[known], label[known]
  classes = np.union1d(p, y)
  tp = np.array([np.sum((p == c) & (y == c)) for c in classes], np.float64)
  fp = np.array([np.sum((p == c) & (y != c)) for c in classes], np.float64)
  fn = np.array([np.sum((p != c) & (y == c)) for c in classes], np.float64)
  f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1.0)
  return {"accuracy": float(np.mean(p == y) * 100.0) if len(y) else 0.0,
          "macro_f1": float(np.mean(f1) * 100.0) if len(classes) else 0.0,
          "num_rows": int(len(label)), "num_evaluated": int(known.sum()),
          "num_excluded_unseen": int((~known).sum()),
          "num_classes_in_macro_f1": int(len(classes))}


def category_blocks(config: ml_collections.ConfigDict, graphdef: Any, params: Any,
                    mesh: jax.sharding.Mesh, num_classes: int) -> list[dict]:
  """CR or SCR (config.finetune.label) on the eval split with the fine-tuned classifier."""
  field = config.finetune.label
  fn = _classify_fn(graphdef, field)
  source = pipeline.make_eval_source(config)
  rows = evaluate.Rows(len(source))
  for r in evaluate.eval_rows(fn, params, pipeline.make_eval_iterator(config, source=source),
                              mesh):
    rows.add(r)
  rows = rows.result()
  return [{"protocol": "classification", "label": field, "dataset": config.data.name,
           "split": pipeline.EVAL_SPLIT[config.data.name], "num_classes": int(num_classes),
           "unseen_labels": "rows whose label is unseen in train (id -1) are excluded "
                            "from accuracy and macro-F1 and counted in num_excluded_unseen",
           "skipped_records": {"pairs": pipeline.skipped_records(source)},
           **classification_metrics(rows["pred"], rows["label"])}]


class Category(base.Task):
  name = "category"
  new_params = ("classifier",)

  @functools.cached_property
  def num_classes(self) -> int:
    return num_classes(self.config)

  def validate(self) -> None:
    label, name = self.config.finetune.label, self.config.data.name
    if label not in LABELS:
      raise ValueError(f"config.finetune.label={label!r}: expected one of {LABELS}")
    if name not in ("fashiongen", "synthfashion"):
      raise ValueError(f"config.data.name={name!r}: category recognition needs labelled "
                       "products (fashiongen | synthfashion)")

  def build_model(self) -> CategoryModel:
    return CategoryModel(self.config.model, self.num_classes,
                         rngs=nnx.Rngs(params=self.config.seed))

  def make_step(self, setup: train_state_lib.Setup) -> base.Step:
    config = self.config
    field = config.finetune.label

    def step(state, batch):
      rng = base.step_rng(state)
      labels = batch[field]
      known = (labels >= 0).astype(jnp.float32)  # -1: unknown label, no loss

      def loss_fn(params):
        model = nnx.merge(setup.graphdef, params)
        logits = model.class_logits(_fused(model, batch, nnx.Rngs(dropout=rng)))
        logp = jax.nn.log_softmax(logits, axis=-1)
        ce = -jnp.take_along_axis(logp, jnp.maximum(labels, 0)[:, None], axis=-1)[:, 0]
        count = jnp.maximum(jnp.sum(known), 1.0)
        hit = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
        return jnp.sum(ce * known) / count, {"accuracy": jnp.sum(hit * known) / count}

      return base.update(config, setup, state, loss_fn)

    return step

  def evaluate(self, graphdef: Any, params: dict, mesh: jax.sharding.Mesh) -> list[dict]:
    return category_blocks(self.config, graphdef, params, mesh, self.num_classes)
