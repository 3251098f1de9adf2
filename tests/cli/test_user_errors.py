"""The commands as users meet them (issue 17): every mistake ends in one line, `error: ...`, exit status 2, and no
traceback; nothing is dropped or cut without a word. Each test types the installed console scripts as a user does."""

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from hf_vanilla_transformer.cli._errors import console_script

BIN = Path(sys.executable).parent
ENV = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
# No Hub: a request to this endpoint is refused at once, and huggingface_hub would retry it for half a minute.
NO_HUB = {key: value for key, value in ENV.items() if key not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
NO_HUB["HF_ENDPOINT"] = "http://127.0.0.1:9"
LONG = " ".join(["every forest runs"] * 400)  # 1200 words, over 1200 tokens


@dataclass
class Result:
    returncode: int
    out: str
    err: str
    seconds: float


def command(name: str, *args: str) -> list[str]:
    return [str(BIN / f"hf-vanilla-{name}"), *args]


def run_side_by_side(commands: dict[str, list[str]], cwd, env=ENV) -> dict[str, Result]:
    """Start every command at once and wait for all of them."""
    started = time.monotonic()
    processes = {
        name: subprocess.Popen(
            argv, cwd=cwd, env=env, text=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for name, argv in commands.items()
    }
    results = {}
    for name, process in processes.items():
        out, err = process.communicate(timeout=600)
        results[name] = Result(process.returncode, out, err, time.monotonic() - started)
    return results


def run_one(argv: list[str], cwd, env=ENV) -> Result:
    return run_side_by_side({"one": argv}, cwd, env)["one"]


def assert_one_line_error(result: Result, *fragments: str) -> str:
    """Exit status 2, no traceback, and one `error: ...` line, the last one written, holding each fragment."""
    assert result.returncode == 2, (result.returncode, result.err[-3000:])
    assert "Traceback" not in result.err, result.err[-3000:]
    errors = [line for line in result.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.err.rstrip().endswith(errors[0]), result.err[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def warnings_in(result: Result) -> list[str]:
    return [line for line in result.err.splitlines() if line.startswith("WARNING: ")]


@pytest.fixture(scope="module")
def learned_dir(run_dir, tmp_path_factory):
    """A model with learned positions (Table 3 row E), a table of 32, and the run's tokenizer; untrained."""
    from transformers import AutoTokenizer

    from hf_vanilla_transformer import VanillaTransformerConfig, VanillaTransformerForConditionalGeneration

    folder = tmp_path_factory.mktemp("learned")
    config = VanillaTransformerConfig.from_pretrained(run_dir, position_embedding="learned", max_position_embeddings=32)
    torch.manual_seed(0)
    VanillaTransformerForConditionalGeneration(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(run_dir).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def endless_dir(run_dir, tmp_path_factory):
    """The run's model with its end token suppressed: every translation runs into the output length limit."""
    folder = tmp_path_factory.mktemp("endless") / "model"
    shutil.copytree(run_dir, folder, ignore=shutil.ignore_patterns("checkpoint-*"))
    path = folder / "generation_config.json"
    generation = json.loads(path.read_text())
    path.write_text(json.dumps({**generation, "suppress_tokens": [generation["eos_token_id"]]}))
    return folder


# --- 1. a mistyped model folder or Hub id ---


def test_a_missing_model_folder_is_named_at_once_without_asking_the_hub(tmp_path, tripwire):
    (tmp_path / "outputs").mkdir()  # as in a checkout after a first run: outputs/ exists, the typo inside it not
    typed = {
        "translate": command("translate", "outputs/does-not-exist", "every forest runs"),
        "evaluate": command("evaluate", "outputs/does-not-exist"),
    }
    results = run_side_by_side(typed, tmp_path, {**NO_HUB, "HF_ENDPOINT": tripwire.url})
    for result in results.values():
        assert_one_line_error(result, "Model folder outputs/does-not-exist does not exist")
    assert tripwire.requests == []  # a path is never sent to the Hub


def test_a_name_that_is_no_folder_is_a_hub_id_only_as_namespace_name_and_fails_in_one_line(tmp_path, tripwire):
    results = run_side_by_side(
        {"bare": command("translate", "my-model", "x")} | {"offline": command("translate", "someone/not-a-model", "x")},
        tmp_path,
    )
    assert_one_line_error(results["bare"], "my-model does not exist", "not a Hub id")
    assert_one_line_error(results["offline"], "someone/not-a-model", "not in the local Hub cache", "HF_HUB_OFFLINE")
    unreachable = run_one(command("translate", "someone/not-a-model", "x"), tmp_path, {**NO_HUB, "HF_ENDPOINT": tripwire.url})
    assert_one_line_error(unreachable, "someone/not-a-model is not a folder here", "Hub cannot be reached")
    asked = [request for request in tripwire.requests if "someone/not-a-model" in request]
    assert len(asked) == 1, tripwire.requests  # asked once, no retries


# --- 2. a folder with no model in it ---


def test_a_folder_without_a_model_says_so(run_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "killed").mkdir()  # a run stopped before its final save: checkpoints only
    (tmp_path / "killed" / "checkpoint-20").symlink_to(run_dir / "checkpoint-20", target_is_directory=True)
    results = run_side_by_side(
        {"empty": command("translate", "empty", "x"), "killed": command("evaluate", "killed")}, tmp_path
    )
    assert_one_line_error(results["empty"], "empty holds no model: it has no config.json")
    assert_one_line_error(results["killed"], "killed holds no model", "the newest is killed/checkpoint-20")
    assert "sentencepiece" not in results["empty"].err


# --- 3. data errors: the message, not the traceback ---


def test_data_errors_are_one_line(tmp_path):
    (tmp_path / "good.jsonl").write_text(json.dumps({"en": "a b", "de": "c d"}) + "\n")
    (tmp_path / "broken.jsonl").write_text(json.dumps({"en": "a", "de": "b"}) + '\n{"en": "x", \n')
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "train.en").write_text("a\nb\n")
    (tmp_path / "train.de").write_text("a\n")
    cases = {
        "missing": (["--train_file", "missing.jsonl"], "train_file: missing.jsonl does not exist"),
        "broken": (["--train_file", "broken.jsonl"], "broken.jsonl, line 2: not valid JSON"),
        "language": (["--train_file", "good.jsonl", "--source_lang", "fr"], "no column 'fr'"),
        "empty": (["--train_file", "empty.jsonl"], "The train split is empty: empty.jsonl has no records"),
        "misaligned": (["--train_file", "train.en,train.de"], "not aligned: train.en has 2 lines but train.de has 1"),
    }
    base = ["--source_lang", "en", "--target_lang", "de", "--output_dir", "out", "--max_steps", "1"]
    commands = {name: command("train", *base, *args) for name, (args, _) in cases.items()}  # the last value wins
    commands["debug"] = command("train", *base, "--train_file", "missing.jsonl", "--log_level", "debug")
    results = run_side_by_side(commands, tmp_path)
    for name, (_, message) in cases.items():
        assert_one_line_error(results[name], message)
    assert results["debug"].returncode != 0 and "Traceback" in results["debug"].err  # asked for
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_a_broken_record_on_any_line_ends_train_and_evaluate_in_one_line_naming_it(run_dir, tmp_path):
    good = [json.dumps({"translation": {"en": "every forest runs", "de": "x y"}})] * 3
    (tmp_path / "missing.jsonl").write_text("\n".join(good + ['{"translation": {"en": "my dog sleeps"}}']) + "\n")
    (tmp_path / "mixed.jsonl").write_text("\n".join(good + ['{"en": "my dog sleeps", "de": "z"}']) + "\n")
    (tmp_path / "binary.jsonl").write_bytes(bytes(range(256)) * 8)
    cases = {
        "missing": ("missing.jsonl", "missing.jsonl, line 4: no 'de' text"),
        "mixed": ("mixed.jsonl", "mixed.jsonl mixes two forms of record: line 1 is"),
        "binary": ("binary.jsonl", "binary.jsonl, line 2: not UTF-8 text"),
    }
    languages = ["--source_lang", "en", "--target_lang", "de"]
    commands = {
        f"train {name}": command("train", "--train_file", file, *languages, "--output_dir", "out", "--max_steps", "1")
        for name, (file, _) in cases.items()
    }
    for name in ("missing", "mixed"):
        commands[f"evaluate {name}"] = command("evaluate", str(run_dir), "--test_file", cases[name][0], *languages)
    results = run_side_by_side(commands, tmp_path)
    for name, result in results.items():
        assert_one_line_error(result, cases[name.split()[1]][1])
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(capsys):
    def failing(error):
        def run(argv):
            raise error

        return console_script(run)

    with pytest.raises(SystemExit) as exit_info:
        failing(ValueError("the value\nis wrong"))([])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: the value is wrong\n"
    with pytest.raises(FileNotFoundError):  # --debug: the traceback as well
        failing(FileNotFoundError("gone"))(["--debug"])
    with pytest.raises(KeyError):  # a bug
        failing(KeyError("x"))([])
    with pytest.raises(ZeroDivisionError):
        failing(ZeroDivisionError("x"))([])


def test_a_config_value_its_validation_refuses_is_one_line(capsys):
    # Configs (this package's, transformers') are @strict dataclasses: a bad value raises huggingface_hub's
    # StrictDataclassError, which names the field and the values it takes.
    from hf_vanilla_transformer import VanillaTransformerConfig

    with pytest.raises(SystemExit) as exit_info:
        console_script(lambda argv: VanillaTransformerConfig(norm_position="middle"))([])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Validation error for field 'norm_position'")
    assert "('post', 'pre'), got middle" in lines[0]


# --- 4. bad decoding options and devices, before the model loads ---


def test_bad_decoding_options_and_devices_fail_before_loading(run_dir, tmp_path):
    commands = {
        "beams": command("translate", "not-loaded", "--num_beams", "0", "x"),  # checked before the folder
        "top_p": command("evaluate", str(run_dir), "--do_sample", "--top_p", "1.5"),
        "sequences": command("translate", str(run_dir), "x", "--num_beams", "2", "--num_return_sequences", "3"),
        "device": command("translate", str(run_dir), "x", "--device", "tpu:0"),
    }
    if not torch.cuda.is_available():
        commands["cuda"] = command("translate", str(run_dir), "x", "--device", "cuda")
    results = run_side_by_side(commands, tmp_path)
    assert_one_line_error(results["beams"], "argument --num_beams: must be at least 1, got 0")
    assert_one_line_error(results["top_p"], "argument --top_p: must be in (0, 1], got 1.5")
    assert_one_line_error(results["sequences"], "--num_return_sequences 3 needs at least as many beams")
    assert_one_line_error(results["device"], "Device 'tpu:0'")
    if "cuda" in results:
        assert_one_line_error(results["cuda"], "Device 'cuda' is not available")


# --- 5. nothing dropped or cut without a word ---


def test_empty_cut_and_very_long_sentences_are_said(endless_dir, tmp_path):
    result = run_one(
        command("translate", str(endless_dir), "every forest runs", "", LONG, "--num_beams", "1", "--max_new_tokens", "3"),
        tmp_path,
    )
    assert result.returncode == 0, result.err[-3000:]
    lines = result.out.split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[3] == ""  # one line per sentence; the empty one empty
    assert "Sentence 2 is empty: its translation is empty." in warnings_in(result)[0]
    assert "translations of sentences 1, 3 stopped at the output length limit (3 new tokens)" in result.err
    # 1200 words, where the model was trained on sentences of a few dozen tokens: translated, with a warning.
    long = [line for line in warnings_in(result) if line.startswith("WARNING: Sentence 3 is ")]
    assert len(long) == 1 and "tokens long, more than twice the longest source the model was trained on (" in long[0]
    # Sinusoids serve any length: no "indexing errors" warning for 1200 tokens.
    assert "indexing errors" not in result.err and "Token indices sequence length" not in result.err


def test_a_model_with_learned_positions_refuses_what_it_cannot_serve(learned_dir, tmp_path):
    results = run_side_by_side(
        {
            "long": command("translate", str(learned_dir), " ".join(["every forest runs"] * 20), "--max_new_tokens", "5"),
            "limit": command("translate", str(learned_dir), "every forest runs"),  # output limit: source + 50
            "fits": command("translate", str(learned_dir), "every forest runs", "--max_new_tokens", "8"),
        },
        tmp_path,
    )
    assert_one_line_error(results["long"], "Sentence 1 is", "learned positions stop at 32 (max_position_embeddings)")
    assert_one_line_error(results["limit"], "has an output limit of", "set max_new_tokens to 32 or less")
    assert results["fits"].returncode == 0, results["fits"].err[-3000:]
    assert "indexing errors" not in results["long"].err


# --- 6. options anywhere ---


def test_options_stand_anywhere_among_the_sentences(run_dir, tmp_path):
    results = run_side_by_side(
        {
            "int8": command("translate", str(run_dir), "--quantize", "int8", "every forest runs"),
            "between": command("translate", str(run_dir), "every forest runs", "--num_beams", "1", "my dog sleeps"),
        },
        tmp_path,
    )
    assert results["int8"].returncode == 0, results["int8"].err[-3000:]
    assert len(results["int8"].out.splitlines()) == 1
    assert results["between"].returncode == 0, results["between"].err[-3000:]
    assert len(results["between"].out.splitlines()) == 2


# --- 8. help that fits, and no warning once an epoch ---


def test_help_puts_the_projects_options_first_and_training_on_the_cpu_does_not_warn_of_pin_memory(tmp_path):
    commands = {
        "help": command("train", "--help"),
        "help_trainer": command("train", "--help_trainer"),
        "evaluate": command("evaluate", "--help"),
    }
    if not torch.accelerator.is_available():
        tiny = "d_model=16,d_ff=32,num_heads=2,encoder_layers=1,decoder_layers=1"
        commands["train"] = command(
            "train", "--output_dir", "out", "--config_overrides", tiny, "--tokenizer_vocab_size", "200",
            "--builtin_train_size", "100", "--num_train_epochs", "2", "--max_test_samples", "1",
            "--save_strategy", "no",
        )  # fmt: skip
    results = run_side_by_side(commands, tmp_path)
    short, full = results["help"].out, results["help_trainer"].out
    assert results["help"].returncode == 0 and len(short.splitlines()) < 250, len(short.splitlines())
    assert short.index("--recipe") < short.index("--train_file") < short.index("--learning_rate")
    assert "--help_trainer" in short and "--adam_beta1" not in short
    assert "--adam_beta1" in full and len(full.splitlines()) > len(short.splitlines()) + 200
    assert "--dataset_config_name de-en \\\n" in results["evaluate"].out  # the example as written
    if "train" in results:
        assert results["train"].returncode == 0, results["train"].err[-3000:]
        assert "pin_memory" not in results["train"].err + results["train"].out
