"""transformers' conventions, checked on this model and, where the convention is one, on MarianMTModel too: the same
test passing on Marian shows that the convention, not our reading of it, is what is tested."""

import logging
import warnings

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from huggingface_hub.errors import StrictDataclassError
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForSeq2SeqLM,
    DataCollatorForSeq2Seq,
    MarianConfig,
    MarianMTModel,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
)
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.generation import GenerationMode
from transformers.utils import logging as hf_logging

from hf_vanilla_transformer import (
    VanillaTransformerConfig,
    VanillaTransformerForConditionalGeneration,
    paper_generation_config,
)
from hf_vanilla_transformer.training import VanillaSeq2SeqTrainer

PAD, START, EOS, VOCAB, LAYERS = 0, 1, 2, 40, 2


def build(kind: str, attn_implementation: str = "eager", **overrides):
    torch.manual_seed(0)
    if kind == "marian":
        config = MarianConfig(
            vocab_size=VOCAB, d_model=16, encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_layers=LAYERS, decoder_layers=LAYERS, max_position_embeddings=64,
            pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=START, dropout=0.0, **overrides,
        )  # fmt: skip
        model = MarianMTModel(config)
    else:
        config = VanillaTransformerConfig(
            vocab_size=VOCAB, d_model=16, d_ff=32, num_heads=2, encoder_layers=LAYERS, decoder_layers=LAYERS,
            max_position_embeddings=64, pad_token_id=PAD, bos_token_id=START, eos_token_id=EOS,
            decoder_start_token_id=START, dropout=0.0, **overrides,
        )  # fmt: skip
        model = VanillaTransformerForConditionalGeneration(config)
    model.set_attn_implementation(attn_implementation)
    return model.eval()


def batch():
    source = torch.tensor([[5, 6, 7, 8, 9, EOS], [10, 11, 12, EOS, PAD, PAD]])
    labels = torch.tensor([[13, 14, 15, EOS], [16, 17, EOS, -100]])
    decoder_input_ids = torch.tensor([[START, 13, 14, 15], [START, 16, 17, EOS]])
    return source, (source != PAD).long(), labels, decoder_input_ids


