"""Export to CTranslate2: the exported folder decodes as `model.generate()` and scores as the model, for post- and
pre-LN with sinusoidal and learned positions; every expressible configuration scores as the model; int8 loads and
translates; what CTranslate2 cannot express is refused by name; nothing is half written.

What the two engines must agree on, whatever the thread count:
- greedy: the same tokens wherever the model's choice is clear (a near-tie may go either way, see TIE);
- beam search: the same log-probabilities for every hypothesis either returns. The searches themselves differ
  (generate() weighs 2 x num_beams candidates a step), so the tokens may differ where scores are close.
The two decoders are run on the same terms:
- length: CTranslate2's max_decoding_length counts new tokens with the end token, as max_new_tokens does; its
  min_decoding_length defaults to 1, generate()'s to 0, so it is set to 0.
- length penalty: both divide a finished hypothesis's log-probability by length**alpha. generate() counts the end
  token in the length, CTranslate2 only with return_end_token=True, which these tests pass whenever alpha != 0.
"""

import random
import stat
import subprocess
import sys

import pytest
import torch

from hf_vanilla_transformer import (
    VanillaTransformerConfig,
    VanillaTransformerForConditionalGeneration,
    paper_generation_config,
)
from hf_vanilla_transformer.cli.export import run as export_command
from hf_vanilla_transformer.ctranslate2_export import ctranslate2_spec, export_ctranslate2
from hf_vanilla_transformer.tokenization import train_bpe_tokenizer

ctranslate2 = pytest.importorskip("ctranslate2", reason="ctranslate2 is not installed (pip install '.[ctranslate2]')")

WORDS = "red blue green cat dog bird sees reads book river old new".split()
MAX_NEW_TOKENS = 20


def sentences(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) for _ in range(count)]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(sentences(2000, seed=0), vocab_size=60)


def train_reverser(tokenizer, norm_position: str, position_embedding: str):
    """A model trained 200 steps (2 s) to reverse word order: enough that its outputs vary and end with </s>, as a
    real model's do, rather than repeat one token up to the length limit."""
    torch.manual_seed(0)
    config = VanillaTransformerConfig(
        vocab_size=len(tokenizer), d_model=32, d_ff=64, num_heads=2, encoder_layers=1, decoder_layers=1, dropout=0.0,
        max_position_embeddings=64, norm_position=norm_position, position_embedding=position_embedding,
        init_std=0.02, embedding_init_std=0.02,  # the start these 200 steps at lr 1e-2 were sized for
    )  # fmt: skip
    model = VanillaTransformerForConditionalGeneration(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    data = sentences(3200, seed=1)
    for step in range(200):
        batch = data[step * 16 : (step + 1) * 16]
        targets = [" ".join(reversed(s.split())) for s in batch]
        inputs = tokenizer(batch, text_target=targets, return_tensors="pt", padding=True)
        inputs["labels"][inputs["labels"] == tokenizer.pad_token_id] = -100
        model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.generation_config = paper_generation_config(config)  # §6.1's beam search, as hf-vanilla-train saves it
    return model.eval()


@pytest.fixture(scope="module")
def trained(tokenizer):
    """`trained(norm_position, position_embedding)` -> `train_reverser`'s model, trained once per module."""
    models = {}

    def make(norm_position: str, position_embedding: str) -> VanillaTransformerForConditionalGeneration:
        key = (norm_position, position_embedding)
        if key not in models:
            models[key] = train_reverser(tokenizer, *key)
        return models[key]

    return make


def exported(model, tokenizer, folder, **options) -> "ctranslate2.Translator":
    return ctranslate2.Translator(str(export_ctranslate2(model, folder, tokenizer, **options)), device="cpu")


def generate_tokens(model, tokenizer, texts, **kwargs) -> list[list[str]]:
    """generate()'s new tokens for a padded batch, without the start token, the end token and padding."""
    inputs = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        outputs = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, **kwargs)[:, 1:].tolist()
    eos = tokenizer.eos_token_id
    return [tokenizer.convert_ids_to_tokens(ids[: ids.index(eos)] if eos in ids else ids) for ids in outputs]


