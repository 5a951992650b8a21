"""PyTorch reference of the SyncMask pretraining step, eager, as ALBEF/FashionSAP run it.

The same architecture and sizes as `syncmask_jax` (read from the same config): Hugging
Face `ViTModel` (pre-LN, [MASK] token for MIM), `BertEmbeddings` + `BertLayer` text
encoder, fusion layers built from HF's `BertAttention` (self), `BertAttention`
(cross, image keys/values), `BertIntermediate`/`BertOutput` (post-LN), the BERT LM head
tied to the word embeddings, ITM head, projections, learnable clamped temperature, the
2-layer cross-modal MIM decoder. (HF 5's `BertLayer` refuses cross-attention unless it is
a causal decoder and no longer returns attention probabilities, so the fusion layer is
assembled from its parts, as ALBEF's `xbert.py` does.)

One `step(batch)` does what `syncmask_jax.train_step` does: momentum forward on the
unmasked pair (eager cross-attention for its probabilities) -> SyncMask masks (mean
over heads of the last fusion layer's cross-attention, Gumbel top-k patches, then
synchronized tokens) -> BERT corruption -> momentum MLM soft labels -> online ITC
(queue, momentum distillation, product-aware targets), ITM (semi-hard mined negatives),
MLM (distilled), MIM (masked ViT + decoder, normalised-pixel MSE) -> backward ->
clip -> AdamW (weight-decay groups) + warmup-cosine -> temperature clamp -> EMA ->
enqueue. Attention is HF's default `sdpa` where probabilities are not needed
(`attn="eager"` gives ALBEF's math attention everywhere).
"""

from __future__ import annotations

import copy
import math
import re
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, ViTConfig, ViTModel
from transformers.models.bert import modeling_bert as hf_bert


def bert_config(width: int, layers: int, heads: int, mlp_dim: int, eps: float, dropout: float,
                vocab_size: int, max_positions: int, attn: str) -> BertConfig:
  cfg = BertConfig(vocab_size=vocab_size, hidden_size=width, num_hidden_layers=layers,
                   num_attention_heads=heads, intermediate_size=mlp_dim, hidden_act="gelu",
                   hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                   max_position_embeddings=max_positions, type_vocab_size=2,
                   layer_norm_eps=eps)
  cfg._attn_implementation = attn  # pylint: disable=protected-access
  return cfg


