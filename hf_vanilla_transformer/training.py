"""Training pieces the paper needs and the Trainer lacks (§5): token-budget batches, its learning-rate
schedule, beam-search evaluation with sacreBLEU, and checkpoints that a killed run never leaves half-written.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
import shutil

import datasets
import numpy as np
import sacrebleu
import torch
from accelerate.data_loader import DataLoaderShard
from torch.utils.data import DataLoader
from transformers import Seq2SeqTrainer, TrainerCallback, TrainerState
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import (
    PREFIX_CHECKPOINT_DIR,
    SaveStrategy,
    TrainOutput,
    get_last_checkpoint,
    rotate_checkpoints,
)

from ._io import publish_folder, write_file
from .batching import TokenBudgetBatchSampler, TokenBudgetStream
from .configuration_vanilla_transformer import TABLE3, check_table3_row

logger = logging.getLogger(__name__)

STAGING_DIR = ".staging"
STREAM_POSITION = "stream_position_{}.json"  # per process, in each checkpoint of a token-budget stream


def paper_learning_rate(d_model: int, warmup_steps: int) -> float:
    """Peak of lrate = d_model^-0.5 * min(step^-0.5, step * warmup^-1.5) (§5.3), reached at step = warmup.

    With `lr_scheduler_type="inverse_sqrt"` and `warmup_steps=warmup`, the Trainer's schedule is the
    paper's exactly: a linear rise to this peak, then decay with step^-0.5.
    """
    if d_model <= 0 or warmup_steps <= 0:
        raise ValueError(f"d_model and warmup_steps must be positive, got {d_model} and {warmup_steps}.")
    return d_model**-0.5 * warmup_steps**-0.5


# What Table 3 varies in training rather than in the model, as the Trainer's arguments: epsilon_ls is 0.1 in every
# row but D3 and D4 (§5.4).
TABLE3_TRAINING = {row: {"label_smoothing_factor": 0.1} for row in TABLE3}
TABLE3_TRAINING["D3"] = {"label_smoothing_factor": 0.0}
TABLE3_TRAINING["D4"] = {"label_smoothing_factor": 0.2}


def table3_training_arguments(row: str) -> dict[str, float]:
    """The Trainer arguments a row of Table 3 sets (its label smoothing epsilon_ls as `label_smoothing_factor`)."""
    check_table3_row(row)
    return dict(TABLE3_TRAINING[row])


def translation_scores(hypotheses: list[str], references: list[str]) -> dict[str, float | str]:
    """Corpus sacreBLEU and chrF (with their signatures) and the share of exact matches, in percent."""
    if len(hypotheses) != len(references):
        raise ValueError(f"Got {len(hypotheses)} translations for {len(references)} references.")
    if not references:
        raise ValueError("No references to score against: the evaluation set is empty.")
    bleu = sacrebleu.metrics.BLEU()
    chrf = sacrebleu.metrics.CHRF()
    bleu_score = bleu.corpus_score(hypotheses, [references])
    chrf_score = chrf.corpus_score(hypotheses, [references])
    exact = sum(h.strip() == r.strip() for h, r in zip(hypotheses, references)) / len(references)
    return {
        "bleu": round(bleu_score.score, 2),
        "chrf": round(chrf_score.score, 2),
        "exact_match": round(100.0 * exact, 2),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
    }


def make_compute_metrics(tokenizer):
    """A `compute_metrics` for `Seq2SeqTrainer(predict_with_generate=True)`: BLEU, chrF and exact match."""

    def compute_metrics(eval_prediction) -> dict[str, float]:
        predictions, labels = eval_prediction.predictions, eval_prediction.label_ids
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        predictions = np.where(predictions < 0, tokenizer.pad_token_id, predictions)
        labels = np.where(labels < 0, tokenizer.pad_token_id, labels)
        hypotheses = tokenizer.batch_decode(predictions, skip_special_tokens=True)
        references = tokenizer.batch_decode(labels, skip_special_tokens=True)
        scores = translation_scores(hypotheses, references)
        return {k: v for k, v in scores.items() if not k.endswith("signature")}

    return compute_metrics


class TrainingDiverged(ValueError):
    """The loss or the weights stopped being finite numbers; training stopped before saving them."""


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest checkpoint folder in `output_dir`; staged (unfinished) ones are never returned."""
    if not os.path.isdir(output_dir):
        return None
    return get_last_checkpoint(output_dir)


