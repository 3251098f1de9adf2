"""The console scripts: hf-vanilla-translate, hf-vanilla-evaluate, hf-vanilla-average (and every --help)."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

import train.translate as translate_cli
from hf_vanilla_transformer.data import SOURCE_LANG, TARGET_LANG, load_builtin_dataset
from hf_vanilla_transformer.training import translation_scores
from hf_vanilla_transformer.translation import load_translation_model, translate
from train import average_checkpoints, evaluate
from train.train import main as train_main

SENTENCES = ["the old farmer sees a red boat", "every forest runs", "my dog sleeps near the river"]


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """A tiny model trained once for the session: 20 steps, checkpoints at 10 and 20, final model in the folder."""
    folder = tmp_path_factory.mktemp("cli") / "run"
    train_main(
        [
            "--output_dir", str(folder),
            "--config_overrides", "d_model=32,d_ff=64,num_heads=2,encoder_layers=1,decoder_layers=1,dropout=0.0",
            "--tokenizer_vocab_size", "300",
            "--builtin_train_size", "300",
            "--max_steps", "20",
            "--warmup_steps", "5",
            "--learning_rate", "0.003",
            "--save_strategy", "steps",
            "--save_steps", "10",
            "--max_test_samples", "2",
            "--report_to", "none",
        ]
    )  # fmt: skip
    return folder


@pytest.fixture(scope="session")
def loaded(run_dir):
    return load_translation_model(str(run_dir), device="cpu")


def printed_lines(capsys) -> list[str]:
    return capsys.readouterr().out.splitlines()


# ---------------------------------------------------------------------------------------------
# hf-vanilla-translate
# ---------------------------------------------------------------------------------------------


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

    monkeypatch.setattr(translate_cli, "translate", recording_translate)
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
    with pytest.raises(SystemExit, match=r"--file .*missing\.txt does not exist"):
        translate_cli.run([str(run_dir), "--file", str(tmp_path / "missing.txt")])
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    with pytest.raises(SystemExit, match="no sentences to translate"):
        translate_cli.run([str(run_dir)])


# ---------------------------------------------------------------------------------------------
# hf-vanilla-evaluate
# ---------------------------------------------------------------------------------------------


def test_evaluate_the_builtin_test_split(run_dir, loaded, tmp_path, capsys):
    output_file = tmp_path / "scores.json"
    scores = evaluate.run([str(run_dir), "--max_samples", "5", "--num_beams", "1", "--output_file", str(output_file)])
    out = capsys.readouterr().out
    assert f"BLEU = {scores['bleu']:.2f}  chrF = {scores['chrf']:.2f}" in out
    assert "(5 sentences)" in out
    assert "BLEU signature: nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:" in out
    assert "chrF signature: nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:" in out
    assert json.loads(output_file.read_text()) == scores

    # The same numbers as translating the first 5 test pairs and scoring them here.
    pairs = load_builtin_dataset()["test"]["translation"][:5]
    model, tokenizer = loaded
    hypotheses = translate(model, tokenizer, [p[SOURCE_LANG] for p in pairs], num_beams=1)
    expected = translation_scores(hypotheses, [p[TARGET_LANG] for p in pairs])
    assert scores == {**expected, "samples": 5}


def test_evaluate_a_local_test_file(run_dir, tmp_path, capsys):
    test_file = tmp_path / "test.jsonl"
    test_file.write_text("".join(json.dumps({"en": s, "de": s}) + "\n" for s in SENTENCES))
    scores = evaluate.run([str(run_dir), "--test_file", str(test_file), "--source_lang", "en", "--target_lang", "de"])
    assert scores["samples"] == 3
    assert "(3 sentences)" in capsys.readouterr().out


def test_evaluate_errors(run_dir, tmp_path):
    with pytest.raises(SystemExit, match="no split 'dev'; it has"):
        evaluate.run([str(run_dir), "--split", "dev"])
    with pytest.raises(SystemExit, match="give --source_lang and --target_lang"):
        evaluate.run([str(run_dir), "--test_file", str(tmp_path / "test.jsonl")])


# ---------------------------------------------------------------------------------------------
# hf-vanilla-average
# ---------------------------------------------------------------------------------------------


def test_average_of_two_checkpoints_is_their_elementwise_mean(run_dir, tmp_path):
    output = average_checkpoints.run([str(run_dir), "--last", "2", "--output_dir", str(tmp_path / "avg")])
    assert output == tmp_path / "avg"
    first = load_file(run_dir / "checkpoint-10" / "model.safetensors")
    second = load_file(run_dir / "checkpoint-20" / "model.safetensors")
    averaged = load_file(output / "model.safetensors")
    assert averaged.keys() == first.keys() == second.keys()
    for name in first:
        mean = (first[name].double() + second[name].double()) / 2
        torch.testing.assert_close(averaged[name], mean.to(first[name].dtype), rtol=1e-6, atol=1e-8, msg=name)
    assert any(not torch.equal(first[k], second[k]) for k in first)  # the two checkpoints differ

    # A complete model folder: it loads, its tied output layer follows the averaged embedding, it translates.
    model = AutoModelForSeq2SeqLM.from_pretrained(output)
    state = model.state_dict()
    for name, value in averaged.items():
        assert torch.equal(state[name], value), name
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    tokenizer = AutoTokenizer.from_pretrained(output)
    assert tokenizer.get_vocab() == AutoTokenizer.from_pretrained(run_dir).get_vocab()
    assert json.loads((output / "generation_config.json").read_text())["num_beams"] == 4
    assert len(translate(model, tokenizer, SENTENCES[:1], num_beams=1)) == 1
    assert not list(tmp_path.glob(".*staging"))


def test_average_refuses_a_non_empty_output_folder(run_dir, tmp_path):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="occupied exists and is not empty"):
        average_checkpoints.run([str(run_dir), "--last", "2", "--output_dir", str(occupied)])
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"]
    assert not list(tmp_path.glob(".*staging"))
    # An empty folder is fine.
    (tmp_path / "empty").mkdir()
    average_checkpoints.run([str(run_dir), "--last", "1", "--output_dir", str(tmp_path / "empty")])
    assert (tmp_path / "empty" / "model.safetensors").exists()


def test_average_refuses_too_few_checkpoints(run_dir, tmp_path):
    with pytest.raises(ValueError, match=r"2 checkpoints \(\['checkpoint-10', 'checkpoint-20'\]\); cannot average the last 3"):
        average_checkpoints.run([str(run_dir), "--last", "3", "--output_dir", str(tmp_path / "avg")])
    with pytest.raises(ValueError, match="--last must be at least 1, got 0"):
        average_checkpoints.run([str(run_dir), "--last", "0", "--output_dir", str(tmp_path / "avg")])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        average_checkpoints.run([str(tmp_path / "no-run"), "--output_dir", str(tmp_path / "avg")])
    assert not (tmp_path / "avg").exists()


# ---------------------------------------------------------------------------------------------
# The installed console scripts
# ---------------------------------------------------------------------------------------------


def test_console_scripts(run_dir, tmp_path):
    """Every script's --help, and hf-vanilla-translate reading standard input, as installed (run side by side)."""
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    commands = {name: [str(bin_dir / f"hf-vanilla-{name}"), "--help"] for name in ("train", "translate", "evaluate")}
    commands["average"] = [str(bin_dir / "hf-vanilla-average"), "--help"]
    commands["stdin"] = [str(bin_dir / "hf-vanilla-translate"), str(run_dir), "--num_beams", "1", "--device", "cpu"]
    processes = {
        name: subprocess.Popen(
            command, cwd=tmp_path, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        for name, command in commands.items()
    }
    results = {}
    for name, process in processes.items():
        stdin = "\n".join(SENTENCES) + "\n" if name == "stdin" else ""
        out, err = process.communicate(stdin, timeout=300)
        assert process.returncode == 0, (name, err[-3000:])
        results[name] = out

    assert "--max_tokens_per_batch" in results["train"] and "--recipe" in results["train"]
    assert "--output_dir" in results["train"] and "--learning_rate" in results["train"]  # the Trainer's arguments
    assert "--num_return_sequences" in results["translate"] and "--file" in results["translate"]
    assert "--output_file" in results["evaluate"] and "--test_file" in results["evaluate"]
    assert "--last" in results["average"] and "--output_dir" in results["average"]
    model, tokenizer = load_translation_model(str(run_dir), device="cpu")
    assert results["stdin"].splitlines() == translate(model, tokenizer, SENTENCES, num_beams=1)
