"""translation.check_sentences: inputs far longer than a model was trained on are translated with a warning (issue 23)."""

import logging

import pytest
from transformers import GenerationConfig

from hf_vanilla_transformer.translation import (
    LONGEST_TRAINING_SOURCE,
    check_sentences,
    output_limit,
    output_limit_words,
    paper_generation_config,
)
from hf_vanilla_transformer.tokenization import train_bpe_tokenizer

WORDS = "red blue green cat dog bird sees reads book river".split()


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer([" ".join(WORDS)] * 50, vocab_size=60)


def words(count: int) -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in range(count))  # one token a word, and </s>


def long_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "tokens long" in r.getMessage()]


def test_past_twice_the_longest_training_source_a_sentence_is_warned_of(tiny_model, tokenizer, caplog):
    model = tiny_model(vocab_size=len(tokenizer))
    setattr(model.generation_config, LONGEST_TRAINING_SOURCE, 10)
    sentences = [words(5), words(19), words(20), words(40)]  # 6, 20, 21 and 41 tokens
    with caplog.at_level(logging.WARNING, logger="hf_vanilla_transformer.translation"):
        assert check_sentences(model, tokenizer, sentences) == [0, 1, 2, 3]
    assert long_warnings(caplog) == [
        "Sentences 3, 4 are up to 41 tokens long, more than twice the longest source the model was trained on "
        "(10 tokens): expect a translation cut short or wrong, and split long text into sentences."
    ]
    caplog.clear()
    check_sentences(model, tokenizer, sentences[:2])
    assert long_warnings(caplog) == []


def test_without_a_record_the_limit_is_max_position_embeddings(tiny_model, tokenizer, caplog):
    model = tiny_model(vocab_size=len(tokenizer), max_position_embeddings=32)
    with caplog.at_level(logging.WARNING, logger="hf_vanilla_transformer.translation"):
        check_sentences(model, tokenizer, [words(31), words(40)])  # 32 and 41 tokens
    assert long_warnings(caplog) == [
        "Sentence 2 is 41 tokens long, more than the model's max_position_embeddings (32): expect a translation cut "
        "short or wrong, and split long text into sentences."
    ]


def test_the_output_limit_is_one_rule_for_generate_the_checks_and_the_words(tiny_model):
    generation = paper_generation_config(tiny_model().config)  # source length + 50 (§6.1)
    assert output_limit(generation, 30) == 80 and output_limit(generation, 30, max_new_tokens=7) == 7
    assert output_limit_words(generation) == "source length + 50 tokens"
    assert output_limit_words(generation, max_new_tokens=7) == "7 new tokens"
    generation.max_new_tokens = 12  # the config's own count wins over §6.1's rule, as in generate()
    assert (output_limit(generation, 30), output_limit_words(generation)) == (12, "12 new tokens")
    plain = GenerationConfig(max_length=40)
    assert (output_limit(plain, 30), output_limit_words(plain)) == (40, "max_length 40")
