"""The model card (README.md) that hf-vanilla-train leaves in its output folder, checked against the run's own files."""

import json
import os
import re
import shlex
import subprocess
import sys

from huggingface_hub import ModelCard
from transformers import AutoModelForSeq2SeqLM

import hf_vanilla_transformer.cli.translate as translate_cli


def card_of(run_dir) -> ModelCard:
    return ModelCard.load(run_dir / "README.md")


def table_values(text: str) -> dict[str, str]:
    """The first two cells of every markdown table row, backticks dropped: {"d_model": "32", ...}."""
    rows = re.findall(r"^\| ([^|]+?) \| ([^|]+?) \|", text, flags=re.MULTILINE)
    return {name.strip("`"): value for name, value in rows}


def code_block(text: str, language: str) -> str:
    return re.search(rf"```{language}\n(.*?)```", text, flags=re.DOTALL).group(1)


def test_train_writes_a_model_card_that_matches_the_run(run_dir):
    card = card_of(run_dir)  # parses the YAML metadata, model-index included
    config = json.loads((run_dir / "config.json").read_text())
    results = json.loads((run_dir / "all_results.json").read_text())
    state = json.loads((run_dir / "trainer_state.json").read_text())
    values = table_values(card.text)

    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "translation"
    assert {"translation", "vanilla_transformer"} <= set(card.data.tags)
    assert card.data.language == ["en"]  # the built-in target "toy" is invented, not an ISO code
    assert card.data.license is None and card.data.datasets is None  # none given; the data is not on the Hub

    for key in ("d_model", "d_ff", "num_heads", "encoder_layers", "decoder_layers", "vocab_size", "norm_position"):
        assert values[key] == str(config[key]), key
    assert int(values["parameters"].replace(",", "")) == AutoModelForSeq2SeqLM.from_pretrained(run_dir).num_parameters()

    scores = {result.metric_name: result for result in card.data.eval_results}
    assert scores["BLEU"].metric_value == results["test_bleu"]
    assert scores["chrF"].metric_value == results["test_chrf"]
    assert scores["BLEU"].metric_args == {"signature": results["test_bleu_signature"]}
    assert (values["BLEU"], values["chrF"]) == (str(results["test_bleu"]), str(results["test_chrf"]))
    for signature in (results["test_bleu_signature"], results["test_chrf_signature"]):
        assert f"\n{signature}\n" in card.text  # verbatim, on a line of its own

    assert values["test"] == str(results["test_samples"])  # pairs used in the test split
    assert values["steps"].split()[0] == str(state["global_step"])
    assert values["seed"] == "42"  # the builtin recipe's
    assert values["label smoothing"] == "0.1"
    assert values["learning rate"].startswith("`inverse_sqrt`, peak 0.003, 5 warm-up steps")
    assert "Recipe `builtin`" in card.text
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith("_README")]  # no temporary file left


def test_model_card_code_translates_with_the_trained_folder_offline(run_dir, tmp_path):
    text = card_of(run_dir).text
    snippet = code_block(text, "python")
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", snippet], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    printed = done.stdout.strip().splitlines()[-1]

    command = shlex.split(code_block(text, "bash").strip())
    assert command[0] == "hf-vanilla-translate" and command[1] == str(run_dir)
    # The snippet's model.generate and the command decode the same sentence with the same saved settings.
    assert printed == repr(translate_cli.run(command[1:]))
