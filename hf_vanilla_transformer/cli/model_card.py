"""The model card hf-vanilla-train writes: the README.md beside the trained model, which the Hub shows as its page.

`write_model_card` renders what it is given (sizes read from the model, data, recipe, training values, test
scores with their sacreBLEU signatures, how to load and translate) as huggingface_hub's `ModelCard` with its
`ModelCardData` metadata, and invents nothing. `write_run_card` collects those facts from a finished run (its
Trainer and arguments), writes the card and, under `--push_to_hub`, uploads it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from hf_vanilla_transformer._io import write_file
from hf_vanilla_transformer.builtin_task import SOURCE_LANG, TARGET_LANG
from hf_vanilla_transformer.data import FilterStats, StreamFilterStats
from hf_vanilla_transformer.translation import output_limit_words

logger = logging.getLogger(__name__)

CARD_NAME = "README.md"
TAGS = ["translation", "vanilla_transformer"]
# Hub metadata takes ISO 639 codes only; anything else (a column name such as "german") stays out of it.
_LANGUAGE_CODE = re.compile(r"[a-z]{2,3}")


@dataclass(frozen=True)
class DataSummary:
    """Where the pairs came from and how many of each split the run used.

    name: a short name of the corpus, e.g. "wmt14 (de-en)". description: a markdown sentence or two.
    languages: codes for the card's metadata (default: both languages). split_stats: `preprocess_dataset`'s
    counts per split.
    """

    source_lang: str
    target_lang: str
    name: str
    description: str
    languages: tuple[str, ...] | None = None
    hub_dataset: str | None = None
    hub_config: str | None = None
    split_stats: Mapping[str, FilterStats] = field(default_factory=dict)
    max_source_length: int | None = None
    max_target_length: int | None = None


def _seconds(value: float) -> str:
    minutes, seconds = divmod(round(value), 60)
    hours, minutes = divmod(minutes, 60)
    clock = f"{hours} h {minutes:02d} min {seconds:02d} s" if hours else f"{minutes} min {seconds:02d} s"
    return f"{value:.1f} s ({clock})" if minutes or hours else f"{value:.1f} s"


def _count(value: int | None, unknown: str = "–") -> str:
    return unknown if value is None else f"{value:,}"


def _used(stats: FilterStats | StreamFilterStats) -> str:
    if isinstance(stats, StreamFilterStats):  # counted as training read the stream, by the main process
        return f"{stats.kept:,} read (streamed)"
    return _count(stats.kept, "not counted (streamed)")


def _sizes_table(model) -> str:
    config = model.config
    heads = config.num_heads
    d_k = getattr(config, "d_k", None) or config.d_model // heads
    d_v = getattr(config, "d_v", None) or config.d_model // heads
    positions = config.position_embedding
    if positions != "sinusoidal":
        positions += f", up to {config.max_position_embeddings} positions"
    embeddings = []
    if getattr(config, "share_encoder_decoder_embeddings", False):
        embeddings.append("one table for encoder and decoder")
    if getattr(config, "tie_word_embeddings", False):
        embeddings.append("tied to the output layer")
    rows = [
        ("`d_model`", config.d_model, "width of every layer"),
        ("`d_ff`", config.d_ff, "inner width of the feed-forward networks"),
        ("`num_heads`", heads, f"attention heads (d_k {d_k}, d_v {d_v})"),
        ("`encoder_layers`", config.encoder_layers, "encoder blocks"),
        ("`decoder_layers`", config.decoder_layers, "decoder blocks"),
        ("`vocab_size`", config.vocab_size, "shared source and target vocabulary"),
        ("parameters", f"{model.num_parameters():,}", "counted once where shared"),
        ("`norm_position`", config.norm_position, "layer norm after (post, the paper's) or before (pre) sublayers"),
        ("`position_embedding`", positions, "how positions enter"),
        ("embeddings", "; ".join(embeddings) or "separate, untied", "token embeddings and the output layer"),
        ("`dropout`", config.dropout, "P_drop in training (§5.4)"),
        ("`activation_function`", config.activation_function, "of the feed-forward networks"),
    ]  # fmt: skip
    lines = ["| setting | value | what it is |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {meaning} |" for name, value, meaning in rows]
    return "\n".join(lines)


def _data_section(data: DataSummary) -> str:
    parts = [data.description]
    if data.split_stats:
        rows = ["| split | pairs used | dropped: empty | dropped: too long |", "|---|---|---|---|"]
        rows += [
            f"| {split} | {_used(s)} | {_count(s.dropped_empty)} | {_count(s.dropped_too_long)} |"
            for split, s in data.split_stats.items()
        ]
        parts.append("\n".join(rows))
    if data.max_source_length and data.max_target_length:
        parts.append(
            f"Pairs longer than {data.max_source_length} source or {data.max_target_length} target tokens "
            "(`</s>` included) were dropped, not truncated."
        )
    return "\n\n".join(parts)


def _scores_section(model, results: Mapping) -> str:
    if "test_bleu" not in results:
        return "This run scored no test split."
    generation = model.generation_config
    decoding = f"beam {generation.num_beams}"
    if generation.num_beams > 1:
        decoding += f", length penalty {generation.length_penalty}"
    decoding += f", at most {output_limit_words(generation)}"
    rows = ["| metric | score |", "|---|---|", f"| BLEU | {results['test_bleu']} |"]
    if "test_chrf" in results:
        rows.append(f"| chrF | {results['test_chrf']} |")
    if "test_exact_match" in results:
        rows.append(f"| exact match (%) | {results['test_exact_match']} |")
    parts = [
        f"On the test split ({results.get('test_samples', 'all')} sentences), translated with the saved "
        f"generation config ({decoding}), scored with sacreBLEU on detokenized text:",
        "\n".join(rows),
        "sacreBLEU signatures:",
    ]
    signatures = [results[k] for k in ("test_bleu_signature", "test_chrf_signature") if k in results]
    parts.append("```\n" + "\n".join(signatures) + "\n```")
    return "\n\n".join(parts)


def _usage_section(model_id: str, example_source: str) -> str:
    # json.dumps writes a string that is also a valid Python literal, whatever quotes the values hold.
    snippet = f"""```python
import hf_vanilla_transformer  # registers the model with transformers' Auto classes
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

model_id = {json.dumps(model_id, ensure_ascii=False)}
tokenizer = AutoTokenizer.from_pretrained(model_id)
model = AutoModelForSeq2SeqLM.from_pretrained(model_id)
batch = tokenizer([{json.dumps(example_source, ensure_ascii=False)}], return_tensors="pt", padding=True)
outputs = model.generate(**batch)  # decoding as in generation_config.json
print(tokenizer.batch_decode(outputs, skip_special_tokens=True))
```"""
    return "\n\n".join(
        [
            "With the `hf_vanilla_transformer` package installed:",
            snippet,
            "Without it, the model's code comes with the weights: drop the first import and pass "
            "`trust_remote_code=True` to both `from_pretrained` calls (the tokenizer is transformers' own class, "
            "but `AutoTokenizer` reads the model's config first).",
            "From the command line:",
            f"```bash\nhf-vanilla-translate {shlex.quote(model_id)} {shlex.quote(example_source)}\n```",
        ]
    )


def _eval_results(data: DataSummary, results: Mapping) -> list[EvalResult]:
    dataset = {
        "task_type": "translation",
        "task_name": f"Translation {data.source_lang}-{data.target_lang}",
        # Outside the Hub there is no dataset id: a slug of the corpus' name stands in.
        "dataset_type": data.hub_dataset or re.sub(r"[^a-z0-9]+", "-", data.name.lower()).strip("-"),
        "dataset_name": data.name,
        "dataset_config": data.hub_config,
        "dataset_split": "test",
    }
    metrics = [("test_bleu", "sacrebleu", "BLEU"), ("test_chrf", "chrf", "chrF")]
    return [
        EvalResult(
            **dataset,
            metric_type=metric_type,
            metric_name=metric_name,
            metric_value=results[key],
            metric_args={"signature": results[f"{key}_signature"]} if f"{key}_signature" in results else None,
        )
        for key, metric_type, metric_name in metrics
        if key in results
    ]


def write_model_card(
    output_dir: str | os.PathLike,
    model,
    *,
    data: DataSummary,
    recipe: str,
    training: Mapping[str, str],
    results: Mapping,
    model_id: str | None = None,
    example_source: str | None = None,
    base_model: str | None = None,
    license: str | None = None,
) -> Path:
    """Write `output_dir`/README.md, the model card of a trained `model`, and return its path.

    training: the run's training values, a label to its text. results: the run's `all_results.json` values
    (test_bleu, test_chrf and their signatures when it scored a test split). model_id: what the card's code
    loads (default: the folder). example_source: the sentence its code translates. base_model: the model this
    one was fine-tuned from, a Hub id or a folder.
    """
    output_dir = Path(output_dir)
    model_id = model_id or str(output_dir)
    example_source = example_source or "..."
    config = model.config
    codes = data.languages or (data.source_lang, data.target_lang)
    languages = [code for code in codes if _LANGUAGE_CODE.fullmatch(code)]
    evaluations = _eval_results(data, results)
    local_base = base_model is not None and os.path.isdir(base_model)
    metadata = ModelCardData(
        language=languages or None,
        license=license,
        library_name="transformers",
        pipeline_tag="translation",
        tags=list(TAGS),
        datasets=[data.hub_dataset] if data.hub_dataset else None,
        base_model=None if local_base else base_model,  # metadata names Hub models only
        model_name=model_id.rstrip("/").split("/")[-1] if evaluations else None,
        eval_results=evaluations or None,
    )
    origin = "trained from scratch"
    if base_model:
        # A folder by its name only: a card that may be published should not show this machine's paths.
        origin = f"fine-tuned from `{Path(base_model).name if local_base else base_model}`"
    intro = (
        f"An encoder-decoder Transformer as in Vaswani et al. (2017), [\"Attention Is All You Need\"]"
        f"(https://arxiv.org/abs/1706.03762), that translates `{data.source_lang}` into `{data.target_lang}`: "
        f"{config.encoder_layers}+{config.decoder_layers} layers, d_model {config.d_model}, "
        f"{model.num_parameters():,} parameters, {origin} on {data.name} with the `hf-vanilla-transformer` "
        f"package (`hf-vanilla-train`, recipe `{recipe}`). Every figure below comes from that run."
    )
    training_rows = ["| what | value |", "|---|---|"] + [f"| {label} | {value} |" for label, value in training.items()]
    sections = [
        f"# {model_id.rstrip('/').split('/')[-1]}",
        intro,
        "## Model",
        _sizes_table(model),
        "## Data",
        _data_section(data),
        "## Training",
        f"Recipe `{recipe}`.",
        "\n".join(training_rows),
        "## Test scores",
        _scores_section(model, results),
        "## How to use",
        _usage_section(model_id, example_source),
    ]
    card = ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")
    path = write_file(output_dir / CARD_NAME, str(card))
    logger.info("Model card written to %s", path)
    return path


# ---------------------------------------------------------------------------------------------
# From an hf-vanilla-train run
# ---------------------------------------------------------------------------------------------


def _file_names(value: str | None) -> str | None:
    return None if value is None else ", ".join(f"`{Path(part.strip()).name}`" for part in value.split(","))


def _data_summary(data_args, stats, source_lang: str, target_lang: str) -> DataSummary:
    common = {
        "source_lang": source_lang,
        "target_lang": target_lang,
        "split_stats": dict(stats),
        "max_source_length": data_args.max_source_length,
        "max_target_length": data_args.max_target_length,
    }
    if data_args.dataset_name:
        name = data_args.dataset_name + (f" ({data_args.dataset_config_name})" if data_args.dataset_config_name else "")
        link = f"[`{data_args.dataset_name}`](https://huggingface.co/datasets/{data_args.dataset_name})"
        config = f", configuration `{data_args.dataset_config_name}`" if data_args.dataset_config_name else ""
        streamed = ", streamed" if data_args.streaming else ""
        return DataSummary(
            name=name,
            description=f"The Hub dataset {link}{config}{streamed}.",
            hub_dataset=data_args.dataset_name,
            hub_config=data_args.dataset_config_name,
            **common,
        )
    if data_args.train_file:
        files = {
            split: _file_names(getattr(data_args, f"{split}_file")) for split in ("train", "validation", "test")
        }
        listed = "; ".join(f"{split}: {names}" for split, names in files.items() if names)
        name = Path(data_args.train_file.split(",")[0]).name
        return DataSummary(name=name, description=f"Local files ({listed}).", **common)
    return DataSummary(
        name=f"the built-in task (seed {data_args.builtin_seed})",
        description=(
            f"The built-in task of `hf-vanilla-transformer`: English-like sentences (`{SOURCE_LANG}`) translated "
            f"into an invented verb-final language (`{TARGET_LANG}`), generated from seed {data_args.builtin_seed} "
            "(`hf_vanilla_transformer.builtin_task.load_builtin_dataset`)."
        ),
        # "toy" names the invented language here, but as an ISO 639-3 code it is a real one (Topoiyo).
        languages=(SOURCE_LANG,),
        **common,
    )


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _name(choice) -> str:
    # TrainingArguments turns the scheduler and optimizer names into enums, whose str() is the class's.
    return str(getattr(choice, "value", choice))


def _device_name(device) -> str:
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    return device.type


def _training_values(trainer, recipe_args, results: Mapping) -> dict[str, str]:
    args, state = trainer.args, trainer.state
    per_step = (
        f"{_plural(args.world_size, 'process', 'processes')} x "
        f"{_plural(args.gradient_accumulation_steps, 'accumulation step', 'accumulation steps')} a step"
    )
    if getattr(trainer, "max_tokens_per_batch", None):
        batch = f"up to {trainer.max_tokens_per_batch} source (and target) tokens a device, {per_step}"
        if getattr(trainer, "sentences_per_batch", None):
            batch += f"; {trainer.sentences_per_batch:.1f} sentences a device on average"
    else:
        batch = f"{args.per_device_train_batch_size} sentences a device, {per_step}"
    warmup = _plural(int(args.warmup_steps), "warm-up step", "warm-up steps")
    if 0 < args.warmup_steps < 1:  # transformers reads it as a share of the run
        warmup = f"warm-up over {args.warmup_steps:.0%} of the steps"
    schedule = f"`{_name(args.lr_scheduler_type)}`, peak {args.learning_rate:.4g}, {warmup}"
    if recipe_args.paper_learning_rate:
        schedule += " (peak d_model^-0.5 * warmup^-0.5, §5.3)"
    values = {
        "steps": f"{state.global_step}" + (f" ({state.epoch:.2f} epochs)" if state.epoch else ""),
        "batch": batch,
        "learning rate": schedule,
        "optimizer": (
            f"`{_name(args.optim)}`, betas ({args.adam_beta1}, {args.adam_beta2}), epsilon {args.adam_epsilon:g}, "
            f"weight decay {args.weight_decay:g}"
        ),
        "gradient clipping": f"max norm {args.max_grad_norm:g}" if args.max_grad_norm else "none",
        "label smoothing": f"{args.label_smoothing_factor:g}",
        "seed": f"{args.seed}",
        "hardware": f"{args.world_size} x {_device_name(args.device)}",
    }
    if "train_loss" in results:
        values["training loss (mean over the run)"] = f"{results['train_loss']:.4f}"
    if "train_runtime" in results:
        values["training time"] = _seconds(results["train_runtime"])
    if "total_seconds" in results:
        values["whole run (tokenizer, data, training, test)"] = _seconds(results["total_seconds"])
    return values


def _first_source(raw, source_lang: str) -> str | None:
    for split in ("test", "validation", "train"):
        if split in raw:
            for example in raw[split]:
                if (example["translation"][source_lang] or "").strip():
                    return example["translation"][source_lang]
    return None


def write_run_card(
    trainer, *, model_args, data_args, recipe_args, raw, stats, results: Mapping, source_lang: str, target_lang: str
) -> Path | None:
    """The card of a finished `hf-vanilla-train` run in its output folder (on the Hub too under --push_to_hub);
    None when the run trained nothing, so the folder holds no model of its own."""
    args = trainer.args
    if not args.do_train:
        logger.info("No training in this run: no model card written.")
        return None
    path = write_model_card(
        args.output_dir,
        trainer.model,
        data=_data_summary(data_args, stats, source_lang, target_lang),
        recipe=Path(recipe_args.recipe).name,  # a recipe file by its name, not its path on this machine
        training=_training_values(trainer, recipe_args, results),
        results=results,
        model_id=trainer.hub_model_id or args.output_dir,
        example_source=_first_source(raw, source_lang),
        base_model=model_args.model_name_or_path,
    )
    if args.push_to_hub and trainer.hub_model_id:
        # The Trainer's own push of the final model wrote and uploaded its generic card before the test scores
        # existed; this one replaces it.
        from huggingface_hub import upload_file

        upload_file(
            path_or_fileobj=str(path),
            path_in_repo=CARD_NAME,
            repo_id=trainer.hub_model_id,
            token=args.hub_token,
            revision=args.hub_revision,
            commit_message="Model card",
        )
    return path
