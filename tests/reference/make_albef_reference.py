"""Writes reference outputs of Salesforce LAVIS's ALBEF (lavis 1.0.2) on a tiny random
model, for the parity tests of the checkpoint importer/exporter.

  tests/reference/lavis_env.sh                                  # .venv-lavis, once
  .venv-lavis/bin/python tests/reference/make_albef_reference.py

It rewrites tests/data/lavis_albef/ and tests/data/lavis_extras/ byte-for-byte (fixed
seeds, one CPU thread, float32, zip entries without timestamps; --no-extras: the first
only). The files:

  config.json               the tiny sizes (albef_tiny.py) and the step's settings
  vocab.txt                 the tokenizer's vocabulary ([PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3
                            [MASK]=4, then lowercase words; BertTokenizer, lower-casing)
  albef_pretrain.pth        AlbefPretrain.state_dict() BEFORE the step: the online model
                            (LAVIS's random init, then every tensor of ndim >= 2 scaled
                            by 10, std 0.02 -> 0.2, so attention is far from uniform, and
                            0.1*randn added to every 1-D parameter, so no bias is 0 and
                            no LayerNorm is (1, 0)),
                            the momentum copies (`*_m`, copies of the online weights
                            plus 0.01*randn), image_queue/text_queue (random unit
                            columns), queue_ptr (set to 4, so the step's enqueue fills
                            columns 4..7 and wraps the pointer to 0), temp (0.07)
  inputs.npz                images, captions and their tokens, and the random choices the
                            training forward makes (MLM corruption, ITM negatives), fixed
  forward.npz               eval-mode outputs of the BEFORE weights (online and momentum)
  step.npz                  one training forward (losses, similarity matrices, ITM logits),
                            the gradients of loss_itc + loss_itm + loss_mlm, and what the
                            forward's random choices saw
  albef_pretrain_after.pth  the state dict after one AdamW step and one momentum update,
                            with the queues and queue_ptr after the forward's enqueue

and, in tests/data/lavis_extras/ (optional models, same sizes, same vocab.txt and images):

  albef_retrieval.pth       AlbefRetrieval.state_dict(): albef_pretrain.pth converted by
                            LAVIS's own AlbefBase.load_from_pretrained (text keys lose
                            `bert.`, the MLM head is dropped, idx_queue stays -100)
  retrieval.npz             its eval-mode outputs on inputs.npz (image_feat, text_feat,
                            itm_logits of the positive pairs, itm_logits_all[i, j] for
                            image i with text j, momentum features)
  albef_vqa.pth             AlbefVQA.state_dict() (random; answer decoder text_decoder.*,
                            2 layers, cross-attention to the question states in each)
  vqa.npz                   AlbefVQA.predict_answers(k=3) = rank_answers on 4 questions
                            and 6 answers: the first-token probabilities, the top-k
                            answers, their scores (minus the decoder's loss: summed over
                            the answer tokens, cross-entropy WITH label_smoothing=0.1, as
                            LAVIS's BertLMHeadModel always computes it), the chosen answers
  blip_caption.pth          BlipCaption.state_dict() (random; every decoder layer has
                            cross-attention; vocab + [DEC] (102, the bos) + [ENC] (103))
  blip_caption.npz          beam search (num_beams 3, max_length 10, min_length 2, prompt
                            "a picture of ") on the first 2 images: tokens, HF's
                            sequences_scores, decoded captions; and the teacher-forced
                            LM logits and loss (label smoothing 0.1) of prompt + caption

What LAVIS's AlbefPretrain.forward does, and how the script pins it down:

* temp: forward starts with `temp.clamp_(0.001, 0.5)` in place (under no_grad); at 0.07
  that changes nothing. temp is a trained parameter (it has a gradient and takes the
  AdamW step, without weight decay).
* alpha = 0.4 * min(1, (epoch * num_iters_per_epoch + iters) / (2 * num_iters_per_epoch));
  the step passes epoch=2, iters=0, num_iters_per_epoch=1, so alpha = 0.4 exactly.
* The momentum update: forward calls `self._momentum_update()` before the momentum features.
  Here it is a no-op during the loss forward (the momentum model used is exactly the saved
  one), and the real one runs once after the optimizer step (the EMA then mixes the
  momentum weights with the UPDATED online weights: m = 0.995 m + 0.005 online_after).
* ITC: sim_i2t = image_feat @ [text_feat_m.T, text_queue] / temp (B, B+Q), sim_t2i =
  text_feat @ [image_feat_m.T, image_queue] / temp: the in-batch columns hold the MOMENTUM
  features of the other side (so step.npz's sim_i2t[:, :B] is not forward.npz's sim_i2t,
  which is online image_feat @ online text_feat.T / temp); targets = alpha *
  softmax(momentum sims) + (1 - alpha) * eye (the positives are the first B columns).
  loss_itc = (loss_i2t + loss_t2i) / 2. Then the momentum features are enqueued at
  queue_ptr (image_feat_m.T, text_feat_m.T).
* ITM: hard negatives are drawn with torch.multinomial from softmax(sim[:, :B]) with the
  diagonal set to -inf (weights_t2i from sim_t2i, weights_i2t from sim_i2t, i.e. online
  against momentum features; no gradient; saved as itm_weights_*). LAVIS first
  draws, for each text b = 0..B-1, a negative IMAGE (from weights_t2i[b]), then, for each
  image b, a negative TEXT (from weights_i2t[b]). torch.multinomial is wrapped to record
  these draws (made with a seeded generator); they are saved as
  itm_neg_image_for_text[b] and itm_neg_text_for_image[b].
  The ITM batch has 3B pairs, in this order (labels 1 for the first B, 0 for the rest):
    rows 0..B-1:    (text b, image b)                        positives
    rows B..2B-1:   (text b, image itm_neg_image_for_text[b])  negatives, per text
    rows 2B..3B-1:  (text itm_neg_text_for_image[b], image b)  negatives, per image
  (LAVIS: text_embeds_all = [text_embeds, text_embeds_neg], image_embeds_all =
  [image_embeds_neg, image_embeds]). loss_itm = cross_entropy over the 3B rows (mean).
* MLM: `self.mask` (bernoulli 0.15 masks, not on [PAD]/[CLS]; of those 80% [MASK], 10%
  random token, 10% kept; [SEP] can be masked) is replaced by a function that returns
  the corruption saved in inputs.npz (mlm_input_ids, mlm_labels with -100 where not
  masked; step.npz repeats them). The saved corruption
  was made by LAVIS's own `mask` under a fixed seed (the first seed >= 100 that masks at
  least 5 tokens and leaves at least one masked token not [MASK]). loss_mlm =
  (1 - alpha) * CE(logits, labels) + alpha * mean over masked tokens of
  -sum(softmax(momentum logits) * log_softmax(logits)), the momentum model fed with its own
  image embeddings (visual_encoder_m).
* The optimizer: torch.optim.AdamW(lr=1e-4, betas=(0.9, 0.999), eps=1e-8,
  weight_decay=0.02), two groups: weight decay 0.02 for parameters with ndim >= 2 and no
  'bias' in their name, 0 for the rest (biases, LayerNorm weights, temp; also cls_token,
  pos_embed and the embedding tables have ndim >= 2, so they ARE decayed). No grad clipping.
  The MLM decoder weight is tied to the word embeddings (one tensor under the two state-dict
  names text_encoder.bert.embeddings.word_embeddings.weight and
  text_encoder.cls.predictions.decoder.weight; likewise cls.predictions.bias and
  cls.predictions.decoder.bias): its gradient is the sum of both uses, saved under both
  names, and it is updated once.
"""

