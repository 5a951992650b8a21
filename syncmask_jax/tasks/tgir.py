"""Text-guided image retrieval (TGIR, docs/method.md 7), `config.task='tgir'`, on FashionIQ
(`data.name='fashioniq'`) or on SynthFashion's twins (`'synthfashion_tgir'`,
data/synthfashion_tgir.py: the same records, the twin attributes as categories).

Query = text_proj of the fused [CLS] of (reference image, "caption1 and caption2"),
L2-normalised; InfoNCE of each query against the in-batch target images' projected
features, queries sharing a target all positives (normalised per row). Trained on the
triplets of every `config.tgir.categories`; evaluated by `evaluate.tgir_blocks` (R@10 /
R@50 per category and their mean, per gallery protocol).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from syncmask_jax import evaluate, losses
from syncmask_jax import train_state as train_state_lib
from syncmask_jax.data import pipeline, synthfashion_tgir
from syncmask_jax.models.vlp import VLP
from syncmask_jax.tasks import base


class TripletsUnion:
  """FashionIQ triplets of several categories as one source (training on all of them).

  ASIN ids are ranks within a category, so each category's ids are offset past the
  previous categories': in-batch positives (same target) never cross categories.
  """

  def __init__(self, sources: list[Any]):
    self.sources = sources
    self.starts = np.concatenate([[0], np.cumsum([len(s) for s in sources])])
    self.id_offsets = np.concatenate([[0], np.cumsum([len(s.index.asin_ids)
                                                      for s in sources])])

  def __len__(self) -> int:
    return int(self.starts[-1])

  def _ids(self, k: int, ids: np.ndarray) -> np.ndarray:
    # Queries without a target carry -1 - position: keep them unique and negative.
    return np.where(ids >= 0, ids + self.id_offsets[k], ids - self.starts[k])

  def __getitem__(self, i: int) -> dict[str, Any]:
    i = int(i)
    k = int(np.searchsorted(self.starts, i, side="right")) - 1
    record = dict(self.sources[k][i - int(self.starts[k])])
    record["product_id"] = np.int64(self._ids(k, np.int64(record["product_id"])))
    record["index"] = np.int64(i)
    record["target_index"] = np.int64(-1)  # a position in one category's gallery only
    return record

  def metadata(self) -> dict[str, np.ndarray]:
    return {"product_id": np.concatenate([self._ids(k, s.metadata()["product_id"])
                                          for k, s in enumerate(self.sources)])}


class Tgir(base.Task):
  name = "tgir"

  def validate(self) -> None:
    # fashioniq.py imports TFDS: only a tgir run pays for it.
    from syncmask_jax.data import fashioniq  # pylint: disable=g-import-not-at-top
    # The datasets the task reads -> their categories (config.tgir.categories).
    datasets = {"fashioniq": fashioniq.CATEGORIES,
                "synthfashion_tgir": synthfashion_tgir.ATTRIBUTES}
    name, t = self.config.data.name, self.config.tgir
    if name not in datasets:
      raise ValueError(f"config.data.name={name!r}: the tgir task reads one of "
                       f"{tuple(datasets)}")
    unknown = [c for c in t.categories if c not in datasets[name]]
    if unknown or not t.categories:
      raise ValueError(f"config.tgir.categories={tuple(t.categories)!r}: {name} has "
                       f"{datasets[name]}")
    unknown = [g for g in t.gallery_protocols if g not in fashioniq.GALLERY_PROTOCOLS]
    if unknown or not t.gallery_protocols:
      raise ValueError(f"config.tgir.gallery_protocols={tuple(t.gallery_protocols)!r}: "
                       f"expected some of {fashioniq.GALLERY_PROTOCOLS}")

  def build_model(self) -> VLP:
    return VLP(self.config.model, rngs=nnx.Rngs(params=self.config.seed))

  def train_source(self) -> TripletsUnion:
    config = self.config
    return TripletsUnion([
        pipeline.make_source(evaluate.with_data(config, fashioniq_category=c), "train",
                             "queries")
        for c in config.tgir.categories])

  def make_step(self, setup: train_state_lib.Setup) -> base.Step:
    config = self.config

    def step(state, batch):
      rng = base.step_rng(state)
      pid = batch["product_id"]
      positives = (pid[:, None] == pid[None, :]).astype(jnp.float32)
      targets = positives / jnp.sum(positives, axis=1, keepdims=True)

      def loss_fn(params):
        model = nnx.merge(setup.graphdef, params)
        drop = nnx.Rngs(dropout=rng)
        # Reference and target images through the ViT as one batch.
        image_tokens = model.encode_image(
            jnp.concatenate([batch["image"], batch["target_image"]]), rngs=drop)
        reference, target_tokens = jnp.split(image_tokens, 2)
        text_hidden = model.encode_text(batch["text_ids"], batch["text_mask"], rngs=drop)
        fused, _ = model.fuse(text_hidden, batch["text_mask"], reference, rngs=drop)
        query = model.text_feature(fused)
        target = model.image_feature(target_tokens)
        temp = model.temperature()
        logits = query @ target.T / temp
        hit = positives[jnp.arange(pid.shape[0]), jnp.argmax(logits, axis=1)]
        return (jnp.mean(losses.soft_cross_entropy(logits, targets)),
                {"accuracy": jnp.mean(hit), "temp": temp})

      return base.update(config, setup, state, loss_fn)

    return step

  def evaluate(self, graphdef: Any, params: dict, mesh: jax.sharding.Mesh) -> list[dict]:
    return evaluate.tgir_blocks(self.config, graphdef, params, mesh)
