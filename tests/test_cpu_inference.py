"""Opt-in CPU inference: `RowBlockLinear`'s few-row products against the plain ones and its choice between them, and a
model swapped to them and back keeping its parameters, ties, state dict and outputs."""

import pytest
import torch

from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration
from hf_vanilla_transformer import cpu_inference
from hf_vanilla_transformer.cpu_inference import (
    FusedQKVAttention,
    RowBlockLinear,
    fuse_self_attention,
    optimize_for_cpu_inference,
    restore_plain_modules,
)


def random_ids(batch, length, seed=0, low=3, high=40):
    return torch.randint(low, high, (batch, length), generator=torch.Generator().manual_seed(seed))


class _RecordProducts(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the output shape of every matrix product, to tell which way a `RowBlockLinear` computed."""

    PRODUCTS = (torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default, torch.ops.aten.baddbmm.default)

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in self.PRODUCTS:
            self.shapes.append(tuple(out.shape))
        return out


@pytest.fixture
def threads():
    """Sets torch's thread count for one test, and restores it."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.fixture
def own_products(monkeypatch):
    """Every shape takes RowBlockLinear's own product over weights stored row by row, whatever the timings would
    say, for one test."""
    monkeypatch.setattr(cpu_inference, "PRODUCT_CHOICES", {})
    monkeypatch.setattr(RowBlockLinear, "_own_product_is_faster", lambda self, x, rows, threads: True)
    monkeypatch.setattr(cpu_inference, "LAYOUT_CHOICES", {})
    monkeypatch.setattr(RowBlockLinear, "_transposed_weight_is_faster", lambda self, threads: False)


def _expected_products(rows: int, out_features: int, in_features: int, num_threads: int) -> list[tuple]:
    """The output shapes of the products a `RowBlockLinear` should compute."""
    if out_features * in_features < 1 << 18 or rows > 32:
        return [(rows, out_features)]  # x W^T, as nn.Linear
    if rows > 1:
        return [(out_features, rows)]  # W x^T: one column per row
    if num_threads == 1:
        return [(1, out_features)]
    size, rest = divmod(out_features, num_threads)
    return [(num_threads, size, 1)] + ([(rest, 1)] if rest else [])  # row blocks, then any rows left over


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("leading", [(1,), (1, 1), (2,), (4, 1), (2, 16), (32,), (33,), (5, 7)])
@pytest.mark.parametrize("in_features, out_features", [(256, 1024), (24, 40), (256, 1025)])
@pytest.mark.parametrize("num_threads", [1, 2, 3, 4])
def test_row_block_linear_gives_the_layers_output_and_streams_large_weights_its_own_way(
    leading, bias, in_features, out_features, num_threads, threads, own_products
):
    # 1 row: W in row blocks, one per thread (a 1025-row W leaves 1 row over on 2 or 4 threads, 2 on 3);
    # 2-32 rows: W x^T; weights under 2^18 elements and more rows: x W^T.
    threads(num_threads)
    layer = RowBlockLinear(in_features, out_features, bias=bias)
    x = torch.randn(*leading, in_features)
    rows = x.numel() // in_features
    reference_bias = None if layer.bias is None else layer.bias.double()
    expected = torch.nn.functional.linear(x.double(), layer.weight.double(), reference_bias)
    with torch.no_grad(), _RecordProducts() as recorded:
        out = layer(x)
    assert out.shape == (*leading, out_features) and out.is_contiguous()
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    assert recorded.shapes == _expected_products(rows, out_features, in_features, num_threads)


@pytest.mark.parametrize("rows", [1, 4])
def test_row_block_linear_takes_a_weight_stored_transposed(rows, threads, own_products):
    # A weight may be a transposed view (tied to a matrix stored the other way round). Row blocks were measured on
    # weights stored row by row, so one row takes x W^T; 4 rows still take W x^T, which any layout suits.
    threads(2)
    layer = RowBlockLinear(256, 1024)
    layer.weight = torch.nn.Parameter((torch.randn(256, 1024) * 0.05).t())
    assert not layer.weight.is_contiguous()
    x = torch.randn(rows, 256)
    expected = x.double() @ layer.weight.double().t() + layer.bias.double()
    with torch.no_grad(), _RecordProducts() as recorded:
        out = layer(x)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    assert recorded.shapes == [(1, 1024) if rows == 1 else (1024, rows)]


@pytest.mark.parametrize("batch", [1, 4])
def test_an_optimized_decoding_step_matches_the_plain_model(tiny_model, batch, threads, own_products):
    # d_ff 1024 x d_model 256 weights take their own way in a 1- or 4-row step under no_grad; with autograd on,
    # nn.Linear's x W^T.
    threads(2)
    model = tiny_model(d_model=256, d_ff=1024, num_heads=4, encoder_layers=1, decoder_layers=1)
    inputs = dict(input_ids=random_ids(batch, 6), decoder_input_ids=random_ids(batch, 1, seed=1))
    with torch.no_grad():
        plain = model(**inputs).logits
        with _RecordProducts() as recorded:
            model(**inputs)
        assert _expected_products(batch, 1024, 256, 2)[0] not in recorded.shapes  # the plain model: x W^T
        optimize_for_cpu_inference(model)
        with _RecordProducts() as recorded:
            fast = model(**inputs).logits
    assert _expected_products(batch, 1024, 256, 2)[0] in recorded.shapes  # fc1
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    with _RecordProducts() as recorded:
        model(**inputs).logits.sum().backward()  # autograd on: it trains, with nn.Linear's products
    assert _expected_products(batch, 1024, 256, 2)[0] not in recorded.shapes


@pytest.mark.parametrize("rows", [1, 4])
def test_row_block_linear_times_both_products_at_the_first_call_of_a_shape_and_keeps_its_choice(
    rows, threads, monkeypatch
):
    threads(2)
    monkeypatch.setattr(cpu_inference, "PRODUCT_CHOICES", {})
    monkeypatch.setattr(cpu_inference, "LAYOUT_CHOICES", {})
    monkeypatch.setattr(RowBlockLinear, "_transposed_weight_is_faster", lambda self, threads: False)
    timed = []
    measure = RowBlockLinear._own_product_is_faster

    def record(self, x, rows, threads):
        timed.append(rows)
        return measure(self, x, rows, threads)

    monkeypatch.setattr(RowBlockLinear, "_own_product_is_faster", record)
    layer, other = RowBlockLinear(256, 1024), RowBlockLinear(256, 1024)
    x = torch.randn(rows, 256)
    expected = x.double() @ layer.weight.double().t() + layer.bias.double()
    with torch.no_grad():
        for _ in range(3):
            torch.testing.assert_close(layer(x).double(), expected, rtol=1e-5, atol=1e-5)
        other(x)  # the same shape: the choice made for the first layer holds
    assert timed == [rows]
    assert list(cpu_inference.PRODUCT_CHOICES) == [(1024, 256, rows, 2, True, True)]
    own = [(1024, rows)] if rows > 1 else _expected_products(1, 1024, 256, 2)
    for choice, products in ((False, [(rows, 1024)]), (True, own)):
        cpu_inference.PRODUCT_CHOICES[(1024, 256, rows, 2, True, True)] = choice
        with torch.no_grad(), _RecordProducts() as recorded:
            torch.testing.assert_close(layer(x).double(), expected, rtol=1e-5, atol=1e-5)
        assert recorded.shapes == products, choice


@pytest.fixture
def transposed_storage(monkeypatch):
    """Every weight shape measures faster stored transposed at its first one-row call, for one test; returns the list
    of (out_features, in_features, threads) timed."""
    timed = []

    def faster(self, threads):
        timed.append((*self.weight.shape, threads))
        return True

    monkeypatch.setattr(cpu_inference, "PRODUCT_CHOICES", {})
    monkeypatch.setattr(cpu_inference, "LAYOUT_CHOICES", {})
    monkeypatch.setattr(RowBlockLinear, "_transposed_weight_is_faster", faster)
    return timed


def test_a_one_row_call_stores_the_weight_transposed_where_that_measured_faster(threads, transposed_storage):
    threads(1)
    layer, other, small = RowBlockLinear(256, 1024), RowBlockLinear(256, 1024), RowBlockLinear(64, 128)
    weight, values = layer.weight, layer.weight.detach().clone()
    x = torch.randn(1, 256)
    expected = x.double() @ values.double().t() + layer.bias.double()
    with torch.inference_mode():  # as generate() calls it
        out = layer(x)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad(), _RecordProducts() as recorded:
        torch.testing.assert_close(layer(x).double(), expected, rtol=1e-5, atol=1e-5)
    assert recorded.shapes == [(1, 1024)]  # x W^T over the transposed storage: no copy, one product
    assert layer.weight is weight and layer.weight_stored_transposed  # the same parameter, stored the other way
    assert not weight.is_contiguous() and weight.t().is_contiguous() and torch.equal(weight, values)
    assert not weight.is_inference()  # a plain tensor, though the call ran in inference mode
    with torch.no_grad():
        other(x)  # the same shape: the choice made for the first layer holds, and the layer takes it too
        small(torch.randn(1, 64))  # below MIN_WEIGHT_ELEMENTS: not timed, left as it is
        for rows in (1, 4):  # several rows over the transposed storage: the same numbers
            x = torch.randn(rows, 256)
            expected = x.double() @ values.double().t() + layer.bias.double()
            torch.testing.assert_close(layer(x).double(), expected, rtol=1e-5, atol=1e-5)
    assert transposed_storage == [(1024, 256, 1)]
    assert not other.weight.is_contiguous() and small.weight.is_contiguous() and not small.weight_stored_transposed
    assert all(key[-1] is False for key in cpu_inference.PRODUCT_CHOICES)  # 4 rows chose over the new storage
    layer(torch.randn(2, 256)).sum().backward()  # and it trains
    assert weight.grad.shape == weight.shape


@pytest.mark.parametrize("threads_count", [1, 2])
def test_the_storage_choice_times_equal_products_and_takes_the_transposed_one_only_when_clearly_faster(
    threads_count, monkeypatch
):
    layer = RowBlockLinear(256, 1024)
    with torch.no_grad():
        reference = {name: product() for name, product in _timed_products(layer, threads_count, monkeypatch, {})}
    # each candidate computes x W^T + b for the one random row the method draws: they agree with one another
    names = {"transposed", "linear"} | ({"row blocks"} if threads_count > 1 else set())
    assert reference.keys() == names
    outputs = [out.reshape(1, -1) for out in reference.values()]
    for out in outputs[1:]:
        torch.testing.assert_close(out, outputs[0], rtol=1e-5, atol=1e-5)
    for times, expected in [
        ({"transposed": 1.0, "linear": 2.0, "row blocks": 3.0}, True),
        ({"transposed": 1.0, "linear": 1.02, "row blocks": 3.0}, False),  # not more than 5% faster
        ({"transposed": 1.0, "linear": 2.0, "row blocks": 0.5}, threads_count == 1),  # row blocks on 2 threads
    ]:
        timings = lambda products, times=times: {name: times[name] for name in products}  # noqa: E731
        monkeypatch.setattr(cpu_inference, "fastest_times", timings)
        assert layer._transposed_weight_is_faster(threads_count) is expected, times


def _timed_products(layer, threads_count, monkeypatch, seen):
    """The (name, product) pairs `_transposed_weight_is_faster` hands to `fastest_times`."""
    def equal_times(products):
        seen.update(products)
        return dict.fromkeys(products, 1.0)

    monkeypatch.setattr(cpu_inference, "fastest_times", equal_times)
    layer._transposed_weight_is_faster(threads_count)
    return list(seen.items())


def test_a_model_with_weights_stored_transposed_decodes_saves_and_restores_as_the_plain_one(
    tiny_model, threads, transposed_storage, tmp_path
):
    threads(1)
    model = tiny_model(d_model=256, d_ff=1024, num_heads=4, encoder_layers=1, decoder_layers=1, vocab_size=1024)
    source = random_ids(2, 6)
    options = dict(input_ids=source, max_new_tokens=5, min_new_tokens=5, output_logits=True,
                   return_dict_in_generate=True)  # fmt: skip
    with torch.no_grad():
        expected = {beams: model.generate(**options, num_beams=beams) for beams in (1, 2)}
        single = model.generate(**{**options, "input_ids": source[:1]})
        optimize_for_cpu_inference(model)
        assert transposed_storage == []  # optimizing stores nothing: a one-row call decides
        got_single = model.generate(**{**options, "input_ids": source[:1]})  # one row a step
        got = {beams: model.generate(**options, num_beams=beams) for beams in (1, 2)}
    # the output layer, tied to the embeddings, and the decoder's fc1 were stored transposed by the one-row steps
    assert model.lm_head.weight is model.model.encoder.embed_tokens.weight and model.lm_head.weight_stored_transposed
    assert not model.lm_head.weight.is_contiguous()
    assert not model.model.decoder.layers[0].feed_forward.fc1.weight.is_contiguous()
    assert (1024, 256, 1) in transposed_storage
    for ours, plain in [(got_single, single), *((got[beams], expected[beams]) for beams in (1, 2))]:
        assert torch.equal(ours.sequences, plain.sequences)
        for fast, slow in zip(ours.logits, plain.logits, strict=True):
            torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    model.save_pretrained(tmp_path)
    reloaded = VanillaTransformerForConditionalGeneration.from_pretrained(tmp_path)
    assert all(torch.equal(reloaded.state_dict()[name], value) for name, value in model.state_dict().items())
    restore_plain_modules(model)
    assert all(p.is_contiguous() for p in model.parameters())  # stored row by row again
    assert not any(getattr(m, "weight_stored_transposed", False) for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model.generate(**options, num_beams=1).sequences, expected[1].sequences)


def test_row_block_linear_passes_gradients():
    layer = RowBlockLinear(256, 1024)
    x = torch.randn(4, 256, requires_grad=True)
    layer(x).sum().backward()
    torch.testing.assert_close(x.grad, layer.weight.sum(0).expand(4, 256))


def test_optimizing_swaps_modules_visibly_and_keeps_parameters_ties_and_state_dict(tiny_model):
    model = tiny_model()
    parameters = dict(model.named_parameters())
    state = model.state_dict()
    assert optimize_for_cpu_inference(model) is model
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(type(m) is RowBlockLinear for m in linears)
    assert "RowBlockLinear" in repr(model) and "few-row CPU products" in repr(model)
    assert "FusedQKVAttention" in repr(model)
    stacked = {name for name in dict(model.named_parameters()) if ".self_attn.qkv_proj." in name}
    layers = model.config.encoder_layers + model.config.decoder_layers
    assert len(stacked) == 2 * layers  # a stacked weight and bias per self-attention, beside the three layers
    own = {name: p for name, p in model.named_parameters() if name not in stacked}
    assert own.keys() == parameters.keys()
    assert all(p is parameters[name] for name, p in own.items())  # the same tensors, not copies
    assert model.lm_head.weight is model.model.encoder.embed_tokens.weight
    assert model.state_dict().keys() == state.keys()  # saves as the plain model
    with pytest.raises(RuntimeError, match="restore_plain_modules"):
        model.train()
    restore_plain_modules(model)
    assert {type(m) for m in model.modules() if isinstance(m, torch.nn.Linear)} == {torch.nn.Linear}
    assert not any(isinstance(m, FusedQKVAttention) for m in model.modules())
    assert dict(model.named_parameters()).keys() == parameters.keys()
    assert all(p is parameters[name] for name, p in model.named_parameters())
    model.train()  # trains again


def test_an_optimized_model_saves_the_plain_model(tiny_model, tmp_path):
    model = tiny_model()
    source = random_ids(2, 5)
    with torch.no_grad():
        expected = model(input_ids=source, decoder_input_ids=source).logits
    optimize_for_cpu_inference(model).save_pretrained(tmp_path)
    reloaded = VanillaTransformerForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert not any(isinstance(m, RowBlockLinear) for m in reloaded.modules())
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=source, decoder_input_ids=source).logits, expected)


