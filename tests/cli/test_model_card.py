"""write_model_card and write_run_card without a training run: metadata, safe writing, the Hub upload."""

import stat
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from huggingface_hub import ModelCard

import hf_vanilla_transformer.cli.model_card as model_card
from hf_vanilla_transformer.data import FilterStats, StreamFilterStats
from hf_vanilla_transformer.cli.model_card import DataSummary, write_model_card, write_run_card

SCORES = {
    "test_bleu": 27.31,
    "test_chrf": 55.02,
    "test_exact_match": 4.0,
    "test_samples": 25,
    "test_bleu_signature": "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0",
    "test_chrf_signature": "nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:2.6.0",
}


def local_data(**overrides) -> DataSummary:
    values = dict(source_lang="de", target_lang="en", name="train.jsonl", description="Local files.")
    return DataSummary(**{**values, **overrides})


def write(folder, model, **overrides):
    arguments = dict(data=local_data(), recipe="paper", training={"steps": "7"}, results={})
    return write_model_card(folder, model, **{**arguments, **overrides})


def test_metadata_says_only_what_was_given(tiny_model, tmp_path):
    model = tiny_model()
    bare = ModelCard.load(write(tmp_path, model, data=local_data(target_lang="english")))
    assert bare.data.language == ["de"]  # not an ISO 639 code: left out of the metadata
    assert bare.data.eval_results is None and "model-index" not in bare.content  # no test split, no scores
    assert bare.data.license is None and bare.data.datasets is None and bare.data.base_model is None
    assert "This run scored no test split." in bare.text

    hub = local_data(name="wmt14 (de-en)", hub_dataset="wmt14", hub_config="de-en")
    card = ModelCard.load(
        write(tmp_path, model, data=hub, results=SCORES, license="apache-2.0", base_model="someone/base-model")
    )
    assert (card.data.license, card.data.datasets) == ("apache-2.0", ["wmt14"])
    assert card.data.base_model == "someone/base-model"
    (bleu, chrf) = card.data.eval_results
    assert (bleu.metric_value, chrf.metric_value) == (27.31, 55.02)
    assert (bleu.dataset_type, bleu.dataset_config, bleu.dataset_split) == ("wmt14", "de-en", "test")
    assert "fine-tuned from `someone/base-model`" in card.text


def test_a_local_base_model_stays_out_of_the_metadata_and_shows_by_name(tiny_model, tmp_path):
    base = tmp_path / "private" / "base-run"
    base.mkdir(parents=True)
    card = ModelCard.load(write(tmp_path, tiny_model(), base_model=str(base)))
    assert card.data.base_model is None
    assert "fine-tuned from `base-run`" in card.text and str(base) not in card.text


def test_a_failed_write_keeps_the_previous_card_and_leaves_no_temporary_file(tiny_model, tmp_path, monkeypatch):
    path = write(tmp_path, tiny_model(), recipe="first")

    def interrupted(_):
        raise OSError("disk full")

    monkeypatch.setattr(model_card.os, "fsync", interrupted)
    with pytest.raises(OSError, match="disk full"):
        write(tmp_path, tiny_model(), recipe="second")
    assert "Recipe `first`." in path.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]


def test_the_card_gets_the_users_umask_not_a_temporary_files_mode(tiny_model, tmp_path, umask_027):
    path = write(tmp_path, tiny_model())
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # readable by the group, as transformers' files are


def fake_run(tmp_path, model, **args):
    """What write_run_card reads from a finished hf-vanilla-train run, for local files and --push_to_hub."""
    defaults = dict(
        do_train=True, output_dir=str(tmp_path / "out"), push_to_hub=True, hub_token=None, hub_revision=None,
        world_size=1, gradient_accumulation_steps=2, per_device_train_batch_size=8, lr_scheduler_type="linear",
        learning_rate=1e-3, warmup_steps=10, optim="adamw_torch", adam_beta1=0.9, adam_beta2=0.98,
        adam_epsilon=1e-9, weight_decay=0.0, max_grad_norm=0.0, label_smoothing_factor=0.1, seed=3,
        device=torch.device("cpu"),
    )  # fmt: skip
    training_args = SimpleNamespace(**{**defaults, **args})
    (tmp_path / "out").mkdir()
    trainer = SimpleNamespace(
        args=training_args, state=SimpleNamespace(global_step=7, epoch=1.0), model=model, hub_model_id="you/tiny"
    )
    data_args = SimpleNamespace(
        dataset_name=None, dataset_config_name=None, streaming=True, max_source_length=100, max_target_length=120,
        train_file="/home/someone/corpus/train.de,/home/someone/corpus/train.en", validation_file=None,
        test_file="/home/someone/corpus/test.jsonl",
    )  # fmt: skip
    return dict(
        trainer=trainer,
        model_args=SimpleNamespace(model_name_or_path=None),
        data_args=data_args,
        recipe_args=SimpleNamespace(recipe="paper", paper_learning_rate=True),
        raw={"test": [{"translation": {"de": "Guten Morgen", "en": "Good morning"}}]},
        stats={"train": FilterStats(None, None, None), "test": FilterStats(25, 0, 1)},
        results={**SCORES, "train_runtime": 3723.4},
        source_lang="de",
        target_lang="en",
    )


def test_write_run_card_describes_the_run_and_uploads_it_under_push_to_hub(tiny_model, tmp_path, monkeypatch):
    uploads = []
    monkeypatch.setattr(huggingface_hub, "upload_file", lambda **kwargs: uploads.append(kwargs))
    run = fake_run(tmp_path, tiny_model())
    path = write_run_card(run.pop("trainer"), **run)

    uploaded = [(u["path_or_fileobj"], u["path_in_repo"], u["repo_id"]) for u in uploads]
    assert uploaded == [(str(path), "README.md", "you/tiny")]
    card = ModelCard.load(path)
    assert card.data.language == ["de", "en"]
    text = card.text
    assert "/home/someone" not in text and "`train.de`, `train.en`" in text and "`test.jsonl`" in text
    assert "| train | not counted (streamed) | – | – |" in text and "| test | 25 | 0 | 1 |" in text
    assert "| batch | 8 sentences a device, 1 process x 2 accumulation steps a step |" in text
    assert "| learning rate | `linear`, peak 0.001, 10 warm-up steps (peak d_model^-0.5 * warmup^-0.5, §5.3) |" in text
    assert "| training time | 3723.4 s (1 h 02 min 03 s) |" in text
    assert 'model_id = "you/tiny"' in text and '["Guten Morgen"]' in text
    assert "hf-vanilla-translate you/tiny 'Guten Morgen'" in text


def test_a_streamed_split_shows_the_pairs_training_read_of_it(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "upload_file", lambda **kwargs: None)
    run = fake_run(tmp_path, tiny_model())
    run["stats"] = {"train": StreamFilterStats(kept=1234, dropped_empty=1, dropped_too_long=2)}
    text = ModelCard.load(write_run_card(run.pop("trainer"), **run)).text
    assert "| train | 1,234 read (streamed) | 1 | 2 |" in text


def test_write_run_card_writes_nothing_when_the_run_trained_nothing(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "upload_file", lambda **kwargs: pytest.fail("nothing to upload"))
    run = fake_run(tmp_path, tiny_model(), do_train=False)
    assert write_run_card(run.pop("trainer"), **run) is None
    assert not (tmp_path / "out" / "README.md").exists()
