"""hf-vanilla-translate: sentences from the arguments, a file or standard input; decoding options; errors."""

import io
import sys

import pytest

import hf_vanilla_transformer.cli.translate as translate_cli
from hf_vanilla_transformer import VanillaTransformerConfig, VanillaTransformerForConditionalGeneration, pipeline
from hf_vanilla_transformer.translation import translate

SENTENCES = ["the old farmer sees a red boat", "every forest runs", "my dog sleeps near the river"]


def printed_lines(capsys) -> list[str]:
    return capsys.readouterr().out.splitlines()


def test_translate_sentences_from_arguments_a_file_and_stdin(run_dir, tmp_path, capsys, monkeypatch):
    from_arguments = translate_cli.run([str(run_dir), *SENTENCES])
    assert len(from_arguments) == 3 and all(isinstance(t, str) for t in from_arguments)
    assert printed_lines(capsys) == from_arguments  # one line per sentence, in order

    sentence_file = tmp_path / "sentences.txt"
    sentence_file.write_text("\n".join(SENTENCES) + "\n")
    assert translate_cli.run([str(run_dir), "--file", str(sentence_file)]) == from_arguments
    assert printed_lines(capsys) == from_arguments

    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(SENTENCES) + "\n"))
    assert translate_cli.run([str(run_dir)]) == from_arguments
    assert printed_lines(capsys) == from_arguments


def test_translate_decodes_with_the_saved_generation_config_unless_told_otherwise(run_dir, loaded, capsys, monkeypatch):
    model, tokenizer = loaded
    assert (model.generation_config.num_beams, model.generation_config.length_penalty) == (4, 0.6)
    calls = []

    def recording_translate(*args, **kwargs):
        calls.append(kwargs)
        return translate(*args, **kwargs)

    monkeypatch.setattr("hf_vanilla_transformer.translation.translate", recording_translate)  # what the command calls
    default = translate_cli.run([str(run_dir), *SENTENCES])
    greedy = translate_cli.run([str(run_dir), *SENTENCES, "--num_beams", "1"])
    assert "num_beams" not in calls[0]  # the model's generation_config decides: beam 4, length penalty 0.6
    assert calls[1]["num_beams"] == 1
    assert default == translate(model, tokenizer, SENTENCES, num_beams=4, length_penalty=0.6)
    assert greedy == translate(model, tokenizer, SENTENCES, num_beams=1, do_sample=False)


def test_translate_prints_alternatives_tab_separated(run_dir, loaded, capsys):
    model, tokenizer = loaded
    alternatives = translate_cli.run([str(run_dir), *SENTENCES, "--num_beams", "2", "--num_return_sequences", "2"])
    lines = printed_lines(capsys)
    assert len(lines) == 3
    assert [line.split("\t") for line in lines] == alternatives
    assert all(len(group) == 2 for group in alternatives)
    assert alternatives == translate(model, tokenizer, SENTENCES, num_beams=2, num_return_sequences=2)


def test_translate_errors(run_dir, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"--file .*missing\.txt does not exist"):
        translate_cli.run([str(run_dir), "--file", str(tmp_path / "missing.txt")])
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    with pytest.raises(ValueError, match="No sentences to translate"):
        translate_cli.run([str(run_dir)])


def test_a_tokenizer_bigger_than_the_model_is_one_error_line(loaded, tmp_path, capsys):
    model, tokenizer = loaded
    too_few = len(tokenizer) - 1
    config = VanillaTransformerConfig.from_dict({**model.config.to_dict(), "vocab_size": too_few, "decoder_vocab_size": too_few})
    VanillaTransformerForConditionalGeneration(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(SystemExit) as exit_status:
        translate_cli.main([str(tmp_path), *SENTENCES, "--device", "cpu"])
    assert exit_status.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: The tokenizer has") and "resize_token_embeddings" in error


def test_translate_prints_what_the_translation_pipeline_gives(run_dir, capsys):
    by_length = sorted(SENTENCES, key=len)  # the command batches by length; one batch of 32 here
    printed = translate_cli.run([str(run_dir), *by_length, "--device", "cpu"])
    translator = pipeline("translation", model=str(run_dir), device="cpu", batch_size=32)
    assert [r["translation_text"].strip() for r in translator(by_length)] == printed
