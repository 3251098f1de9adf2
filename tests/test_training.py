"""The training pieces of `hf_vanilla_transformer.training`: the paper's learning rate, scoring, batching."""

import logging
from collections import Counter

import datasets
import numpy as np
import pytest
import sacrebleu
import torch
import transformers
from transformers import DataCollatorForSeq2Seq, EvalPrediction, Seq2SeqTrainingArguments, get_scheduler

from hf_vanilla_transformer import VanillaTransformerConfig, VanillaTransformerForConditionalGeneration
from hf_vanilla_transformer.builtin_task import SOURCE_LANG, TARGET_LANG, load_builtin_dataset
from hf_vanilla_transformer.data import preprocess_dataset
from hf_vanilla_transformer.tokenization import train_bpe_tokenizer
from hf_vanilla_transformer.training import (
    VanillaSeq2SeqTrainer,
    make_compute_metrics,
    paper_learning_rate,
    translation_scores,
)


def paper_formula(step: int, d_model: int, warmup: int) -> float:
    """§5.3, eq. (3): lrate = d_model^-0.5 * min(step_num^-0.5, step_num * warmup_steps^-1.5)."""
    if step == 0:
        return 0.0
    return d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


@pytest.fixture(scope="module")
def builtin_pairs():
    return load_builtin_dataset(train_size=150, validation_size=0, test_size=0)


@pytest.fixture(scope="module")
def tokenizer(builtin_pairs):
    def texts():
        for pair in builtin_pairs["train"]["translation"]:
            yield pair[SOURCE_LANG]
            yield pair[TARGET_LANG]

    return train_bpe_tokenizer(texts(), vocab_size=300)


# ---------------------------------------------------------------------------------------------
# §5.3: the learning rate
# ---------------------------------------------------------------------------------------------


def test_paper_learning_rate_is_the_peak_of_the_schedule():
    assert paper_learning_rate(512, 4000) == pytest.approx(512**-0.5 * 4000**-0.5)
    assert paper_learning_rate(512, 4000) == pytest.approx(paper_formula(4000, 512, 4000))
    # The peak: the formula is lower one step before and one step after the warmup.
    assert paper_formula(3999, 512, 4000) < paper_learning_rate(512, 4000)
    assert paper_formula(4001, 512, 4000) < paper_learning_rate(512, 4000)


@pytest.mark.parametrize("d_model, warmup", [(0, 4000), (512, 0), (-1, 10)])
def test_paper_learning_rate_rejects_non_positive_arguments(d_model, warmup):
    with pytest.raises(ValueError, match="must be positive"):
        paper_learning_rate(d_model, warmup)


@pytest.mark.parametrize("d_model, warmup", [(512, 4000), (1024, 4000), (32, 7)])
def test_inverse_sqrt_schedule_with_the_paper_peak_is_the_paper_formula(d_model, warmup):
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=paper_learning_rate(d_model, warmup))
    scheduler = get_scheduler("inverse_sqrt", optimizer, num_warmup_steps=warmup)
    optimizer.step()
    step = 0
    for target in sorted({0, 1, 2, warmup // 2, warmup - 1, warmup, warmup + 1, 2 * warmup + 3}):
        while step < target:
            scheduler.step()
            step += 1
        assert scheduler.get_last_lr()[0] == pytest.approx(paper_formula(step, d_model, warmup), rel=1e-9, abs=1e-15)
    # Far into the decay, from the schedule's own multiplier.
    far = 100 * warmup + 7
    assert optimizer.defaults["lr"] * scheduler.lr_lambdas[0](far) == pytest.approx(paper_formula(far, d_model, warmup))


# ---------------------------------------------------------------------------------------------
# §6.1: BLEU (and chrF, exact match) scoring
# ---------------------------------------------------------------------------------------------

HYPOTHESES = ["the cat sat on the mat", "a dog runs in the park", "hello world", "it is raining today"]
REFERENCES = ["the cat sat on the mat", "the dog runs in the park", "hello world", "it was raining yesterday"]


def test_translation_scores_match_sacrebleu():
    scores = translation_scores(HYPOTHESES, REFERENCES)
    bleu = sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES])
    chrf = sacrebleu.corpus_chrf(HYPOTHESES, [REFERENCES])
    assert scores["bleu"] == pytest.approx(round(bleu.score, 2))
    assert scores["chrf"] == pytest.approx(round(chrf.score, 2))
    assert 0 < scores["bleu"] < 100
    assert scores["exact_match"] == 50.0  # 2 of 4
    assert scores["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert scores["chrf_signature"].startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:")


def test_translation_scores_perfect_and_exact_match_ignores_outer_spaces():
    scores = translation_scores([" hello world ", "good night"], ["hello world", "good night"])
    assert scores["exact_match"] == 100.0
    assert translation_scores(REFERENCES, REFERENCES)["bleu"] == 100.0


def test_translation_scores_reject_mismatched_or_empty_inputs():
    with pytest.raises(ValueError, match="Got 1 translations for 2 references"):
        translation_scores(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="empty"):
        translation_scores([], [])


