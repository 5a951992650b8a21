"""The vision-language model both recipes share (ALBEF layout, docs/method.md section 1).

Image ViT + BERT text encoder + fusion encoder, ITC projections with a learnable
clamped temperature, ITM head, MLM head tied to the word embeddings, and the MIM
decoder (image tokens cross-attend to the text) whose output head the recipe picks.
The same class is the momentum (EMA) model: the train step merges it once with the
online parameters and once with the momentum parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from syncmask_jax.models import bert, layers, vit

Array = jax.Array

MIM_HEADS = ("none", "pixels", "momentum_features", "prototypes")


def l2_normalize(x: Array, eps: float = 1e-12) -> Array:
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), eps * eps))


def image_encoder(cfg: ml_collections.ConfigDict, rngs: nnx.Rngs) -> vit.ViT:
  """The ViT of config.model: the VLP's, and the captioning model's (same parameter
  names, so a pretraining checkpoint fills either)."""
  return vit.ViT(
      image_size=cfg.image_size, patch_size=cfg.patch_size, width=cfg.vision_width,
      depth=cfg.vision_depth, heads=cfg.vision_heads, mlp_dim=cfg.vision_mlp_dim,
      eps=cfg.vision_ln_eps, dropout_rate=cfg.vision_dropout, remat=cfg.remat, rngs=rngs,
      dtype=jnp.dtype(cfg.dtype))


class VLP(nnx.Module):

  def __init__(self, cfg: ml_collections.ConfigDict, *, mim_head: str = "none",
               num_prototypes: int = 0, shared_prototype_head: bool = True, rngs: nnx.Rngs):
    if mim_head not in MIM_HEADS:
      raise ValueError(f"mim_head={mim_head!r}: expected one of {MIM_HEADS}")
    if mim_head == "prototypes" and num_prototypes < 2:
      raise ValueError(f"mim_head='prototypes' needs a codebook: num_prototypes="
                       f"{num_prototypes} (config.semmim.num_prototypes)")
    dtype = jnp.dtype(cfg.dtype)
    self.temp_range = (float(cfg.temp_min), float(cfg.temp_max))
    self.vision = image_encoder(cfg, rngs)
    self.embeddings = bert.BertEmbeddings(
        cfg.vocab_size, cfg.text_width, cfg.max_positions, cfg.type_vocab_size, cfg.text_ln_eps,
        cfg.text_dropout, rngs=rngs, dtype=dtype)
    text_kw = dict(width=cfg.text_width, heads=cfg.text_heads, mlp_dim=cfg.text_mlp_dim,
                   eps=cfg.text_ln_eps, dropout_rate=cfg.text_dropout, remat=cfg.remat,
                   rngs=rngs, dtype=dtype)
    self.text = bert.BertEncoder(cfg.text_layers, **text_kw)
    self.fusion = bert.BertEncoder(cfg.fusion_layers, cross_kv_dim=cfg.vision_width, **text_kw)
    self.vision_proj = layers.Dense(cfg.vision_width, cfg.embed_dim, ("embed", "proj"),
                                    rngs=rngs, dtype=dtype)
    self.text_proj = layers.Dense(cfg.text_width, cfg.embed_dim, ("embed", "proj"), rngs=rngs,
                                  dtype=dtype)
    self.temp = nnx.Param(jnp.asarray(cfg.temp_init, jnp.float32), logical_axes=())
    self.itm_head = layers.Dense(cfg.text_width, 2, ("embed", "classes"), rngs=rngs, dtype=dtype)
    self.mlm_head = bert.MLMHead(cfg.text_width, cfg.vocab_size, cfg.text_ln_eps, rngs=rngs,
                                 dtype=dtype)
    self.mim_head_kind = mim_head
    if mim_head != "none":
      # [ours] light cross-modal decoder: BERT layers whose queries are the image tokens
      # and whose cross-attention reads the text encoder output.
      self.mim_decoder = bert.BertEncoder(
          cfg.mim_decoder_layers, width=cfg.vision_width, heads=cfg.vision_heads,
          mlp_dim=cfg.vision_mlp_dim, eps=cfg.vision_ln_eps, dropout_rate=0.0,
          cross_kv_dim=cfg.text_width, remat=cfg.remat, rngs=rngs, dtype=dtype)
      out_dim = {"pixels": cfg.patch_size ** 2 * 3, "momentum_features": cfg.vision_width,
                 "prototypes": cfg.embed_dim}[mim_head]
      self.mim_out = layers.Dense(cfg.vision_width, out_dim, ("embed", "mlp"), rngs=rngs,
                                  dtype=dtype)
    self.num_prototypes = num_prototypes
    self.shared_prototype_head = False
    if num_prototypes:
      # SemMIM: one codebook shared by global and local encodings (docs/method.md section 4).
      self.prototypes = layers.param(rngs, nnx.initializers.truncated_normal(1.0),
                                     (num_prototypes, cfg.embed_dim), ("prototypes", "proj"))
      # iBOT's shared head: the MIM output head also projects the global [CLS]. Without a
      # prototype MIM head (the loss.mim=0 ablation) the global encoding gets its own.
      self.shared_prototype_head = shared_prototype_head and mim_head == "prototypes"
      if not self.shared_prototype_head:
        self.prototype_proj = layers.Dense(cfg.vision_width, cfg.embed_dim, ("embed", "proj"),
                                           rngs=rngs, dtype=dtype)
    layers.set_implementations(self, cfg.attention, cfg.dense_vjp)

  @property
  def num_patches(self) -> int:
    return self.vision.num_patches

  def encode_image(self, images: Array, patch_mask: Array | None = None,
                   rngs: nnx.Rngs | None = None) -> Array:
    return self.vision(images, patch_mask, rngs)

  def encode_text(self, ids: Array, mask: Array, rngs: nnx.Rngs | None = None) -> Array:
    h, _ = self.text(self.embeddings(ids, rngs), mask, rngs=rngs)
    return h

  def fuse(self, text_hidden: Array, text_mask: Array, image_tokens: Array,
           rngs: nnx.Rngs | None = None) -> tuple[Array, Array]:
    """Fusion encoder: (B, T, D) fused states and cross-attention (L, B, H, T, 1+N)."""
    return self.fusion(text_hidden, text_mask, image_tokens, rngs=rngs)

  def itm_gradcam(self, text_hidden: Array, text_mask: Array, image_tokens: Array
                  ) -> tuple[Array, Array]:
    """ALBEF's Grad-CAM of every fusion layer's cross-attention: (cams, probs), both
    (L, B, H, T, 1+N), cams = relu(d ITM positive logit / d probs) * probs.

    The positive logit of each pair depends only on that pair's attention, so one
    gradient of the batch sum gives every pair's map.
    """
    shape = (self.fusion.num_layers, text_hidden.shape[0],
             self.fusion.layer_0.cross_attn.num_heads, text_hidden.shape[1],
             image_tokens.shape[1])

    def positive_logit(offset):
      fused, probs = self.fusion(text_hidden, text_mask, image_tokens, cross_offset=offset)
      return jnp.sum(self.itm_logits(fused)[:, 1]), probs

    grads, probs = jax.grad(positive_logit, has_aux=True)(jnp.zeros(shape, jnp.float32))
    return jax.nn.relu(grads) * probs, probs

  def image_feature(self, image_tokens: Array) -> Array:
    return l2_normalize(self.vision_proj(image_tokens[:, 0]))

  def text_feature(self, text_hidden: Array) -> Array:
    return l2_normalize(self.text_proj(text_hidden[:, 0]))

  def temperature(self) -> Array:
    return jnp.clip(self.temp[...], *self.temp_range)

  def itm_logits(self, fused: Array) -> Array:
    return self.itm_head(fused[:, 0]).astype(jnp.float32)

  def mlm_logits(self, fused: Array) -> Array:
    return self.mlm_head(fused, self.embeddings.word[...])

  def mim_decode(self, image_tokens: Array, text_hidden: Array, text_mask: Array,
                 rngs: nnx.Rngs | None = None) -> Array:
    """Patch tokens (without [CLS]) after cross-attending to the text, through the MIM
    output head: (B, N, out_dim)."""
    if self.mim_head_kind == "none":
      raise ValueError("this model was built without a MIM head (mim_head='none')")
    h, _ = self.mim_decoder(image_tokens, jnp.ones(image_tokens.shape[:2], jnp.int32),
                            text_hidden, text_mask, rngs=rngs)
    return self.mim_out(h[:, 1:]).astype(jnp.float32)

  def prototype_logits(self, encodings: Array) -> Array:
    """Cosine similarity of (..., embed_dim) encodings to the K prototypes: (..., K).

    Both sides are L2-normalised, so logits / temperature is DINO's head with a
    weight-normalised last layer (g = 1) on a normalised bottleneck: bounded logits,
    whose scale the student and teacher temperatures alone set.
    """
    if not self.num_prototypes:
      raise ValueError("this model was built without prototypes (config.recipe != 'semmim')")
    return l2_normalize(encodings) @ l2_normalize(self.prototypes[...]).T

  def global_prototype_logits(self, image_tokens: Array) -> Array:
    """The image [CLS] projected onto the prototypes: (B, K) cosines."""
    if not self.num_prototypes:
      raise ValueError("this model was built without prototypes (config.recipe != 'semmim')")
    head = self.mim_out if self.shared_prototype_head else self.prototype_proj
    return self.prototype_logits(head(image_tokens[:, 0]))

  def patch_prototype_logits(self, image_tokens: Array, text_hidden: Array, text_mask: Array,
                             rngs: nnx.Rngs | None = None) -> Array:
    """Patch encodings after cross-attending to the text, onto the prototypes: (B, N, K)."""
    if self.mim_head_kind != "prototypes":
      raise ValueError(f"patch prototypes need mim_head='prototypes', got "
                       f"{self.mim_head_kind!r}")
    return self.prototype_logits(self.mim_decode(image_tokens, text_hidden, text_mask, rngs))
