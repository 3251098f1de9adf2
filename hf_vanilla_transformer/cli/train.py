"""hf-vanilla-train's run: data, tokenizer, model, `VanillaSeq2SeqTrainer`, the final model, its test scores and card.

What the command takes (its options, the recipes) is `train_options.py`, which the console script reads first,
without torch or transformers; `parse_args` here parses the same command line into transformers' dataclasses.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import shutil
import sys
import time
from typing import NamedTuple

import datasets
import torch
import transformers
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    HfArgumentParser,
    Seq2SeqTrainingArguments,
    set_seed,
)

from hf_vanilla_transformer import VanillaTransformerConfig, table3_config, table3_training_arguments
from hf_vanilla_transformer._io import publish_folder
from hf_vanilla_transformer.cli._data import load_data
from hf_vanilla_transformer.cli._errors import OneLineErrors, console_script
from hf_vanilla_transformer.cli._output_folder import (
    OutputPlan,
    plan_output_folder,
    remove_previous_run,
    write_results,
)
from hf_vanilla_transformer.cli.model_card import write_run_card
from hf_vanilla_transformer.cli.train_options import (
    DEFAULT_OUTPUT_DIR,
    PROJECT_ARGUMENTS,
    DataArguments,
    ModelArguments,
    RecipeArguments,
    check_recipe_names,
    read_command_line,
    recipe_first,
)
from hf_vanilla_transformer.cli.train_options import __doc__ as COMMAND_HELP
from hf_vanilla_transformer.data import longest_source, preprocess_dataset, stream_share, tokenizer_training_texts
from hf_vanilla_transformer.model_source import check_model_source
from hf_vanilla_transformer.tokenization import train_bpe_tokenizer
from hf_vanilla_transformer.training import (
    STAGING_DIR,
    VanillaSeq2SeqTrainer,
    last_complete_checkpoint,
    make_compute_metrics,
    paper_learning_rate,
    translation_scores,
)
from hf_vanilla_transformer.translation import (
    LONGEST_TRAINING_SOURCE,
    paper_generation_config,
    tokenizer_max_length,
    translate,
)

logger = logging.getLogger("hf_vanilla_transformer.train")


class TrainArgumentParser(OneLineErrors, HfArgumentParser):
    """hf-vanilla-train's arguments into this project's three dataclasses and the Trainer's; errors are one line
    (its --help and --help_trainer are `train_options.CommandLine`'s). `names`: every option's name, the fields."""

    def __init__(self):
        classes = (*PROJECT_ARGUMENTS, Seq2SeqTrainingArguments)
        super().__init__(
            classes,
            prog="hf-vanilla-train",
            usage="%(prog)s [RECIPE.json|RECIPE.yaml] [--option VALUE ...]",
            description=COMMAND_HELP,
        )
        # HfArgumentParser makes an option of each field that __init__ takes, named after it.
        self.names = {field.name for kind in classes for field in dataclasses.fields(kind) if field.init}

    def given(self, argv: list[str]) -> set[str]:
        """The names of the options `argv` gives a value, whatever their spelling (--max-steps 5, --max_steps=5):
        `argv` parsed into a namespace where every option starts out unset, so that a default never counts."""
        unset = object()
        parsed, _ = self.parse_known_args(argv, namespace=argparse.Namespace(**dict.fromkeys(self.names, unset)))
        return {name for name, value in vars(parsed).items() if value is not unset}


class Arguments(NamedTuple):
    """hf-vanilla-train's arguments, parsed: this project's three groups and the Trainer's."""

    model: ModelArguments
    data: DataArguments
    recipe: RecipeArguments
    training: Seq2SeqTrainingArguments


def parse_args(argv: list[str] | None = None) -> Arguments:
    """Recipe values become defaults; command-line arguments override them. A mistake is said before torch and
    transformers are imported (`train_options.read_command_line`)."""
    argv = recipe_first(list(sys.argv[1:] if argv is None else argv))
    probe, recipe_name, recipe = read_command_line(argv)
    parser = TrainArgumentParser()
    check_recipe_names(recipe_name, recipe, parser.names)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available():
        # accelerate sets up processes on CPUs (gloo, MULTI_CPU) only with use_cpu; without it, `torchrun
        # --nproc_per_node N` would start N separate trainings, each on all the data, writing the same files.
        parser.set_defaults(use_cpu=True)
    if not torch.accelerator.is_available():
        # Pinned memory needs an accelerator; without one, torch's DataLoader warns about it once an epoch.
        parser.set_defaults(dataloader_pin_memory=False)
    parser.set_defaults(**recipe)
    if probe.output_dir is None and not recipe.get("output_dir"):  # probe also sees --output_dir=DIR
        argv += ["--output_dir", DEFAULT_OUTPUT_DIR]
    *arguments, unused = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
    if unused:
        parser.error(f"unrecognized arguments: {' '.join(unused)}")
    args = Arguments(*arguments)
    args.recipe.recipe = recipe_name
    return args


def parse_overrides(text: str | None) -> dict:
    if not text:
        return {}
    values = {}
    for item in text.split(","):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"config_overrides item {item!r} is not key=value (e.g. 'd_model=256,encoder_layers=3').")
        try:
            values[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            values[key.strip()] = raw.strip()
    # The config keeps unknown keys as extra attributes, so a typo ('dmodel=256') would pass unnoticed.
    known = {f.name for f in dataclasses.fields(VanillaTransformerConfig)} | set(VanillaTransformerConfig.attribute_map)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"config_overrides sets {unknown}, which VanillaTransformerConfig does not have; "
            f"it has {', '.join(VanillaTransformerConfig.__annotations__)}."
        )
    return values


