"""Translate with a trained model folder: batched `generate()` with the folder's decoding (§6.1's, as
`paper_generation_config()` gives it, for a model hf-vanilla-train saved), through the `translation` pipeline
(`pipeline_vanilla_transformer.TranslationPipeline`); `pipeline()` gives that pipeline as
`transformers.pipeline("translation")` gave it in transformers 4."""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

from .pipeline_vanilla_transformer import TranslationPipeline, custom_pipelines

logger = logging.getLogger(__name__)


def paper_generation_config(
    config, num_beams: int = 4, length_penalty: float = 0.6, max_new_tokens_beyond_source: int = 50
) -> GenerationConfig:
    """§6.1's decoding for a model with `config`: beam search with beam size 4 and length penalty alpha = 0.6, output
    up to source length + 50 (`max_new_tokens_beyond_source`, read by the model's `generate`). hf-vanilla-train saves
    it with the model; a model built from a config decodes greedily, with the same length limit."""
    if not isinstance(num_beams, int) or num_beams < 1:
        raise ValueError(f"num_beams must be at least 1 (1 is greedy search), got {num_beams!r}.")
    # Length penalty and early stopping belong to beam search: with one beam transformers refuses to save them.
    beam_options = {"length_penalty": length_penalty, "early_stopping": True} if num_beams > 1 else {}
    generation_config = GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        num_beams=num_beams,
        max_new_tokens_beyond_source=max_new_tokens_beyond_source,
        **beam_options,
    )
    generation_config.validate(strict=True)
    return generation_config


def load_translation_model(
    model_name_or_path: str,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    quantize: str | None = None,
    cpu_products: bool = True,
    **kwargs,
):
    """Model and tokenizer from a folder or Hub id, in eval mode on `device` (default: cuda when available).

    `quantize="int8"` gives int8 linear layers for faster CPU decoding (see `quantization.quantize_int8`); a folder
    an int8 model was saved to loads as that int8 model.
    Otherwise a float32 model on the CPU gets `cpu_inference.optimize_for_cpu_inference` (the same weights and
    tokens; few-row products timed at their first use and taken only where faster on this machine) unless
    `cpu_products=False`.

    The name and the device are checked before anything loads (`checks.check_model_source`, `checks.check_device`):
    a folder that does not exist or holds no model, a Hub id that is neither cached nor on the Hub, or a device this
    machine lacks fails at once with the reason. The tokenizer's `model_max_length` is set to what the model serves
    (`checks.tokenizer_max_length`: no limit for sinusoidal positions).
    """
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from .checks import check_device, check_model_source, tokenizer_max_length

    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}.")
    hub_options = {key: kwargs[key] for key in ("revision", "local_files_only", "cache_dir") if key in kwargs}
    kwargs = {**check_model_source(model_name_or_path, **hub_options), **kwargs}
    from .quantization import is_int8_folder, load_int8

    saved_int8 = is_int8_folder(model_name_or_path)
    device = check_device(device or ("cpu" if saved_int8 or quantize == "int8" else None))
    if (saved_int8 or quantize == "int8") and device != "cpu":
        raise ValueError(f"An int8 model decodes on the CPU only, not on {device}.")
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, **kwargs)
    if saved_int8:  # saved from quantize_int8: CPU only, as it was saved
        model = load_int8(model_name_or_path)
        tokenizer.model_max_length = tokenizer_max_length(model.config)
        return model, tokenizer
    model = AutoModelForSeq2SeqLM.from_pretrained(model_name_or_path, dtype=dtype, **kwargs)
    tokenizer.model_max_length = tokenizer_max_length(model.config)
    if quantize == "int8":
        from .quantization import quantize_int8

        return quantize_int8(model.eval(), inplace=True), tokenizer
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

    The sentences go through `TranslationPipeline`, the code of `pipeline("translation")`, sorted by length so that
    its batches hold little padding; `generate_kwargs` go to `model.generate` (num_beams, length_penalty, do_sample,
    top_k, top_p, max_new_tokens, ...); what is not given comes from the model's generation_config (the training code
    saves beam 4, length penalty 0.6).
    """
    if isinstance(sentences, str):
        raise TypeError("translate() takes a list of sentences; wrap a single sentence in a list.")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    sentences = list(sentences)
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    device = None if getattr(model, "hf_device_map", None) else model.device  # a device map places the model itself
    translator = TranslationPipeline(model=model, tokenizer=tokenizer, device=device, batch_size=batch_size)
    # A generator in, so that the results come out batch by batch, for the progress bar.
    outputs = translator((sentences[i] for i in order), **generate_kwargs)
    results: list = [None] * len(sentences)
    bar = tqdm(outputs, total=len(order), desc="Translating", disable=not progress, unit="sentence")
    for records, i in zip(bar, order):  # the bar first, so that it sees the end
        texts = [record["translation_text"].strip() for record in records]
        results[i] = texts if len(texts) > 1 else texts[0]
    return results


def pipeline(task: str | None = None, model=None, config=None, pipeline_class=None, **kwargs):
    """`transformers.pipeline`, which here also takes `"translation"` (and `"translation_xx_to_yy"`) and
    `"text2text-generation"`: transformers 5 refuses those names before it reads its registry.

    For them it calls `transformers.pipeline` with the pipeline class registered for the task and a copy of the
    model's config whose `custom_pipelines` names the task, the route transformers takes for a model's own pipeline,
    so every other argument (`tokenizer`, `device`, `device_map`, `dtype`, `batch_size`, `model_kwargs`, generate
    keyword arguments) means what it means there. Other tasks go to `transformers.pipeline` unchanged.
    """
    from transformers import AutoConfig
    from transformers import pipeline as transformers_pipeline
    from transformers.pipelines import PIPELINE_REGISTRY

    name = "translation" if isinstance(task, str) and task.startswith("translation_") else task
    entries = custom_pipelines()
    if name not in entries:
        return transformers_pipeline(task, model=model, config=config, pipeline_class=pipeline_class, **kwargs)
    if model is None:
        raise ValueError(f"pipeline({task!r}) needs a model: a folder, a Hub id or a model object.")
    if pipeline_class is None:
        pipeline_class = PIPELINE_REGISTRY.check_task(name)[1]["impl"]
    if config is None and not isinstance(model, (str, os.PathLike)):
        config = model.config
    if config is None or isinstance(config, (str, os.PathLike)):
        hub = ("revision", "token", "trust_remote_code", "local_files_only")
        hub_kwargs = {key: kwargs[key] for key in hub if key in kwargs}
        config = AutoConfig.from_pretrained(config or model, **hub_kwargs, **(kwargs.get("model_kwargs") or {}))
    config = copy.copy(config)  # the caller's config (and model.config) stay as they are
    config.custom_pipelines = {**(getattr(config, "custom_pipelines", None) or {}), task: entries[name]}
    return transformers_pipeline(task, model=model, config=config, pipeline_class=pipeline_class, **kwargs)