import json
import os
import sys

import numpy as np

import albef_tiny as tiny

SEED_MODEL = 0
SEED_MOMENTUM_NOISE = 1
SEED_ONLINE_NOISE = 5
WEIGHT_SCALE = 10.0
SEED_QUEUES = 2
SEED_IMAGES = 3
SEED_MLM_FIRST = 100
SEED_ITM = 4
STEP_SAMPLES = {"epoch": 2, "iters": 0, "num_iters_per_epoch": 1}
ADAMW = {"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.02}


def numpy_dict(tensors: dict) -> dict:
  return {k: v.detach().cpu().numpy().copy() for k, v in tensors.items()}


def perturb(model, seed_online=SEED_ONLINE_NOISE, seed_momentum=SEED_MOMENTUM_NOISE,
            seed_queues=SEED_QUEUES) -> None:
  """No constant tensors; momentum copies != online weights; random unit queues;
  queue_ptr = 4."""
  import torch
  import torch.nn.functional as F
  with torch.no_grad():
    # LAVIS's init (std 0.02) leaves attention almost uniform at these widths, so a wrong
    # query/key mapping would barely show: every online tensor of ndim >= 2 is scaled by
    # WEIGHT_SCALE. LAVIS also initialises biases to 0 and LayerNorms to (1, 0), where a
    # parameter that an importer failed to load would not show: every 1-D online
    # parameter gets 0.1 * randn.
    g = torch.Generator().manual_seed(seed_online)
    for _, p in model.named_parameters():
      if p.requires_grad and p.ndim >= 2:
        p.mul_(WEIGHT_SCALE)
      elif p.requires_grad and p.ndim == 1:
        p.add_(0.1 * torch.randn(p.shape, generator=g))
    if not hasattr(model, "model_pairs"):
      return
    model.copy_params()  # the momentum copies start from these online weights
    g = torch.Generator().manual_seed(seed_momentum)
    for _, momentum in model.model_pairs:
      for p in momentum.parameters():  # shared (tied) tensors come once
        p.add_(0.01 * torch.randn(p.shape, generator=g))
    if not hasattr(model, "image_queue"):
      return
    g = torch.Generator().manual_seed(seed_queues)
    model.image_queue.copy_(F.normalize(torch.randn(
        model.image_queue.shape, generator=g), dim=0))
    model.text_queue.copy_(F.normalize(torch.randn(
        model.text_queue.shape, generator=g), dim=0))
    model.queue_ptr.fill_(4)


def mlm_corruption(model, input_ids):
  """LAVIS's own AlbefPretrain.mask under the first seed that masks enough tokens."""
  import torch
  from lavis.models.albef_models.albef_pretrain import AlbefPretrain
  for seed in range(SEED_MLM_FIRST, SEED_MLM_FIRST + 1000):
    torch.manual_seed(seed)
    ids, labels = AlbefPretrain.mask(
        model, input_ids.clone(), model.text_encoder.config.vocab_size, "cpu",
        targets=input_ids.clone(),
        probability_matrix=torch.full(input_ids.shape, model.mlm_probability))
    masked = labels != -100
    mask_id = model.tokenizer.mask_token_id
    if masked.sum() >= 5 and (ids[masked] != mask_id).any():
      return ids, labels, seed
  raise RuntimeError("no seed gave a usable MLM corruption")


def training_step(model, image, captions, mlm_ids, mlm_labels, input_ids):
  """One LAVIS training forward with the random choices fixed, backward, AdamW, EMA."""
  import torch
  from lavis.models.albef_models.albef_pretrain import AlbefPretrain

  def fixed_mask(ids, vocab_size, device, targets=None, masked_indices=None,
                 probability_matrix=None):
    assert torch.equal(ids, input_ids), "forward tokenised the captions differently"
    return mlm_ids.clone(), mlm_labels.clone()

  draws = []
  generator = torch.Generator().manual_seed(SEED_ITM)
  real_multinomial = torch.multinomial

  def recording_multinomial(weights, num_samples, *args, **kwargs):
    index = real_multinomial(weights, num_samples, generator=generator)
    assert weights[index.item()] > 0
    draws.append((index.item(), weights.detach().clone()))
    return index

  model.train()
  model._momentum_update = lambda: None
  model.mask = fixed_mask
  torch.multinomial = recording_multinomial
  try:
    samples = {"image": image, "text_input": list(captions), **STEP_SAMPLES}
    output = model(samples)
  finally:
    torch.multinomial = real_multinomial
    del model._momentum_update
    del model.mask
  batch = image.shape[0]
  assert len(draws) == 2 * batch
  neg_image_for_text = np.array([d[0] for d in draws[:batch]], dtype=np.int64)
  neg_text_for_image = np.array([d[0] for d in draws[batch:]], dtype=np.int64)

  model.zero_grad(set_to_none=True)
  output.loss.backward()
  step = {
      "loss": output.loss, "loss_itc": output.loss_itc, "loss_itm": output.loss_itm,
      "loss_mlm": output.loss_mlm, "temp_used": model.temp,
      "itm_weights_t2i": torch.stack([d[1] for d in draws[:batch]]),
      "itm_weights_i2t": torch.stack([d[1] for d in draws[batch:]]),
      "itm_logits": output.intermediate_output.itm_logits,
      "itm_labels": output.intermediate_output.itm_labels,
  }
  for key in ("sim_i2t", "sim_t2i", "sim_i2t_m", "sim_t2i_m", "sim_i2t_targets",
              "sim_t2i_targets"):
    step[key] = getattr(output.sims, key)
  for key in ("image_embeds", "text_embeds", "image_embeds_m", "text_embeds_m"):
    step["train_" + key] = getattr(output.intermediate_output, key)
  step = numpy_dict(step)
  step["itm_neg_image_for_text"] = neg_image_for_text
  step["mlm_input_ids"] = mlm_ids.numpy().copy()
  step["mlm_labels"] = mlm_labels.numpy().copy()
  step["itm_neg_text_for_image"] = neg_text_for_image
  missing = []
  for name, p in model.named_parameters(remove_duplicate=False):
    if not p.requires_grad:
      continue
    if p.grad is None:
      missing.append(name)
    else:
      step["grad/" + name] = p.grad.detach().cpu().numpy().copy()
  if missing:
    raise RuntimeError(f"online parameters without a gradient: {missing}")

  decay, no_decay = [], []
  for name, p in model.named_parameters():
    if p.requires_grad:
      (decay if p.ndim >= 2 and "bias" not in name else no_decay).append(p)
  optimizer = torch.optim.AdamW(
      [{"params": decay, "weight_decay": ADAMW["weight_decay"]},
       {"params": no_decay, "weight_decay": 0.0}],
      lr=ADAMW["lr"], betas=ADAMW["betas"], eps=ADAMW["eps"])
  optimizer.step()
  AlbefPretrain._momentum_update(model)
  return step, neg_image_for_text, neg_text_for_image


EXTRAS = os.path.join(os.path.dirname(tiny.DATA), "lavis_extras")
VQA_QUESTIONS = [
    "what is the man riding ?",
    "how many dogs are in the grass ?",
    "what color is the hat ?",
    "is the cat sitting near a window ?",
]
VQA_ANSWERS = ["red bike", "two dogs", "blue hat", "cat", "yes", "no"]
VQA_K = 3
BLIP_BEAMS = {"num_beams": 3, "max_length": 10, "min_length": 2}


def make_retrieval(inputs: dict) -> None:
  """AlbefRetrieval with the BEFORE weights, converted by LAVIS itself
  (AlbefBase.load_from_pretrained: `bert.` dropped from the text keys, the MLM head left
  out, idx_queue kept at its init, -100)."""
  import torch
  import torch.nn.functional as F
  from types import SimpleNamespace
  model = tiny.build_retrieval(SEED_MODEL)
  message = model.load_from_pretrained(os.path.join(tiny.DATA, "albef_pretrain.pth"))
  assert message.missing_keys == ["idx_queue"], message.missing_keys
  assert all(".cls." in k for k in message.unexpected_keys), message.unexpected_keys
  torch.save(model.state_dict(), os.path.join(EXTRAS, "albef_retrieval.pth"))
  model.eval()
  image = torch.from_numpy(inputs["image"])
  text = SimpleNamespace(input_ids=torch.from_numpy(inputs["input_ids"]),
                         attention_mask=torch.from_numpy(inputs["attention_mask"]))
  out = {}
  with torch.no_grad():
    image_embeds = model.visual_encoder.forward_features(image)
    image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long)
    text_embeds = model.text_encoder.forward_text(text).last_hidden_state
    fused = model.text_encoder(
        encoder_embeds=text_embeds, attention_mask=text.attention_mask,
        encoder_hidden_states=image_embeds, encoder_attention_mask=image_atts,
        return_dict=True, mode="fusion").last_hidden_state
    # Every (image i, text j), as compute_sim_matrix scores its top-k pairs: the
    # multimodal encoder on the token ids, then itm_head (LAVIS adds the ITC similarity).
    itm_all = []
    for i in range(image.shape[0]):
      states = image_embeds[i].repeat(image.shape[0], 1, 1)
      output = model.text_encoder(
          text.input_ids, attention_mask=text.attention_mask,
          encoder_hidden_states=states, encoder_attention_mask=image_atts,
          return_dict=True)
      itm_all.append(model.itm_head(output.last_hidden_state[:, 0, :]))
    image_feat = F.normalize(model.vision_proj(image_embeds[:, 0, :]), dim=-1)
    text_feat = F.normalize(model.text_proj(text_embeds[:, 0, :]), dim=-1)
    image_embeds_m = model.visual_encoder_m(image)
    text_embeds_m = model.text_encoder_m.forward_text(text).last_hidden_state
    out.update(
        image_embeds=image_embeds, text_embeds=text_embeds, image_feat=image_feat,
        text_feat=text_feat, sim_i2t=image_feat @ text_feat.t() / model.temp,
        itm_logits=model.itm_head(fused[:, 0, :]), itm_logits_all=torch.stack(itm_all),
        image_feat_m=F.normalize(model.vision_proj_m(image_embeds_m[:, 0, :]), dim=-1),
        text_feat_m=F.normalize(model.text_proj_m(text_embeds_m[:, 0, :]), dim=-1))
  tiny.save_npz(os.path.join(EXTRAS, "retrieval.npz"), numpy_dict(out))


