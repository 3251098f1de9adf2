"""Marian (Opus-MT) models converted to this package's model give Marian's outputs: logits, greedy and beam tokens."""

import time

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, MarianConfig, MarianMTModel

from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration, from_marian
from hf_vanilla_transformer.convert_marian import marian_config

PAD, EOS = 59, 0  # Opus-MT's layout: </s> is 0 and <pad> the last id, which also starts the decoder


def opus_like_marian(share: bool = True, vocab: int = 60, decoder_vocab: int | None = None, **sizes):
    """A MarianMTModel configured like the Opus-MT checkpoints (swish, scaled and tied embeddings, static sinusoids),
    small, with random weights and a random final_logits_bias."""
    torch.manual_seed(0)
    values = dict(d_model=16, encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2, decoder_attention_heads=2,
                  encoder_layers=2, decoder_layers=2)  # fmt: skip
    values.update(sizes)
    config = MarianConfig(
        vocab_size=vocab, decoder_vocab_size=decoder_vocab, share_encoder_decoder_embeddings=share,
        activation_function="swish", scale_embedding=True, tie_word_embeddings=True, max_position_embeddings=64,
        pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD, forced_eos_token_id=EOS, dropout=0.1,
        **values,
    )  # fmt: skip
    marian = MarianMTModel(config).eval()
    with torch.no_grad():
        marian.final_logits_bias.normal_()  # zeros in a fresh model: a real one's may not be
    return marian


def sources(vocab: int = 60):
    """Two right-padded sources of lengths 7 and 4 with their end token."""
    ids = torch.randint(1, PAD, (2, 7), generator=torch.Generator().manual_seed(1))
    ids[0, 6], ids[1, 3], ids[1, 4:] = EOS, EOS, PAD
    return ids, (ids != PAD).long()


@pytest.mark.parametrize(
    "variant", [dict(), dict(share=False, vocab=70, decoder_vocab=60)], ids=["shared vocabulary", "separate vocabularies"]
)
def test_a_converted_marian_model_gives_marians_logits_and_tokens(variant, tmp_path):
    marian = opus_like_marian(**variant)
    ours = from_marian(marian)
    assert ours.config.position_layout == "split" and ours.config.activation_function == "swish"
    assert ours.lm_head.weight is ours.model.decoder.embed_tokens.weight
    source, mask = sources(60)
    target = torch.randint(1, PAD, (2, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = marian(input_ids=source, attention_mask=mask, decoder_input_ids=target).logits
        got = ours(input_ids=source, attention_mask=mask, decoder_input_ids=target).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    for options in (dict(num_beams=1), dict(num_beams=4, num_return_sequences=2)):
        kwargs = dict(input_ids=source, attention_mask=mask, max_new_tokens=12, do_sample=False, **options)
        assert torch.equal(ours.generate(**kwargs), marian.generate(**kwargs)), options

    ours.save_pretrained(tmp_path)
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    assert type(reloaded) is VanillaTransformerForConditionalGeneration
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=source, attention_mask=mask, decoder_input_ids=target).logits, expected,
                                   atol=1e-5, rtol=0)  # fmt: skip


def test_training_a_converted_model_gives_marians_loss_with_the_logits_bias():
    marian = opus_like_marian()
    ours = from_marian(marian)
    source, mask = sources(60)
    labels = torch.randint(1, PAD, (2, 5), generator=torch.Generator().manual_seed(3))
    expected = marian.eval()(input_ids=source, attention_mask=mask, labels=labels).loss
    ours.train()  # the chunked loss, which must add the bias to every block of logits
    ours.config.dropout = ours.config.attention_dropout = 0.0
    for module in ours.modules():
        if hasattr(module, "dropout") and isinstance(module.dropout, float):
            module.dropout = 0.0
    got = ours(input_ids=source, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    got.backward()
    assert ours.model.encoder.layers[0].self_attn.q_proj.weight.grad is not None


def test_marian_settings_this_model_cannot_express_are_refused():
    config = opus_like_marian().config
    config.decoder_ffn_dim = 64
    with pytest.raises(ValueError, match="encoder_ffn_dim=32 and decoder_ffn_dim=64 differ"):
        marian_config(config)
    with pytest.raises(TypeError, match="takes a MarianMTModel"):
        from_marian(torch.nn.Linear(2, 2))


@pytest.mark.slow
def test_a_base_sized_marian_model_converts_with_its_outputs():
    # 6+6 layers, d_model 512, an Opus-MT-sized vocabulary: the timing goes in the note.
    marian = opus_like_marian(vocab=58101, d_model=512, encoder_ffn_dim=2048, decoder_ffn_dim=2048,
                              encoder_attention_heads=8, decoder_attention_heads=8, encoder_layers=6, decoder_layers=6)  # fmt: skip
    start = time.perf_counter()
    ours = from_marian(marian)
    print(f"conversion: {time.perf_counter() - start:.2f} s")
    source, mask = sources(60)
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=source, attention_mask=mask, decoder_input_ids=source).logits,
                                   marian(input_ids=source, attention_mask=mask, decoder_input_ids=source).logits,
                                   atol=1e-4, rtol=0)  # fmt: skip
    kwargs = dict(input_ids=source, attention_mask=mask, max_new_tokens=10, num_beams=4)
    assert torch.equal(ours.generate(**kwargs), marian.generate(**kwargs))