@pytest.mark.parametrize("head_sizes", [{}, {"d_k": 8, "d_v": 24}])
def test_fused_self_attention_gives_the_plain_models_outputs_and_refuses_training(tiny_model, head_sizes):
    model = tiny_model(d_model=64, d_ff=128, num_heads=4, **head_sizes)
    source, target = random_ids(3, 7), random_ids(3, 5, seed=1)
    with torch.no_grad():
        expected = model(input_ids=source, decoder_input_ids=target).logits
        generated = model.generate(input_ids=source, num_beams=2, max_new_tokens=6, min_new_tokens=6)
    layers = model.config.encoder_layers + model.config.decoder_layers
    assert fuse_self_attention(model) == layers  # self-attention only: cross-attention keeps three products
    assert all(type(layer.cross_attn) is not FusedQKVAttention for layer in model.model.decoder.layers)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=source, decoder_input_ids=target).logits, expected)
        assert torch.equal(model.generate(input_ids=source, num_beams=2, max_new_tokens=6, min_new_tokens=6), generated)
    with pytest.raises(RuntimeError, match="cannot train"):
        model.train()


def test_attention_weights_and_hidden_states_are_still_recorded_after_optimizing(tiny_model):
    # transformers' output capturing hooks the attention modules the first time weights are asked for; the swaps
    # must keep those modules (and so the hooks), before as after, and in the int8 copy.
    from hf_vanilla_transformer.quantization import quantize_int8

    model = tiny_model()
    source, target = random_ids(2, 6), random_ids(2, 4, seed=1)
    kwargs = dict(input_ids=source, decoder_input_ids=target, output_attentions=True, output_hidden_states=True)
    with torch.no_grad():
        expected = model(**kwargs)
        optimize_for_cpu_inference(model)
        optimized = model(**kwargs)
        int8 = quantize_int8(model)(**kwargs)
    layers = model.config.encoder_layers
    for name in ("encoder_attentions", "decoder_attentions", "cross_attentions"):
        assert len(getattr(optimized, name)) == len(getattr(int8, name)) == layers, name
        for got, want in zip(getattr(optimized, name), getattr(expected, name)):
            torch.testing.assert_close(got, want)
    assert len(optimized.decoder_hidden_states) == len(int8.decoder_hidden_states) == layers + 1
    restore_plain_modules(model)
    assert len(model(**kwargs).decoder_attentions) == layers


