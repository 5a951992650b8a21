"""Image captioning (BLIP's caption decoder on the pretrained model; tasks/captioning.py).

  python -m syncmask_jax.main --config=configs/finetune_captioning.py:data=synthfashion,size=tiny \
    --config.init_checkpoint=runs/synthfashion/checkpoints --workdir=runs/captioning
  python -m syncmask_jax.main --config=configs/finetune_captioning.py:data=coco \
    --config.init_checkpoint=runs/coco/checkpoints --config.data.root=/data/blip_annotation \
    --config.data.image_root=/data/coco --config.data.vocab_path=/ckpt/bert-base-uncased/vocab.txt \
    --workdir=runs/coco_caption

COCO: BLIP's Karpathy files (coco_karpathy_{train,val,test}.json and
coco_karpathy_{val,test}_gt.json) under data.root, images under data.image_root;
evaluated on the Karpathy test split. SynthFashion: one caption per view
(data/captions.py), evaluated on the val products' views. From the command line the
model size and the vocabulary are the pretraining run's (its config.json; cli.py).
"""

import ml_collections

from syncmask_jax import config_lib


def get_config(arg: str | None = None):
  args = config_lib.parse_arg(arg, size="base", steps=0, data="coco")
  coco = args.data == "coco"
  steps = args.steps or (10000 if coco else 2000)
  c = config_lib.default_config()
  c.task = "captioning"
  c.init_checkpoint = ""  # a pretraining run's checkpoints/ (latest step, params only)
  c.model = config_lib.model_config(args.size)
  c.model.dtype = "bfloat16" if config_lib.full_size(args.size) else "float32"
  c.data.name = args.data  # coco (BLIP's Karpathy files) | synthfashion
  # BLIP truncates "a picture of " + caption to 40 tokens; here the caption alone
  # (the prompt's tokens are added after truncation).
  c.data.max_text_len = 40
  # BLIP: 32 per GPU x 8 GPUs; eval batches only bound memory (beams x images).
  c.data.global_batch_size = 256 if coco else 32
  c.data.eval_batch_size = 64 if coco else 32
  # BLIP's train transform: RandomResizedCrop(scale 0.5..1) + flip (+ RandAugment, not
  # here); SynthFashion views are rendered centred, as their captions describe them.
  c.data.geometric_aug = coco
  c.data.synth_train_products = 2000
  c.data.synth_val_products = 200

  c.captioning = ml_collections.ConfigDict()
  # Which pretrained layers the decoder starts from (models/decoder.py INIT_LAYERS).
  # "fusion" [ours, ALBEF's VQA decoder]: the decoder is the fusion encoder made causal,
  # every weight pretrained, cross-attention included (pretrained on these very image
  # tokens). "text+fusion": as deep as BLIP's decoder (the whole BERT), but the text
  # layers' cross-attention has no pretrained counterpart and starts random, and the
  # decoder costs twice the FLOPs per token.
  c.captioning.init_layers = "fusion"
  c.captioning.prompt = "a picture of "  # BLIP's; fed after [CLS], never a target
  c.captioning.label_smoothing = 0.1  # BLIP's BertLMHeadModel CrossEntropyLoss
  c.captioning.beam_size = 3  # BLIP's num_beams; 1: greedy search
  # Lengths in generated tokens, [SEP] included. BLIP's max_length=20, min_length=5
  # count [DEC] + "a picture of" (4 BERT tokens) too: 16 and 1 here. SynthFashion
  # captions run to about 16 words.
  c.captioning.max_length = 16 if coco else 24
  c.captioning.min_length = 1
  # How finished beams are ranked (decoding.LENGTH_PENALTIES). BLIP (Hugging Face's
  # length_penalty=1.0) divides the summed log-probability by the length of prompt +
  # caption; "average" divides by the caption's tokens ([SEP] included).
  c.captioning.length_penalty = "average"
  c.captioning.length_alpha = 0.6  # the exponent of "gnmt" only

  # BLIP (ViT-B): AdamW lr 1e-5, weight decay 0.05, cosine to 0, 5 epochs; ours the
  # repo's fine-tuning schedule with BLIP's base rate. SynthFashion's laptop run starts
  # from a 1000-step tiny model: at 1e-4 its captions stayed degenerate after 400 steps
  # ("with a with a ..."), at 1e-3 they read right (CIDEr 34 after 400 steps).
  config_lib.finetune_schedule(
      c, steps, 1e-5 if config_lib.full_size(args.size) else (1e-4 if coco else 1e-3))
  c.optim.weight_decay = 0.05
  return c
