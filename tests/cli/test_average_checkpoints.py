"""hf-vanilla-average: the element-wise mean of the last checkpoints, saved as a complete model folder."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from hf_vanilla_transformer.cli import average_checkpoints
from hf_vanilla_transformer.translation import translate


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
    assert len(translate(model, tokenizer, ["every forest runs"], num_beams=1)) == 1
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


def test_average_refuses_too_few_checkpoints(run_dir, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"2 checkpoints \(\['checkpoint-10', 'checkpoint-20'\]\); cannot average the last 3"):
        average_checkpoints.run([str(run_dir), "--last", "3", "--output_dir", str(tmp_path / "avg")])
    with pytest.raises(SystemExit) as exit_info:
        average_checkpoints.run([str(run_dir), "--last", "0", "--output_dir", str(tmp_path / "avg")])
    assert exit_info.value.code == 2 and "argument --last: must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--last must be at least 1, got 0"):
        average_checkpoints.average_checkpoints(str(run_dir), 0, str(tmp_path / "avg"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        average_checkpoints.run([str(tmp_path / "no-run"), "--output_dir", str(tmp_path / "avg")])
    assert not (tmp_path / "avg").exists()