def test_translation_loading_takes_the_cpu_products_for_float32_on_the_cpu(tiny_model, tmp_path, own_products):
    from hf_vanilla_transformer.tokenization import train_bpe_tokenizer
    from hf_vanilla_transformer.translation import load_translation_model, translate

    texts = ["the red boat sails", "a small dog runs home", "the old farmer sees the river"] * 5
    tokenizer = train_bpe_tokenizer(texts, vocab_size=40, min_frequency=1)
    model = tiny_model(vocab_size=len(tokenizer))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    fast, tokenizer = load_translation_model(str(tmp_path), device="cpu")
    plain, _ = load_translation_model(str(tmp_path), device="cpu", cpu_products=False)
    assert type(fast.lm_head) is RowBlockLinear and type(plain.lm_head) is torch.nn.Linear
    kwargs = dict(num_beams=2, max_new_tokens=5)
    assert translate(fast, tokenizer, texts[:3], **kwargs) == translate(plain, tokenizer, texts[:3], **kwargs)


def test_inference_blocks_compute_the_plain_blocks_and_keep_dropout_in_training(tiny_model):
    from hf_vanilla_transformer.cpu_inference import (
        InferenceFeedForward,
        InferenceSublayer,
        TableSinusoidalPositionalEncoding,
        use_inference_blocks,
    )

    model = tiny_model(max_position_embeddings=8, dropout=0.3)
    source = random_ids(2, 30)  # past max_position_embeddings: the table grows
    with torch.no_grad():
        expected = model(input_ids=source, decoder_input_ids=source).logits
        use_inference_blocks(model)
        kinds = {type(m) for m in model.modules()}
        assert {InferenceSublayer, InferenceFeedForward, TableSinusoidalPositionalEncoding} <= kinds
        torch.testing.assert_close(model(input_ids=source, decoder_input_ids=source).logits, expected)
        model.train()
        first = model(input_ids=source, decoder_input_ids=source).logits
        second = model(input_ids=source, decoder_input_ids=source).logits
    assert not torch.allclose(first, second)  # dropout still runs in training
    restore_plain_modules(model)
    assert not ({InferenceSublayer, InferenceFeedForward} & {type(m) for m in model.modules()})