def ctranslate2_tokens(translator, tokenizer, texts, **kwargs) -> list[list[str]]:
    source = [tokenizer.convert_ids_to_tokens(tokenizer(text).input_ids) for text in texts]  # ends with </s>
    results = translator.translate_batch(source, max_decoding_length=MAX_NEW_TOKENS, min_decoding_length=0, **kwargs)
    return [[t for t in result.hypotheses[0] if t != tokenizer.eos_token] for result in results]


def token_logprobs(model, tokenizer, text: str, tokens: list[str]) -> torch.Tensor:
    """The model's log-probability of each token of a hypothesis and of the </s> after it."""
    ids = tokenizer.convert_tokens_to_ids(tokens) + [tokenizer.eos_token_id]
    decoder_input_ids = torch.tensor([[model.config.decoder_start_token_id, *ids[:-1]]])
    with torch.no_grad():
        logits = model(**tokenizer(text, return_tensors="pt"), decoder_input_ids=decoder_input_ids).logits[0]
    return logits.log_softmax(-1)[torch.arange(len(ids)), ids]


# Two engines sum in different orders, so their log-probabilities differ by ~1e-5; where the model gives two tokens
# log-probabilities within this of each other, either engine may pick either, and the thread count decides which.
TIE = 1e-3


def assert_greedy_alike(model, tokenizer, texts, expected, got) -> None:
    """Greedy tokens equal generate()'s wherever the model's choice is clear: at the first token where the two part,
    the model gives both choices the same log-probability within TIE."""
    assert len(got) == len(expected)
    for text, ours, theirs in zip(texts, expected, got):
        if ours == theirs:
            continue
        step = next(i for i, (a, b) in enumerate(zip(ours + [None], theirs + [None])) if a != b)
        gap = abs(float(token_logprobs(model, tokenizer, text, ours)[step] - token_logprobs(model, tokenizer, text, theirs)[step]))
        assert gap <= TIE, f"{text!r}: generate() gave {ours}, CTranslate2 {theirs}; a choice {gap:.2e} apart"