def _warn_if_not_sharded(trainer) -> None:
    """One line when FSDP or DeepSpeed was asked for but accelerate set up something else: on CPUs it runs the
    processes as MULTI_CPU, plain DDP with every weight on every process, and says nothing."""
    args = trainer.args
    for name, asked, running in (
        ("FSDP", bool(args.fsdp) or _env_flag("ACCELERATE_USE_FSDP"), trainer.is_fsdp_enabled),
        ("DeepSpeed", bool(args.deepspeed) or _env_flag("ACCELERATE_USE_DEEPSPEED"), trainer.is_deepspeed_enabled),
    ):
        if asked and not running:
            logger.warning(
                "%s was asked for, but accelerate set up %s for %d process(es): nothing is sharded, every process "
                "holds all the weights (accelerate shards with %s on GPUs only).",
                name, trainer.accelerator.distributed_type.value, args.world_size, name,
            )  # fmt: skip


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


class _TrainerLogLines(logging.Filter):
    """The Trainer's "Running training" lines, where they count sentences of fixed batches: token-budget batches
    hold a varying number, and a stream's length is unknown (its "Num Epochs" would be sys.maxsize)."""

    def __init__(self, max_tokens: int, streamed: bool):
        super().__init__()
        self.max_tokens, self.streamed = max_tokens, streamed

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.getMessage().split("=")[0].strip()
        if name == "Instantaneous batch size per device":
            record.msg, record.args = f"  Batches of up to {self.max_tokens:,} source and target tokens per device", ()
        elif name == "Total train batch size (w. parallel, distributed & accumulation)":
            return False  # a count of sentences, which token-budget batches do not have
        elif self.streamed and name == "Num examples":
            record.msg, record.args = "  Num examples = a stream, counted as read (pairs_trained in the logs)", ()
        elif self.streamed and name == "Num Epochs":
            record.msg, record.args = "  Num Epochs = the passes over the stream max_steps takes (epoch in logs)", ()
        elif self.streamed and name == "Num update steps per epoch":
            return False
        return True


@contextlib.contextmanager
def _trainer_log_lines(max_tokens: int | None, streamed: bool):
    if max_tokens is None:
        yield
        return
    trainer_logger = logging.getLogger("transformers.trainer")
    rewrite = _TrainerLogLines(max_tokens, streamed)
    trainer_logger.addFilter(rewrite)
    try:
        yield
    finally:
        trainer_logger.removeFilter(rewrite)


class NoUnscheduledFinalCheckpoint(TrainerCallback):
    """The Trainer saves a checkpoint (weights, optimizer and scheduler state) at the last step even when
    `save_steps` does not fall there; the finished model is saved beside it anyway. Keep to the schedule."""

    def on_step_end(self, args, state, control, **kwargs):
        if (
            state.global_step >= state.max_steps
            and args.save_strategy == SaveStrategy.STEPS
            and state.save_steps
            and state.global_step % state.save_steps
        ):
            control.should_save = False
        return control


