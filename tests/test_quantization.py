"""int8 inference: every linear layer quantised, outputs close to fp32, the fp32 model left alone."""

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModelForSeq2SeqLM

from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration
from hf_vanilla_transformer.cpu_inference import FusedQKVAttention
from hf_vanilla_transformer.quantization import Int8Linear, VanillaInt8Config, load_int8, quantize_int8


def _linear_types(model):
    """The classes of every linear layer (float or quantised)."""
    return {type(m) for m in model.modules() if isinstance(m, (nn.Linear, Int8Linear))}


def test_every_linear_becomes_int8_and_the_original_stays_fp32(tiny_model):
    model = tiny_model(d_model=64, d_ff=128, num_heads=4)
    quantized = quantize_int8(model)
    assert _linear_types(quantized) == {Int8Linear}
    assert _linear_types(model) == {nn.Linear}  # a copy was quantised
    assert model.lm_head.weight is model.model.encoder.embed_tokens.weight


@pytest.mark.parametrize("bias", [True, False])
def test_int8_linear_gives_torchs_dynamic_int8_layer_bit_for_bit(bias):
    layer = nn.Linear(48, 40, bias=bias)
    with warnings.catch_warnings():  # torch's deprecation notice for its eager-mode quantisation
        warnings.simplefilter("ignore")
        reference = torch.ao.quantization.quantize_dynamic(
            nn.Sequential(layer), {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}, dtype=torch.qint8
        )[0]
    ours = quantize_int8(nn.Sequential(layer).eval())[0]
    assert type(ours) is Int8Linear and (ours.in_features, ours.out_features) == (48, 40)
    x = torch.randn(5, 3, 48)
    assert torch.equal(ours(x), reference(x))
    # and it is int8: not the fp32 product
    assert not torch.allclose(ours(x), layer(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("fuse_qkv", [True, False])
@pytest.mark.parametrize("loader", ["AutoModelForSeq2SeqLM", "load_int8"])
def test_an_int8_folder_loads_with_from_pretrained_to_the_same_numbers(tiny_model, tmp_path, fuse_qkv, loader):
    # Through transformers' quantizer interface, as torchao and bitsandbytes folders load: the registered
    # VanillaInt8Config gives the layout before the weights load, and the int8 weights load into it.
    quantized = quantize_int8(tiny_model(d_model=64, d_ff=128, num_heads=4, vocab_size=100), fuse_qkv=fuse_qkv)
    source = torch.randint(4, 100, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = quantized(input_ids=source, decoder_input_ids=source).logits
        tokens = quantized.generate(input_ids=source, max_new_tokens=6, num_beams=2)
    quantized.save_pretrained(tmp_path)
    stored = load_file(tmp_path / "model.safetensors")
    assert stored["lm_head.weight"].dtype == torch.int8 and stored["lm_head.weight_scale"].shape == (100,)
    assert json.loads((tmp_path / "config.json").read_text())["quantization_config"] == {
        "quant_method": "vanilla_int8",
        "fuse_qkv": fuse_qkv,
    }
    load = AutoModelForSeq2SeqLM.from_pretrained if loader == "AutoModelForSeq2SeqLM" else load_int8
    reloaded = load(tmp_path)
    assert type(reloaded) is VanillaTransformerForConditionalGeneration and not reloaded.training
    assert reloaded.is_quantized and isinstance(reloaded.config.quantization_config, VanillaInt8Config)
    assert _linear_types(reloaded) == {Int8Linear}
    assert repr(reloaded) == repr(quantized)  # the same modules
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=source, decoder_input_ids=source).logits, logits)  # bit for bit
        assert torch.equal(reloaded.generate(input_ids=source, max_new_tokens=6, num_beams=2), tokens)
    assert reloaded.generation_config.num_beams == quantized.generation_config.num_beams
    assert reloaded.num_parameters() == quantized.num_parameters()
    with pytest.raises(RuntimeError, match="cannot train"):
        reloaded.train()


def test_a_reloaded_int8_model_saves_the_same_folder_and_a_float_folder_quantises_as_it_loads(tiny_model, tmp_path):
    model = tiny_model(d_model=32, d_ff=64, num_heads=4)
    quantized = quantize_int8(model)
    quantized.save_pretrained(tmp_path / "int8")
    AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "int8").save_pretrained(tmp_path / "again")
    first, second = (load_file(tmp_path / name / "model.safetensors") for name in ("int8", "again"))
    assert first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)
    # transformers' quantize-on-load route: from_pretrained(float folder, quantization_config=...)
    model.save_pretrained(tmp_path / "fp32")
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "fp32", quantization_config=VanillaInt8Config())
    source = torch.randint(4, 40, (2, 7), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = quantized(input_ids=source, decoder_input_ids=source).logits
        assert torch.equal(loaded(input_ids=source, decoder_input_ids=source).logits, expected)


def test_an_int8_save_that_fails_midway_leaves_no_partial_folder(tiny_model, tmp_path, monkeypatch):
    import transformers.modeling_utils

    def folder(path):
        return {p.name: p.read_bytes() for p in path.iterdir()}

    quantize_int8(tiny_model()).save_pretrained(tmp_path / "kept")
    kept = folder(tmp_path / "kept")
    other = quantize_int8(tiny_model(d_ff=48))  # another config.json: a partial save would show
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "kept")  # the quantizer's model saves the same way

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    # The weights are written after config.json and generation_config.json: the save fails halfway through.
    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", disk_full)
    for model in (other, reloaded):
        for target in (tmp_path / "new", tmp_path / "kept"):
            with pytest.raises(OSError, match="disk full"):
                model.save_pretrained(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]  # no new folder, no staging folder left
    assert folder(tmp_path / "kept") == kept  # the previous int8 model, whole
    monkeypatch.undo()
    other.save_pretrained(tmp_path / "kept")  # an existing folder gets the new files, each in one rename
    assert load_int8(tmp_path / "kept").config.d_ff == 48
    assert sorted(folder(tmp_path / "kept")) == sorted(kept)


