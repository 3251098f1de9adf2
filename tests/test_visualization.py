"""visualization: the numbers behind the figures (attention weights, §3.5 table, curves), the PNGs themselves,
and the hf-vanilla-visualize command on a tiny saved model folder."""

import json
import math
import sys

import pytest
import torch

from hf_vanilla_transformer import VanillaTransformerConfig, VanillaTransformerForConditionalGeneration
from hf_vanilla_transformer import visualization as viz
from hf_vanilla_transformer.cli import visualize as cli
from hf_vanilla_transformer.tokenization import train_bpe_tokenizer

SENTENCES = [
    "the dog sees a red boat",
    "a small cat sleeps near the river",
    "fir gu rolgar bal tisris",
    "rolgar tisris gu fir pa",
]
SOURCE = "the small dog sees the river"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(SENTENCES * 3, vocab_size=120, min_frequency=1)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    config = VanillaTransformerConfig(
        vocab_size=len(tokenizer), d_model=16, d_ff=32, num_heads=2, encoder_layers=2, decoder_layers=2,
        dropout=0.0, max_position_embeddings=64,
    )
    model = VanillaTransformerForConditionalGeneration(config).eval()
    model.generation_config.max_new_tokens = 8  # an untrained model may never say </s>
    return model


@pytest.fixture(scope="module")
def maps(model, tokenizer):
    return viz.collect_attention(model, tokenizer, SOURCE, num_beams=1, max_new_tokens=6)


def log_history():
    return [
        {"step": 10, "loss": 5.0, "learning_rate": 1e-4, "grad_norm": 2.0, "epoch": 0.5},
        {"step": 20, "loss": 4.0, "learning_rate": 2e-4, "grad_norm": 1.5, "epoch": 1.0},
        {"step": 20, "eval_loss": 4.5, "eval_bleu": 3.2, "epoch": 1.0},
        {"step": 30, "loss": 3.0, "learning_rate": 1.5e-4, "grad_norm": 1.0, "epoch": 1.5},
        {"step": 40, "eval_loss": 3.5, "eval_bleu": 9.1, "epoch": 2.0},
        {"step": 40, "train_loss": 4.0, "train_runtime": 12.0, "epoch": 2.0},
    ]


@pytest.fixture(scope="module")
def model_folder(model, tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    checkpoint = folder / "checkpoint-40"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 40, "log_history": log_history()}))
    return folder


def assert_png(path, min_width=150, min_height=150):
    """A real, non-blank PNG: the signature, a readable image of a sensible size, and varied pixels."""
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = imread(path)
    height, width = image.shape[:2]
    assert width >= min_width and height >= min_height, (width, height)
    assert image[..., :3].std() > 0.05, "the image is (nearly) blank"
    assert path.stat().st_size < 200_000


# --- the numbers ---


def test_collect_attention_shapes_and_tokens(maps, tokenizer):
    src, tgt = len(maps.source_tokens), len(maps.target_tokens)
    assert maps.encoder.shape == (2, 2, src, src)
    assert maps.decoder.shape == (2, 2, tgt, tgt)
    assert maps.cross.shape == (2, 2, tgt, src)
    assert maps.source_tokens[-1] == "</s>" and maps.target_tokens[0] == "<s>"
    assert maps.source_tokens[:3] == ["the", "small", "dog"]  # the '▁' marker is gone
    assert not any("▁" in token for token in maps.source_tokens + maps.target_tokens + maps.predicted_tokens)
    assert maps.target_tokens[1:] == maps.predicted_tokens[:-1]  # decoder inputs are the targets shifted right
    assert maps.source_ids == tokenizer([SOURCE])["input_ids"][0]


def test_attention_rows_sum_to_one(maps):
    for weights in (maps.encoder, maps.decoder, maps.cross):
        assert torch.allclose(weights.sum(-1), torch.ones(weights.shape[:-1]), atol=1e-5)
        assert (weights >= 0).all()


def test_decoder_self_attention_is_zero_above_the_diagonal(maps):
    assert maps.decoder.shape[-1] > 2
    assert torch.equal(torch.triu(maps.decoder, diagonal=1), torch.zeros_like(maps.decoder))
    assert (torch.diagonal(maps.decoder, dim1=-2, dim2=-1) > 0).all()


