"""Image-text retrieval fine-tuning (docs/method.md 7), `config.task='retrieval'`.

ITC (`losses.itc_loss`, product-aware targets) and ITM (`losses.itm_loss` on negatives
from `negatives.mine_negatives`) over the global batch. [ours] Without a momentum model
or queue: the batch is its own ITC bank and there is nothing to distil from (alpha = 0).
ALBEF's fine-tuning keeps both; SyncMask's point is that grouped batches make the
in-batch negatives hard. Evaluated by `evaluate.retrieval_blocks`.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from syncmask_jax import evaluate, losses
from syncmask_jax import train_state as train_state_lib
from syncmask_jax import train_step as train_step_lib
from syncmask_jax.models.vlp import VLP
from syncmask_jax.tasks import base


class Retrieval(base.Task):
  name = "retrieval"

  def validate(self) -> None:
    if self.config.data.name == "fashioniq":
      raise ValueError("config.data.name='fashioniq': use the tgir task")

  def build_model(self) -> VLP:
    return VLP(self.config.model, rngs=nnx.Rngs(params=self.config.seed))

  def make_step(self, setup: train_state_lib.Setup) -> base.Step:
    config = self.config

    def step(state, batch):
      k_neg, k_drop = jax.random.split(base.step_rng(state))
      ids, tmask, pid = batch["text_ids"], batch["text_mask"], batch["product_id"]

      def loss_fn(params):
        model = nnx.merge(setup.graphdef, params)
        drop = nnx.Rngs(dropout=k_drop)
        image_tokens = model.encode_image(batch["image"], rngs=drop)
        text_hidden = model.encode_text(ids, tmask, rngs=drop)
        image_feat = model.image_feature(image_tokens)
        text_feat = model.text_feature(text_hidden)
        # The batch is its own bank (gradients flow through the query side, as through
        # ALBEF's online-vs-momentum sims); every same-product entry is a positive.
        loss_itc, itc_aux = losses.itc_loss(image_feat, text_feat, image_feat, text_feat,
                                            pid, pid, model.temperature(), alpha=0.0)
        loss_itm, mine_stats = train_step_lib.itm_with_mined_negatives(
            model, k_neg, itc_aux["sim_i2t"], pid, ids, text_hidden, tmask, image_tokens,
            config.negatives, drop)
        aux = {"loss_itc": loss_itc, "loss_itm": loss_itm, "temp": model.temperature(),
               **{f"negatives/{k}": v for k, v in mine_stats.items()}}
        return config.loss.itc * loss_itc + config.loss.itm * loss_itm, aux

      return base.update(config, setup, state, loss_fn)

    return step

  def evaluate(self, graphdef: Any, params: dict, mesh: jax.sharding.Mesh) -> list[dict]:
    return evaluate.retrieval_blocks(self.config, graphdef, params, mesh)