def _limit(dataset, limit: int | None):
    if limit is None:
        return dataset
    if isinstance(dataset, datasets.IterableDataset):
        return dataset.take(limit)
    return dataset.select(range(min(limit, len(dataset))))


def named_tokenizer(model_args: ModelArguments):
    """The tokenizer the arguments name (--tokenizer_name, or the pretrained model's), or None."""
    name = model_args.tokenizer_name or model_args.model_name_or_path
    return AutoTokenizer.from_pretrained(name, cache_dir=model_args.cache_dir) if name else None


# Pairs the BPE is trained on unless --tokenizer_train_samples says: two million sentences drawn from a loaded split
# are what its merges need (WMT14 en-de has 4.5M pairs); a stream gives its first pairs, read before training starts.
TOKENIZER_SAMPLE, STREAM_TOKENIZER_SAMPLE = 1_000_000, 100_000


def build_tokenizer(
    model_args: ModelArguments, train_split, source_lang: str, target_lang: str, streaming: bool, seed: int = 0
):
    if model_args.tokenizer_name or model_args.model_name_or_path:
        return named_tokenizer(model_args)
    limit = model_args.tokenizer_train_samples or (STREAM_TOKENIZER_SAMPLE if streaming else TOKENIZER_SAMPLE)
    logger.info(
        "Training a shared BPE tokenizer on %s %s pairs of the training data: a vocabulary of at most %d, of merges "
        "seen at least %d times (--tokenizer_vocab_size, --tokenizer_min_frequency).",
        "the first" if streaming else "at most", f"{limit:,}", model_args.tokenizer_vocab_size,
        model_args.tokenizer_min_frequency,
    )  # fmt: skip
    texts = tokenizer_training_texts(train_split, source_lang, target_lang, max_pairs=limit, seed=seed)
    return train_bpe_tokenizer(
        texts,
        vocab_size=model_args.tokenizer_vocab_size,
        min_frequency=model_args.tokenizer_min_frequency,
        size_is_a_ceiling=True,
    )