def test_alignment_is_the_mean_over_heads_of_the_raw_weights(maps, model):
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            raw = model(
                input_ids=torch.tensor([maps.source_ids]),
                decoder_input_ids=torch.tensor([maps.decoder_input_ids]),
                output_attentions=True,
            ).cross_attentions
    finally:
        model.set_attn_implementation("sdpa")
    last = raw[-1][0]  # (heads, tgt, src)
    expected = sum(last[h] for h in range(last.shape[0])) / last.shape[0]
    assert torch.allclose(viz.cross_attention_alignment(maps), expected, atol=1e-6)
    assert torch.allclose(viz.cross_attention_alignment(maps, layer=0), raw[0][0].mean(0), atol=1e-6)
    everything = torch.stack([w[0] for w in raw]).mean(dim=(0, 1))
    assert torch.allclose(viz.cross_attention_alignment(maps, layer=None), everything, atol=1e-6)


def test_collect_attention_restores_the_kernel_and_mode(model, tokenizer):
    model.train()
    before = model.config._attn_implementation
    viz.collect_attention(model, tokenizer, SOURCE, target="fir gu rolgar")
    assert model.config._attn_implementation == before and model.training
    model.eval()


def test_a_given_target_is_used_as_is(model, tokenizer):
    maps = viz.collect_attention(model, tokenizer, SOURCE, target="fir gu rolgar")
    assert maps.translation == "fir gu rolgar"
    assert maps.predicted_tokens == ["fir", "gu", "rolgar", "</s>"]
    assert maps.cross.shape[-2:] == (4, len(maps.source_tokens))


def test_readable_tokens_mark_word_pieces(tokenizer):
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("rolgarfir")["input_ids"])
    assert len(tokens) > 2  # a word the vocabulary has no single token for
    readable = viz.readable_tokens(tokenizer, tokenizer("rolgarfir")["input_ids"])
    assert readable[0] == tokens[0].lstrip("▁")
    assert all(r.startswith("-") for r, t in zip(readable[1:-1], tokens[1:-1]))
    assert readable[-1] == "</s>"


