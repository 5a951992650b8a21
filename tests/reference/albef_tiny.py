"""The tiny ALBEF that the reference files describe, built from LAVIS's own classes.

Shared by make_albef_reference.py (writes tests/data/lavis_albef/) and
check_albef_export.py (loads an exported state dict into the same model). Import
lavis_shims and call `lavis_shims.install(...)` first (`setup()` here does both).
"""

import io
import os
import zipfile
from functools import partial

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DATA = os.path.join(ROOT, "tests", "data", "lavis_albef")

# ---- sizes (the JAX side builds the same) ------------------------------------------
IMAGE = 32
PATCH = 8
VISION_WIDTH = 48
VISION_DEPTH = 2
VISION_HEADS = 4
MLP_RATIO = 4
VIT_EPS = 1e-6
TEXT_WIDTH = 32
TEXT_LAYERS = 4
FUSION_LAYER = 2
TEXT_HEADS = 4
INTERMEDIATE = 64
MAX_POSITIONS = 40
BERT_EPS = 1e-12
EMBED_DIM = 24
QUEUE_SIZE = 8
MOMENTUM = 0.995
TEMP = 0.07
ALPHA = 0.4
MLM_PROBABILITY = 0.15
BATCH = 4
MAX_TXT_LEN = 12

# ---- the tokenizer's vocabulary: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4, then words --
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = """
a an the of on in with and at to is are two three one red blue green white black yellow
small large big little old young man woman boy girl dog cat bird horse car bus bike
train tree grass water sky street road table chair plate food pizza cake ball shirt
hat dress picture photo near next sitting standing walking running holding wearing
riding eating playing looking top front field beach room kitchen people group child
person sign building window light day night ##s ##ing ##ed . , what how many color yes no ?
""".split()
VOCAB = SPECIAL + WORDS

CAPTIONS = [
    "a man riding a red bike on the street",
    "two dogs playing in the grass",
    "a woman wearing a blue zebra hat",
    "the small cat is sitting near a window at night , looking at the sky",
]


