"""The translation and text2text-generation pipelines (transformers 5 removed both): from model objects and from a saved
folder, with the package (`hf_vanilla_transformer.pipeline`) and without it (the folder's own code under
trust_remote_code, in a fresh Python), returning what transformers 4.x returned; `translate()` runs the same code.
"""

import json
from pathlib import Path

import pytest
import torch
import transformers
from test_hub_loading import HIDE_PACKAGE, build_hub_cache, run_fresh_python
from transformers.pipelines import PIPELINE_REGISTRY

import hf_vanilla_transformer
from hf_vanilla_transformer import Text2TextGenerationPipeline, TranslationPipeline, pipeline
from hf_vanilla_transformer.tokenization import train_bpe_tokenizer
from hf_vanilla_transformer.translation import translate

# Sorted by length, so that translate() (which batches by length) makes the same batches as the pipeline.
TEXTS = ["a dog", "the cat sleeps", "two red birds sing", "the dog sleeps under the table ."]
REPO_ID = "user/tiny-vanilla-pipeline"


@pytest.fixture(scope="module")
def tokenizer():
    corpus = TEXTS + ["der hund schläft unter dem tisch .", "zwei rote vögel singen"]
    return train_bpe_tokenizer(corpus * 3, vocab_size=60, min_frequency=1)


@pytest.fixture
def model(tiny_model, tokenizer):
    return tiny_model(vocab_size=len(tokenizer))


@pytest.fixture
def translator(model, tokenizer):
    return pipeline("translation", model=model, tokenizer=tokenizer, device="cpu")


def generate_by_hand(model, tokenizer, texts, **generate_kwargs) -> list[str]:
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        output = model.generate(**batch, **generate_kwargs)
    return tokenizer.batch_decode(output, skip_special_tokens=True)


def test_registered_with_transformers_registry_whose_pipeline_refuses_the_names(model, tokenizer):
    for task, cls in [("translation", TranslationPipeline), ("text2text-generation", Text2TextGenerationPipeline)]:
        assert task in PIPELINE_REGISTRY.get_supported_tasks()
        assert PIPELINE_REGISTRY.check_task(task)[1]["impl"] is cls
        # transformers 5.24's pipeline() rejects both names before it reads the registry; when that changes, this
        # fails and transformers.pipeline can be called directly.
        with pytest.raises(KeyError, match="has been removed"):
            transformers.pipeline(task, model=model, tokenizer=tokenizer)


def test_a_text_gives_a_list_with_one_dict_and_a_list_of_texts_a_list_of_dicts(model, tokenizer, translator):
    expected = [generate_by_hand(model, tokenizer, [text])[0] for text in TEXTS]
    assert translate(model, tokenizer, TEXTS, batch_size=1) == expected
    assert translator(TEXTS[0]) == [{"translation_text": expected[0]}]
    assert translator(TEXTS) == [{"translation_text": text} for text in expected]
    assert translator(tuple(TEXTS)) == [{"translation_text": text} for text in expected]
    batched = translate(model, tokenizer, TEXTS, batch_size=2)
    assert translator(TEXTS, batch_size=2) == [{"translation_text": text} for text in batched]
    # "translation_xx_to_yy" as in 4.x (the languages are the model's own)
    named = pipeline("translation_en_to_toy", model=model, tokenizer=tokenizer)
    assert named(TEXTS[0]) == [{"translation_text": expected[0]}]
    assert not hasattr(model.config, "custom_pipelines")  # pipeline() named the task in a copy of the config


def test_num_return_sequences_gives_a_list_per_text(model, tokenizer, translator):
    kwargs = dict(num_beams=3, num_return_sequences=2)
    alternatives = translate(model, tokenizer, TEXTS[:1], **kwargs)[0]
    assert len(alternatives) == 2
    assert translator(TEXTS[0], **kwargs) == [{"translation_text": text} for text in alternatives]
    expected = translate(model, tokenizer, TEXTS, batch_size=2, **kwargs)
    assert translator(TEXTS, batch_size=2, **kwargs) == [[{"translation_text": t} for t in group] for group in expected]


def test_device_batch_size_and_generate_kwargs_at_creation_and_per_call(model, tokenizer):
    translator = pipeline(
        "translation", model=model, tokenizer=tokenizer, device="cpu", batch_size=2, num_beams=1, max_new_tokens=4
    )
    assert translator.device == torch.device("cpu")
    greedy = generate_by_hand(model, tokenizer, TEXTS[:2], num_beams=1, max_new_tokens=4)  # one padded batch of two
    assert translator(TEXTS[:2]) == [{"translation_text": text} for text in greedy]
    # The call's arguments win over the pipeline's.
    longer = generate_by_hand(model, tokenizer, TEXTS[:2], num_beams=2, max_new_tokens=6)
    assert translator(TEXTS[:2], num_beams=2, max_new_tokens=6) == [{"translation_text": text} for text in longer]