def built_once(training_args, build):
    """`build()` in the main process alone; the other processes get what it built (or the error it raised) through
    torch.distributed, on this machine or another, without a shared folder."""
    if training_args.world_size == 1:
        return build()
    from accelerate.utils import broadcast_object_list

    built = [None]
    if training_args.process_index == 0:
        try:
            built[0] = build()
        except Exception as error:  # the others would wait for the broadcast for ever
            built[0] = error
    broadcast_object_list(built, from_process=0)
    if isinstance(built[0], Exception):
        raise built[0]
    return built[0]


def build_model(model_args: ModelArguments, tokenizer):
    if model_args.model_name_or_path:
        model = AutoModelForSeq2SeqLM.from_pretrained(
            model_args.model_name_or_path, cache_dir=model_args.cache_dir, attn_implementation=model_args.attn_implementation
        )
        if len(tokenizer) > model.config.vocab_size:
            raise ValueError(
                f"The tokenizer has {len(tokenizer)} tokens but the model {model_args.model_name_or_path} only "
                f"{model.config.vocab_size}: they do not belong together. Use the model's own tokenizer "
                "(drop --tokenizer_name) or call model.resize_token_embeddings first."
            )
        return model
    config = model_config(model_args, tokenizer)
    config._attn_implementation = model_args.attn_implementation
    from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration

    return VanillaTransformerForConditionalGeneration(config)


def model_config(model_args: ModelArguments, tokenizer):
    """The config the arguments ask for: the pretrained model's, or a Table 3 row with the overrides, sized for the
    tokenizer."""
    if model_args.model_name_or_path:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(model_args.model_name_or_path, cache_dir=model_args.cache_dir)
    values = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "decoder_start_token_id": tokenizer.bos_token_id,
        **parse_overrides(model_args.config_overrides),
    }
    missing = [k for k in ("pad_token_id", "bos_token_id", "eos_token_id") if values[k] is None]
    if missing:
        raise ValueError(f"The tokenizer has no {', '.join(missing)}; the model needs pad, bos and eos tokens.")
    return table3_config(model_args.preset, **values)


def command_line_names(argv: list[str] | None) -> set[str]:
    """The option names the command line gives, e.g. {'learning_rate', 'max_steps'} (what it sets over a recipe)."""
    return TrainArgumentParser().given(recipe_first(list(sys.argv[1:] if argv is None else argv)))


def resolve_short_run_model(args: Arguments, given: set[str]) -> None:
    """A run shorter than the recipe's `short_run_steps` trains its `short_run_config_overrides` model: in 1000 steps
    the paper's base model learned nothing from the source on es-en under every schedule tried, where d_model 256
    with 3+3 layers did (docs/quality.md). A model the command line or the recipe chooses is kept."""
    model_args, recipe_args, steps = args.model, args.recipe, args.training.max_steps
    if (
        not recipe_args.short_run_config_overrides
        or not 0 < steps < recipe_args.short_run_steps
        or model_args.model_name_or_path
        or model_args.config_overrides
        or "preset" in given
    ):
        return
    model_args.config_overrides = recipe_args.short_run_config_overrides
    logger.warning(
        "max_steps %d is too few for the %s model to learn from the source (fewer than the recipe's short_run_steps "
        "%d): training %s instead; pass --preset or --config_overrides to choose the model.",
        steps, model_args.preset, recipe_args.short_run_steps, model_args.config_overrides.replace(",", ", "),
    )  # fmt: skip