def test_compute_metrics_decodes_predictions_and_minus_100_labels(tokenizer):
    sources = ["the old farmer sees a red boat", "every forest runs", "my dog"]
    hypotheses = ["the old farmer sees a boat", "every forest runs", "my cat"]
    predictions = tokenizer(hypotheses, padding=True, return_tensors="np")["input_ids"]
    # Generated sequences start with the decoder start token and may be padded with -100 by the Trainer.
    predictions = np.concatenate([np.full((len(hypotheses), 1), tokenizer.bos_token_id), predictions], axis=1)
    predictions[predictions == tokenizer.pad_token_id] = -100
    labels = tokenizer(sources, padding=True, return_tensors="np")["input_ids"]
    labels[labels == tokenizer.pad_token_id] = -100
    assert (labels == -100).any() and (predictions == -100).any()

    metrics = make_compute_metrics(tokenizer)(EvalPrediction(predictions=predictions, label_ids=labels))
    expected = translation_scores(hypotheses, sources)
    assert metrics == {k: v for k, v in expected.items() if not k.endswith("signature")}
    assert metrics["exact_match"] == pytest.approx(100 / 3, abs=0.01)
    # A tuple of outputs (as the Trainer may give) is read by its first element.
    again = make_compute_metrics(tokenizer)(EvalPrediction(predictions=(predictions,), label_ids=labels))
    assert again == metrics


# ---------------------------------------------------------------------------------------------
# §5.1: token-budget batches in the Trainer
# ---------------------------------------------------------------------------------------------


def make_trainer(
    tmp_path, tokenizer, train_dataset, max_steps=-1, trainer_class=VanillaSeq2SeqTrainer, args=None, **kwargs
):
    config = VanillaTransformerConfig(
        vocab_size=len(tokenizer),
        d_model=16,
        d_ff=32,
        num_heads=2,
        encoder_layers=1,
        decoder_layers=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.bos_token_id,
    )
    model = VanillaTransformerForConditionalGeneration(config)
    args = Seq2SeqTrainingArguments(
        output_dir=str(tmp_path / "out"), report_to="none", seed=3, use_cpu=True, max_steps=max_steps, **(args or {})
    )
    return trainer_class(
        model=model,
        args=args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        **kwargs,
    )


def unpadded_rows(batch) -> list[tuple[int, ...]]:
    return [tuple(ids[mask.bool()].tolist()) for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]


@pytest.mark.parametrize("budget", [64, 200])
def test_token_budget_batches_respect_the_budget_and_cover_each_example_once(tmp_path, tokenizer, builtin_pairs, budget):
    train, _ = preprocess_dataset(
        builtin_pairs["train"], tokenizer, SOURCE_LANG, TARGET_LANG, max_source_length=64, max_target_length=64
    )
    trainer = make_trainer(tmp_path, tokenizer, train, max_tokens_per_batch=budget)
    loader = trainer.get_train_dataloader()
    expected = Counter(tuple(ids) for ids in train["input_ids"])
    assert sum(expected.values()) == len(train) > 100

    orders = []
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        seen = []
        for batch in loader:
            assert set(batch) >= {"input_ids", "attention_mask", "labels", "decoder_input_ids"}
            assert "source_length" not in batch  # length columns are for the sampler, not the model
            assert batch["input_ids"].numel() <= budget  # padded source tokens
            assert batch["labels"].numel() <= budget  # padded target tokens
            seen += unpadded_rows(batch)
        assert Counter(seen) == expected  # every example exactly once per epoch
        orders.append(seen)
    assert orders[0] != orders[1]  # a new permutation each epoch
    # A larger budget packs fewer, bigger batches.
    assert len(loader) < len(train)


def test_token_budget_trainer_rejects_bad_budget_and_missing_length_columns(tmp_path, tokenizer, builtin_pairs):
    train, _ = preprocess_dataset(
        builtin_pairs["train"], tokenizer, SOURCE_LANG, TARGET_LANG, max_source_length=64, max_target_length=64
    )
    with pytest.raises(ValueError, match="max_tokens_per_batch must be positive"):
        make_trainer(tmp_path, tokenizer, train, max_tokens_per_batch=0)
    trainer = make_trainer(tmp_path, tokenizer, train.remove_columns("target_length"), max_tokens_per_batch=100)
    with pytest.raises(ValueError, match=r"needs the columns \['target_length'\]"):
        trainer.get_train_dataloader()