def test_the_model_generation_config_decides_by_default(model, tokenizer, monkeypatch):
    model.generation_config.num_beams = 2
    model.generation_config.max_new_tokens = 3
    translator = pipeline("translation", model=model, tokenizer=tokenizer)
    calls = []
    generate = model.generate
    monkeypatch.setattr(model, "generate", lambda **kwargs: calls.append(kwargs) or generate(**kwargs))
    token_ids = translator(TEXTS[-1], return_tensors=True)[0]["translation_token_ids"]
    monkeypatch.undo()
    assert not {"num_beams", "max_new_tokens", "generation_config"} & calls[0].keys()
    assert len(token_ids) <= 1 + 3  # the start token and 3 new ones, not source length + 50
    with torch.no_grad():
        expected = model.generate(**tokenizer(TEXTS[-1:], return_tensors="pt"), num_beams=2, max_new_tokens=3)[0]
    assert torch.equal(token_ids, expected)


def test_text2text_generation_returns_generated_text(model, tokenizer, translator):
    generator = pipeline("text2text-generation", model=model, tokenizer=tokenizer)
    assert isinstance(generator, Text2TextGenerationPipeline)
    expected = translator(TEXTS, num_beams=1)
    assert generator(TEXTS, num_beams=1) == [{"generated_text": r["translation_text"]} for r in expected]
    token_ids = generator(TEXTS[0], num_beams=1, return_tensors=True)[0]["generated_token_ids"]
    assert tokenizer.decode(token_ids, skip_special_tokens=True) == expected[0]["translation_text"]


def test_inputs_are_passed_whole_never_truncated(tokenizer, tiny_model, monkeypatch):
    long_text = " ".join(TEXTS * 3)
    length = len(tokenizer(long_text)["input_ids"])
    monkeypatch.setattr(tokenizer, "model_max_length", 8)  # far below the text's length
    model = tiny_model(vocab_size=len(tokenizer))
    translator = pipeline("translation", model=model, tokenizer=tokenizer)
    assert translator.preprocess(long_text)["input_ids"].shape == (1, length)
    expected = generate_by_hand(model, tokenizer, [long_text], num_beams=1, max_new_tokens=3)
    assert translator(long_text, num_beams=1, max_new_tokens=3) == [{"translation_text": expected[0]}]
    # A model with learned positions says why it cannot take the input.
    learned = tiny_model(vocab_size=len(tokenizer), position_embedding="learned", max_position_embeddings=16)
    with pytest.raises(ValueError, match="max_position_embeddings=16"):
        pipeline("translation", model=learned, tokenizer=tokenizer)(long_text, num_beams=1)


def test_a_tokenizer_bigger_than_the_model_is_refused_before_any_text_goes_in(tokenizer, tiny_model):
    # Token ids are checked where they enter, once, rather than read back from the device at every model call.
    small = tiny_model(vocab_size=len(tokenizer) - 5)
    message = rf"The tokenizer has {len(tokenizer)} tokens but the model's vocabulary only {len(tokenizer) - 5}"
    with pytest.raises(ValueError, match=message):
        pipeline("translation", model=small, tokenizer=tokenizer)
    with pytest.raises(ValueError, match=message):
        translate(small, tokenizer, TEXTS[:1])


def test_translate_runs_the_pipeline(model, tokenizer, monkeypatch):
    seen = []
    postprocess = TranslationPipeline.postprocess
    monkeypatch.setattr(TranslationPipeline, "postprocess", lambda *a, **k: seen.append(1) or postprocess(*a, **k))
    translate(model, tokenizer, TEXTS, batch_size=3, num_beams=1, max_new_tokens=2)
    assert len(seen) == len(TEXTS)


