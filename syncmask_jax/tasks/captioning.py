"""Image captioning (SemMIM's fourth downstream task), `config.task='captioning'`:
BLIP's `BLIP_Decoder` on our pretrained model.

Model: the pretrained ViT and a text decoder (`models.decoder.TextDecoder`: causal
BERT layers cross-attending to all image tokens, LM head tied to its word embeddings),
initialised from the pretrained embeddings, MLM head and the layers
`captioning.init_layers` names (`init_new_params`; the choice is argued in
configs/finetune_captioning.py).

Loss (BLIP): the decoder reads [CLS] prompt caption [SEP] (BLIP's [DEC] BOS is our
[CLS]; its prompt "a picture of "); the targets are the caption tokens and [SEP],
never the BOS or the prompt; token cross-entropy with label smoothing
(`captioning.label_smoothing`, BLIP 0.1), averaged over all target tokens of the batch
(BLIP's CrossEntropyLoss(reduction="mean") over the flattened batch: a long caption
weighs more than a short one).

Evaluation: one caption per image of the eval split, by beam search
(`decoding.beam_search`; `beam_size=1`: `decoding.greedy`) from [CLS] + prompt, cut at
the first [SEP], detokenised with the prompt's text removed (`caption_text`, BLIP's
`caption[len(prompt):]`). `caption_eval.evaluate` scores them once over the whole split
(BLEU-1..4, METEOR, ROUGE-L, CIDEr, x100 as the papers' tables; without Java the block
lists them as skipped), and BLIP's results file (`[{image_id, caption}]`) goes to
DIR/eval/captioning_<split>_results.json.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from flax import nnx

from syncmask_jax import caption_eval, decoding, evaluate, paths
from syncmask_jax import tokenizer as tokenizer_lib
from syncmask_jax import train_state as train_state_lib
from syncmask_jax.data import pipeline
from syncmask_jax.models import decoder as decoder_lib
from syncmask_jax.models import vlp
from syncmask_jax.tasks import base

DATASETS = ("synthfashion", "coco")


def decoder_layers(cfg: ml_collections.ConfigDict, init_layers: str) -> int:
  """The decoder's depth: as many layers as `init_layers` copies (decoder.INIT_LAYERS)."""
  if init_layers not in decoder_lib.INIT_LAYERS:
    raise ValueError(f"config.captioning.init_layers={init_layers!r}: expected one of "
                     f"{decoder_lib.INIT_LAYERS}")
  return cfg.fusion_layers + (cfg.text_layers if init_layers == "text+fusion" else 0)


