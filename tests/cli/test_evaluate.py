"""hf-vanilla-evaluate: BLEU and chrF on the built-in test split or a local file, as the library scores them."""

import json

import pytest

from hf_vanilla_transformer.cli import evaluate
from hf_vanilla_transformer.builtin_task import SOURCE_LANG, TARGET_LANG, load_builtin_dataset
from hf_vanilla_transformer.training import translation_scores
from hf_vanilla_transformer.translation import translate

SENTENCES = ["a red boat", "every forest runs", "the river sleeps"]


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
    with pytest.raises(ValueError, match="no split 'dev'; it has"):
        evaluate.run([str(run_dir), "--split", "dev"])
    with pytest.raises(ValueError, match="Give source_lang and target_lang"):
        evaluate.run([str(run_dir), "--test_file", str(tmp_path / "test.jsonl")])