def resolve_schedule(recipe_args: RecipeArguments, training_args, d_model: int, given: set[str]) -> None:
    """The peak learning rate, the warm-up and the gradient clipping the run will use; what the command line asks
    for wins over a recipe, the peak and the clipping are said in the log, and so is every value the recipe's own
    would not fit."""
    if recipe_args.paper_learning_rate and "learning_rate" in given:
        if "paper_learning_rate" in given:
            raise ValueError(
                "--learning_rate and --paper_learning_rate both set the peak learning rate: pass one of them."
            )
        logger.info("--learning_rate %g given: the recipe's paper_learning_rate is not used.", training_args.learning_rate)
        recipe_args.paper_learning_rate = False
    warmup = training_args.warmup_steps
    if (
        "warmup_steps" not in given
        and warmup >= 1  # a count of steps, not a ratio of the run
        and training_args.max_steps > 0
        and warmup > max(1, training_args.max_steps // 5)
    ):
        # A run shorter than its recipe's warm-up would end before the learning rate reaches its peak.
        training_args.warmup_steps = max(1, training_args.max_steps // 5)
        logger.warning(
            "max_steps %d is too short for the recipe's %d warm-up steps: warming up over %d steps (a fifth of "
            "the run) instead; pass --warmup_steps to choose.",
            training_args.max_steps, warmup, training_args.warmup_steps,
        )  # fmt: skip
    if recipe_args.paper_learning_rate:
        # The peak of the recipe's own schedule (§5.3), also when its warm-up was shortened above.
        training_args.learning_rate = paper_learning_rate(d_model, max(1, int(warmup)))
        logger.info("Learning rate peak %.3g (d_model^-0.5 * warmup^-0.5, §5.3).", training_args.learning_rate)
    if training_args.max_grad_norm > 0:  # the paper says nothing of clipping; the base model stalls without it
        logger.info("Gradients clipped at norm %g (--max_grad_norm; 0 turns clipping off).", training_args.max_grad_norm)
    else:
        logger.info("No gradient clipping (--max_grad_norm 0).")


def resolve_label_smoothing(model_args: ModelArguments, training_args, given: set[str]) -> None:
    """Table 3 rows D3 and D4 set epsilon_ls (§5.4), a training value: it wins over the recipe's, and the command
    line's --label_smoothing_factor wins over both."""
    row_value = table3_training_arguments(model_args.preset)["label_smoothing_factor"]
    if row_value == table3_training_arguments("base")["label_smoothing_factor"] or model_args.model_name_or_path:
        return
    if "label_smoothing_factor" in given:
        logger.info(
            "--label_smoothing_factor %g given: Table 3 row %s's epsilon_ls %g is not used.",
            training_args.label_smoothing_factor, model_args.preset, row_value,
        )  # fmt: skip
        return
    training_args.label_smoothing_factor = row_value
    logger.info("Label smoothing %g (Table 3 row %s).", row_value, model_args.preset)


def save_final(trainer, tokenizer, output_dir: str) -> None:
    """Model, tokenizer and generation config into `output_dir`, each file moved in whole (never half-written)."""
    staging = os.path.join(output_dir, STAGING_DIR, "final")
    if trainer.args.should_save:
        shutil.rmtree(staging, ignore_errors=True)
    trainer.save_model(staging)
    if trainer.args.should_save:
        tokenizer.save_pretrained(staging)
        trainer.state.save_to_json(os.path.join(staging, "trainer_state.json"))  # the loss curve (log_history)
        publish_folder(staging, output_dir, merge=True)
        shutil.rmtree(os.path.join(output_dir, STAGING_DIR), ignore_errors=True)
    trainer.accelerator.wait_for_everyone()


def close_progress_bar(trainer) -> None:
    """Close the Trainer's progress bar of a run that stops early (it would be redrawn at exit, after the message)."""
    for callback in trainer.callback_handler.callbacks:
        if getattr(callback, "training_bar", None) is not None:
            callback.training_bar.close()
            callback.training_bar = None


BOOLS = ("true", "false", "yes", "no", "1", "0", "t", "f", "y", "n")  # what argparse takes for a bool option


def interrupted(trainer, argv: list[str] | None) -> str:
    """Where a run stopped by Ctrl-C can be resumed from, and the command that does it."""
    checkpoint = last_complete_checkpoint(trainer.args.output_dir)
    stopped = f"Training stopped at step {trainer.state.global_step}"
    if checkpoint is None:
        return f"{stopped}, before its first checkpoint: the same command starts it again from scratch."
    command, values = [], list(sys.argv[1:] if argv is None else argv)
    for i, item in enumerate(values):  # without --overwrite_output_dir, which would start from scratch again
        flag = item.split("=", 1)[0] in ("--overwrite_output_dir", "--overwrite-output-dir")
        value = i and values[i - 1] in ("--overwrite_output_dir", "--overwrite-output-dir") and item.lower() in BOOLS
        if not (flag or value):
            command.append(item)
    if "--resume_from_checkpoint" in command[:-1]:
        command[command.index("--resume_from_checkpoint") + 1] = checkpoint
    command = shlex.join(["hf-vanilla-train", *command])
    return f"{stopped}; the last checkpoint is {checkpoint}. Resume from it with: {command}"


# --- the run, step by step ---


def start_run(args: Arguments) -> None:
    """Refuse a launch the Trainer did not set up as launched; then logging and the seed."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if args.training.world_size != launched:
        raise ValueError(
            f"Launched as {launched} processes, but the Trainer set up {args.training.world_size}: they would each "
            "train alone and overwrite each other's files. On CPUs pass --use_cpu (the default there)."
        )
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if args.training.should_log else logging.WARNING,
        datefmt="%H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    transformers.utils.logging.set_verbosity_warning()
    datasets.utils.logging.set_verbosity_warning()
    logger.info("Recipe %s; output in %s", args.recipe.recipe, args.training.output_dir)
    set_seed(args.training.seed)


def check_inputs(args: Arguments) -> OutputPlan:
    """Everything that can be wrong with the inputs fails here, before the output folder is touched: the config
    overrides, the model and tokenizer names, and the output folder (a finished run, or one of another model, is
    refused). Returns what the output folder holds: a run to resume, or room for a new one."""
    model_args, training_args = args.model, args.training
    parse_overrides(model_args.config_overrides)  # a typo fails now, not after the tokenizer is trained
    if model_args.model_name_or_path:  # a mistyped folder fails now, not after a minute of Hub retries
        check_model_source(
            model_args.model_name_or_path, needs_tokenizer=not model_args.tokenizer_name, cache_dir=model_args.cache_dir
        )
    if model_args.tokenizer_name:
        check_model_source(model_args.tokenizer_name, needs_config=False, cache_dir=model_args.cache_dir)
    return plan_output_folder(
        training_args.output_dir,
        overwrite=args.recipe.overwrite_output_dir,
        resume_from_checkpoint=training_args.resume_from_checkpoint,
        do_train=training_args.do_train,
        max_steps=training_args.max_steps,
        num_train_epochs=training_args.num_train_epochs,
        asked_config=lambda tokenizer: model_config(model_args, tokenizer),
        named_tokenizer=lambda: named_tokenizer(model_args),
    )


def choose_tokenizer(args: Arguments, plan: OutputPlan, raw, source_lang: str, target_lang: str):
    """A resumed run's own tokenizer, the one the arguments name, or a new shared BPE one."""
    if plan.tokenizer is not None:
        return plan.tokenizer
    if args.model.tokenizer_name or args.model.model_name_or_path:
        return named_tokenizer(args.model)
    # Trained once, by the main process: the others get the same tokenizer, so the datasets cache they look up
    # (keyed by it) is the one the main process wrote.
    return built_once(
        args.training,
        lambda: build_tokenizer(
            args.model, raw["train"], source_lang, target_lang, args.data.streaming, args.training.seed
        ),
    )


def settle_training_and_decoding(args: Arguments, model, given: set[str]) -> None:
    """The label smoothing and the schedule the run trains with (`given`, the command line's options, win over the
    recipe), and the decoding saved with the model: §6.1's, or a pretrained model's own unless the command line
    sets one."""
    resolve_label_smoothing(args.model, args.training, given)
    resolve_schedule(args.recipe, args.training, model.config.d_model, given)
    recipe_args = args.recipe
    if recipe_args.num_beams < 1:
        raise ValueError(f"--num_beams must be at least 1 (1 is greedy search), got {recipe_args.num_beams}.")
    decoding = {"num_beams", "length_penalty", "max_new_tokens_beyond_source"}
    if args.model.model_name_or_path and not decoding & given:
        # A pretrained model (a converted Marian one, say) keeps its own decoding, bad_words_ids and all.
        logger.info("Decoding with %s's own generation config.", args.model.model_name_or_path)
    else:
        model.generation_config = paper_generation_config(
            model.config, recipe_args.num_beams, recipe_args.length_penalty, recipe_args.max_new_tokens_beyond_source
        )


def prepare_data(args: Arguments, raw, tokenizer, source_lang: str, target_lang: str):
    """The splits cut to the --max_*_samples asked for (a stream shared out among the processes), then tokenized and
    filtered. Returns the cut splits, the processed ones and the filter's counts."""
    data_args, training_args = args.data, args.training
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples, "test": data_args.max_test_samples}
    raw = type(raw)({k: _limit(v, limits.get(k)) for k, v in raw.items()})  # a DatasetDict or IterableDatasetDict
    if data_args.streaming and "train" in raw:  # each process reads, tokenizes and trains on its own share
        raw["train"] = stream_share(raw["train"], training_args.process_index, training_args.world_size)
    # The main process tokenizes first and the others find its work in the datasets cache: the main process of all
    # when the machines share a file system, of each machine when they do not (--save_on_each_node says so).
    with training_args.main_process_first(desc="preprocessing", local=training_args.save_on_each_node):
        processed, stats = preprocess_dataset(
            raw,
            tokenizer,
            source_lang,
            target_lang,
            max_source_length=data_args.max_source_length,
            max_target_length=data_args.max_target_length,
            num_proc=data_args.preprocessing_num_workers,
        )
    if not data_args.streaming:
        logger.info("Data after filtering: %s", stats)
    if training_args.do_train and not data_args.streaming and len(processed["train"]) == 0:
        raise ValueError("No training pairs are left after filtering; see the counts above (raise --max_source_length?).")
    return raw, processed, stats


def record_longest_source(args: Arguments, model, processed) -> None:
    """The longest training source, in tokens, in the generation config (`LONGEST_TRAINING_SOURCE`), for
    check_sentences, which warns of inputs far longer; a stream is bounded by the filter only. A pretrained model
    without a record saw sources of unknown length and keeps none."""
    recorded = getattr(model.generation_config, LONGEST_TRAINING_SOURCE, None)
    if args.training.do_train and (recorded or not args.model.model_name_or_path):
        longest = args.data.max_source_length if args.data.streaming else longest_source(processed["train"])
        setattr(model.generation_config, LONGEST_TRAINING_SOURCE, max(longest, recorded or 0))


def make_trainer(args: Arguments, model, tokenizer, processed, stats) -> VanillaSeq2SeqTrainer:
    training_args = args.training
    eval_split = processed.get("validation")
    if eval_split is None and training_args.eval_strategy != "no":
        logger.warning("No validation split: evaluation during training is turned off.")
        training_args.eval_strategy = "no"
    return VanillaSeq2SeqTrainer(
        model=model,
        args=training_args,
        train_dataset=processed.get("train"),
        eval_dataset=eval_split,
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        compute_metrics=make_compute_metrics(tokenizer),
        max_tokens_per_batch=args.recipe.max_tokens_per_batch,
        shuffle_buffer_size=args.data.shuffle_buffer_size,
        stream_filter_stats=stats.get("train") if args.data.streaming else None,
    )


def train_and_save(trainer, plan: OutputPlan, tokenizer, argv: list[str] | None) -> dict:
    """Train (from scratch, or resumed where the plan says), save the final model into the output folder, and return
    the training figures. Ctrl-C ends the run with one line: where it can be resumed from, and how."""
    output_dir = trainer.args.output_dir
    if plan.overwrite and trainer.args.should_save:
        remove_previous_run(output_dir)
    trainer.accelerator.wait_for_everyone()
    if plan.checkpoint:
        logger.info(
            "Resuming from %s (step %d), with its tokenizer: %s holds a run of the same model with steps left "
            "to train (--overwrite_output_dir would start again from scratch).",
            plan.checkpoint, plan.step, output_dir,
        )  # fmt: skip
    try:
        train_result = trainer.train(resume_from_checkpoint=plan.checkpoint)
        save_final(trainer, tokenizer, output_dir)
    except BaseException as error:
        close_progress_bar(trainer)  # first, so that the one line about what happened is not drawn over
        if isinstance(error, KeyboardInterrupt):
            raise KeyboardInterrupt(interrupted(trainer, argv)) from None
        raise
    # A run resumed at its last step trains nothing and has no figures (train_result.metrics is empty).
    return {f"train_{k}" if not k.startswith("train") else k: v for k, v in train_result.metrics.items()}


def score_test_split(args: Arguments, model, tokenizer, test_split, source_lang: str, target_lang: str) -> dict:
    """The test split translated with the saved decoding and scored (sacreBLEU, chrF, exact match); a few of its
    translations are printed."""
    pairs = [example["translation"] for example in test_split]  # a streamed test split is read in whole here
    if not pairs:
        return {}
    sources = [pair[source_lang] for pair in pairs]
    references = [pair[target_lang] for pair in pairs]
    model.eval()
    batch_size = args.training.per_device_eval_batch_size
    hypotheses = translate(model, tokenizer, sources, batch_size=batch_size, progress=True)
    scores = {f"test_{k}": v for k, v in translation_scores(hypotheses, references).items()}
    scores["test_samples"] = len(references)
    print("\nSample translations from the held-out test split:")
    for src, hyp, ref in list(zip(sources, hypotheses, references))[: args.recipe.num_samples_to_show]:
        mark = "ok " if hyp == ref else "ERR"
        print(f"  [{mark}] {src}\n        -> {hyp}\n   ref: {ref}")
    return scores


def finish_run(args: Arguments, trainer, results: dict, raw, stats, source_lang: str, target_lang: str) -> None:
    """The model card, then the results file, the last: the output folder now holds a finished run."""
    write_run_card(
        trainer, model_args=args.model, data_args=args.data, recipe_args=args.recipe, raw=raw, stats=stats,
        results=results, source_lang=source_lang, target_lang=target_lang,
    )  # fmt: skip
    write_results(args.training.output_dir, results)
    print("\nFinal scores:", json.dumps({k: v for k, v in results.items() if not k.endswith("signature")}, indent=2))
    if "test_bleu_signature" in results:
        print("sacreBLEU signature:", results["test_bleu_signature"])
    print(f"Model folder: {args.training.output_dir}")


def run(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    given = command_line_names(argv)
    start_run(args)
    started = time.time()
    resolve_short_run_model(args, given)
    plan = check_inputs(args)
    raw, source_lang, target_lang = load_data(args.data, args.model.cache_dir)
    if "train" not in raw and args.training.do_train:
        raise ValueError(f"The data has no 'train' split (splits: {list(raw)}).")
    tokenizer = choose_tokenizer(args, plan, raw, source_lang, target_lang)
    model = build_model(args.model, tokenizer)
    tokenizer.model_max_length = tokenizer_max_length(model.config)  # saved with it: no limit for sinusoids
    settle_training_and_decoding(args, model, given)
    raw, processed, stats = prepare_data(args, raw, tokenizer, source_lang, target_lang)
    record_longest_source(args, model, processed)
    trainer = make_trainer(args, model, tokenizer, processed, stats)
    results = train_and_save(trainer, plan, tokenizer, argv) if args.training.do_train else {}
    should_save = args.training.should_save
    if "test" in processed and should_save:
        results.update(score_test_split(args, model, tokenizer, raw["test"], source_lang, target_lang))
    results["total_seconds"] = round(time.time() - started, 1)
    if should_save:
        finish_run(args, trainer, results, raw, stats, source_lang, target_lang)
    return results


main = console_script(run)


if __name__ == "__main__":
    main()