class CaptionModel(nnx.Module):
  """BLIP_Decoder: the image encoder (`vision`, the VLP's name) and `text_decoder`."""

  def __init__(self, cfg: ml_collections.ConfigDict, init_layers: str, *, rngs: nnx.Rngs):
    self.vision = vlp.image_encoder(cfg, rngs)
    self.text_decoder = decoder_lib.TextDecoder(
        cfg, num_layers=decoder_layers(cfg, init_layers), encoder_width=cfg.vision_width,
        rngs=rngs)

  def encode_image(self, images: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
    return self.vision(images, None, rngs)


# -- the prompt -------------------------------------------------------------------------


def prompt_ids(tokenizer: tokenizer_lib.Tokenizer, prompt: str) -> tuple[int, ...]:
  """The prompt's token ids, without [CLS] and [SEP] (BLIP's prompt_length - 1 of them).

  A prompt the vocabulary cannot spell ([UNK]) would feed the decoder a token that
  carries no meaning: an error naming the field.
  """
  if not prompt:
    return ()
  # A token has at least one character: len(prompt) + [CLS] + [SEP] never truncates.
  enc = tokenizer.encode([prompt], len(prompt) + 2)
  ids = tuple(int(i) for i in enc["ids"][0][enc["mask"][0] > 0][1:-1])
  if tokenizer.unk_id in ids:
    raise ValueError(f"config.captioning.prompt={prompt!r}: the vocabulary has no token "
                     "for part of it ([UNK])")
  return ids


def with_prompt(ids: jax.Array, mask: jax.Array, prompt: Sequence[int]
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """[CLS] caption [SEP] [PAD].. (B, T) -> [CLS] prompt caption [SEP] [PAD].. (B, T + P):
  (ids, mask, target_mask), the targets being the caption tokens and [SEP] (BLIP's
  decoder_targets[:, :prompt_length] = -100 and -100 on padding).

  [ours] The caption is truncated to data.max_text_len before the prompt is inserted;
  BLIP truncates prompt + caption to 40 tokens.
  """
  b, p = ids.shape[0], len(prompt)
  prompt_block = jnp.broadcast_to(jnp.asarray(prompt, ids.dtype).reshape(1, p), (b, p))
  ones = jnp.ones((b, p), mask.dtype)
  ids = jnp.concatenate([ids[:, :1], prompt_block, ids[:, 1:]], axis=1)
  target_mask = jnp.concatenate([jnp.zeros_like(mask[:, :1]), 0 * ones, mask[:, 1:]], axis=1)
  mask = jnp.concatenate([mask[:, :1], ones, mask[:, 1:]], axis=1)
  return ids, mask, target_mask


def caption_loss(model: CaptionModel, batch: dict, prompt: Sequence[int],
                 label_smoothing: float, rngs: nnx.Rngs | None = None
                 ) -> tuple[jax.Array, dict]:
  """BLIP's captioning loss (module docstring): the smoothed token cross-entropy summed
  over the batch's target tokens, over their count."""
  image_states = model.encode_image(batch["image"], rngs)
  ids, mask, target_mask = with_prompt(batch["text_ids"], batch["text_mask"], prompt)
  nll = model.text_decoder.teacher_forced_nll(ids, mask, target_mask, image_states,
                                              label_smoothing=label_smoothing, rngs=rngs)
  tokens = jnp.sum(target_mask[:, 1:])
  return jnp.sum(nll) / jnp.maximum(tokens, 1), {"target_tokens": tokens}


# -- decoding -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _caption_fn(graphdef: Any, prefix: tuple[int, ...], beam_size: int, max_len: int,
                min_len: int, length_penalty: str, alpha: float, eos_id: int,
                pad_id: int) -> Callable:
  """(params, batch) -> the generated tokens of the best caption (B, max_len) and
  image_id; cached so that `evaluate.eval_rows` reuses one compilation."""

  def fn(params, batch):
    model = nnx.merge(graphdef, params)
    image_states = model.encode_image(batch["image"])
    start = jnp.broadcast_to(jnp.asarray(prefix, jnp.int32)[None],
                             (image_states.shape[0], len(prefix)))
    kw = dict(max_len=max_len, eos_id=eos_id, min_len=min_len, pad_id=pad_id)
    if beam_size == 1:
      tokens, _ = decoding.greedy(
          lambda ids, step: model.text_decoder.next_token_logits(ids, step, image_states),
          start, **kw)
    else:
      states = decoding.repeat_for_beams(image_states, beam_size)
      seqs, _ = decoding.beam_search(
          lambda ids, step: model.text_decoder.next_token_logits(ids, step, states), start,
          beam_size=beam_size, length_penalty=length_penalty, alpha=alpha, **kw)
      tokens = seqs[:, 0]  # best first
    return {"tokens": tokens, "image_id": batch["image_id"]}

  return fn


def caption_text(tokenizer: tokenizer_lib.Tokenizer, prompt: Sequence[int],
                 generated: Sequence[int]) -> str:
  """BLIP's caption of generated tokens: prompt + tokens up to the first [SEP],
  decoded without special tokens (WordPiece "##" pieces joined), minus the prompt's
  text (`caption[len(prompt):]`), stripped."""
  generated = [int(t) for t in generated]
  if tokenizer.sep_id in generated:
    generated = generated[:generated.index(tokenizer.sep_id)]
  special = {tokenizer.token_to_id(t) for t in tokenizer_lib.SPECIAL_TOKENS}
  keep = lambda ids: [i for i in ids if i not in special]
  prompt_text = tokenizer.decode(keep(prompt)) if prompt else ""
  return tokenizer.decode(keep([*prompt, *generated]))[len(prompt_text):].strip()


def decode_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The search's arguments from config.captioning (lengths in generated tokens)."""
  c = config.captioning
  return dict(beam_size=int(c.beam_size), max_len=int(c.max_length),
              min_len=int(c.min_length), length_penalty=str(c.length_penalty),
              alpha=float(c.length_alpha))


def caption_blocks(config: ml_collections.ConfigDict, graphdef: Any, params: Any,
                   mesh: jax.sharding.Mesh, eval_dir: str) -> list[dict]:
  """Captions every image of the eval split, writes BLIP's results file into
  `eval_dir`, and scores the split once (module docstring)."""
  tokenizer = pipeline.make_tokenizer(config)
  prompt = prompt_ids(tokenizer, config.captioning.prompt)
  settings = decode_settings(config)
  fn = _caption_fn(graphdef, (tokenizer.cls_id, *prompt), eos_id=tokenizer.sep_id,
                   pad_id=tokenizer.pad_id, **settings)
  source = pipeline.make_eval_source(config, part="caption_images")
  results = []
  for rows in evaluate.eval_rows(fn, params, pipeline.make_eval_iterator(
      config, source=source, tokenizer=tokenizer), mesh):
    results += [(int(i), caption_text(tokenizer, prompt, t))
                for i, t in zip(rows["image_id"], rows["tokens"])]
  references = source.references()
  split = pipeline.EVAL_SPLIT[config.data.name]
  path = os.path.join(eval_dir, f"captioning_{split}_results.json")
  if jax.process_index() == 0:
    paths.path(eval_dir).mkdir(parents=True, exist_ok=True)
    caption_eval.write_results(path, results, references.keys())
  metrics = caption_eval.evaluate(results, references)
  return [{"protocol": "captioning", "dataset": config.data.name, "split": split,
           "num_images": metrics["num_images"],
           **{m: 100.0 * v for m, v in metrics["scores"].items()},
           "scale": "x100 (pycocoevalcap's value times 100, as the papers' tables)",
           "skipped": metrics["skipped"], "results_file": path,
           "captioning": config.captioning.to_dict(),
           "skipped_records": {"caption_images": pipeline.skipped_records(source)}}]


# -- the task -----------------------------------------------------------------------------


class Captioning(base.Task):
  name = "captioning"
  new_params = ("text_decoder",)

  def validate(self) -> None:
    c, name = self.config.captioning, self.config.data.name
    if name not in DATASETS:
      raise ValueError(f"config.data.name={name!r}: captioning reads {DATASETS}")
    decoder_layers(self.config.model, c.init_layers)
    if not 0.0 <= c.label_smoothing < 1.0:
      raise ValueError(f"config.captioning.label_smoothing={c.label_smoothing}: expected "
                       "0 <= label_smoothing < 1")
    if c.beam_size < 1:
      raise ValueError(f"config.captioning.beam_size={c.beam_size}: expected >= 1")
    if not 1 <= c.max_length:
      raise ValueError(f"config.captioning.max_length={c.max_length}: expected >= 1 "
                       "generated tokens")
    if not 0 <= c.min_length <= c.max_length:
      raise ValueError(f"config.captioning.min_length={c.min_length}: expected 0 <= "
                       f"min_length <= max_length={c.max_length}")
    if c.length_penalty not in decoding.LENGTH_PENALTIES:
      raise ValueError(f"config.captioning.length_penalty={c.length_penalty!r}: expected "
                       f"one of {decoding.LENGTH_PENALTIES}")
    if c.length_alpha < 0:
      raise ValueError(f"config.captioning.length_alpha={c.length_alpha}: expected >= 0")
    prompt = prompt_ids(pipeline.make_tokenizer(self.config), c.prompt)
    longest = 1 + len(prompt) + max(self.config.data.max_text_len - 1, c.max_length)
    if longest > self.config.model.max_positions:
      raise ValueError(f"config.captioning: [CLS] + prompt ({len(prompt)} tokens) + "
                       f"{longest - 1 - len(prompt)} caption tokens exceed "
                       f"config.model.max_positions={self.config.model.max_positions}")

  def build_model(self) -> CaptionModel:
    return CaptionModel(self.config.model, self.config.captioning.init_layers,
                        rngs=nnx.Rngs(params=self.config.seed))

  def init_new_params(self, params: dict, pretrained: Any) -> dict:
    """The decoder from the pretrained embeddings, MLM head and the layers of
    `captioning.init_layers` (`decoder.init_from_vlp`), read through `pretrained`."""
    if pretrained.holds("text_decoder"):  # a caption checkpoint (BLIP's): as it is
      logging.info("captioning: text decoder from %s", pretrained.source)
      return params
    config = self.config
    layers = ("fusion",) + (("text",) if config.captioning.init_layers == "text+fusion"
                            else ())
    wanted = ("embeddings", "mlm_head") + layers
    _, abstract = nnx.split(nnx.eval_shape(lambda: vlp.VLP(config.model,
                                                           rngs=nnx.Rngs(params=0))))
    target = {k: v for k, v in nnx.to_pure_dict(abstract).items() if k in wanted}
    vlp_params, _ = pretrained.load(target)
    decoder, _ = decoder_lib.init_from_vlp(vlp_params, params["text_decoder"],
                                           init_layers=config.captioning.init_layers)
    return {**params, "text_decoder": decoder}

  def train_source(self) -> Any:
    return pipeline.make_source(self.config, "train", "captions")

  def make_step(self, setup: train_state_lib.Setup) -> base.Step:
    config = self.config
    prompt = prompt_ids(pipeline.make_tokenizer(config), config.captioning.prompt)
    smoothing = float(config.captioning.label_smoothing)

    def step(state, batch):
      rng = base.step_rng(state)

      def loss_fn(params):
        model = nnx.merge(setup.graphdef, params)
        return caption_loss(model, batch, prompt, smoothing, nnx.Rngs(dropout=rng))

      return base.update(config, setup, state, loss_fn)

    return step

  def evaluate(self, graphdef: Any, params: dict, mesh: jax.sharding.Mesh) -> list[dict]:
    if not self.eval_dir:
      raise ValueError("the captioning task writes its results file into eval_dir "
                       "(finetune.evaluate_params sets it): none was set")
    return caption_blocks(self.config, graphdef, params, mesh, self.eval_dir)
