"""docs/make_figures.py, question 6: gradient norms per layer, post-LN vs pre-LN, on tiny settings."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration
from hf_vanilla_transformer.builtin_task import SOURCE_LANG, TARGET_LANG, load_builtin_dataset
from hf_vanilla_transformer.tokenization import train_bpe_tokenizer

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "make_figures.py"


@pytest.fixture(scope="module")
def figures():
    spec = importlib.util.spec_from_file_location("make_figures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pairs():
    splits = load_builtin_dataset(seed=0, train_size=200, validation_size=16, test_size=0)
    as_pairs = lambda split: [(r["translation"][SOURCE_LANG], r["translation"][TARGET_LANG]) for r in splits[split]]  # noqa: E731
    return as_pairs("train"), as_pairs("validation")


@pytest.fixture(scope="module")
def tokenizer(pairs):
    return train_bpe_tokenizer((text for pair in pairs[0] for text in pair), vocab_size=300)


def fixed_batches(figures, tokenizer, pairs):
    return [figures.translation_batch(tokenizer, pairs[1][i : i + 8]) for i in (0, 8)]


def model(figures, tokenizer, norm_position, layers=2):
    torch.manual_seed(0)
    return VanillaTransformerForConditionalGeneration(figures.backprop_config(tokenizer, norm_position, layers)).train()


@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_groups_hold_every_layer_parameter_once(figures, tokenizer, norm_position):
    network = model(figures, tokenizer, norm_position, layers=3)
    groups = figures.gradient_groups(network)
    expected = ["embeddings"] + [f"encoder layer {i}" for i in range(3)] + [f"decoder layer {i}" for i in range(3)]
    assert list(groups) == expected
    grouped = [id(p) for parameters in groups.values() for p in parameters]
    assert len(grouped) == len(set(grouped))
    names = {id(p): name for name, p in network.named_parameters()}
    left_out = sorted(name for key, name in names.items() if key not in set(grouped))
    # Only pre-LN's final LayerNorms belong to no layer.
    final_norms = [f"model.{stack}.final_norm.{w}" for stack in ("decoder", "encoder") for w in ("bias", "weight")]
    assert left_out == (final_norms if norm_position == "pre" else [])
    # The tied matrix is the embeddings group; a decoder layer holds two attentions (4 projections with biases),
    # the feed-forward network (2 linears with biases) and the LayerNorms of its three sub-layers.
    assert groups["embeddings"] == [network.model.encoder.embed_tokens.weight]
    assert len(groups["decoder layer 1"]) == 2 * 4 * 2 + 2 * 2 + 3 * 2


def test_one_finite_positive_norm_per_layer_and_post_differs_from_pre(figures, tokenizer, pairs):
    fixed = fixed_batches(figures, tokenizer, pairs)
    post = figures.gradient_norms(model(figures, tokenizer, "post", layers=4), fixed)
    pre = figures.gradient_norms(model(figures, tokenizer, "pre", layers=4), fixed)
    assert list(post) == list(pre) == list(figures.gradient_groups(model(figures, tokenizer, "post", layers=4)))
    for norms in (post, pre):
        assert all(math.isfinite(v) and v > 0 for v in norms.values())
    # Same weights, same batches: only the place of the LayerNorm differs, and with it every gradient.
    assert all(abs(post[g] - pre[g]) > 1e-3 * pre[g] for g in post)
    # Post-LN's gradient grows layer by layer towards the output through the decoder; pre-LN's does not.
    decoder = [f"decoder layer {i}" for i in range(4)]
    assert all(post[a] < post[b] for a, b in zip(decoder, decoder[1:]))
    assert post["decoder layer 3"] / post["decoder layer 0"] > 2 * pre["decoder layer 3"] / pre["decoder layer 0"]


def test_layer_norm_input_spread_per_sub_layer(figures, tokenizer, pairs):
    batch = fixed_batches(figures, tokenizer, pairs)[0]
    post = figures.layer_norm_input_spread(model(figures, tokenizer, "post", layers=3), batch)
    pre = figures.layer_norm_input_spread(model(figures, tokenizer, "pre", layers=3), batch)
    for spreads in (post, pre):
        assert [len(spreads["encoder"]), len(spreads["decoder"])] == [2 * 3, 3 * 3]
        assert all(math.isfinite(v) and v > 0 for v in spreads["encoder"] + spreads["decoder"])
    # Post-LN normalises x + Sublayer(x) where x is already normalised: wider than 1, and not growing. Pre-LN's
    # residual stream is never normalised on its path, so each sub-layer widens it.
    assert all(1 < v < 2 for v in post["decoder"][1:])
    assert all(a < b for a, b in zip(pre["decoder"], pre["decoder"][1:]))
    assert pre["decoder"][-1] > 1.5 * pre["decoder"][0]


def test_gradient_norms_is_repeatable_and_leaves_no_gradient(figures, tokenizer, pairs):
    fixed = fixed_batches(figures, tokenizer, pairs)
    network = model(figures, tokenizer, "post")
    assert figures.gradient_norms(network, fixed) == figures.gradient_norms(network, fixed)
    assert all(p.grad is None or not p.grad.any() for p in network.parameters())


def test_constant_guess_is_the_loss_of_token_frequencies(figures, tokenizer, pairs):
    # A target whose tokens all differ: each has frequency 1/n in it, so guessing those frequencies costs log n.
    pair = next(p for p in pairs[1] if len(set(tokenizer(p[1])["input_ids"])) == len(tokenizer(p[1])["input_ids"]))
    n = len(tokenizer(pair[1])["input_ids"])
    batch = [figures.translation_batch(tokenizer, [pair])]
    assert figures.constant_guess_loss(tokenizer, [pair], batch, 0.0) == pytest.approx(math.log(n), rel=1e-5)
    # On real data it beats the uniform guess, whose loss is the log of the vocabulary size.
    fixed = fixed_batches(figures, tokenizer, pairs)
    guess = figures.constant_guess_loss(tokenizer, pairs[0], fixed, 0.1)
    assert 0 < guess < math.log(len(tokenizer))


def test_schedule_ramps_only_with_warmup(figures):
    ramp, flat = figures.inverse_sqrt_schedule(10), figures.inverse_sqrt_schedule(10, use_warmup=False)
    assert ramp(0) == pytest.approx(0.1) and ramp(9) == pytest.approx(1.0) and ramp(39) == pytest.approx(0.5)
    assert flat(0) == flat(9) == 1.0 and flat(39) == pytest.approx(0.5)


def test_runs_train_measure_and_plot(figures, tokenizer, pairs, tmp_path):
    pytest.importorskip("matplotlib")
    runs = figures.backprop_runs(tokenizer, pairs[0], fixed_batches(figures, tokenizer, pairs), steps=3, batch_size=8, layers=2)
    assert set(runs) == {("post", True), ("pre", True), ("post", False), ("pre", False)}
    for (norm_position, _), run in runs.items():
        assert len(run["losses"]) == 3 and all(math.isfinite(v) for v in run["losses"])
        assert run["batches"] == 2
        # Both runs of a norm position start from the same weights; training moves the gradients.
        assert run["init"] == runs[norm_position, True]["init"]
        assert run["trained"] != run["init"]
    # Same batches, different schedules: the first step is the same, the models after it are not.
    assert runs["post", True]["losses"][0] == runs["post", False]["losses"][0]
    assert runs["post", True]["trained"] != runs["post", False]["trained"]
    path = figures.plot_gradient_norms(runs, 3, tmp_path / "gradients.png", constant_guess=6.0)
    from matplotlib.image import imread

    assert imread(path).shape[0] > 100