@pytest.mark.parametrize("d_model", [4, 16])
def test_positional_table_is_section_3_5(d_model):
    table = viz.positional_encoding_table(50, d_model)
    for pos in (0, 1, 7, 49):
        for i in range(d_model // 2):
            angle = pos / 10000 ** (2 * i / d_model)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_dot_product_depends_only_on_distance():
    d_model = 16
    table = viz.positional_encoding_table(40, d_model)
    by_distance = viz.dot_product_by_distance(table, 30)
    for k in (0, 1, 5, 30):
        closed_form = sum(math.cos(k / 10000 ** (2 * i / d_model)) for i in range(d_model // 2))
        assert by_distance[k].item() == pytest.approx(closed_form, abs=1e-4)
        for p in (0, 3, 9):
            assert torch.dot(table[p], table[p + k]).item() == pytest.approx(closed_form, abs=1e-4)
    assert by_distance[0].item() == pytest.approx(d_model / 2)  # sin^2 + cos^2 per pair of dimensions


def test_position_table_of_a_learned_model(tiny_model):
    model = tiny_model(position_embedding="learned")
    table = viz.position_table(model, 10)
    assert torch.equal(table, model.model.encoder.embed_positions.weight[:10].detach())
    with pytest.raises(ValueError, match="max_position_embeddings=64"):
        viz.position_table(model, 65)


def test_training_curves_from_a_log_history():
    curves = viz.training_curves(log_history())
    assert list(curves) == ["loss", "eval_loss", "eval_bleu", "learning_rate", "grad_norm"]
    assert curves["loss"] == ([10, 20, 30], [5.0, 4.0, 3.0])  # the final train_loss summary is not a point
    assert curves["eval_bleu"] == ([20, 40], [3.2, 9.1])


def test_load_log_history_finds_the_newest_checkpoint(tmp_path):
    for step in (9, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
        history = [{"step": step, "loss": float(step)}]
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    assert viz.load_log_history(tmp_path) == [{"step": 10, "loss": 10.0}]


def test_trainer_state_without_log_history_is_a_clear_error(tmp_path):
    path = tmp_path / "trainer_state.json"
    path.write_text(json.dumps({"global_step": 3}))
    with pytest.raises(ValueError, match="no log_history"):
        viz.load_log_history(path)
    with pytest.raises(FileNotFoundError, match="trainer_state.json"):
        viz.load_log_history(tmp_path / "nothing-here")
    with pytest.raises(ValueError, match="none of"):
        viz.training_curves([{"step": 1, "epoch": 0.1}])


# --- the pictures ---


def test_attention_figures_are_pngs(maps, tmp_path):
    paths = viz.plot_maps(maps, tmp_path, layer=1, head=1)
    assert set(paths) == {f"{kind}_{what}" for kind in viz.KINDS for what in ("head", "heads")} | {"alignment"}
    assert paths["cross_attention_head"].name == "cross_attention_layer1_head1.png"
    for path in paths.values():
        assert_png(path)
    from matplotlib.image import imread

    assert imread(paths["encoder_self_attention_heads"]).shape[1] > imread(paths["encoder_self_attention_head"]).shape[1]


def test_positional_and_training_figures_are_pngs(tmp_path):
    assert_png(viz.plot_positional_encoding(viz.positional_encoding_table(60, 32), tmp_path / "pe.png"), 600)
    assert_png(viz.plot_training_curves(log_history(), tmp_path / "curves.png"), 600)


def test_plot_rejects_labels_that_do_not_match(tmp_path):
    with pytest.raises(ValueError, match="do not match 2 row and 3 column labels"):
        viz.plot_attention(torch.rand(3, 3), ["a", "b"], ["a", "b", "c"], tmp_path / "x.png")


def test_missing_matplotlib_says_how_to_install_it(monkeypatch, model_folder, tmp_path):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'hf-vanilla-transformer\[viz\]'"):
        viz.plot_attention(torch.eye(2), ["a", "b"], ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ImportError, match=r"pip install 'hf-vanilla-transformer\[viz\]'"):  # error: ..., exit 2
        cli.run([str(model_folder), SOURCE, "--output_dir", str(tmp_path)])
    assert not list(tmp_path.iterdir())


def test_bad_layer_or_head_names_the_valid_range(maps, model):
    with pytest.raises(ValueError, match=r"layer 2 is out of range.*use 0\.\.1"):
        viz.check_layer_and_head(model.config, 2, 0)
    with pytest.raises(ValueError, match=r"head -3 is out of range.*2 attention heads"):
        viz.check_layer_and_head(model.config, 0, -3)
    with pytest.raises(ValueError, match="layer 5"):
        viz.cross_attention_alignment(maps, layer=5)
    viz.check_layer_and_head(model.config, -2, 1)


# --- the command ---


def test_cli_writes_every_figure_and_the_report(model_folder, tmp_path, capsys):
    out = tmp_path / "viz"
    paths = cli.run([str(model_folder), SOURCE, "--output_dir", str(out), "--layer", "0", "--head", "1", "--num_beams", "1"])
    expected = {f"{kind}_{what}" for kind in viz.KINDS for what in ("head", "heads")}
    expected |= {"alignment", "positional_encoding", "training_curves", "report"}
    assert set(paths) == expected
    for name, path in paths.items():
        assert path.is_file() and path.parent == out
        if name != "report":
            assert_png(path)
    report = paths["report"].read_text()
    assert "the small dog sees the river" in report
    for name, path in paths.items():
        if name != "report":
            assert f'src="{path.name}"' in report
    printed = capsys.readouterr().out
    assert "encoder_self_attention_layer0_head1.png" in printed


def test_cli_bad_layer_and_missing_folder(model_folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.run([str(model_folder), SOURCE, "--output_dir", str(tmp_path), "--layer", "7"])
    assert exit_info.value.code == 2
    assert "--layer 7 is out of range" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.run([str(model_folder), SOURCE, "--output_dir", str(tmp_path), "--head", "2"])
    assert "use 0..1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.run([str(tmp_path / "missing"), SOURCE, "--output_dir", str(tmp_path)])
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.run([str(model_folder), SOURCE, "--output_dir", str(tmp_path), "--trainer_state", str(tmp_path / "no.json")])
    assert "--trainer_state" in capsys.readouterr().err
