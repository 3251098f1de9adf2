"""model_source: a folder that holds no model, or a name that is neither a folder nor a Hub id, fails before anything
loads, with what is missing in the message (the Hub is never asked for these)."""

import pytest

from hf_vanilla_transformer.model_source import check_model_folder, check_model_source


def test_a_model_folder_needs_a_config_and_a_tokenizer(tmp_path):
    folder = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="Model folder .*run does not exist"):
        check_model_folder(folder)
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        check_model_folder(tmp_path / "file")
    (folder / "checkpoint-20").mkdir(parents=True)
    (folder / "checkpoint-20" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"run holds no model: .*the newest is .*checkpoint-20"):
        check_model_folder(folder)
    (folder / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="holds no tokenizer"):
        check_model_folder(folder)
    assert check_model_folder(folder, needs_tokenizer=False) == folder
    (folder / "tokenizer.json").write_text("{}")
    assert check_model_folder(str(folder)) == folder


def test_a_missing_folder_names_the_models_beside_it_and_a_bare_name_is_no_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs" / "run-1").mkdir(parents=True)
    (tmp_path / "outputs" / "run-1" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"outputs/typo does not exist; outputs holds run-1\.$"):
        check_model_source("outputs/typo")  # outputs/ is a folder here: a path, not a Hub id
    with pytest.raises(FileNotFoundError, match="my-model does not exist, and it is not a Hub id either"):
        check_model_source("my-model")
    assert check_model_source("outputs/run-1", needs_tokenizer=False) == {}