def make_vqa(inputs: dict) -> None:
  """AlbefVQA (random, seeds 10-12) and LAVIS's rank_answers (predict_answers, k=3)."""
  import torch
  model = tiny.build_vqa(10)
  perturb(model, seed_online=11, seed_momentum=12)
  torch.save(model.state_dict(), os.path.join(EXTRAS, "albef_vqa.pth"))
  model.eval()
  calls = []
  decoder_forward = model.text_decoder.forward

  def recording_forward(*args, **kwargs):
    output = decoder_forward(*args, **kwargs)
    calls.append((args, kwargs, output))
    return output

  model.text_decoder.forward = recording_forward
  samples = {"image": torch.from_numpy(inputs["image"]),
             "text_input": list(VQA_QUESTIONS)}
  with torch.no_grad():
    answers = model.predict_answers(samples, answer_list=VQA_ANSWERS,
                                    num_ans_candidates=VQA_K)
  del model.text_decoder.forward
  assert len(calls) == 2
  (start_args, start_kwargs, start), (rank_args, rank_kwargs, ranked) = calls
  answer_tokens = model.tokenizer(VQA_ANSWERS, padding="longest", return_tensors="pt")
  candidates = rank_args[0].view(len(VQA_QUESTIONS), VQA_K, -1)
  topk_ids = torch.tensor([[next(a for a in range(len(VQA_ANSWERS))
                                 if torch.equal(answer_tokens.input_ids[a], row))
                            for row in rows] for rows in candidates])
  first = torch.softmax(start.logits[:, 0, :], dim=1)[:, answer_tokens.input_ids[:, 1]]
  scores = -ranked.loss.view(len(VQA_QUESTIONS), VQA_K)
  chosen = topk_ids[torch.arange(len(VQA_QUESTIONS)), scores.argmax(dim=1)]
  assert [VQA_ANSWERS[i] for i in chosen] == answers
  question = samples["tokenized_text"]
  out = numpy_dict({
      "question_ids": question.input_ids, "question_mask": question.attention_mask,
      "answer_ids": answer_tokens.input_ids, "answer_mask": answer_tokens.attention_mask,
      "question_states": start_kwargs["encoder_hidden_states"],
      "start_logits": start.logits[:, 0, :], "first_token_probs": first,
      "topk_ids": topk_ids, "topk_probs": torch.gather(first, 1, topk_ids),
      "answer_logits": ranked.logits.view(len(VQA_QUESTIONS), VQA_K,
                                          *ranked.logits.shape[1:]),
      "answer_scores": scores, "chosen": chosen})
  out.update(questions=np.array(VQA_QUESTIONS), answer_list=np.array(VQA_ANSWERS),
             answers=np.array(answers), image=inputs["image"])
  tiny.save_npz(os.path.join(EXTRAS, "vqa.npz"), out)


