"""Visual question answering (docs/method.md 7; tasks/vqa.py) from a pretraining run.

  python -m syncmask_jax.main --config=configs/finetune_vqa.py:data=synthfashion \
    --config.init_checkpoint=runs/synthfashion/checkpoints --workdir=runs/vqa
  python -m syncmask_jax.main --config=configs/finetune_vqa.py \
    --config.init_checkpoint=runs/coco/checkpoints --config.data.root=/data/albef_vqa \
    --config.data.image_root=/data/coco --config.data.vg_image_root=/data/vg \
    --config.data.vocab_path=/ckpt/bert-base-uncased/vocab.txt --workdir=runs/vqa_v2

data=synthfashion: SynthFashion-VQA (data/synthfashion_vqa.py), rendered on the fly,
trained on its train products, scored on val with the official VQA accuracy: a laptop
run. data=vqa: ALBEF's JSON files under data.root (vqa_train/val/test.json,
vg_qa.json, answer_list.json), COCO images under data.image_root (train2014/ ...),
Visual Genome's under data.vg_image_root; trained on train+val+vg and answering test
for the evaluation server (DIR/eval/vqa_test_results.json), as ALBEF. For a local
number hold out a minival: data.minival_size=N and vqa.eval_splits=minival,test.

The tokenizer is the pretraining run's vocabulary (config.json beside its checkpoints;
cli.py). The SynthFashion vocabulary knows the product words only: question words
outside it ("what", "how", "many" ...) are split into WordPiece pieces (or [UNK]),
which the fine-tuning learns to read as they are; its answers are words it knows.
"""

import ml_collections

from syncmask_jax import config_lib


def get_config(arg: str | None = None):
  args = config_lib.parse_arg(arg, size="base", data="vqa", steps=0)
  big = args.data == "vqa"
  if args.data not in ("vqa", "synthfashion"):
    raise ValueError(f"config argument data={args.data!r}: expected vqa | synthfashion")
  c = config_lib.default_config()
  c.task = "vqa"
  c.init_checkpoint = ""  # a pretraining run's checkpoints/ (latest step, params only)
  # The size and image resolution are the pretraining run's (ALBEF fine-tunes VQA at
  # 384 px with interpolated position embeddings; we keep the pretrained resolution).
  c.model = config_lib.model_config(args.size)
  c.model.dtype = "bfloat16" if config_lib.full_size(args.size) else "float32"
  c.data.name = "vqa" if big else "synthfashion_vqa"
  # Question tokens: ALBEF cuts questions to 30 words in training and 50 at test
  # (data/vqa.py) and pads to the longest; 64 tokens hold 50 words but the rarest.
  c.data.max_text_len = 64 if big else 32
  # [ours] answer tokens with [CLS] and [SEP] (static shapes; ALBEF pads to the longest):
  # SynthFashion-VQA's answers take at most 5, VQA's answer list fits 10 but a few
  # (counted in the eval block's answer_list_truncated).
  c.data.max_answer_len = 10 if big else 6
  if not big:
    c.data.max_answers = 1  # SynthFashion-VQA has one answer per question
  c.data.synth_train_products = 2000
  c.data.synth_val_products = 200
  # ALBEF: 32 per GPU on 8 GPUs in training, 16 per GPU at test.
  c.data.global_batch_size = 256 if big else 32
  c.data.eval_batch_size = 128 if big else 32
  c.vqa = ml_collections.ConfigDict()
  c.vqa.train_split = "train+val+vg" if big else "train"  # ALBEF's train_file
  c.vqa.eval_splits = ("test",) if big else ("val",)  # answered: accuracy; all: results
  c.vqa.answer_list = ""  # empty: data.root/answer_list.json, or SynthFashion-VQA's
  c.vqa.inference = "rank"  # rank (ALBEF's rank_answer) | generate (free decoding)
  c.vqa.k_test = 128 if big else 8  # rank: candidates by first token (ALBEF: 128)
  # rank: add the first token's log-prob once more, as ALBEF's rank_answer does.
  c.vqa.count_first_token_twice = True
  # rank: the answers' teacher-forced loss without label smoothing (ALBEF's scores are
  # log-probabilities). LAVIS's AlbefVQA ranks with its decoder's smoothed loss (0.1) and
  # counts the first token once: count_first_token_twice=False, rank_label_smoothing=0.1
  # reproduce it (tests/test_released_weights.py).
  c.vqa.rank_label_smoothing = 0.0
  c.vqa.beam_size = 1  # generate: 1 greedy, else beam search (best beam)
  # ALBEF's momentum distillation (configs/VQA.yaml distill: True, alpha: 0.4; its model's
  # momentum 0.995): each answer token's loss mixes in the momentum model's soft tokens.
  c.vqa.distill = True
  c.loss.alpha = 0.4
  c.loss.alpha_ramp_steps = -1  # -1: one epoch (ALBEF: alpha * min(1, i / len(data_loader)))
  c.momentum = 0.995  # EMA of the momentum model, after every optimizer update
  # ALBEF: 8 epochs; VQA v2 train+val hold 658,111 questions, 2,571 batches of 256 per
  # epoch (vg_qa.json adds its questions / 256 per epoch: pass steps=).
  steps = args.steps or (8 * 2571 if big else 2000)
  # ALBEF: AdamW lr 2e-5, weight decay 0.02, cosine to 1e-6 (ours: to lr / 100), warm-up over
  # its first 400 iterations. [ours] the tiny and small models take 1e-4, and 1e-3 on
  # SynthFashion-VQA from the laptop's 1000-step model (2000 steps, seed 0: val accuracy
  # 50.7 against 37.8 at 1e-4, which answered only "no" to yes/no questions).
  config_lib.finetune_schedule(
      c, steps, 2e-5 if config_lib.full_size(args.size)
      else (1e-3 if args.data == "synthfashion" else 1e-4),
      warmup_steps=400 if big else None)
  c.optim.weight_decay = 0.02
  return c
