"""Translate with a trained model folder: batched `generate()` with the paper's decoding by default."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


def load_translation_model(
    model_name_or_path: str,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    quantize: str | None = None,
    cpu_products: bool = True,
    **kwargs,
):
    """Model and tokenizer from a folder or Hub id, in eval mode on `device` (default: cuda when available).

    `quantize="int8"` gives int8 linear layers for faster CPU decoding (see `quantization.quantize_int8`).
    Otherwise a float32 model on the CPU gets `cpu_inference.optimize_for_cpu_inference` (the same weights and
    numbers, faster few-row products) unless `cpu_products=False`.
    """
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from . import VanillaTransformerConfig  # noqa: F401  (registers the Auto classes)

    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, **kwargs)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_name_or_path, dtype=dtype, **kwargs)
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}.")
    if quantize == "int8":
        from .quantization import quantize_int8

        return quantize_int8(model.eval(), inplace=True), tokenizer
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    if cpu_products and model.device.type == "cpu" and model.dtype == torch.float32:
        from .cpu_inference import optimize_for_cpu_inference

        optimize_for_cpu_inference(model)
    return model, tokenizer


@torch.inference_mode()
def translate(
    model,
    tokenizer,
    sentences: Sequence[str],
    batch_size: int = 32,
    progress: bool = False,
    **generate_kwargs,
) -> list[str] | list[list[str]]:
    """Translations of `sentences`, in order (a list of alternatives per sentence when
    `num_return_sequences` > 1).

    Sentences are batched by length so little padding is computed; `generate_kwargs` go to
    `model.generate` (num_beams, length_penalty, do_sample, top_k, top_p, max_new_tokens, ...); what is not
    given comes from the model's generation_config (the training code saves beam 4, length penalty 0.6).
    """
    if isinstance(sentences, str):
        raise TypeError("translate() takes a list of sentences; wrap a single sentence in a list.")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    sentences = list(sentences)
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    per_sentence = generate_kwargs.get("num_return_sequences") or 1
    results: list = [None] * len(sentences)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc="Translating", disable=not progress, unit="batch"):
        indices = order[start : start + batch_size]
        batch = tokenizer([sentences[i] for i in indices], return_tensors="pt", padding=True)
        batch = {k: v.to(model.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        output = model.generate(**batch, **generate_kwargs)
        texts = [text.strip() for text in tokenizer.batch_decode(output, skip_special_tokens=True)]
        for n, i in enumerate(indices):
            group = texts[n * per_sentence : (n + 1) * per_sentence]
            results[i] = group if per_sentence > 1 else group[0]
    return results