def assert_scored_alike(model, translator, tokenizer, texts, *decodes) -> None:
    """Each hypothesis either engine returned gets the same log-probabilities from both engines.

    This, not the tokens, is what beam search must agree on: the searches differ (generate() weighs 2 x num_beams
    candidates a step, CTranslate2 num_beams), so with near-ties or a late-ranked </s> each may keep a hypothesis
    the other dropped."""
    for text, *hypotheses in zip(texts, *decodes):
        source = tokenizer.convert_ids_to_tokens(tokenizer(text).input_ids)
        for tokens in {tuple(h) for h in hypotheses}:
            scored = translator.score_batch([source], [list(tokens)])[0]  # it scores the end token too
            expected = token_logprobs(model, tokenizer, text, list(tokens))
            torch.testing.assert_close(torch.tensor(scored.log_probs), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("norm_position", ["post", "pre"])
@pytest.mark.parametrize("position_embedding", ["sinusoidal", "learned"])
def test_exported_model_decodes_as_generate(trained, tokenizer, tmp_path, norm_position, position_embedding):
    model = trained(norm_position, position_embedding)
    translator = exported(model, tokenizer, tmp_path / "ct2")
    texts = sentences(6, seed=2)

    greedy = generate_tokens(model, tokenizer, texts, num_beams=1)
    assert any(len(tokens) > 3 for tokens in greedy) and sum(map(len, greedy)) < 6 * (MAX_NEW_TOKENS - 1)  # varied
    assert_greedy_alike(model, tokenizer, texts, greedy, ctranslate2_tokens(translator, tokenizer, texts, beam_size=1))

    # §6.1's beam 4 with length penalty 0.6 (the model's generation_config), and without a length penalty.
    beam = generate_tokens(model, tokenizer, texts)
    assert model.generation_config.num_beams == 4 and model.generation_config.length_penalty == 0.6
    options = {"beam_size": 4, "length_penalty": 0.6, "return_end_token": True}
    assert_scored_alike(model, translator, tokenizer, texts, beam, ctranslate2_tokens(translator, tokenizer, texts, **options))
    beam = generate_tokens(model, tokenizer, texts, length_penalty=0.0)
    got = ctranslate2_tokens(translator, tokenizer, texts, beam_size=4, length_penalty=0.0)
    assert_scored_alike(model, translator, tokenizer, texts, beam, got)


def test_ctranslate2_splitting_a_batch_changes_nothing(trained, tokenizer, tmp_path):
    model = trained("post", "sinusoidal")
    translator = exported(model, tokenizer, tmp_path / "ct2")
    texts = sentences(8, seed=3)
    expected = generate_tokens(model, tokenizer, texts, num_beams=1)
    got = ctranslate2_tokens(translator, tokenizer, texts, beam_size=1, max_batch_size=3)
    assert_greedy_alike(model, tokenizer, texts, expected, got)


def test_sinusoids_cover_sources_past_max_position_embeddings(trained, tokenizer, tmp_path):
    # The model computes sinusoids for any position; the export writes 1024 rows unless told otherwise.
    model = trained("post", "sinusoidal")
    texts = [" ".join(WORDS * 8)]  # about 100 tokens, max_position_embeddings is 64
    translator = exported(model, tokenizer, tmp_path / "ct2")
    expected = generate_tokens(model, tokenizer, texts, num_beams=1)
    assert_greedy_alike(model, tokenizer, texts, expected, ctranslate2_tokens(translator, tokenizer, texts, beam_size=1))
    short = exported(model, tokenizer, tmp_path / "short", max_positions=16)
    with pytest.raises(RuntimeError, match="No position encodings are defined for positions >= 16"):
        ctranslate2_tokens(short, tokenizer, texts, beam_size=1)


def test_int8_export_loads_and_translates(trained, tokenizer, tmp_path):
    model = trained("pre", "learned")
    float32 = export_ctranslate2(model, tmp_path / "fp32", tokenizer)
    int8 = export_ctranslate2(model, tmp_path / "int8", tokenizer, quantization="int8")
    assert (int8 / "model.bin").stat().st_size < 0.5 * (float32 / "model.bin").stat().st_size
    translator = ctranslate2.Translator(str(int8), device="cpu", compute_type="int8")
    texts = sentences(6, seed=2)
    tokens = ctranslate2_tokens(translator, tokenizer, texts, beam_size=4, length_penalty=0.6, return_end_token=True)
    assert all(tokens) and {t for sentence in tokens for t in sentence} <= set(tokenizer.get_vocab())


def random_model(**overrides):
    torch.manual_seed(0)
    config = VanillaTransformerConfig(
        **{"vocab_size": 40, "d_model": 16, "d_ff": 32, "num_heads": 2, "encoder_layers": 2, "decoder_layers": 2,
           "dropout": 0.0, "max_position_embeddings": 64, "init_scheme": "normal", "init_std": 0.5, **overrides}
    )  # fmt: skip
    return VanillaTransformerForConditionalGeneration(config).eval()


VOCABULARY = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(4, 40)]


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"norm_position": "pre", "position_embedding": "learned"},
        {"scale_embedding": False, "share_encoder_decoder_embeddings": False, "tie_word_embeddings": False},
        {"activation_function": "gelu"},
        {"activation_function": "gelu_new"},
        {"activation_function": "silu"},
        {"activation_function": "tanh"},
        {"d_k": 4, "d_v": 4},  # heads narrower than d_model / num_heads
        {"num_heads": 1, "d_k": 24, "d_v": 24, "layer_norm_eps": 1e-3},
        {"encoder_layers": 3, "decoder_layers": 1},
    ],
    ids=lambda overrides: ",".join(f"{k}={v}" for k, v in overrides.items()) or "base",
)
def test_every_expressible_configuration_scores_as_the_model(tmp_path, overrides):
    """CTranslate2's log-probabilities of a forced target equal the model's, for untrained weights (which are
    large here, init_std 0.5, so that a wrong layout shows)."""
    model = random_model(**overrides)
    translator = exported(model, VOCABULARY, tmp_path / "ct2")
    generator = torch.Generator().manual_seed(1)
    source = torch.randint(4, 40, (9,), generator=generator).tolist() + [2]
    target = torch.randint(4, 40, (7,), generator=generator).tolist()
    result = translator.score_batch([[VOCABULARY[i] for i in source]], [[VOCABULARY[i] for i in target]])[0]
    labels = torch.tensor([target + [2]])  # CTranslate2 scores the end token too
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([source]), labels=labels).logits
    expected = logits.log_softmax(-1)[0].gather(-1, labels[0, :, None])[:, 0]
    torch.testing.assert_close(torch.tensor(result.log_probs), expected, atol=1e-4, rtol=1e-4)