def test_inference_blocks_are_new_modules_set_on_the_parent_over_the_same_submodules(tiny_model):
    # The blocks are replaced (the old objects keep their class), the new ones take over the old ones' LayerNorm and
    # linear layers, and the sinusoid table is a buffer that is not saved, not state kept outside the module's own.
    from hf_vanilla_transformer.cpu_inference import InferenceFeedForward, InferenceSublayer
    from hf_vanilla_transformer.modeling_vanilla_transformer import (
        VanillaTransformerFeedForward,
        VanillaTransformerSinusoidalPositionalEncoding,
        VanillaTransformerSublayer,
    )

    model = tiny_model()
    layer, encoder = model.model.decoder.layers[0], model.model.encoder
    sublayer, feed_forward, positions = layer.cross_attn_sublayer, layer.feed_forward, encoder.embed_positions
    keys = model.state_dict().keys()
    optimize_for_cpu_inference(model)
    assert type(sublayer) is VanillaTransformerSublayer and type(feed_forward) is VanillaTransformerFeedForward
    assert type(positions) is VanillaTransformerSinusoidalPositionalEncoding
    assert type(layer.cross_attn_sublayer) is InferenceSublayer and layer.cross_attn_sublayer.norm is sublayer.norm
    assert type(layer.feed_forward) is InferenceFeedForward
    assert layer.feed_forward.fc1 is feed_forward.fc1 and layer.feed_forward.fc2 is feed_forward.fc2
    with torch.no_grad():
        model(input_ids=random_ids(2, 5), decoder_input_ids=random_ids(2, 3, seed=1))
    assert encoder.embed_positions.table.shape == (64, model.config.d_model)
    assert "model.encoder.embed_positions.table" in dict(model.named_buffers())
    assert model.state_dict().keys() == keys
    restore_plain_modules(model)
    assert type(layer.cross_attn_sublayer) is VanillaTransformerSublayer
    assert layer.cross_attn_sublayer.norm is sublayer.norm
    assert type(encoder.embed_positions) is VanillaTransformerSinusoidalPositionalEncoding
    assert not any(name.endswith(".table") for name, _ in model.named_buffers())



