"""Translate with a trained model folder: batched `generate()` with the folder's decoding (§6.1's, as
`paper_generation_config()` gives it, for a model hf-vanilla-train saved), through the `translation` pipeline
(`pipeline_vanilla_transformer.TranslationPipeline`); `pipeline()` gives that pipeline as
`transformers.pipeline("translation")` gave it in transformers 4.

Around `translate()` stand the checks of what it is handed and the report of what it did: a device this machine has
(`check_device`), sentences the model can serve (`check_sentences`: empty ones left out, ones longer than learned
positions refused, ones far longer than the training data warned of), and the translations that stopped at the
output length limit, source length + 50 tokens (§6.1), before their end token (`OutputLimitWatch`, `warn_cut`).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

from .modeling_vanilla_transformer import max_new_tokens_for
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


# --- loading a model ---


def check_device(device: str | None) -> str:
    """`device` as torch names it, when torch can use it on this machine (ValueError otherwise); None gives cuda when
    available, else cpu."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"Device {device!r} is not a device name torch knows (cpu, cuda, cuda:1, mps).") from error
    if parsed.type == "cpu":
        return str(parsed)
    accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    if accelerator is None or accelerator.type != parsed.type:
        if parsed.type == "cuda" and torch.version.cuda is None:
            why = f"this torch ({torch.__version__}) is built without CUDA"
        else:
            why = f"this machine has no {parsed.type} device torch can use"
        other = f" or {accelerator.type}" if accelerator is not None else ""
        raise ValueError(f"Device {device!r} is not available: {why}. Use cpu{other}.")
    count = torch.accelerator.device_count()
    if parsed.index is not None and parsed.index >= count:
        raise ValueError(f"Device {device!r} is not available: this machine has {count} {parsed.type} device(s).")
    return str(parsed)


# transformers' VERY_LARGE_INTEGER: what `model_max_length` holds for a tokenizer whose model has no length limit.
NO_LENGTH_LIMIT = int(1e30)


def tokenizer_max_length(config) -> int:
    """The longest input the model serves, for `tokenizer.model_max_length`: `max_position_embeddings` for learned
    positions, no limit for sinusoids (they extend to any length)."""
    if getattr(config, "position_embedding", None) == "learned":
        return config.max_position_embeddings
    return NO_LENGTH_LIMIT


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

    The name and the device are checked before anything loads (`model_source.check_model_source`, `check_device`):
    a folder that does not exist or holds no model, a Hub id that is neither cached nor on the Hub, or a device this
    machine lacks fails at once with the reason. The tokenizer's `model_max_length` is set to what the model serves
    (`tokenizer_max_length`: no limit for sinusoidal positions).
    """
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from .model_source import check_model_source

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


# --- translating ---


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


# --- what a translation alone does not show: inputs too long, outputs cut at the length limit ---

# The generation config's record of the longest training source, in tokens (hf-vanilla-train writes it).
LONGEST_TRAINING_SOURCE = "longest_training_source"
# A model translates text like its training data: far past the longest source it saw, translations come out short
# or garbled (a model trained on sentences of about 30 tokens rendered 2000 words in 13).
LONG_INPUT_FACTOR = 2


def long_input_limit(model) -> tuple[int, str] | None:
    """The source length (tokens) past which a translation is not to be trusted, and the reason in words: twice the
    longest training source where the generation config records it (`LONGEST_TRAINING_SOURCE`), else the model's
    `max_position_embeddings`, the length its config says it serves. None when neither is known."""
    longest = getattr(model.generation_config, LONGEST_TRAINING_SOURCE, None)
    if longest:
        return LONG_INPUT_FACTOR * longest, f"twice the longest source the model was trained on ({longest} tokens)"
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions:
        return positions, f"the model's max_position_embeddings ({positions})"
    return None


def output_limit(generation_config, source_length: int, max_new_tokens: int | None = None) -> int:
    """The most tokens `generate()` makes for a source of `source_length` tokens: `max_new_tokens` when given, else
    the model's rule (`max_new_tokens_for`: the config's own, or source length + 50 in §6.1's), else max_length."""
    if max_new_tokens is not None:
        return max_new_tokens
    limit = max_new_tokens_for(generation_config, source_length)
    return generation_config.max_length if limit is None else limit


def output_limit_words(generation_config, max_new_tokens: int | None = None) -> str:
    """`output_limit` in words: "N new tokens", "source length + N tokens" or "max_length N"."""
    if max_new_tokens is not None:
        return f"{max_new_tokens} new tokens"
    # The rule is a fixed count or the source length plus one: two source lengths tell which.
    empty, one = max_new_tokens_for(generation_config, 0), max_new_tokens_for(generation_config, 1)
    if empty is None:
        return f"max_length {generation_config.max_length}"
    return f"{empty} new tokens" if one == empty else f"source length + {empty} tokens"


def _numbers(indices: Sequence[int]) -> str:
    indices = list(indices)
    shown = ", ".join(str(i + 1) for i in indices[:10])
    return shown + (", ..." if len(indices) > 10 else "")