def test_an_int8_folder_loads_on_the_cpu_only_and_a_plain_folder_refuses_load_int8(tiny_model, tmp_path):
    model = tiny_model(d_model=32, d_ff=64, num_heads=4)
    quantize_int8(model).save_pretrained(tmp_path / "int8")
    for device_map in ("cuda", {"": "disk"}):
        with pytest.raises(ValueError, match="decodes on the CPU only"):
            AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "int8", device_map=device_map)
    on_the_cpu = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "int8", device_map={"": "cpu"})
    assert _linear_types(on_the_cpu) == {Int8Linear}
    model.save_pretrained(tmp_path / "fp32")
    with pytest.raises(ValueError, match="holds no int8 model saved by quantize_int8"):
        load_int8(tmp_path / "fp32")


def test_an_int8_layer_holds_ordinary_tensors_and_packs_them_again_when_loaded():
    layer = quantize_int8(torch.nn.Sequential(torch.nn.Linear(48, 40)).eval())[0]
    assert {name: p.dtype for name, p in layer.named_parameters()} == {"weight": torch.int8, "bias": torch.float32}
    assert dict(layer.named_buffers())["weight_scale"].dtype == torch.float64
    fresh = Int8Linear(48, 40)
    fresh.load_state_dict(layer.state_dict())
    x = torch.randn(3, 48)
    assert torch.equal(fresh(x), layer(x))
    with pytest.raises(RuntimeError, match="call pack"):
        Int8Linear(48, 40, device="meta")(x)


def test_an_int8_model_reports_its_int8_weights_and_refuses_training(tiny_model):
    model = tiny_model(d_model=64, d_ff=128, num_heads=4, vocab_size=100)
    quantized = quantize_int8(model)
    # Every value the fp32 model holds, plus the output layer's own copy of the (tied) embedding.
    assert quantized.num_parameters() == model.num_parameters() + 100 * 64
    int8_layers = [m for m in quantized.modules() if isinstance(m, Int8Linear)]
    int8_bytes = sum(m.out_features * (m.in_features + 8 + 4 * (m.bias is not None)) for m in int8_layers)
    in_int8 = {id(t) for m in int8_layers for t in (*m.parameters(), *m.buffers())}
    float_bytes = sum(p.numel() * 4 for p in quantized.parameters() if id(p) not in in_int8)
    assert quantized.get_memory_footprint() == float_bytes + int8_bytes < model.get_memory_footprint() / 2
    with pytest.raises(RuntimeError, match="cannot train"):
        quantized.train()


def test_a_bfloat16_model_is_quantised_from_float32(tiny_model):
    model = tiny_model(d_model=64, d_ff=128, num_heads=4).to(torch.bfloat16)
    quantized = quantize_int8(model)
    assert _linear_types(quantized) == {Int8Linear} and quantized.model.encoder.embed_tokens.weight.dtype == torch.float32
    source = torch.randint(4, 40, (2, 6), generator=torch.Generator().manual_seed(3))
    assert quantized.generate(input_ids=source, max_new_tokens=4, num_beams=1).shape == (2, 5)
    assert model.lm_head.weight.dtype == torch.bfloat16  # a copy was converted