# --- A saved folder: the pipeline as the folder's own code ---


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tiny_model, tokenizer):
    """A model folder as users get one: model.save_pretrained and tokenizer.save_pretrained into one folder."""
    folder = tmp_path_factory.mktemp("pipeline") / "model"
    tiny_model(vocab_size=len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_saved_folder_names_the_pipelines_and_carries_their_code(folder):
    config = json.loads((folder / "config.json").read_text())

    def entry(name):
        return {"impl": f"pipeline_vanilla_transformer.{name}", "pt": ["AutoModelForSeq2SeqLM"], "type": "text"}

    assert config["custom_pipelines"] == {
        "translation": entry("TranslationPipeline"),
        "text2text-generation": entry("Text2TextGenerationPipeline"),
    }
    package_file = Path(hf_vanilla_transformer.__file__).parent / "pipeline_vanilla_transformer.py"
    assert (folder / "pipeline_vanilla_transformer.py").read_text() == package_file.read_text()


def test_pipeline_from_a_folder_with_the_package(folder, model, tokenizer, tmp_path):
    translator = pipeline("translation", model=str(folder), device="cpu", batch_size=2)
    assert type(translator) is TranslationPipeline
    assert translator(TEXTS) == pipeline("translation", model=model, tokenizer=tokenizer, batch_size=2)(TEXTS)
    # transformers' own pipeline() asks for trust_remote_code, which runs the folder's copy (tested below).
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        transformers.pipeline("translation", model=str(folder))
    # Pipeline.save_pretrained gives the same folder.
    translator.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["custom_pipelines"].keys() == {"translation", "text2text-generation"}
    assert (tmp_path / "pipeline_vanilla_transformer.py").is_file()
    # A folder saved before the pipelines existed (no custom_pipelines, no pipeline file) works the same.
    (tmp_path / "pipeline_vanilla_transformer.py").unlink()
    del saved["custom_pipelines"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert pipeline("translation", model=str(tmp_path), batch_size=2)(TEXTS) == translator(TEXTS)


# Runs in a fresh Python after HIDE_PACKAGE or an import of the package. argv: a JSON object with "sources" (a folder
# and a repo id), "texts", "output" (a JSON file) and "resaved" (a folder to save the last pipeline to).
PIPELINE_CHILD = r"""
import json, sys
import torch
from transformers import pipeline

torch.set_num_threads(1)
args = json.loads(sys.argv[1])
results = {}
for source in args["sources"]:
    translator = pipeline("translation", model=source, trust_remote_code=True, device="cpu")
    generator = pipeline("text2text-generation", model=source, trust_remote_code=True)
    results[source] = dict(
        pipeline_module=type(translator).__module__,
        model_module=type(translator.model).__module__,
        translations=translator(args["texts"], batch_size=2),
        alternatives=translator(args["texts"][0], num_beams=3, num_return_sequences=2),
        generated=generator(args["texts"], num_beams=1, max_new_tokens=4),
    )
translator.save_pretrained(args["resaved"])  # the folder's code saves the pipeline again
with open(args["output"], "w") as file:
    json.dump(results, file)
"""


@pytest.mark.parametrize("hide_package", [True, False], ids=["package-hidden", "package-imported"])
def test_trust_remote_code_runs_the_folder_pipeline(folder, model, tokenizer, tmp_path, hide_package):
    build_hub_cache(tmp_path / "hub", REPO_ID, folder)
    script = (HIDE_PACKAGE if hide_package else "import hf_vanilla_transformer\n") + PIPELINE_CHILD
    resaved = tmp_path / "resaved"
    args = dict(sources=[str(folder), REPO_ID], texts=TEXTS, output=str(tmp_path / "out.json"), resaved=str(resaved))
    done = run_fresh_python(script, args, tmp_path, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "out.json").read_text())
    translations = translate(model, tokenizer, TEXTS, batch_size=2)
    alternatives = translate(model, tokenizer, TEXTS[:1], num_beams=3, num_return_sequences=2)[0]
    generated = translate(model, tokenizer, TEXTS, batch_size=1, num_beams=1, max_new_tokens=4)
    for source in args["sources"]:
        result = results[source]
        assert result["pipeline_module"].startswith("transformers_modules.")  # the folder's copy of the code
        if hide_package:
            assert result["model_module"].startswith("transformers_modules.")
        assert result["translations"] == [{"translation_text": text} for text in translations]
        assert result["alternatives"] == [{"translation_text": text} for text in alternatives]
        assert result["generated"] == [{"generated_text": text} for text in generated]
    said = done.stdout + done.stderr
    assert "[y/N]" not in said, said
    for name in ("config.json", "pipeline_vanilla_transformer.py"):
        assert (resaved / name).is_file(), name
    pipelines = [json.loads((f / "config.json").read_text())["custom_pipelines"] for f in (resaved, folder)]
    assert pipelines[0] == pipelines[1]
