"""The BERT layout (Hugging Face `BertModel`/`BertForMaskedLM`, and the BERT inside
ALBEF's and BLIP's checkpoints), and `load_bert` for a Hugging Face BERT-family
checkpoint.

docs/method.md section 1: the ALBEF split builds the text encoder from BERT layers
0..L_t-1 and the fusion encoder from layers L_t..L_t+L_f-1 of one checkpoint; the
fusion encoder's cross-attention (and its LayerNorm) has no counterpart in BERT and
stays newly initialised, as in ALBEF.
"""

from __future__ import annotations

import numpy as np

from syncmask_jax.checkpoint_import import files, keymap
from syncmask_jax.checkpoint_import.keymap import Rule, linear, norm, same, tied

Params = keymap.Params

ANCHOR = "embeddings.word_embeddings.weight"
# Families whose position ids start after the padding index: a silent misalignment here.
_OFFSET_POSITION_FAMILIES = ("roberta", "xlm-roberta", "camembert", "longformer")
POSITION_IDS = "embeddings.position_ids"  # a buffer (0..max_positions-1), not a weight


def _attention(ours: str, key: str) -> list[Rule]:
  """BertAttention (self or cross): q/k/v, the output projection and its LayerNorm."""
  rules = []
  for name in ("query", "key", "value"):
    rules += linear(f"{ours}_attn/{name}", f"{key}.self.{name}")
  return (rules + linear(f"{ours}_attn/out", f"{key}.output.dense")
          + norm(f"{ours}_norm", f"{key}.output.LayerNorm"))


def layer_rules(cross: bool) -> list[Rule]:
  """One BertLayer, relative to `layer_i/` and `encoder.layer.i.`: self-attention,
  the cross-attention to the image (ALBEF's and BLIP's `crossattention`) when `cross`,
  and the FFN."""
  rules = _attention("self", "attention")
  if cross:
    rules += _attention("cross", "crossattention")
  return (rules + linear("mlp/fc1", "intermediate.dense") + linear("mlp/fc2", "output.dense")
          + norm("mlp_norm", "output.LayerNorm"))


def encoder_rules(layers: list[tuple[str, bool]]) -> list[Rule]:
  """`layers[i]` = (our layer path, has cross-attention) <- `encoder.layer.i.`."""
  rules = []
  for i, (ours, cross) in enumerate(layers):
    rules += [r.under(f"{ours}/", f"encoder.layer.{i}.") for r in layer_rules(cross)]
  return rules


def embedding_rules(token_type: bool, ours_token_type: bool = True,
                    ours: str = "embeddings") -> list[Rule]:
  """BertEmbeddings. `token_type`: the checkpoint has BERT's token-type table (HF BERT,
  the original ALBEF); `ours_token_type`: our model has one (config.model.type_vocab_size
  > 0). Only row 0 is ever used, and it is added to every token with its position before
  the LayerNorm, so where one side has the table and the other not, row 0 moves into
  (import) or out of (export) the position table and both compute the same function:
  LAVIS's ALBEF and BLIP have no table (their `med` BERT dropped it)."""
  pos, tt = f"{ours}/position", f"{ours}/token_type"
  pos_key, tt_key = ("embeddings.position_embeddings.weight",
                     "embeddings.token_type_embeddings.weight")
  rules = [same(f"{ours}/word", "embeddings.word_embeddings.weight")]
  if token_type == ours_token_type:
    rules.append(same(pos, pos_key))
    if token_type:
      rules.append(same(tt, tt_key))
  elif ours_token_type:  # ours has a table the checkpoint lacks: it reads as zeros
    rules.append(Rule(
        (pos, tt), (pos_key,),
        to_ours=lambda xs: [xs[0], np.zeros((2, xs[0].shape[1]), np.float32)],
        to_ckpt=lambda xs: [xs[0] + xs[1][0]]))
  else:  # the checkpoint's row 0 folds into our positions
    rules.append(Rule(
        (pos,), (pos_key, tt_key), to_ours=lambda xs: [xs[0] + xs[1][0]],
        to_ckpt=lambda xs: [xs[0], np.zeros((2, xs[0].shape[1]), np.float32)]))
  return rules + norm(f"{ours}/norm", "embeddings.LayerNorm")


def mlm_head_rules(ours: str = "mlm_head", word: str = "embeddings/word") -> list[Rule]:
  """BertOnlyMLMHead (`cls.predictions.`): its decoder is tied to the word embeddings
  and its bias, as ours is."""
  c = "cls.predictions."
  return (linear(f"{ours}/dense", c + "transform.dense")
          + norm(f"{ours}/norm", c + "transform.LayerNorm")
          + [same(f"{ours}/bias", c + "bias"), tied(word, c + "decoder.weight"),
             tied(f"{ours}/bias", c + "decoder.bias")])


def lm_decoder_rules(ours: str, key: str, layers: int, token_type: bool,
                     ours_token_type: bool) -> list[Rule]:
  """A BertLMHeadModel whose every layer cross-attends (ALBEF's VQA answer decoder,
  BLIP's caption decoder; `{key}bert.`, `{key}cls.`) <-> our TextDecoder under `ours`."""
  body = embedding_rules(token_type, ours_token_type) + encoder_rules(
      [(f"decoder/layer_{i}", True) for i in range(layers)])
  return ([r.under(ours, key + "bert.") for r in body]
          + [r.under(ours, key) for r in mlm_head_rules("lm_head", "embeddings/word")])