def test_int8_logits_stay_close_to_fp32(tiny_model):
    model = tiny_model(d_model=64, d_ff=128, num_heads=4, vocab_size=100)
    source = torch.randint(4, 100, (3, 9), generator=torch.Generator().manual_seed(1))
    labels = torch.randint(4, 100, (3, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = model(input_ids=source, labels=labels).logits
        approx = quantize_int8(model)(input_ids=source, labels=labels).logits
    relative = (approx - reference).norm() / reference.norm()
    assert relative < 0.05, f"int8 logits differ from fp32 by {relative:.3f} (relative L2)"
    assert relative > 0  # it really ran in int8


def test_quantized_model_generates(tiny_model):
    model = tiny_model(d_model=64, d_ff=128, num_heads=4)
    source = torch.randint(4, 40, (2, 6), generator=torch.Generator().manual_seed(3))
    out = quantize_int8(model).generate(input_ids=source, max_new_tokens=5, num_beams=2)
    assert out.shape[0] == 2 and out.shape[1] <= 6


def test_training_mode_is_refused(tiny_model):
    model = tiny_model().train()
    with pytest.raises(ValueError, match="model.eval"):
        quantize_int8(model)


def test_self_attention_gets_one_int8_product_for_q_k_v(tiny_model):
    quantized = quantize_int8(tiny_model(d_model=64, d_ff=128, num_heads=4, vocab_size=100))
    fused = {name for name, m in quantized.named_modules() if isinstance(m, FusedQKVAttention)}
    layers = quantized.config.encoder_layers, quantized.config.decoder_layers
    assert fused == {f"model.encoder.layers.{i}.self_attn" for i in range(layers[0])} | {
        f"model.decoder.layers.{i}.self_attn" for i in range(layers[1])
    }  # not the encoder-decoder attention, whose keys and values come from another input
    first = quantized.model.decoder.layers[0].self_attn
    assert type(first.qkv_proj) is Int8Linear and first.qkv_proj.out_features == 3 * 64
    assert not hasattr(first, "q_proj")  # the three int8 layers it stands for are gone
    assert "FusedQKVAttention" in repr(quantized)

    calls = []
    first.qkv_proj.register_forward_hook(lambda *_: calls.append(1))
    source = torch.randint(4, 100, (2, 7), generator=torch.Generator().manual_seed(4))
    quantized.generate(input_ids=source, max_new_tokens=4, min_new_tokens=4, num_beams=1, do_sample=False)
    assert len(calls) == 4  # one call a decoding step
    with pytest.raises(RuntimeError, match="cannot train"):
        quantized.train()


@pytest.mark.parametrize("head_sizes", [{}, {"d_k": 8, "d_v": 24}])  # Table 3 (A)-(B) rows vary d_k apart from d_v
def test_fused_q_k_v_gives_the_three_int8_products_bit_for_bit(tiny_model, head_sizes):
    # Rows are quantised one by one and the input once per call, so stacking W^Q, W^K and W^V changes nothing.
    model = tiny_model(d_model=64, d_ff=128, num_heads=4, vocab_size=100, **head_sizes)
    fused = quantize_int8(model)
    three = quantize_int8(model, fuse_qkv=False)
    source = torch.randint(4, 100, (3, 9), generator=torch.Generator().manual_seed(1))
    labels = torch.randint(4, 100, (3, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(fused(input_ids=source, labels=labels).logits, three(input_ids=source, labels=labels).logits)
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True)
    for beams in (1, 3):
        a = fused.generate(input_ids=source, num_beams=beams, **kwargs)
        b = three.generate(input_ids=source, num_beams=beams, **kwargs)
        assert torch.equal(a.sequences, b.sequences)
        assert all(torch.equal(x, y) for x, y in zip(a.scores, b.scores))


def test_translation_loading_takes_an_int8_folder_as_the_int8_model(tiny_model, tmp_path):
    from hf_vanilla_transformer.tokenization import train_bpe_tokenizer
    from hf_vanilla_transformer.translation import load_translation_model, translate

    tokenizer = train_bpe_tokenizer(["a b c d", "e f g h"] * 5, vocab_size=40, min_frequency=1)
    quantized = quantize_int8(tiny_model(vocab_size=len(tokenizer)))
    quantized.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, _ = load_translation_model(str(tmp_path))
    assert model.is_quantized and _linear_types(model) == {Int8Linear}
    assert translate(model, tokenizer, ["a b c"], num_beams=1, max_new_tokens=3) == translate(
        quantized, tokenizer, ["a b c"], num_beams=1, max_new_tokens=3
    )


def test_the_pipeline_takes_an_int8_folder(tiny_model, tmp_path):
    from hf_vanilla_transformer import pipeline
    from hf_vanilla_transformer.tokenization import train_bpe_tokenizer
    from hf_vanilla_transformer.translation import translate

    tokenizer = train_bpe_tokenizer(["a b c d", "e f g h"] * 5, vocab_size=40, min_frequency=1)
    quantized = quantize_int8(tiny_model(vocab_size=len(tokenizer)))
    quantized.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    translator = pipeline("translation", model=str(tmp_path))
    assert _linear_types(translator.model) == {Int8Linear}
    expected = translate(quantized, tokenizer, ["a b c", "e f"], num_beams=1, max_new_tokens=3)
    got = translator(["a b c", "e f"], num_beams=1, max_new_tokens=3)
    assert [item["translation_text"] for item in got] == expected