class VanillaSeq2SeqTrainer(Seq2SeqTrainer):
    """`Seq2SeqTrainer` with the paper's batching, crash-safe checkpoints, and label smoothing in the model's loss.

    `label_smoothing_factor` (epsilon_ls, §5.4) goes to the model's forward as `label_smoothing` in training when
    the model takes one, so it is fused into the chunked loss (the Trainer's own label smoother needs every
    logit); evaluation losses are then plain cross-entropy, the number perplexity comes from.

    max_tokens_per_batch: when set, training batches are packed by length up to this many padded source
        tokens and as many target tokens (§5.1), instead of a fixed number of sentences. Under several
        processes each rank takes every n-th batch. A streamed training set is packed a window at a time
        (`TokenBudgetStream`), and each process reads the stream it is given: give each its own share
        (`data.stream_share`, before tokenizing). The stream's position is saved with every checkpoint.
    shuffle_buffer_size: the pairs of a stream shuffled, sorted and packed together (the window).
    stream_filter_stats: the `StreamFilterStats` of a streamed training set, logged as training reads it.
    source_length_column, target_length_column: dataset columns holding each pair's token counts.
    """

    def __init__(
        self,
        *args,
        max_tokens_per_batch: int | None = None,
        shuffle_buffer_size: int = 20_000,
        stream_filter_stats=None,
        source_length_column: str = "source_length",
        target_length_column: str = "target_length",
        **kwargs,
    ):
        model = kwargs.get("model", args[0] if args else None)
        use_cache = getattr(getattr(model, "config", None), "use_cache", None)
        super().__init__(*args, **kwargs)
        if use_cache is not None:
            # The Trainer sets config.use_cache to TrainingArguments.use_cache (False unless asked), which every
            # checkpoint and the final config.json would then say; the model leaves the cache off itself when
            # given labels, and generate() wants it.
            self.model.config.use_cache = use_cache or self.args.use_cache
        if max_tokens_per_batch is not None and max_tokens_per_batch <= 0:
            raise ValueError(f"max_tokens_per_batch must be positive, got {max_tokens_per_batch}.")
        if shuffle_buffer_size < 1:
            raise ValueError(f"shuffle_buffer_size must be positive, got {shuffle_buffer_size}.")
        self.max_tokens_per_batch = max_tokens_per_batch
        self.shuffle_buffer_size = shuffle_buffer_size
        self.stream_filter_stats = stream_filter_stats
        self.stream: TokenBudgetStream | None = None  # the token-budget stream being trained on
        self._stream_pairs_at_start = 0
        self._resuming_from: str | None = None
        _warn_if_not_sharded(self)
        if not 0.0 <= self.args.label_smoothing_factor < 1.0:
            raise ValueError(f"label_smoothing_factor must be in [0, 1), got {self.args.label_smoothing_factor}.")
        self.label_smoothing = 0.0
        forward = inspect.signature(self.accelerator.unwrap_model(self.model).forward).parameters
        if self.label_smoother is not None and "label_smoothing" in forward:
            self.label_smoothing, self.label_smoother = self.label_smoother.epsilon, None
        self.length_columns = (source_length_column, target_length_column)
        self.sentences_per_batch = None  # per device, on average over an epoch of token-budget batches
        self.add_callback(NoUnscheduledFinalCheckpoint)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.label_smoothing and "labels" in inputs and model.training:
            inputs = {**inputs, "label_smoothing": self.label_smoothing}
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs) -> TrainOutput:
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
        if resume_from_checkpoint and self._is_last_step(resume_from_checkpoint):
            # Resumed at its last step, the Trainer would train one step more (past max_steps) or none, and report
            # a loss of 0 either way. Load the checkpoint and train nothing: there are no training figures to give.
            logger.info("%s is the run's last step: nothing is left to train.", resume_from_checkpoint)
            self._load_from_checkpoint(resume_from_checkpoint)
            self.state = TrainerState.load_from_json(os.path.join(resume_from_checkpoint, TRAINER_STATE_NAME))
            return TrainOutput(self.state.global_step, None, {})
        self._resuming_from = resume_from_checkpoint or None
        streamed = self.max_tokens_per_batch is not None and isinstance(self.train_dataset, datasets.IterableDataset)
        with _trainer_log_lines(self.max_tokens_per_batch, streamed):
            return super().train(resume_from_checkpoint, *args, **kwargs)

    def _is_last_step(self, checkpoint: str) -> bool:
        state = TrainerState.load_from_json(os.path.join(checkpoint, TRAINER_STATE_NAME))
        if self.args.max_steps > 0:
            return state.global_step >= self.args.max_steps
        same_epochs = state.num_train_epochs == math.ceil(self.args.num_train_epochs)
        return same_epochs and 0 < state.max_steps <= state.global_step

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        # A NaN or infinite loss gives NaN gradients, and the optimizer step after it NaN weights: stop before that
        # step. The Trainer reads every step's loss on the host anyway, so this waits for nothing more (its
        # logging_nan_inf_filter would log an average in place of the NaN and go on training NaN weights).
        losses = loss.detach().float().reshape(1)
        if self.args.world_size > 1:  # all processes stop together; one alone would leave the others waiting
            losses = self.accelerator.gather(losses)
        if not torch.isfinite(losses).all():
            value = losses[~torch.isfinite(losses)][0].item()
            raise TrainingDiverged(self._stopped(f"at step {self.state.global_step + 1}: the loss became {value}"))
        return loss

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        # Checkpoints and the final model both come through here: never write weights that are not numbers.
        model = self.accelerator.unwrap_model(self.model)
        finite = float(all(torch.isfinite(p).all() for p in model.parameters()))
        finite = torch.tensor([finite], device=self.args.device)
        if self.args.world_size > 1:  # every process stops, or none
            finite = self.accelerator.gather(finite)
        if not finite.all():
            bad = next((n for n, p in model.named_parameters() if not torch.isfinite(p).all()), None)
            bad = bad or "a weight of another process"
            raise TrainingDiverged(self._stopped(f"by step {self.state.global_step}: {bad} is no longer finite"))
        super().save_model(output_dir, _internal_call=_internal_call)

    def _stopped(self, what: str) -> str:
        checkpoint = last_complete_checkpoint(self.args.output_dir)
        kept = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint had been saved before"
        return (
            f"Training diverged {what}. It stopped there and saved nothing; {kept}. A lower learning rate, a longer "
            "warm-up or gradient clipping (max_grad_norm) usually helps."
        )

    def _issue_warnings_after_load(self, load_result) -> None:
        # A checkpoint stores tied weights once (safetensors keeps no aliases) and loading fills the others through
        # the tie, so they are not missing: the Trainer would warn about them on every resume.
        model = self.accelerator.unwrap_model(self.model)
        tied = set(getattr(model, "all_tied_weights_keys", None) or {})
        missing = [key for key in load_result.missing_keys if key not in tied]
        if len(missing) < len(load_result.missing_keys):
            model.tie_weights()
        super()._issue_warnings_after_load(load_result._replace(missing_keys=missing))

    def get_train_dataloader(self) -> DataLoader:
        if self.max_tokens_per_batch is None:
            return super().get_train_dataloader()
        dataset = self.train_dataset
        if isinstance(dataset, datasets.IterableDataset):
            return self._stream_dataloader(dataset)
        missing = [c for c in self.length_columns if c not in dataset.column_names]
        if missing:
            raise ValueError(
                f"Token-budget batching needs the columns {missing} in the training set (have {dataset.column_names}); "
                "preprocess it with hf_vanilla_transformer.data.preprocess_dataset."
            )
        # Read as arrays, straight from arrow: walking millions of rows into Python tuples took minutes.
        table = dataset.select_columns(list(self.length_columns)).with_format("arrow")[:]
        lengths = np.stack([table.column(name).to_numpy() for name in self.length_columns], axis=1)
        sampler = TokenBudgetBatchSampler(
            lengths,
            max_tokens=self.max_tokens_per_batch,
            shuffle=True,
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
            num_replicas=self.args.world_size,
            rank=self.args.process_index,
        )
        self.sentences_per_batch = len(dataset) / max(1, len(sampler) * self.args.world_size)
        dataset = self._remove_unused_columns(dataset, description="training")
        # The sampler splits the batches across processes itself rather than under accelerate's BatchSamplerShard:
        # a resumed run wraps the loader's batch sampler once more (skip_first_batches), and set_epoch reaches
        # through one wrapper only, so a run resumed in epoch 1 or later would replay epoch 0's order.
        return DataLoaderShard(
            dataset,
            device=self.args.device,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )

    def _stream_dataloader(self, dataset: datasets.IterableDataset) -> DataLoader:
        missing = [c for c in self.length_columns if c not in (dataset.column_names or [])]
        if missing:
            raise ValueError(
                f"Token-budget batching needs the columns {missing} in the training stream (have "
                f"{dataset.column_names}); preprocess it with hf_vanilla_transformer.data.preprocess_dataset."
            )
        if self.args.remove_unused_columns:
            self._set_signature_columns_if_needed()
            keep = {*self._signature_columns, *self.length_columns}
            dataset = dataset.remove_columns([c for c in dataset.column_names if c not in keep])
        self._stream_pairs_at_start = 0
        self.stream = TokenBudgetStream(
            dataset,
            max_tokens=self.max_tokens_per_batch,
            window_size=self.shuffle_buffer_size,
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
            length_columns=self.length_columns,
        )
        # Batches are made in this process, one when the Trainer asks for it, so that the stream's position at a
        # checkpoint is known (workers would read ahead, each through the whole stream).
        return DataLoader(
            self.stream, batch_size=None, collate_fn=self.data_collator, pin_memory=self.args.dataloader_pin_memory
        )

    def get_resumed_dataloader(self, dataloader: DataLoader, num_batches: int) -> DataLoader:
        if self.stream is None or dataloader.dataset is not self.stream:
            return super().get_resumed_dataloader(dataloader, num_batches)
        path = os.path.join(self._resuming_from or "", STREAM_POSITION.format(self.args.process_index))
        if not os.path.isfile(path):
            logger.warning("%s has no stream position: reading the stream again up to step %d.", path, num_batches)
            return super().get_resumed_dataloader(dataloader, num_batches)
        with open(path, encoding="utf-8") as handle:
            self.stream.restore(json.load(handle))
        self._stream_pairs_at_start = self.stream.pairs
        if self.stream.batches != num_batches:
            raise ValueError(
                f"{path} holds the stream's position after {self.stream.batches} batches, but the checkpoint is at "
                f"{num_batches}; it belongs to another run."
            )
        logger.info("Resuming the stream where %s left it (epoch %d).", self._resuming_from, self.stream.epoch)
        return dataloader

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self.stream is not None:
            # A stream's length is unknown: the Trainer's epoch would be the fraction of max_steps. Say what was read.
            self.state.epoch = self.stream.epochs()
            logs["pairs_trained"] = self.stream.pairs
            if self.stream_filter_stats is not None:
                logs["pairs_dropped_empty"] = self.stream_filter_stats.dropped_empty
                logs["pairs_dropped_too_long"] = self.stream_filter_stats.dropped_too_long
            if "train_samples_per_second" in logs:
                pairs = self.stream.pairs - self._stream_pairs_at_start
                logs["train_samples_per_second"] = round(pairs * self.args.world_size / logs["train_runtime"], 3)
        elif self.sentences_per_batch is not None and "train_samples_per_second" in logs:
            # The Trainer counts per_device_train_batch_size sentences a batch; token-budget batches hold more.
            per_step = self.sentences_per_batch * self.args.gradient_accumulation_steps * self.args.world_size
            logs["train_samples_per_second"] = round(logs["train_steps_per_second"] * per_step, 3)
        super().log(logs, *args, **kwargs)

    def _save_checkpoint(self, model, trial) -> None:
        # The Trainer writes checkpoint-N file by file; a run killed in between would leave a folder that
        # looks complete to `resume_from_checkpoint`. Write it under a staging folder, then rename it into
        # place in one step (a rename within a file system is atomic).
        run_dir = self._get_output_dir(trial=trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_root = os.path.join(run_dir, STAGING_DIR)
        if self.args.should_save:
            shutil.rmtree(os.path.join(staging_root, name), ignore_errors=True)  # left by a killed run
        self.accelerator.wait_for_everyone()
        original = self._get_output_dir
        self._get_output_dir = lambda trial=None: staging_root
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._get_output_dir = original
        if self.stream is not None:  # every process its own, as the Trainer saves each one's random state
            position = self.stream.position(self.state.global_step * self.args.gradient_accumulation_steps)
            path = os.path.join(staging_root, name, STREAM_POSITION.format(self.args.process_index))
            write_file(path, json.dumps(position))
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            publish_folder(os.path.join(staging_root, name), os.path.join(run_dir, name), replace=True)
            if self.state.best_model_checkpoint and self.state.best_model_checkpoint.startswith(staging_root):
                self.state.best_model_checkpoint = self.state.best_model_checkpoint.replace(
                    staging_root, run_dir, 1
                )
            rotate_checkpoints(
                run_dir, save_total_limit=self.args.save_total_limit, best_model_checkpoint=self.state.best_model_checkpoint
            )
        self.accelerator.wait_for_everyone()