def make_blip_caption(inputs: dict) -> None:
  """BlipCaption (random, seeds 20-21): beam search on the first 2 images, and the
  teacher-forced LM loss of prompt + caption."""
  import torch
  model = tiny.build_blip_caption(20)
  perturb(model, seed_online=21)
  torch.save(model.state_dict(), os.path.join(EXTRAS, "blip_caption.pth"))
  model.eval()
  image = torch.from_numpy(inputs["image"][:2])
  recorded = {}
  hf_generate = model.text_decoder.generate

  def recording_generate(*args, **kwargs):
    recorded["kwargs"] = {k: v for k, v in kwargs.items() if not torch.is_tensor(v)}
    recorded["input_ids"] = kwargs["input_ids"]
    output = hf_generate(*args, output_scores=True, return_dict_in_generate=True,
                         **kwargs)
    recorded["scores"] = output.sequences_scores
    recorded["sequences"] = output.sequences
    return output.sequences

  model.text_decoder.generate = recording_generate
  with torch.no_grad():
    captions = model.generate({"image": image}, **BLIP_BEAMS)
  del model.text_decoder.generate
  texts = [tiny.BLIP_PROMPT + c for c in tiny.CAPTIONS[:2]]
  with torch.no_grad():
    image_embeds = model.forward_encoder({"image": image})
    output = model({"image": image, "text_input": texts})
  decoder = output.intermediate_output.decoder_output
  out = numpy_dict({
      "image_embeds": image_embeds, "prompt_ids": recorded["input_ids"],
      "beam_tokens": recorded["sequences"], "beam_scores": recorded["scores"],
      "lm_labels": output.intermediate_output.decoder_labels,
      "lm_logits": decoder.logits, "loss_lm": output.loss_lm})
  lm_tokens = model.tokenizer(texts, padding="longest", truncation=True,
                              max_length=tiny.MAX_TXT_LEN, return_tensors="pt")
  lm_tokens.input_ids[:, 0] = model.tokenizer.bos_token_id
  out.update(captions=np.array(captions), image=inputs["image"][:2],
             lm_texts=np.array(texts), lm_input_ids=lm_tokens.input_ids.numpy(),
             lm_attention_mask=lm_tokens.attention_mask.numpy())
  tiny.save_npz(os.path.join(EXTRAS, "blip_caption.npz"), out)
  print(f"blip beam search: {captions}, kwargs {recorded['kwargs']}")