def check_sentences(model, tokenizer, sentences: Sequence[str], max_new_tokens: int | None = None) -> list[int]:
    """The indices of the sentences to translate. Empty sentences are left out with a warning (their translation is
    empty), and sentences longer than `long_input_limit` are warned of. With learned positions, a sentence longer
    than `max_position_embeddings` tokens, or whose output limit (see `output_limit`) is, raises ValueError naming
    it: the model cannot serve it, and nothing is truncated."""
    empty = [i for i, sentence in enumerate(sentences) if not sentence.strip()]
    if len(empty) == 1:
        logger.warning("Sentence %s is empty: its translation is empty.", _numbers(empty))
    elif empty:
        logger.warning("Sentences %s are empty: their translations are empty.", _numbers(empty))
    keep = sorted(set(range(len(sentences))) - set(empty))
    if not keep:
        return keep
    # verbose=False: the tokenizer's own "indexing errors" warning would say less than the messages below.
    lengths = [len(ids) for ids in tokenizer([sentences[i] for i in keep], verbose=False)["input_ids"]]
    config = model.config
    if getattr(config, "position_embedding", None) == "learned":
        positions = config.max_position_embeddings
        for i, length in zip(keep, lengths):
            limit = output_limit(model.generation_config, length, max_new_tokens)
            if length > positions:
                raise ValueError(
                    f"Sentence {i + 1} is {length} tokens long, but the model's learned positions stop at {positions} "
                    "(max_position_embeddings): shorten it or split it."
                )
            if limit > positions:
                raise ValueError(
                    f"Sentence {i + 1} ({length} tokens) has an output limit of {limit} tokens, but the model's "
                    f"learned positions stop at {positions} (max_position_embeddings): shorten it or split it, or set "
                    f"max_new_tokens to {positions} or less."
                )
    _warn_long(model, keep, lengths)
    return keep


def _warn_long(model, indices: Sequence[int], lengths: Sequence[int]) -> None:
    rule = long_input_limit(model)
    if rule is None:
        return
    limit, reason = rule
    long = [(i, length) for i, length in zip(indices, lengths) if length > limit]
    if not long:
        return
    which = f"Sentence {long[0][0] + 1} is {long[0][1]} tokens long"
    if len(long) > 1:
        which = f"Sentences {_numbers([i for i, _ in long])} are up to {max(n for _, n in long)} tokens long"
    logger.warning(
        "%s, more than %s: expect a translation cut short or wrong, and split long text into sentences.", which, reason
    )


class OutputLimitWatch:
    """While active (`with OutputLimitWatch(model) as watch:`), records the sources whose generated sequence stopped at
    the length limit without an end token; `watch.cut(tokenizer, sentences)` gives their indices afterwards.

    It wraps the model's `generate` for the time being (an attribute of the instance, removed on exit), because the
    pipeline that translates returns text only, and text does not show whether the end token came."""

    def __init__(self, model):
        self.model = model
        self._cut_sources: set[tuple[int, ...]] = set()

    def __enter__(self) -> OutputLimitWatch:
        generate = self.model.generate
        eos = self.model.generation_config.eos_token_id
        if eos is None:  # nothing marks an end: nothing to watch
            return self
        eos = torch.tensor(eos if isinstance(eos, list) else [eos])

        def watched_generate(*args, **kwargs):
            output = generate(*args, **kwargs)
            source = args[0] if args else kwargs.get("input_ids")
            sequences = output if isinstance(output, torch.Tensor) else getattr(output, "sequences", None)
            if source is None or sequences is None:
                return output
            mask = kwargs.get("attention_mask")
            mask = torch.ones_like(source) if mask is None else mask
            ended = torch.isin(sequences[:, 1:], eos.to(sequences.device)).any(-1)
            ended = ended.view(source.shape[0], -1).all(-1)  # every returned sequence of the source ended
            for ids, keep, done in zip(source.tolist(), mask.bool().tolist(), ended.tolist()):
                if not done:
                    self._cut_sources.add(tuple(i for i, k in zip(ids, keep) if k))
            return output

        self.model.generate = watched_generate
        return self

    def __exit__(self, *exc_info) -> None:
        if "generate" in vars(self.model):
            del self.model.generate  # the class's generate again

    def cut(self, tokenizer, sentences: Sequence[str], indices: Sequence[int] | None = None) -> list[int]:
        """The indices (among `indices`, default all) of the sentences whose translation was cut at the limit."""
        if not self._cut_sources:
            return []
        indices = range(len(sentences)) if indices is None else indices
        encoded = tokenizer([sentences[i] for i in indices], verbose=False)["input_ids"]
        return [i for i, ids in zip(indices, encoded) if tuple(ids) in self._cut_sources]


def warn_cut(cut: Sequence[int], max_new_tokens: int | None, generation_config) -> None:
    """The warning for translations that stopped at the output length limit."""
    if not cut:
        return
    which = f"translation{'s' if len(cut) > 1 else ''} of sentence{'s' if len(cut) > 1 else ''} {_numbers(cut)}"
    logger.warning(
        "The %s stopped at the output length limit (%s) without an end token: cut short, probably. Raise "
        "max_new_tokens, or split the input.", which, output_limit_words(generation_config, max_new_tokens),
    )  # fmt: skip


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