def write_vocab(path: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8", newline="\n") as f:
    f.write("".join(token + "\n" for token in VOCAB))


def setup(vocab_file: str | None = None):
  """Installs the shims (with the vocab, written if absent); returns the lavis modules."""
  import lavis_shims
  vocab_file = vocab_file or os.path.join(DATA, "vocab.txt")
  if not os.path.exists(vocab_file):
    write_vocab(vocab_file)
  lavis_shims.install(vocab_file)


def bert_config(**overrides):
  from transformers import BertConfig
  fields = dict(
      vocab_size=len(VOCAB), hidden_size=TEXT_WIDTH, num_hidden_layers=TEXT_LAYERS,
      num_attention_heads=TEXT_HEADS, intermediate_size=INTERMEDIATE,
      max_position_embeddings=MAX_POSITIONS, layer_norm_eps=BERT_EPS,
      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, hidden_act="gelu",
      initializer_range=0.02, pad_token_id=0, add_type_embeddings=False,
      encoder_width=VISION_WIDTH, add_cross_attention=True, fusion_layer=FUSION_LAYER,
      architectures=["BertModel"], model_type="bert")
  fields.update(overrides)
  return BertConfig(**fields)


def vision_encoder():
  import torch.nn as nn
  from lavis.models.vit import VisionTransformerEncoder
  encoder = VisionTransformerEncoder(
      img_size=IMAGE, patch_size=PATCH, embed_dim=VISION_WIDTH, depth=VISION_DEPTH,
      num_heads=VISION_HEADS, mlp_ratio=MLP_RATIO, qkv_bias=True, drop_path_rate=0.0,
      norm_layer=partial(nn.LayerNorm, eps=VIT_EPS))
  encoder.vision_width = VISION_WIDTH  # what VisionTransformerEncoder.from_config sets
  return encoder


def build_pretrain(seed: int = 0):
  """AlbefPretrain as from_config builds it (less the downloads), randomly initialised."""
  import torch
  from lavis.models.albef_models.albef_pretrain import AlbefPretrain
  from lavis.models.med import BertForMaskedLM
  torch.manual_seed(seed)
  model = AlbefPretrain(
      image_encoder=vision_encoder(), text_encoder=BertForMaskedLM(bert_config()),
      queue_size=QUEUE_SIZE, embed_dim=EMBED_DIM, mlm_mask_prob=MLM_PROBABILITY,
      temp=TEMP, momentum=MOMENTUM, alpha=ALPHA, max_txt_len=MAX_TXT_LEN)
  return model


def build_retrieval(seed: int = 0):
  """AlbefRetrieval as from_config builds it: text_encoder is an XBertEncoder (a BertModel,
  keys text_encoder.* without `.bert`), with image/text/idx queues."""
  import torch
  from lavis.models.albef_models.albef_retrieval import AlbefRetrieval
  from lavis.models.med import XBertEncoder
  torch.manual_seed(seed)
  return AlbefRetrieval(
      image_encoder=vision_encoder(),
      text_encoder=XBertEncoder(bert_config(), add_pooling_layer=False),
      queue_size=QUEUE_SIZE, embed_dim=EMBED_DIM, temp=TEMP, use_distill=True,
      momentum=MOMENTUM, alpha=ALPHA, max_txt_len=MAX_TXT_LEN)


VQA_DECODER_LAYERS = 2  # LAVIS: 6 (the multimodal half of the 12-layer encoder)


def build_vqa(seed: int = 0):
  """AlbefVQA as from_config builds it: an XBertEncoder question encoder (fusion at layer
  2) and a BertLMHeadModel answer decoder (fusion_layer 0: cross-attention, to the question
  states, in each of its layers; hence encoder_width = TEXT_WIDTH), with momentum copies."""
  import torch
  from lavis.models.albef_models.albef_vqa import AlbefVQA
  from lavis.models.med import BertLMHeadModel, XBertEncoder
  torch.manual_seed(seed)
  decoder = BertLMHeadModel(bert_config(
      fusion_layer=0, num_hidden_layers=VQA_DECODER_LAYERS, encoder_width=TEXT_WIDTH))
  return AlbefVQA(
      image_encoder=vision_encoder(),
      text_encoder=XBertEncoder(bert_config(), add_pooling_layer=False),
      text_decoder=decoder, use_distill=True, momentum=MOMENTUM, alpha=ALPHA,
      max_txt_len=MAX_TXT_LEN)


BLIP_PROMPT = "a picture of "


def build_blip_caption(seed: int = 0):
  """BlipCaption: BLIP's ViT and an XBertLMHeadDecoder whose config has no fusion_layer
  (BLIP's med_config.json), so every layer has cross-attention to the image. Its vocab is
  the tokenizer's, [DEC] (bos) and [ENC] included: len(VOCAB) + 2."""
  import torch
  from lavis.models.blip_models.blip_caption import BlipCaption
  from lavis.models.med import XBertLMHeadDecoder
  torch.manual_seed(seed)
  config = bert_config(vocab_size=len(VOCAB) + 2)
  del config.fusion_layer
  return BlipCaption(vision_encoder(), XBertLMHeadDecoder(config), prompt=BLIP_PROMPT,
                     max_txt_len=MAX_TXT_LEN)


def eval_forward(model, inputs) -> dict:
  """The eval-mode outputs of forward.npz (no grad), from numpy `inputs` (inputs.npz)."""
  import torch
  import torch.nn.functional as F
  model.eval()
  image = torch.from_numpy(np.asarray(inputs["image"]))
  ids = torch.from_numpy(np.asarray(inputs["input_ids"]))
  att = torch.from_numpy(np.asarray(inputs["attention_mask"]))
  mlm_ids = torch.from_numpy(np.asarray(inputs["mlm_input_ids"]))
  out = {}
  with torch.no_grad():
    temp = model.temp.clamp(0.001, 0.5)  # what forward's in-place clamp_ would leave
    image_embeds = model.visual_encoder.forward_features(image)
    image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long)
    image_feat = F.normalize(model.vision_proj(image_embeds[:, 0, :]), dim=-1)
    text_embeds = model.text_encoder.bert(
        ids, attention_mask=att, return_dict=True, mode="text").last_hidden_state
    text_feat = F.normalize(model.text_proj(text_embeds[:, 0, :]), dim=-1)
    fused = model.text_encoder.bert(
        encoder_embeds=text_embeds, attention_mask=att, encoder_hidden_states=image_embeds,
        encoder_attention_mask=image_atts, return_dict=True, mode="fusion")
    mlm_logits = model.text_encoder(
        mlm_ids, attention_mask=att, encoder_hidden_states=image_embeds,
        encoder_attention_mask=image_atts, return_dict=True, return_logits=True)
    out.update(
        image_embeds=image_embeds, image_feat=image_feat, text_embeds=text_embeds,
        text_feat=text_feat, sim_i2t=image_feat @ text_feat.t() / temp,
        fusion_embeds=fused.last_hidden_state,
        itm_logits=model.itm_head(fused.last_hidden_state[:, 0, :]),
        mlm_logits=mlm_logits)
    # The momentum model, as forward calls it (visual_encoder_m(image) == forward_features).
    image_embeds_m = model.visual_encoder_m(image)
    text_embeds_m = model.text_encoder_m.bert(
        ids, attention_mask=att, return_dict=True, mode="text").last_hidden_state
    mlm_logits_m = model.text_encoder_m(
        mlm_ids, attention_mask=att, encoder_hidden_states=image_embeds_m,
        encoder_attention_mask=image_atts, return_dict=True, return_logits=True)
    out.update(
        image_embeds_m=image_embeds_m, text_embeds_m=text_embeds_m,
        image_feat_m=F.normalize(model.vision_proj_m(image_embeds_m[:, 0, :]), dim=-1),
        text_feat_m=F.normalize(model.text_proj_m(text_embeds_m[:, 0, :]), dim=-1),
        mlm_logits_m=mlm_logits_m)
  return {k: v.detach().cpu().numpy() for k, v in out.items()}


def save_npz(path: str, arrays: dict) -> None:
  """np.savez, but byte-for-byte reproducible: sorted keys, fixed zip timestamps."""
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
    for key in sorted(arrays):
      data = io.BytesIO()
      np.lib.format.write_array(data, np.asarray(arrays[key]), allow_pickle=False)
      info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
      info.compress_type = zipfile.ZIP_DEFLATED
      info.external_attr = 0o644 << 16
      archive.writestr(info, data.getvalue())
  with open(path, "wb") as f:
    f.write(buffer.getvalue())