def test_the_command_exports_a_saved_model_folder_with_its_tokenizer(trained, tokenizer, tmp_path):
    model = trained("post", "sinusoidal")
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    output = export_command([str(tmp_path / "model"), str(tmp_path / "ct2"), "--to", "ctranslate2"])
    written = {path.name for path in output.iterdir()}
    assert {"model.bin", "config.json", "shared_vocabulary.json", "tokenizer.json"} <= written
    from transformers import AutoTokenizer

    texts = sentences(3, seed=4)
    reloaded = AutoTokenizer.from_pretrained(output)  # the folder carries what makes its tokens
    translator = ctranslate2.Translator(str(output), device="cpu")
    expected = generate_tokens(model, tokenizer, texts, num_beams=1)
    assert_greedy_alike(model, tokenizer, texts, expected, ctranslate2_tokens(translator, reloaded, texts, beam_size=1))
    with pytest.raises(OSError, match="exists and is not empty"):  # the console script prints it as one line
        export_command([str(tmp_path / "model"), str(output), "--to", "ctranslate2"])
    done = subprocess.run(
        [sys.executable, "-m", "hf_vanilla_transformer.cli.export", str(tmp_path / "model"), str(output), "--to",
         "ctranslate2"], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "overrides, tokens, options, message",
    [
        ({"d_k": 4, "d_v": 8}, VOCABULARY, {}, "d_k=4 differs from d_v=8: CTranslate2's attention has one head size"),
        ({"eos_token_id": [2, 3]}, VOCABULARY, {}, r"eos_token_id=\[2, 3\]: a CTranslate2 model has exactly one end token"),
        ({"decoder_start_token_id": None, "bos_token_id": None}, VOCABULARY, {}, "CTranslate2 needs the token the decoder starts"),
        ({"vocab_size": 30}, VOCABULARY, {}, "token ids up to 39 but the model's vocab_size is 30"),
        ({}, ["<pad>", "<s>", "</s>"] + [f"w{i}" for i in range(3, 40)], {}, "no unknown token"),
        ({}, VOCABULARY[:-1] + ["w4"], {}, "lists a token twice"),
        ({"position_embedding": "learned"}, VOCABULARY, {"max_positions": 128}, "learned table has max_position_embeddings=64 rows"),
        ({}, VOCABULARY, {"quantization": "int4"}, "quantization must be one of int8, "),
    ],
)  # fmt: skip
def test_what_ctranslate2_cannot_express_is_refused_by_name(tmp_path, overrides, tokens, options, message):
    with pytest.raises(ValueError, match=message):
        export_ctranslate2(random_model(**overrides), tmp_path / "ct2", tokens, **options)
    assert list(tmp_path.iterdir()) == []


def test_a_smaller_tokenizer_gets_placeholders_for_the_unused_ids(tmp_path):
    spec = ctranslate2_spec(random_model(vocab_size=44), VOCABULARY)
    tokens = spec._vocabularies["source"][0]
    assert tokens[:40] == VOCABULARY and tokens[40:] == [f"<unused_{i}>" for i in range(40, 44)]


def test_a_failed_export_leaves_nothing_behind(tmp_path, monkeypatch):
    from ctranslate2.specs.transformer_spec import TransformerSpec

    def broken(self, output_dir):
        (tmp_path / "written-so-far").write_text("")  # a marker that saving started
        open(f"{output_dir}/model.bin", "w").close()
        raise OSError("disk full")

    monkeypatch.setattr(TransformerSpec, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        export_ctranslate2(random_model(), tmp_path / "ct2", VOCABULARY)
    assert [p.name for p in tmp_path.iterdir()] == ["written-so-far"]


def test_the_exported_folder_gets_the_users_umask(tmp_path, umask_027):
    output = export_ctranslate2(random_model(), tmp_path / "ct2", VOCABULARY)
    assert stat.S_IMODE(output.stat().st_mode) == 0o750  # not a temporary folder's 0700
    assert {stat.S_IMODE(p.stat().st_mode) for p in output.iterdir()} == {0o640}
    assert [p.name for p in tmp_path.iterdir()] == ["ct2"]