def main(argv: list[str]) -> int:
  if argv not in ([], ["--no-extras"]):
    print("usage: make_albef_reference.py [--no-extras]", file=sys.stderr)
    return 2
  os.makedirs(tiny.DATA, exist_ok=True)
  vocab_file = os.path.join(tiny.DATA, "vocab.txt")
  tiny.write_vocab(vocab_file)
  tiny.setup(vocab_file)
  import torch
  torch.set_num_threads(1)
  torch.use_deterministic_algorithms(True)

  model = tiny.build_pretrain(SEED_MODEL)
  perturb(model)
  text = model.tokenizer(tiny.CAPTIONS, padding="max_length", truncation=True,
                         max_length=tiny.MAX_TXT_LEN, return_tensors="pt")
  image = torch.randn(tiny.BATCH, 3, tiny.IMAGE, tiny.IMAGE,
                      generator=torch.Generator().manual_seed(SEED_IMAGES))
  mlm_ids, mlm_labels, mlm_seed = mlm_corruption(model, text.input_ids)
  torch.save(model.state_dict(), os.path.join(tiny.DATA, "albef_pretrain.pth"))

  inputs = {
      "image": image.numpy(), "captions": np.array(tiny.CAPTIONS),
      "input_ids": text.input_ids.numpy(), "attention_mask": text.attention_mask.numpy(),
      "mlm_input_ids": mlm_ids.numpy(), "mlm_labels": mlm_labels.numpy(),
  }
  forward = tiny.eval_forward(model, inputs)
  step, neg_image, neg_text = training_step(
      model, image, tiny.CAPTIONS, mlm_ids, mlm_labels, text.input_ids)
  inputs.update(itm_neg_image_for_text=neg_image, itm_neg_text_for_image=neg_text,
                alpha=np.array(tiny.ALPHA, dtype=np.float64))
  torch.save(model.state_dict(), os.path.join(tiny.DATA, "albef_pretrain_after.pth"))
  tiny.save_npz(os.path.join(tiny.DATA, "inputs.npz"), inputs)
  tiny.save_npz(os.path.join(tiny.DATA, "forward.npz"), forward)
  tiny.save_npz(os.path.join(tiny.DATA, "step.npz"), step)

  config = {name: getattr(tiny, name) for name in (
      "IMAGE", "PATCH", "VISION_WIDTH", "VISION_DEPTH", "VISION_HEADS", "MLP_RATIO",
      "VIT_EPS", "TEXT_WIDTH", "TEXT_LAYERS", "FUSION_LAYER", "TEXT_HEADS",
      "INTERMEDIATE", "MAX_POSITIONS", "BERT_EPS", "EMBED_DIM", "QUEUE_SIZE", "MOMENTUM",
      "TEMP", "ALPHA", "MLM_PROBABILITY", "BATCH", "MAX_TXT_LEN")}
  config.update(vocab_size=len(tiny.VOCAB), mlm_seed=mlm_seed, step_samples=STEP_SAMPLES,
                adamw=ADAMW, queue_ptr_before=4, lavis="salesforce-lavis==1.0.2")
  with open(os.path.join(tiny.DATA, "config.json"), "w", encoding="utf-8") as f:
    f.write(json.dumps(config, indent=1, sort_keys=True) + "\n")
  if not argv:
    os.makedirs(EXTRAS, exist_ok=True)
    make_retrieval(inputs)
    make_vqa(inputs)
    make_blip_caption(inputs)
  for folder in (tiny.DATA, EXTRAS) if not argv else (tiny.DATA,):
    for name in sorted(os.listdir(folder)):
      path = os.path.join(folder, name)
      print(f"{os.path.getsize(path):>9}  {os.path.relpath(path, tiny.ROOT)}")
  print(f"losses: itc {step['loss_itc']:.6f} itm {step['loss_itm']:.6f} "
        f"mlm {step['loss_mlm']:.6f}; negatives: image for text {neg_image.tolist()}, "
        f"text for image {neg_text.tolist()}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