def additive_mask(mask: torch.Tensor) -> torch.Tensor:
  """(B, T) 0/1 -> (B, 1, 1, T) additive bias, as BertModel's extended attention mask."""
  return (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min


class FusionLayer(nn.Module):
  """ALBEF's fusion BertLayer: self-attention -> cross-attention -> FFN, post-LN."""

  def __init__(self, cfg: BertConfig, cross_cfg: BertConfig):
    super().__init__()
    self.attention = hf_bert.BertAttention(cfg, is_causal=False)
    self.crossattention = hf_bert.BertAttention(cross_cfg, is_causal=False,
                                                is_cross_attention=True)
    self.intermediate = hf_bert.BertIntermediate(cfg)
    self.output = hf_bert.BertOutput(cfg)

  def forward(self, x: torch.Tensor, mask: torch.Tensor | None, context: torch.Tensor,
              context_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    x, _ = self.attention(x, mask)
    x, probs = self.crossattention(x, encoder_hidden_states=context,
                                   encoder_attention_mask=context_mask)
    return self.output(self.intermediate(x), x), probs


class TorchVLP(nn.Module):
  """The ALBEF-layout model of `syncmask_jax.models.vlp.VLP` with MIM pixel head."""

  def __init__(self, m: Any, attn: str = "sdpa"):
    super().__init__()
    vit_cfg = ViTConfig(hidden_size=m.vision_width, num_hidden_layers=m.vision_depth,
                        num_attention_heads=m.vision_heads, intermediate_size=m.vision_mlp_dim,
                        hidden_act="gelu", hidden_dropout_prob=m.vision_dropout,
                        attention_probs_dropout_prob=m.vision_dropout,
                        layer_norm_eps=m.vision_ln_eps, image_size=m.image_size,
                        patch_size=m.patch_size, num_channels=3, qkv_bias=True)
    vit_cfg._attn_implementation = attn  # pylint: disable=protected-access
    self.vision = ViTModel(vit_cfg, add_pooling_layer=False, use_mask_token=True)
    text = dict(width=m.text_width, heads=m.text_heads, mlp_dim=m.text_mlp_dim,
                eps=m.text_ln_eps, dropout=m.text_dropout, vocab_size=m.vocab_size,
                max_positions=m.max_positions)
    text_cfg = bert_config(layers=m.text_layers, attn=attn, **text)
    # Cross-attention reads image tokens of width vision_width; HF's cross-attention
    # projects from hidden_size, so the widths must agree (they do in every preset).
    assert m.vision_width == m.text_width, "HF cross-attention needs equal widths"
    self.cross_cfg = bert_config(layers=m.fusion_layers, attn=attn, **text)
    self.embeddings = hf_bert.BertEmbeddings(text_cfg)
    self.text = nn.ModuleList(hf_bert.BertLayer(text_cfg) for _ in range(m.text_layers))
    self.fusion = nn.ModuleList(FusionLayer(text_cfg, self.cross_cfg)
                                for _ in range(m.fusion_layers))
    self.vision_proj = nn.Linear(m.vision_width, m.embed_dim)
    self.text_proj = nn.Linear(m.text_width, m.embed_dim)
    self.temp = nn.Parameter(torch.tensor(float(m.temp_init)))
    self.itm_head = nn.Linear(m.text_width, 2)
    self.mlm_head = hf_bert.BertOnlyMLMHead(text_cfg)
    self.mlm_head.predictions.decoder.weight = self.embeddings.word_embeddings.weight
    self.mlm_head.predictions.decoder.bias = self.mlm_head.predictions.bias
    dec = dict(width=m.vision_width, layers=m.mim_decoder_layers, heads=m.vision_heads,
               mlp_dim=m.vision_mlp_dim, eps=m.vision_ln_eps, dropout=0.0,
               vocab_size=1, max_positions=1, attn=attn)
    dec_cfg = bert_config(**dec)
    self.mim_decoder = nn.ModuleList(FusionLayer(dec_cfg, dec_cfg)
                                     for _ in range(m.mim_decoder_layers))
    self.mim_out = nn.Linear(m.vision_width, m.patch_size ** 2 * 3)
    self.temp_range = (float(m.temp_min), float(m.temp_max))
    self.apply(self._init_weights)

  @staticmethod
  def _init_weights(module: nn.Module) -> None:
    # BERT's init (HF `post_init` is not run on modules built from parts): torch's
    # default N(0, 1) embeddings would start MLM at a loss of ~20.
    if isinstance(module, (nn.Linear, nn.Embedding)):
      nn.init.trunc_normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
      nn.init.zeros_(module.bias)

  def encode_image(self, images: torch.Tensor, patch_mask: torch.Tensor | None = None):
    return self.vision(images, bool_masked_pos=patch_mask).last_hidden_state

  def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    h = self.embeddings(input_ids=ids)
    bias = additive_mask(mask)
    for layer in self.text:
      h = layer(h, bias)
    return h

  def fuse(self, text_hidden: torch.Tensor, mask: torch.Tensor, image: torch.Tensor
           ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    h, bias, probs = text_hidden, additive_mask(mask), []
    for layer in self.fusion:
      h, p = layer(h, bias, image, None)
      probs.append(p)
    return h, probs

  def feature(self, proj: nn.Linear, tokens: torch.Tensor) -> torch.Tensor:
    return F.normalize(proj(tokens[:, 0]), dim=-1)

  def mim_decode(self, image_tokens: torch.Tensor, text_hidden: torch.Tensor,
                 text_mask: torch.Tensor) -> torch.Tensor:
    h, bias = image_tokens, additive_mask(text_mask)
    for layer in self.mim_decoder:
      h, _ = layer(h, None, text_hidden, bias)
    return self.mim_out(h[:, 1:])


# -- masks, negatives, losses (the JAX modules' rules, in torch) -----------------------


def gumbel(shape, gen: torch.Generator) -> torch.Tensor:
  u = torch.rand(shape, generator=gen).clamp_(1e-20, 1.0)
  return -torch.log(-torch.log(u))


def ranks_desc(keys: torch.Tensor) -> torch.Tensor:
  order = torch.argsort(keys, dim=-1, descending=True, stable=True)
  return torch.argsort(order, dim=-1)


def token_counts(ratio: float, maskable: torch.Tensor) -> torch.Tensor:
  n = maskable.sum(-1)
  k = torch.floor(ratio * n.float() + 0.5).long()
  return torch.minimum(k.clamp(min=1), n)


def syncmask(probs: torch.Tensor, maskable: torch.Tensor, ratio_img: float, ratio_txt: float,
             tau: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
  """docs/method.md 2.2: patches by the words' attention mass, then synchronized tokens."""
  a = probs.mean(1)[..., 1:] * maskable[..., None].float()
  s_img = a.sum(1)
  k_img = int(math.floor(ratio_img * s_img.shape[1] + 0.5))
  keys = s_img / tau + gumbel(s_img.shape, gen)
  patch_mask = ranks_desc(keys) < k_img
  s_txt = (a * patch_mask[:, None, :].float()).sum(-1)
  keys = torch.where(maskable, s_txt / tau + gumbel(s_txt.shape, gen),
                     torch.tensor(-float("inf")))
  token_mask = (ranks_desc(keys) < token_counts(ratio_txt, maskable)[:, None]) & maskable
  return patch_mask, token_mask


def mlm_corrupt(ids: torch.Tensor, token_mask: torch.Tensor, vocab: int, mask_id: int,
                min_random_id: int, gen: torch.Generator):
  u = torch.rand(ids.shape, generator=gen)
  rand_ids = torch.randint(min_random_id, vocab, ids.shape, generator=gen)
  out = torch.where(token_mask & (u < 0.8), torch.full_like(ids, mask_id), ids)
  out = torch.where(token_mask & (u >= 0.8) & (u < 0.9), rand_ids, out)
  labels = torch.where(token_mask, ids, torch.full_like(ids, -100))
  return out, labels


def mine_semi_hard(sim: torch.Tensor, false_neg: torch.Tensor, gen: torch.Generator
                   ) -> torch.Tensor:
  """Most similar candidate less similar than the positive; else a random allowed one."""
  allowed = ~false_neg
  semi = allowed & (sim < sim.diagonal()[:, None])
  choice = torch.where(semi, sim, torch.tensor(-float("inf"))).argmax(-1)
  weights = allowed.float() + (~allowed.any(-1, keepdim=True)).float()
  fallback = torch.multinomial(weights, 1, generator=gen)[:, 0]
  return torch.where(semi.any(-1), choice, fallback)


def soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
  return -(target * F.log_softmax(logits, dim=-1)).sum(-1)


# -- the step -------------------------------------------------------------------------


class TorchSyncMaskStep:
  """Model, momentum copy, queue and optimizer; `step(batch)` is one training step.

  `device` places everything (model, queue, random generator, the step's new tensors);
  `amp_dtype` (e.g. torch.bfloat16) runs the step under `torch.autocast`, PyTorch's
  mixed precision: float32 parameters, matmuls in `amp_dtype`, softmax/norms/losses in
  float32, as the JAX model's `dtype="bfloat16"`.
  """

  def __init__(self, config: Any, tokens: Any, steps_per_epoch: int = 1000,
               attn: str = "sdpa", seed: int = 0, device: str = "cpu",
               amp_dtype: torch.dtype | None = None):
    torch.manual_seed(seed)
    self.config, self.tokens, self.steps_per_epoch = config, tokens, steps_per_epoch
    self.device, self.amp_dtype = torch.device(device), amp_dtype
    self.model = TorchVLP(config.model, attn).to(self.device).train()
    self.momentum = copy.deepcopy(self.model).eval()
    for p in self.momentum.parameters():
      p.requires_grad_(False)
    # The momentum model's cross-attention must hand back its probabilities.
    eager = copy.deepcopy(self.momentum.cross_cfg)
    eager._attn_implementation = "eager"  # pylint: disable=protected-access
    for layer in self.momentum.fusion:
      layer.crossattention.self.config = eager
    q, d = config.queue_size, config.model.embed_dim
    with self.device:
      self.queue = {"image": torch.zeros(q, d), "text": torch.zeros(q, d),
                    "pid": torch.full((q,), -1, dtype=torch.long),
                    "valid": torch.zeros(q, dtype=torch.bool), "ptr": 0}
    o = config.optim
    no_decay = [re.compile(p) for p in (r".*bias$", r".*LayerNorm.*", r".*embeddings.*",
                                        r".*cls_token.*", r".*mask_token.*", r"temp")]
    decay, rest = [], []
    for name, p in self.model.named_parameters():
      (rest if any(r.fullmatch(name) for r in no_decay) else decay).append(p)
    # foreach AdamW: the fastest eager CPU path (the default is a per-tensor loop).
    self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                                  {"params": rest, "weight_decay": 0.0}],
                                 lr=o.lr, betas=(o.b1, o.b2), foreach=True)
    total, warmup = config.total_steps, o.warmup_steps

    def lr_lambda(step: int) -> float:
      if step < warmup:
        return step / max(warmup, 1)
      t = min(1.0, (step - warmup) / max(total - warmup, 1))
      return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t))

    self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda)
    self.gen = torch.Generator(device=self.device).manual_seed(seed)
    self.params = [p for p in self.model.parameters()]
    self.momentum_params = [p for p in self.momentum.parameters()]
    self.step_count = 0

  def num_params(self) -> int:
    return sum(p.numel() for p in self.model.parameters())

  def to_torch(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Host batch (NHWC, the pipeline's layout) -> NCHW tensors, as a DataLoader yields."""
    out = {"image": torch.from_numpy(np.ascontiguousarray(batch["image"].transpose(0, 3, 1, 2))),
           "text_ids": torch.from_numpy(batch["text_ids"].astype(np.int64)),
           "text_mask": torch.from_numpy(batch["text_mask"].astype(np.int64)),
           "product_id": torch.from_numpy(batch["product_id"].astype(np.int64))}
    return {k: v.to(self.device) for k, v in out.items()}

  def step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    # New tensors (masks, labels, fills, random draws) on the step's device; autocast
    # covers the backward too, which then runs each op in its forward's dtype.
    with self.device, torch.autocast(self.device.type, dtype=self.amp_dtype,
                                     enabled=self.amp_dtype is not None):
      return self._step(batch)

  def _step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    c, tok, gen = self.config, self.tokens, self.gen
    images, ids, tmask, pid = (batch["image"], batch["text_ids"], batch["text_mask"],
                               batch["product_id"])
    b = ids.shape[0]
    maskable = (tmask.bool() & (ids != tok.cls_id) & (ids != tok.sep_id) & (ids != tok.pad_id))
    alpha = c.loss.alpha * min(1.0, self.step_count / self.steps_per_epoch)
    teacher, model = self.momentum, self.model

    with torch.no_grad():
      # 1. Momentum forward on the unmasked pair.
      model.temp.clamp_(*model.temp_range)
      image_m = teacher.encode_image(images)
      text_m = teacher.encode_text(ids, tmask)
      image_feat_m = teacher.feature(teacher.vision_proj, image_m)
      text_feat_m = teacher.feature(teacher.text_proj, text_m)
      _, probs_m = teacher.fuse(text_m, tmask, image_m)
      # 2. Masks from the last fusion layer's cross-attention.
      patch_mask, token_mask = syncmask(probs_m[-1], maskable, c.masking.ratio_img,
                                        c.masking.ratio_txt, c.masking.tau, gen)
      mlm_ids, labels = mlm_corrupt(ids, token_mask, c.model.vocab_size, tok.mask_id,
                                    tok.min_random_id, gen)
      fused_m, _ = teacher.fuse(teacher.encode_text(mlm_ids, tmask), tmask, image_m)
      soft_labels = F.softmax(teacher.mlm_head(fused_m), dim=-1)
      q = self.queue
      bank_image = torch.cat([image_feat_m, q["image"]])
      bank_text = torch.cat([text_feat_m, q["text"]])
      bank_pid = torch.cat([pid, q["pid"]])
      bank_valid = torch.cat([torch.ones(b, dtype=torch.bool), q["valid"]])
      hard = ((pid[:, None] == bank_pid[None]) & bank_valid[None]).float()
      hard = hard / hard.sum(1, keepdim=True).clamp(min=1.0)
      temp_m = model.temp.detach()
      fill = torch.tensor(-1e9)
      t_i2t = alpha * F.softmax(torch.where(bank_valid, image_feat_m @ bank_text.T / temp_m,
                                            fill), 1) + (1 - alpha) * hard
      t_t2i = alpha * F.softmax(torch.where(bank_valid, text_feat_m @ bank_image.T / temp_m,
                                            fill), 1) + (1 - alpha) * hard

    # 3. Online losses.
    image = model.encode_image(images)
    text = model.encode_text(ids, tmask)
    image_feat = model.feature(model.vision_proj, image)
    text_feat = model.feature(model.text_proj, text)
    sim_i2t = torch.where(bank_valid, image_feat @ bank_text.T / model.temp, fill)
    sim_t2i = torch.where(bank_valid, text_feat @ bank_image.T / model.temp, fill)
    loss_itc = (soft_ce(sim_i2t, t_i2t).mean() + soft_ce(sim_t2i, t_t2i).mean()) / 2

    with torch.no_grad():
      sim = sim_i2t[:, :b].detach()
      false_neg = ((pid[:, None] == pid[None]) | (ids[:, None] == ids[None]).all(-1)
                   | torch.eye(b, dtype=torch.bool))
      neg_text = mine_semi_hard(sim, false_neg, gen)
      neg_image = mine_semi_hard(sim.T, false_neg.T, gen)
    fused_pos, _ = model.fuse(text, tmask, image)
    fused_neg, _ = model.fuse(torch.cat([text[neg_text], text]),
                              torch.cat([tmask[neg_text], tmask]),
                              torch.cat([image, image[neg_image]]))
    itm_logits = model.itm_head(torch.cat([fused_pos, fused_neg])[:, 0])
    itm_labels = torch.cat([torch.ones(b, dtype=torch.long), torch.zeros(2 * b, dtype=torch.long)])
    loss_itm = F.cross_entropy(itm_logits, itm_labels)

    fused_mlm, _ = model.fuse(model.encode_text(mlm_ids, tmask), tmask, image)
    logits = model.mlm_head(fused_mlm)
    weights = (labels != -100).float()
    ce = F.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
    per_token = (1 - alpha) * ce + alpha * soft_ce(logits, soft_labels)
    loss_mlm = (per_token * weights).sum() / weights.sum().clamp(min=1.0)

    masked = model.encode_image(images, patch_mask)
    pred = model.mim_decode(masked, text, tmask)
    p = c.model.patch_size
    target = F.unfold(images, p, stride=p).transpose(1, 2)  # (B, N, 3*p*p)
    target = (target - target.mean(-1, keepdim=True)) / torch.sqrt(
        target.var(-1, keepdim=True) + 1e-6)
    per_patch = ((pred - target) ** 2).mean(-1)
    pm = patch_mask.float()
    loss_mim = (per_patch * pm).sum() / pm.sum().clamp(min=1.0)

    loss = (c.loss.itc * loss_itc + c.loss.itm * loss_itm + c.loss.mlm * loss_mlm
            + c.loss.mim * loss_mim)

    # 4. Gradients, optimizer, EMA, queue.
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(self.params, c.optim.grad_clip, foreach=True)
    self.opt.step()
    self.sched.step()
    with torch.no_grad():
      model.temp.clamp_(*model.temp_range)
      torch._foreach_mul_(self.momentum_params, c.momentum)  # pylint: disable=protected-access
      torch._foreach_add_(self.momentum_params, self.params,  # pylint: disable=protected-access
                          alpha=1.0 - c.momentum)
      ptr = q["ptr"]
      q["image"][ptr:ptr + b] = image_feat_m
      q["text"][ptr:ptr + b] = text_feat_m
      q["pid"][ptr:ptr + b] = pid
      q["valid"][ptr:ptr + b] = True
      q["ptr"] = (ptr + b) % c.queue_size
    self.step_count += 1
    return {"loss": loss.detach(), "loss_itc": loss_itc.detach(), "loss_itm": loss_itm.detach(),
            "loss_mlm": loss_mlm.detach(), "loss_mim": loss_mim.detach(),
            "grad_norm": grad_norm}
