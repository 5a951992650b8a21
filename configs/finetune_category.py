"""Category / subcategory recognition (CR / SCR, docs/method.md 7) from a pretraining run.

  python -m syncmask_jax.main --config=configs/finetune_category.py:label=subcategory \
    --config.init_checkpoint=runs/fg/checkpoints --config.data.root=/data/fashiongen \
    --config.data.vocab_path=/ckpt/bert-base-uncased/vocab.txt --workdir=runs/fg_scr
  ... configs/finetune_category.py:data=synthfashion   (the embedded set)

A new Dense head on the fused [CLS] of (image, text); accuracy and macro-F1 on the
validation split, where labels unseen in train (FashionGen id -1) are excluded and
counted. From the command line the model size and the vocabulary are the pretraining
run's (its config.json; cli.py), `size` defaults to it.
"""

import ml_collections

from syncmask_jax import config_lib


def get_config(arg: str | None = None):
  args = config_lib.parse_arg(arg, label="category", size="base", steps=10000,
                              data="fashiongen", testbed="original")
  c = config_lib.default_config()
  c.task = "category"
  c.init_checkpoint = ""  # a pretraining run's checkpoints/ (latest step, params only)
  c.model = config_lib.model_config(args.size)
  c.model.dtype = "bfloat16" if config_lib.full_size(args.size) else "float32"
  c.finetune = ml_collections.ConfigDict()
  c.finetune.label = args.label  # category (48 FashionGen classes) | subcategory (121)
  c.finetune.num_classes = 0  # 0: the size of the train label list
  c.data.name = args.data
  config_lib.apply_synth_testbed(c.data, args.testbed)  # SynthFashion's set (data=synthfashion)
  c.data.max_text_len = 128 if args.data == "fashiongen" else 40
  c.data.global_batch_size = 256 if args.data == "fashiongen" else 32
  c.data.eval_batch_size = c.data.global_batch_size
  c.data.synth_train_products = 2000
  c.data.synth_val_products = 200
  # [ours] ALBEF's fine-tuning learning rates are 1e-5 .. 2e-5.
  config_lib.finetune_schedule(c, args.steps, 2e-5 if config_lib.full_size(args.size) else 1e-4)
  return c