class RecordingTrainer(VanillaSeq2SeqTrainer):
    """Writes down the unpadded source rows of every batch it trains on, by step."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.seen = getattr(self, "seen", [])
        sizes = inputs["input_ids"].numel(), inputs["labels"].numel()
        self.seen.append((self.state.global_step, unpadded_rows(inputs), *sizes))
        return super().training_step(model, inputs, num_items_in_batch)


def test_a_stream_gets_token_budget_batches_and_resumes_where_its_checkpoint_left_it(
    tmp_path, tokenizer, builtin_pairs
):
    train, _ = preprocess_dataset(
        builtin_pairs["train"], tokenizer, SOURCE_LANG, TARGET_LANG, max_source_length=64, max_target_length=64
    )
    stream, stats = preprocess_dataset(
        builtin_pairs["train"].to_iterable_dataset(), tokenizer, SOURCE_LANG, TARGET_LANG, 64, 64
    )
    # 148 pairs in windows of 40: the 20 steps go past the end of the stream into its second epoch, and the
    # checkpoint at step 7 falls inside a window.
    options = dict(
        max_steps=20, max_tokens_per_batch=400, shuffle_buffer_size=40, stream_filter_stats=stats,
        trainer_class=RecordingTrainer, args={"save_strategy": "steps", "save_steps": 7, "logging_steps": 1},
    )  # fmt: skip
    whole = make_trainer(tmp_path / "whole", tokenizer, stream, **options)
    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    trainer_logger = logging.getLogger("transformers.trainer")
    trainer_logger.addHandler(handler)
    verbosity = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_info()
    try:
        whole.train()
    finally:
        transformers.utils.logging.set_verbosity(verbosity)
        trainer_logger.removeHandler(handler)
    log = "\n".join(lines)
    assert "Num Epochs = the passes over the stream max_steps takes (epoch in logs)" in log
    assert "9,223,372,036,854,775,807" not in log and "Instantaneous batch size" not in log
    for _, rows, source_tokens, target_tokens in whole.seen:
        assert source_tokens <= 400 and target_tokens <= 400  # padded, both sides
    first_epoch = Counter(row for _, rows, *_ in whole.seen for row in rows)
    assert sum(first_epoch.values()) > len(train)  # into the second pass
    assert set(first_epoch) == {tuple(ids) for ids in train["input_ids"]}
    history = [entry for entry in whole.state.log_history if "loss" in entry]
    assert "epoch" not in history[0]  # unknown in the first pass: no fraction of max_steps passed off as an epoch
    assert 1 < history[-1]["epoch"] < 2 and history[-1]["pairs_trained"] == sum(len(rows) for _, rows, *_ in whole.seen)
    assert stats.kept >= len(train) and stats.dropped_empty == 0

    assert (tmp_path / "whole" / "out" / "checkpoint-7" / "stream_position_0.json").is_file()
    resumed = make_trainer(tmp_path / "whole", tokenizer, stream, **options)  # the same output folder
    resumed.train(resume_from_checkpoint=str(tmp_path / "whole" / "out" / "checkpoint-7"))
    assert [step for step, *_ in resumed.seen] == list(range(7, 20))
    assert [rows for _, rows, *_ in resumed.seen] == [rows for _, rows, *_ in whole.seen[7:]]


def test_asking_for_fsdp_where_accelerate_cannot_shard_says_so_in_one_line(
    tmp_path, tokenizer, builtin_pairs, monkeypatch, caplog
):
    # On CPUs accelerate turns `accelerate launch --use_fsdp` (this variable) into plain data parallelism, silently.
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with caplog.at_level(logging.WARNING, logger="hf_vanilla_transformer.training"):
        make_trainer(tmp_path, tokenizer, builtin_pairs["train"])
    warnings = [r.getMessage() for r in caplog.records if r.name == "hf_vanilla_transformer.training"]
    assert len(warnings) == 1
    assert warnings[0].startswith("FSDP was asked for, but accelerate set up NO for 1 process(es): nothing is sharded")
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    caplog.clear()
    make_trainer(tmp_path, tokenizer, builtin_pairs["train"])
    assert not [r for r in caplog.records if r.name == "hf_vanilla_transformer.training"]


def test_token_budget_batches_read_the_length_columns_as_arrays(tmp_path, tokenizer, builtin_pairs, monkeypatch):
    train, _ = preprocess_dataset(builtin_pairs["train"], tokenizer, SOURCE_LANG, TARGET_LANG, 64, 64)
    trainer = make_trainer(tmp_path, tokenizer, train, max_tokens_per_batch=200)
    original = datasets.Dataset.__getitem__

    def no_column_walks(self, key):
        # dataset["source_length"] hands out a column to walk in Python, row by row: minutes at WMT size.
        assert not isinstance(key, str), f"column {key!r} read row by row"
        return original(self, key)

    monkeypatch.setattr(datasets.Dataset, "__getitem__", no_column_walks)
    assert len(trainer.get_train_dataloader()) > 1


def test_a_trained_model_is_saved_with_its_cache_on(tmp_path, tokenizer, builtin_pairs):
    # The Trainer sets config.use_cache to TrainingArguments.use_cache (False); generation uses the cache.
    train, _ = preprocess_dataset(
        builtin_pairs["train"], tokenizer, SOURCE_LANG, TARGET_LANG, max_source_length=64, max_target_length=64
    )
    trainer = make_trainer(tmp_path, tokenizer, train, max_steps=1)
    trainer.train()
    trainer.save_model(tmp_path / "final")  # checkpoints save the same config
    assert VanillaTransformerConfig.from_pretrained(tmp_path / "final").use_cache is True