@pytest.fixture
def transformers_warnings():
    """The messages transformers logs (its loggers do not propagate to the root logger) during the test."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    library = hf_logging.get_logger("transformers")
    library.addHandler(handler)
    hf_logging.get_logger("transformers").warning_once.__func__.cache_clear()  # warnings issued once per process
    try:
        yield records
    finally:
        library.removeHandler(handler)


# --- 1. The cache's old name is accepted with a deprecation warning, and no other keyword is swallowed ---


@pytest.mark.parametrize("kind", ["vanilla", "marian"])
def test_past_key_values_still_works_step_by_step_with_a_deprecation_warning(kind):
    model = build(kind)
    source, mask, _, decoder_input_ids = batch()
    with torch.no_grad():
        full = model(input_ids=source, attention_mask=mask, decoder_input_ids=decoder_input_ids).logits
        encoder_outputs = model.get_encoder()(input_ids=source, attention_mask=mask)
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        steps = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for i in range(decoder_input_ids.shape[1]):
                step = model(
                    encoder_outputs=encoder_outputs, attention_mask=mask, decoder_input_ids=decoder_input_ids[:, i : i + 1],
                    past_key_values=cache, use_cache=True,
                )  # fmt: skip
                steps.append(step.logits)
    assert cache.get_seq_length() == decoder_input_ids.shape[1]  # every step read and extended the one cache
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
    assert any("past_key_values" in str(w.message) and "cache" in str(w.message) for w in caught)


@pytest.mark.parametrize("kind", ["vanilla", "marian"])
def test_forwards_take_transformers_kwargs_and_generate_refuses_a_mistyped_one(kind):
    # The forwards take **kwargs: Unpack[TransformersKwargs], passed on to the attention kernels (position_ids is one,
    # for packed sequences under flash attention); generate() is where a mistyped keyword is caught, before any step.
    model = build(kind)
    source, mask, _, decoder_input_ids = batch()
    inputs = dict(input_ids=source, attention_mask=mask, decoder_input_ids=decoder_input_ids)
    with torch.no_grad():
        plain = model(**inputs).logits
        torch.testing.assert_close(model(**inputs, position_ids=torch.arange(4)[None]).logits, plain)
    with pytest.raises(ValueError, match=r"not used by the model: \['past_key_value'\]"):
        model.generate(input_ids=source, attention_mask=mask, max_new_tokens=2, past_key_value=torch.ones(1))


# --- 2. The model's loss is plain cross-entropy; label smoothing is the Trainer's ---


@pytest.mark.parametrize("kind", ["vanilla", "marian"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_loss_from_labels_is_plain_cross_entropy(kind, training):
    model = build(kind)
    source, mask, labels, _ = batch()
    with torch.no_grad():
        logits = model(input_ids=source, attention_mask=mask, labels=labels).logits
    expected = F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1), ignore_index=-100)
    model.train(training)  # dropout is 0; in training this model's loss is the chunked one (loss.py)
    loss = model(input_ids=source, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=0)


def _training_loss(trainer_class, model, smoothing: float) -> torch.Tensor:
    source, mask, labels, decoder_input_ids = batch()
    args = Seq2SeqTrainingArguments(
        output_dir="unused", label_smoothing_factor=smoothing, report_to="none", use_cpu=True, save_strategy="no"
    )
    trainer = trainer_class(model=model, args=args)
    model.train()
    # What DataCollatorForSeq2Seq gives: transformers' label smoother takes the labels away before the forward.
    inputs = {"input_ids": source, "attention_mask": mask, "labels": labels, "decoder_input_ids": decoder_input_ids}
    return trainer.compute_loss(model, inputs), trainer


def test_trainer_label_smoothing_factor_is_fused_into_the_models_loss():
    source, mask, labels, _ = batch()
    sharp = {"init_scheme": "xavier"}  # logits far from uniform, so that smoothing changes the loss
    with torch.no_grad():
        logits = build("vanilla", **sharp)(input_ids=source, attention_mask=mask, labels=labels).logits
    expected = F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1), ignore_index=-100, label_smoothing=0.1)
    # transformers' own label smoother (every logit) and ours (fused into the chunked loss) give the same number.
    plain, plain_trainer = _training_loss(Seq2SeqTrainer, build("vanilla", **sharp), 0.1)
    fused, fused_trainer = _training_loss(VanillaSeq2SeqTrainer, build("vanilla", **sharp), 0.1)
    assert plain_trainer.label_smoother is not None and fused_trainer.label_smoother is None
    torch.testing.assert_close(plain, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=0)
    unsmoothed, _ = _training_loss(VanillaSeq2SeqTrainer, build("vanilla", **sharp), 0.0)
    plain_expected = F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(unsmoothed, plain_expected, atol=1e-5, rtol=0)
    assert abs(plain_expected - expected) > 0.01  # the two really differ


@pytest.mark.parametrize("smoothing", [-0.1, 1.0, 1.5])
def test_trainer_refuses_a_label_smoothing_factor_outside_0_1(smoothing):
    # Checked once where it enters, not in every forward.
    with pytest.raises(ValueError, match=rf"label_smoothing_factor must be in \[0, 1\), got {smoothing}"):
        _training_loss(VanillaSeq2SeqTrainer, build("vanilla"), smoothing)


def test_a_config_saved_with_label_smoothing_loads_and_the_loss_stays_plain():
    model = build("vanilla", label_smoothing=0.1)  # written by versions whose model loss was label-smoothed
    source, mask, labels, _ = batch()
    out = model(input_ids=source, attention_mask=mask, labels=labels)
    expected = F.cross_entropy(out.logits.reshape(-1, VOCAB), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=0)


# --- 3. A checkpoint without the embedding reports it missing ---


@pytest.mark.parametrize("kind", ["vanilla", "marian"])
def test_checkpoint_without_the_embedding_reports_it_missing(kind, tmp_path):
    build(kind).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    embedding = [key for key in weights if "embed_tokens" in key or "shared" in key or "lm_head" in key]
    assert len(embedding) == 1  # tied: stored once
    save_file({k: v for k, v in weights.items() if k not in embedding}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})  # fmt: skip
    if kind == "vanilla":
        import hf_vanilla_transformer  # noqa: F401  (registers the Auto classes)
    model, info = AutoModelForSeq2SeqLM.from_pretrained(tmp_path, output_loading_info=True)
    assert embedding[0] in info["missing_keys"]
    weight = model.get_input_embeddings().weight
    assert weight.device.type == "cpu" and torch.isfinite(weight).all() and weight.std() > 0  # initialised
    assert model.get_output_embeddings().weight is weight
    source, mask, _, decoder_input_ids = batch()
    assert torch.isfinite(model(input_ids=source, attention_mask=mask, decoder_input_ids=decoder_input_ids).logits).all()


# --- 4. output_attentions=True under sdpa: the weights, or a warning; never a silent None ---


@pytest.mark.parametrize("kind", ["vanilla", "marian"])
def test_output_attentions_under_sdpa_returns_the_weights_or_warns(kind, transformers_warnings):
    model = build(kind, attn_implementation="sdpa")
    source, mask, _, decoder_input_ids = batch()
    with torch.no_grad():
        out = model(input_ids=source, attention_mask=mask, decoder_input_ids=decoder_input_ids, output_attentions=True)
    maps = [*out.encoder_attentions, *out.decoder_attentions, *out.cross_attentions]
    warned = any("output_attentions" in r.getMessage() for r in transformers_warnings)
    assert warned or (len(maps) == 3 * LAYERS and all(isinstance(m, torch.Tensor) for m in maps))
    assert None not in maps
    if kind == "vanilla":  # this model returns them: they must be eager's, masks included
        with torch.no_grad():
            eager = build(kind, attn_implementation="eager")(
                input_ids=source, attention_mask=mask, decoder_input_ids=decoder_input_ids, output_attentions=True
            )
        for got, expected in zip(maps, [*eager.encoder_attentions, *eager.decoder_attentions, *eager.cross_attentions]):
            torch.testing.assert_close(got, expected)
        assert torch.all(out.decoder_attentions[0].triu(diagonal=1) == 0)  # causal
        assert torch.all(out.encoder_attentions[0][1, :, :, 4:] == 0)  # padding gets no weight
        assert model.config._attn_implementation == "sdpa"  # only that call ran eager


# --- 5. A model built from a config decodes greedily, up to source length + 50 tokens; a trained one as it was saved ---


@pytest.mark.parametrize("kind", ["vanilla", "marian"])
def test_a_model_built_from_a_config_decodes_greedily(kind):
    assert build(kind).generation_config.get_generation_mode() == GenerationMode.GREEDY_SEARCH


def test_the_output_limit_is_source_length_plus_50_and_the_papers_decoding_is_saved(tmp_path):
    model = build("vanilla")
    source = torch.randint(3, VOCAB, (1, 30), generator=torch.Generator().manual_seed(0))
    model.save_pretrained(tmp_path / "fresh")
    for fresh in (model, AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "fresh")):
        assert fresh.generation_config.get_generation_mode() == GenerationMode.GREEDY_SEARCH
        never_ending = fresh.generate(input_ids=source, suppress_tokens=[EOS])
        assert never_ending.shape[1] == 1 + 30 + 50  # the start token, then up to source length + 50
    model.generation_config = paper_generation_config(model.config)  # what hf-vanilla-train saves (§6.1)
    generation = model.generation_config
    assert (generation.num_beams, generation.length_penalty, generation.early_stopping) == (4, 0.6, True)
    assert generation.max_new_tokens_beyond_source == 50
    model.save_pretrained(tmp_path / "trained")
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "trained").generation_config
    assert (reloaded.num_beams, reloaded.length_penalty, reloaded.max_new_tokens_beyond_source) == (4, 0.6, 50)


def test_seq2seq_trainer_predictions_are_not_cut_at_20_tokens(tmp_path):
    model = build("vanilla")
    model.generation_config.suppress_tokens = [EOS]  # an untrained model would stop anywhere: make it run to the limit
    source = torch.randint(3, VOCAB, (30,), generator=torch.Generator().manual_seed(0)).tolist()
    data = Dataset.from_dict({"input_ids": [source], "attention_mask": [[1] * 30], "labels": [[5, 6, EOS]]})
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), predict_with_generate=True, report_to="none", use_cpu=True,
                                    per_device_eval_batch_size=1)  # fmt: skip

    class Padding:  # the tokenizer-free collator DataCollatorForSeq2Seq needs: pad ids and right padding
        pad_token_id, padding_side = PAD, "right"

        def pad(self, features, **kwargs):
            return {k: torch.tensor([f[k] for f in features]) for k in features[0]}

    trainer = Seq2SeqTrainer(model=model, args=args, data_collator=DataCollatorForSeq2Seq(Padding(), model=model))
    predictions = trainer.predict(data).predictions
    assert predictions.shape[1] == 1 + 30 + 50


# --- 7. Head sizes are never floored ---


@pytest.mark.parametrize("kind", ["vanilla", "marian"])
def test_heads_that_do_not_divide_d_model_are_refused(kind):
    with pytest.raises((ValueError, StrictDataclassError), match="divisible|divide"):  # a config's own error type
        if kind == "marian":
            MarianMTModel(MarianConfig(vocab_size=VOCAB, d_model=30, encoder_attention_heads=4, decoder_attention_heads=4,
                                       pad_token_id=PAD, decoder_start_token_id=START))  # fmt: skip
        else:
            VanillaTransformerConfig(vocab_size=VOCAB, d_model=30, num_heads=4)


def test_set_head_sizes_keep_working():
    config = VanillaTransformerConfig(vocab_size=VOCAB, d_model=30, num_heads=4, d_k=8, d_v=6)
    model = VanillaTransformerForConditionalGeneration(config)
    assert model.model.encoder.layers[0].self_attn.q_proj.out_features == 32
    assert model.model.encoder.layers[0].self_attn.out_proj.in_features == 24
    with pytest.raises(StrictDataclassError, match=r"num_heads=4 does not divide d_model=30, so d_v cannot default"):
        VanillaTransformerConfig(vocab_size=VOCAB, d_model=30, num_heads=4, d_k=8)