class _CountCalls:
    """Counts the forward calls of every attention module of a model (a forward hook on each)."""

    def __init__(self, model):
        self.calls = 0
        self.handles = [
            module.register_forward_hook(self._count)
            for module in model.modules()
            if isinstance(module, cpu_inference.VanillaTransformerAttention)
        ]

    def _count(self, *_):
        self.calls += 1

    def remove(self):
        for handle in self.handles:
            handle.remove()


@pytest.mark.parametrize("norm_position, padded", [("post", True), ("pre", True), ("post", False)])
@pytest.mark.parametrize("path", ["float32", "int8"])
def test_inference_decoder_layers_take_decoding_steps_in_one_forward_and_compute_the_plain_layers(
    tiny_model, norm_position, padded, path, monkeypatch
):
    from hf_vanilla_transformer import modeling_vanilla_transformer as modeling
    from hf_vanilla_transformer.quantization import quantize_int8

    masks_built = []  # the name of the builder of each mask the stacks ask transformers for

    def counted(name, builder):
        def build(*args, **kwargs):
            masks_built.append(name)
            return builder(*args, **kwargs)

        return build

    for name in ("create_causal_mask", "create_bidirectional_mask"):
        monkeypatch.setattr(modeling, name, counted(name, getattr(modeling, name)))

    model = tiny_model(norm_position=norm_position, init_std=0.3)  # large weights: outputs that differ by token
    source = random_ids(3, 7)
    mask = torch.ones_like(source)
    if padded:
        mask[0, 4:] = 0  # a padded source: the encoder-decoder attention gets a mask
    options = dict(input_ids=source, attention_mask=mask, max_new_tokens=9, min_new_tokens=9, output_logits=True,
                   return_dict_in_generate=True)  # fmt: skip

    def decode():
        return {beams: model.generate(**options, num_beams=beams) for beams in (1, 3)}

    with torch.no_grad():
        if path == "int8":
            model = quantize_int8(model)
            with pytest.MonkeyPatch.context() as patch:  # the plain layers' forward over the same int8 modules
                for fast, plain in [
                    (cpu_inference.InferenceDecoderLayer, cpu_inference.VanillaTransformerDecoderLayer),
                    (cpu_inference.InferenceDecoder, cpu_inference.VanillaTransformerDecoder),
                ]:
                    patch.setattr(fast, "forward", plain.forward)
                expected = decode()
        else:
            expected = decode()
            optimize_for_cpu_inference(model)
        layers = model.model.decoder.layers
        assert all(type(layer) is cpu_inference.InferenceDecoderLayer for layer in layers)
        assert type(model.model.decoder) is cpu_inference.InferenceDecoder
        counter = _CountCalls(model)
        masks_built.clear()
        got = decode()
        # the encoder's self-attention runs as a module; the decoder's one-position steps never call theirs
        assert counter.calls == 2 * model.config.encoder_layers
        # and the decoder stack builds no masks in its steps: the encoder's one mask for each of the two decodes
        assert masks_built == ["create_bidirectional_mask"] * 2
        counter.calls = 0
        model(input_ids=source, decoder_input_ids=random_ids(3, 4, seed=1))  # four positions: the plain layers
        assert counter.calls == model.config.encoder_layers + 2 * model.config.decoder_layers
        counter.remove()
    for beams in (1, 3):
        assert torch.equal(got[beams].sequences, expected[beams].sequences)
        for step, (fast, plain) in enumerate(zip(got[beams].logits, expected[beams].logits, strict=True)):
            torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5, msg=f"beams {beams}, step {step}")
    if path == "float32":
        restore_plain_modules(model)
        assert all(type(layer) is cpu_inference.VanillaTransformerDecoderLayer for layer in layers)
        assert type(model.model.decoder) is cpu_inference.VanillaTransformerDecoder


def test_an_inference_decoder_layer_step_matches_the_plain_layers_logits(tiny_model):
    model = tiny_model()
    source, start = random_ids(2, 6), random_ids(2, 1, seed=1)
    with torch.no_grad():
        encoder = model.get_encoder()(input_ids=source)
        step = dict(encoder_outputs=encoder, decoder_input_ids=start, use_cache=True)
        plain = model(**step)
        plain_next = model(**step | dict(cache=plain.cache, decoder_input_ids=random_ids(2, 1, seed=2)))
        optimize_for_cpu_inference(model)
        fast = model(**step)
        fast_next = model(**step | dict(cache=fast.cache, decoder_input_ids=random_ids(2, 1, seed=2)))
    torch.testing.assert_close(fast.logits, plain.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast_next.logits, plain_next.logits, rtol=1e-5, atol=1e-5)
