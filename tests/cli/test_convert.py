"""hf-vanilla-convert --from marian: a Marian folder in, this package's model folder out, with Marian's outputs."""

import stat
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_convert_marian import opus_like_marian, sources  # noqa: E402

from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration  # noqa: E402
from hf_vanilla_transformer.cli import convert  # noqa: E402


def test_convert_a_marian_folder_to_a_model_folder(tmp_path, caplog):
    marian = opus_like_marian()
    marian.save_pretrained(tmp_path / "marian")
    output = convert.run(["--from", "marian", str(tmp_path / "marian"), str(tmp_path / "ours")])
    assert output == tmp_path / "ours" and "No tokenizer saved" in caplog.text  # the source has none
    model = AutoModelForSeq2SeqLM.from_pretrained(output)
    assert type(model) is VanillaTransformerForConditionalGeneration and model.config.position_layout == "split"
    source, mask = sources()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=source, attention_mask=mask, decoder_input_ids=source).logits,
                                   marian(input_ids=source, attention_mask=mask, decoder_input_ids=source).logits,
                                   atol=1e-5, rtol=0)  # fmt: skip
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left


def test_convert_refuses_a_taken_output_folder_and_writes_nothing(tmp_path):
    opus_like_marian().save_pretrained(tmp_path / "marian")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="taken exists and is not empty"):
        convert.run(["--from", "marian", str(tmp_path / "marian"), str(tmp_path / "taken")])
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]


def test_the_converted_folder_gets_the_users_umask(tmp_path, umask_027):
    opus_like_marian().save_pretrained(tmp_path / "marian")
    output = convert.run(["--from", "marian", str(tmp_path / "marian"), str(tmp_path / "ours")])
    assert stat.S_IMODE(output.stat().st_mode) == 0o750  # not a temporary folder's 0700