def position_ids(max_positions: int) -> np.ndarray:
  """The `embeddings.position_ids` buffer a torch BERT's state dict carries."""
  return np.arange(max_positions, dtype=np.int64)[None]


# ----------------------------------------------------------------------------- load_bert


def load_bert(path: str, params: Params, text_layers: int, fusion_layers: int, *,
              num_heads: int | None = None, ln_eps: float | None = None
              ) -> tuple[Params, keymap.ImportReport]:
  """A Hugging Face BERT-family checkpoint directory -> embeddings, text encoder, fusion
  encoder, MLM head.

  Layers 0..text_layers-1 go to `text`, the next `fusion_layers` to `fusion`
  (self-attention, FFN and their LayerNorms; cross-attention stays initialised, as
  ALBEF). Widths, intermediate size and vocabulary are checked against the parameter
  shapes, and heads against `num_heads` when given; `ln_eps` (the model's
  `text_ln_eps`) is compared with the checkpoint's and a difference is reported as a
  warning. Returns new params (the input is not modified) and the report.
  """
  hf, tensors = files.read_checkpoint(path)
  model_type = hf.get("model_type", "bert")
  if model_type in _OFFSET_POSITION_FAMILIES:
    raise ValueError(f"checkpoint {path!r} is {model_type}: its position ids are offset by the "
                     "padding index, which this BERT importer does not reproduce")
  if hf.get("position_embedding_type", "absolute") != "absolute":
    raise ValueError(f"checkpoint {path!r}: position_embedding_type="
                     f"{hf['position_embedding_type']}; only absolute positions are supported")
  word = params["embeddings"]["word"]
  keymap.check_fields(
      hf, {"hidden_size": word.shape[1], "vocab_size": word.shape[0],
           "intermediate_size": params["text"]["layer_0"]["mlp"]["fc1"]["kernel"].shape[1]
           if text_layers else None, "num_attention_heads": num_heads}, path,
      {"hidden_size": "text_width", "vocab_size": "vocab_size",
       "intermediate_size": "text_mlp_dim", "num_attention_heads": "text_heads"}.get)
  have = hf.get("num_hidden_layers")
  if have is None or have < text_layers + fusion_layers:
    raise ValueError(f"checkpoint {path!r} has num_hidden_layers={have}, fewer than "
                     f"text_layers + fusion_layers = {text_layers} + {fusion_layers}")
  flat_keys = keymap.flatten(params).keys()
  for root, want in (("text", text_layers), ("fusion", fusion_layers)):
    if keymap.layer_count(flat_keys, root) != want:
      raise ValueError(f"params have {keymap.layer_count(flat_keys, root)} {root} layers, "
                       f"but {root}_layers={want}")

  prefix = keymap.find_prefix(tensors, ANCHOR, path)
  # BertForMaskedLM/BertForPreTraining keep the head beside the `bert.` body.
  head = prefix[:-len("bert.")] if prefix.endswith("bert.") else prefix
  imp = keymap.Importer(path, params, tensors,
                        scopes=("embeddings", "text", "fusion", "mlm_head"))
  keymap.check_eps(hf, ln_eps, "text_ln_eps", imp.report)
  if hf.get("hidden_act", "gelu") != "gelu":
    imp.report.warnings.append(f"checkpoint hidden_act={hf['hidden_act']}; the model uses the "
                               "exact erf GELU")

  e = f"{prefix}embeddings."
  imp.apply([same("embeddings/word", e + "word_embeddings.weight")])
  tables = {"position": imp.get(e + "position_embeddings.weight"),
            "token_type": imp.get(e + "token_type_embeddings.weight")}
  if "token_type" not in params["embeddings"]:  # type_vocab_size=0: row 0 is a position
    tables["position"] = tables["position"] + tables.pop("token_type")[0]
  for ours, table in tables.items():
    key, mine = f"{ours}_embeddings", params["embeddings"][ours]
    rows = min(table.shape[0], mine.shape[0])
    if table.shape[0] < mine.shape[0]:
      imp.report.warnings.append(f"{key}: checkpoint has {table.shape[0]} rows, the model "
                                 f"{mine.shape[0]}; rows {table.shape[0]}.. stay initialised")
    # Absolute positions/types: the first rows mean the same thing in both tables.
    imp.put(f"embeddings/{ours}", np.concatenate([table[:rows], np.asarray(mine)[rows:]]),
            f"{e}{key}.weight")
  imp.apply([r.under("", prefix) for r in norm("embeddings/norm", "embeddings.LayerNorm")])
  imp.used.add(prefix + POSITION_IDS)

  # BERT's layers have no cross-attention: the fusion layers' stays initialised.
  layers = [(f"text/layer_{i}", False) for i in range(text_layers)]
  layers += [(f"fusion/layer_{i}", False) for i in range(fusion_layers)]
  imp.apply([r.under("", prefix) for r in encoder_rules(layers)])

  c = f"{head}cls.predictions."
  if c + "transform.dense.weight" in tensors:
    rules = mlm_head_rules()
    if c + "bias" not in tensors:  # older heads keep the bias on the decoder only
      rules = [r for r in rules if r.keys != ("cls.predictions.decoder.bias",)]
      rules = [same("mlm_head/bias", "cls.predictions.decoder.bias") if r.keys == (
          "cls.predictions.bias",) else r for r in rules]
    imp.apply([r.under("", head) for r in rules if head + r.keys[0] in tensors])
  else:
    imp.report.warnings.append("no cls.predictions.* MLM head in the checkpoint: the MLM "
                               "head stays initialised")
  return imp.finish()
