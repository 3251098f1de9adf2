"""The model against the paper: each block against a plain-torch reference built from its weights, then the
properties the paper relies on (causality, permutation equivariance without positions), padding, the loss,
errors at the boundary, checkpointing, ties and initialisation.

References are written here with plain tensor ops (explicit per-head loops, LayerNorm from its definition, the
sinusoids from math.sin/cos), so a test fails when the model departs from the paper, not when it changes.
"""

import ast
import inspect
import math
import sys

import pytest
import torch

from hf_vanilla_transformer import loss as loss_module
from hf_vanilla_transformer import modeling_vanilla_transformer as modeling
from hf_vanilla_transformer.modeling_vanilla_transformer import (
    VanillaTransformerAttention,
    VanillaTransformerEncoderLayer,
    VanillaTransformerFeedForward,
    VanillaTransformerSublayer,
    scaled_dot_product_attention,
    sinusoid_table,
)

IMPLEMENTATIONS = ["eager", "sdpa"]


# --- References in plain torch ops ---


def reference_positions(num_positions: int, d_model: int) -> torch.Tensor:
    """§3.5, element by element: PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d))."""
    table = torch.zeros(num_positions, d_model, dtype=torch.float64)
    for pos in range(num_positions):
        for i in range(d_model // 2):
            angle = pos / 10000 ** (2 * i / d_model)
            table[pos, 2 * i] = math.sin(angle)
            table[pos, 2 * i + 1] = math.cos(angle)
    return table


def reference_softmax(scores: torch.Tensor) -> torch.Tensor:
    exp = torch.exp(scores - scores.max(dim=-1, keepdim=True).values)
    return exp / exp.sum(dim=-1, keepdim=True)


def reference_attention(q, k, v, keep=None):
    """§3.2.1: softmax(Q K^T / sqrt(d_k)) V; `keep` (bool, broadcastable to the scores) marks visible keys."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if keep is not None:
        scores = scores.masked_fill(~keep, float("-inf"))
    weights = reference_softmax(scores)
    return weights @ v, weights


def reference_multi_head(attn: VanillaTransformerAttention, x_q, x_kv, keep, num_heads: int, d_k: int, d_v: int):
    """§3.2.2 with an explicit loop over heads: head_i uses rows i*d_k..(i+1)*d_k of W^Q and W^K."""
    heads = []
    for i in range(num_heads):
        qk_rows, v_rows = slice(i * d_k, (i + 1) * d_k), slice(i * d_v, (i + 1) * d_v)
        q = x_q @ attn.q_proj.weight[qk_rows].T + attn.q_proj.bias[qk_rows]
        k = x_kv @ attn.k_proj.weight[qk_rows].T + attn.k_proj.bias[qk_rows]
        v = x_kv @ attn.v_proj.weight[v_rows].T + attn.v_proj.bias[v_rows]
        heads.append(reference_attention(q, k, v, keep)[0])
    return torch.cat(heads, dim=-1) @ attn.out_proj.weight.T + attn.out_proj.bias


def reference_layer_norm(x, norm: torch.nn.LayerNorm):
    mean = x.mean(dim=-1, keepdim=True)
    variance = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(variance + norm.eps) * norm.weight + norm.bias


def reference_feed_forward(ffn, x):
    """§3.3: max(0, x W1 + b1) W2 + b2."""
    return torch.clamp(x @ ffn.fc1.weight.T + ffn.fc1.bias, min=0) @ ffn.fc2.weight.T + ffn.fc2.bias


def reference_sublayer(x, sublayer_module, fn, pre_norm: bool):
    """Post-LN: LayerNorm(x + Sublayer(x)) (§3.1). Pre-LN: x + Sublayer(LayerNorm(x))."""
    norm = sublayer_module.norm
    if pre_norm:
        return x + fn(reference_layer_norm(x, norm))
    return reference_layer_norm(x + fn(x), norm)


def reference_encoder_layer(layer, x, keep, config):
    """§3.1: self-attention, then the feed-forward network, each inside a sub-layer."""
    pre, heads = config.norm_position == "pre", (config.num_heads, config.d_k, config.d_v)

    def self_attention(h):
        return reference_multi_head(layer.self_attn, h, h, keep, *heads)

    def feed_forward(h):
        return reference_feed_forward(layer.feed_forward, h)

    x = reference_sublayer(x, layer.self_attn_sublayer, self_attention, pre)
    return reference_sublayer(x, layer.feed_forward_sublayer, feed_forward, pre)


def reference_decoder_layer(layer, y, causal, memory, memory_keep, config):
    """§3.1: masked self-attention, attention over the encoder output, the feed-forward network."""
    pre, heads = config.norm_position == "pre", (config.num_heads, config.d_k, config.d_v)

    def self_attention(h):
        return reference_multi_head(layer.self_attn, h, h, causal, *heads)

    def cross_attention(h):
        return reference_multi_head(layer.cross_attn, h, memory, memory_keep, *heads)

    def feed_forward(h):
        return reference_feed_forward(layer.feed_forward, h)

    y = reference_sublayer(y, layer.self_attn_sublayer, self_attention, pre)
    y = reference_sublayer(y, layer.cross_attn_sublayer, cross_attention, pre)
    return reference_sublayer(y, layer.feed_forward_sublayer, feed_forward, pre)


def reference_logits(model, source, source_keep, target):
    """The whole model of §3 from its weights: embeddings x sqrt(d_model) + sinusoids, the stacks, the tied projection.

    `source_keep` is (batch, src_len) bool; sources must be right-padded so positions are 0, 1, 2, ...
    """
    config = model.config
    pre = config.norm_position == "pre"
    scale = math.sqrt(config.d_model)
    src_len, tgt_len = source.shape[1], target.shape[1]
    pe = reference_positions(max(src_len, tgt_len), config.d_model).float()

    x = model.model.encoder.embed_tokens.weight[source] * scale + pe[:src_len]
    encoder_keep = source_keep[:, None, :]  # (batch, 1 query row broadcast, src_len)
    for layer in model.model.encoder.layers:
        x = reference_encoder_layer(layer, x, encoder_keep, config)
    if pre:
        x = reference_layer_norm(x, model.model.encoder.final_norm)

    y = model.model.decoder.embed_tokens.weight[target] * scale + pe[:tgt_len]
    causal = torch.ones(tgt_len, tgt_len, dtype=torch.bool).tril()
    for layer in model.model.decoder.layers:
        y = reference_decoder_layer(layer, y, causal, x, encoder_keep, config)
    if pre:
        y = reference_layer_norm(y, model.model.decoder.final_norm)
    return y @ model.model.decoder.embed_tokens.weight.T  # §3.4: the pre-softmax layer is the embedding matrix


def randomize_layer_norms(model):
    """LayerNorms start at weight 1, bias 0; random values let a test see whether each is applied where it should be."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1 + 0.5 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.5 * torch.randn(module.bias.shape, generator=generator))


def random_ids(batch, length, seed=0, low=3, high=40):
    return torch.randint(low, high, (batch, length), generator=torch.Generator().manual_seed(seed))


# --- §3.5 Positional encoding ---


def test_sinusoid_table_is_the_papers_formula():
    expected = reference_positions(50, 16)
    torch.testing.assert_close(sinusoid_table(50, 16).double(), expected, atol=1e-6, rtol=0)
    assert torch.all(sinusoid_table(50, 16)[0, 0::2] == 0) and torch.all(sinusoid_table(50, 16)[0, 1::2] == 1)


def test_model_positions_are_the_papers_formula_in_float32_precision(tiny_model):
    model = tiny_model(max_position_embeddings=8)
    positions = model.model.encoder.embed_positions
    assert not list(positions.buffers()) and not list(positions.parameters())  # no table to bound the length
    reference = reference_positions(1600, 16)
    near = positions(torch.arange(100).unsqueeze(0), 100)[0]
    torch.testing.assert_close(near.double(), reference[:100], atol=1e-5, rtol=0)
    far = positions(torch.arange(1500, 1600).unsqueeze(0), 1600)[0]  # float32 angles: error ~ position * 1e-7
    torch.testing.assert_close(far.double(), reference[1500:], atol=5e-4, rtol=0)


def test_sinusoids_go_beyond_max_position_embeddings_and_follow_the_formula(tiny_model):
    model = tiny_model(max_position_embeddings=8)
    source, target = random_ids(2, 20), random_ids(2, 13, seed=1)
    out = model(input_ids=source, decoder_input_ids=target, output_hidden_states=True)
    scale = math.sqrt(16)
    pe = reference_positions(20, 16).float()
    embed = model.model.encoder.embed_tokens.weight
    # hidden_states[0] is the bottom of each stack: token embedding x sqrt(d_model) + PE (§3.4, §3.5).
    torch.testing.assert_close(out.encoder_hidden_states[0], embed[source] * scale + pe, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.decoder_hidden_states[0], embed[target] * scale + pe[:13], atol=1e-5, rtol=0)

    # The same weights with a long enough table give the same logits.
    long_table = tiny_model(max_position_embeddings=64)
    long_table.load_state_dict(model.state_dict())
    expected = long_table(input_ids=source, decoder_input_ids=target).logits
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=0)


# --- §3.2 Attention ---


def test_eager_scaled_dot_product_attention_matches_reference():
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 5, 4, generator=generator)  # (batch, heads, q_len, d_k)
    k = torch.randn(2, 3, 7, 4, generator=generator)
    v = torch.randn(2, 3, 7, 6, generator=generator)  # d_v != d_k
    keep = torch.ones(2, 1, 5, 7, dtype=torch.bool)
    keep[1, :, :, 4:] = False
    module = torch.nn.Module().eval()

    output, weights = scaled_dot_product_attention(module, q, k, v, keep, scaling=4**-0.5)
    expected, expected_weights = reference_attention(q, k, v, keep)
    torch.testing.assert_close(weights, expected_weights, atol=1e-6, rtol=0)
    torch.testing.assert_close(output, expected.transpose(1, 2), atol=1e-6, rtol=0)  # (batch, q_len, heads, d_v)
    assert torch.all(weights[1, :, :, 4:] == 0)

    # An additive float mask means the same thing.
    additive = torch.zeros(keep.shape).masked_fill(~keep, torch.finfo(torch.float32).min)
    output_additive, _ = scaled_dot_product_attention(module, q, k, v, additive, scaling=4**-0.5)
    torch.testing.assert_close(output_additive, output, atol=1e-6, rtol=0)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_multi_head_attention_matches_per_head_reference(tiny_config, implementation, cross):
    config = tiny_config(d_model=16, num_heads=2, d_k=3, d_v=5)
    config._attn_implementation = implementation
    torch.manual_seed(0)
    attn = VanillaTransformerAttention(config).eval()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, generator=generator)
    memory = torch.randn(2, 6, 16, generator=generator) if cross else x
    keep = torch.ones(2, 1, 4, memory.shape[1], dtype=torch.bool)
    keep[0, :, :, -2:] = False  # padding in the first sequence

    output, _ = attn(x, key_value_states=memory if cross else None, attention_mask=keep)
    expected = reference_multi_head(attn, x, memory, keep[:, 0], num_heads=2, d_k=3, d_v=5)
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=0)


# --- §3.1 Encoder layer ---


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_encoder_layer_matches_reference(tiny_config, norm_position, implementation):
    config = tiny_config(norm_position=norm_position)
    config._attn_implementation = implementation
    torch.manual_seed(0)
    layer = VanillaTransformerEncoderLayer(config).eval()
    randomize_layer_norms(layer)
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(0))
    keep = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    keep[1, :, :, 3:] = False

    output = layer(x, keep)
    expected = reference_encoder_layer(layer, x, keep[:, 0], config)
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=0)


def test_post_and_pre_norm_layers_differ(tiny_config):
    # Guards the reference: if both settings computed the same thing, the test above would not see a swap.
    torch.manual_seed(0)
    post = VanillaTransformerEncoderLayer(tiny_config(norm_position="post")).eval()
    pre = VanillaTransformerEncoderLayer(tiny_config(norm_position="pre")).eval()
    pre.load_state_dict(post.state_dict())
    x = torch.randn(1, 5, 16)
    assert not torch.allclose(post(x), pre(x), atol=1e-3)


@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_sublayer_connection_returns_a_tensor(tiny_config, norm_position):
    """The Annotated Transformer's SublayerConnection: the sub-layer is a function of a tensor to a tensor, and so is
    the connection around it."""
    sublayer = VanillaTransformerSublayer(tiny_config(norm_position=norm_position)).eval()
    randomize_layer_norms(sublayer)
    ffn = VanillaTransformerFeedForward(tiny_config())
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(0))
    output = sublayer(x, ffn)
    assert isinstance(output, torch.Tensor)
    expected = reference_sublayer(x, sublayer, lambda h: reference_feed_forward(ffn, h), norm_position == "pre")
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_whole_model_matches_reference(tiny_model, norm_position, implementation):
    model = tiny_model(norm_position=norm_position)
    model.set_attn_implementation(implementation)
    randomize_layer_norms(model)
    source, target = random_ids(2, 6), random_ids(2, 5, seed=1)
    source_keep = torch.ones(2, 6, dtype=torch.bool)
    source_keep[1, 4:] = False
    source = source.masked_fill(~source_keep, 0)

    logits = model(input_ids=source, attention_mask=source_keep.long(), decoder_input_ids=target).logits
    torch.testing.assert_close(logits, reference_logits(model, source, source_keep, target), atol=1e-4, rtol=1e-4)


# --- Properties the paper relies on ---


def test_encoder_without_positions_is_permutation_equivariant(tiny_model):
    # Self-attention and the position-wise FFN treat the sequence as a set; only §3.5's positions give it an order.
    # Learned positions set to zero remove them exactly.
    model = tiny_model(position_embedding="learned")
    with torch.no_grad():
        model.model.encoder.embed_positions.weight.zero_()
    source = random_ids(2, 7)
    mask = torch.ones_like(source)
    mask[1, 5:] = 0
    perm = torch.tensor([3, 0, 6, 1, 5, 2, 4])

    encoder = model.get_encoder()
    out = encoder(input_ids=source, attention_mask=mask).last_hidden_state
    permuted = encoder(input_ids=source[:, perm], attention_mask=mask[:, perm]).last_hidden_state
    torch.testing.assert_close(permuted, out[:, perm], atol=1e-5, rtol=0)

    # With sinusoids the same permutation changes the outputs: the check above is not vacuous.
    with_positions = tiny_model().get_encoder()
    out = with_positions(input_ids=source, attention_mask=mask).last_hidden_state
    permuted = with_positions(input_ids=source[:, perm], attention_mask=mask[:, perm]).last_hidden_state
    assert not torch.allclose(permuted, out[:, perm], atol=1e-3)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_decoder_is_causal(tiny_model, implementation):
    model = tiny_model()
    model.set_attn_implementation(implementation)
    source, target = random_ids(2, 6), random_ids(2, 8, seed=1)
    logits = model(input_ids=source, decoder_input_ids=target).logits
    for t in range(1, 8):
        changed = target.clone()
        changed[:, t:] = random_ids(2, 8 - t, seed=10 + t)
        changed[:, t] = (target[:, t] - 3 + 1) % 37 + 3  # surely different at t
        other = model(input_ids=source, decoder_input_ids=changed).logits
        torch.testing.assert_close(other[:, :t], logits[:, :t], atol=1e-6, rtol=0)
        assert not torch.allclose(other[:, t], logits[:, t], atol=1e-4)


def test_eager_and_sdpa_agree(tiny_model):
    model = tiny_model()
    source, target = random_ids(3, 7), random_ids(3, 5, seed=1)
    mask = torch.ones_like(source)
    mask[1, 4:] = 0
    mask[2, :2] = 0
    decoder_mask = torch.ones_like(target)
    decoder_mask[1, 3:] = 0
    inputs = dict(input_ids=source, attention_mask=mask, decoder_input_ids=target, decoder_attention_mask=decoder_mask)

    assert model.config._attn_implementation == "sdpa"
    sdpa = model(**inputs).logits
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager"
    eager = model(**inputs).logits
    torch.testing.assert_close(eager, sdpa, atol=1e-5, rtol=0)


# --- Outputs ---


def test_output_attentions(tiny_model):
    model = tiny_model()
    model.set_attn_implementation("eager")
    source, target = random_ids(2, 6), random_ids(2, 5, seed=1)
    mask = torch.ones_like(source)
    mask[1, 4:] = 0
    out = model(input_ids=source, attention_mask=mask, decoder_input_ids=target, output_attentions=True)

    assert len(out.encoder_attentions) == 2 and len(out.decoder_attentions) == 2 and len(out.cross_attentions) == 2
    for weights in out.encoder_attentions:
        assert weights.shape == (2, 2, 6, 6)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 6))
        assert torch.all(weights[1, :, :, 4:] == 0)  # padding gets no attention
    for weights in out.decoder_attentions:
        assert weights.shape == (2, 2, 5, 5)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 5))
        assert torch.all(weights.triu(diagonal=1) == 0)  # position i sees only positions <= i (§3.1)
    for weights in out.cross_attentions:
        assert weights.shape == (2, 2, 5, 6)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 5))
        assert torch.all(weights[1, :, :, 4:] == 0)


def test_output_hidden_states(tiny_model):
    model = tiny_model(encoder_layers=2, decoder_layers=1)
    out = model(input_ids=random_ids(2, 6), decoder_input_ids=random_ids(2, 4), output_hidden_states=True)
    assert len(out.encoder_hidden_states) == 2 + 1  # the embeddings, then each layer
    assert len(out.decoder_hidden_states) == 1 + 1
    assert all(h.shape == (2, 6, 16) for h in out.encoder_hidden_states)
    assert all(h.shape == (2, 4, 16) for h in out.decoder_hidden_states)
    torch.testing.assert_close(out.encoder_hidden_states[-1], out.encoder_last_hidden_state)
    torch.testing.assert_close(out.decoder_hidden_states[-1] @ model.lm_head.weight.T, out.logits)


def test_return_dict_false_gives_tuples(tiny_model):
    model = tiny_model()
    source, target = random_ids(2, 6), random_ids(2, 4, seed=1)
    as_dict = model(input_ids=source, decoder_input_ids=target, use_cache=False)
    as_tuple = model(input_ids=source, decoder_input_ids=target, use_cache=False, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.logits)
    torch.testing.assert_close(as_tuple[-1], as_dict.encoder_last_hidden_state)

    with_loss = model(input_ids=source, labels=target, return_dict=False)
    assert with_loss[0].dim() == 0 and with_loss[1].shape == (2, 4, 40)

    base = model.model(input_ids=source, decoder_input_ids=target, use_cache=False, return_dict=False)
    assert isinstance(base, tuple) and base[0].shape == (2, 4, 16)
    encoder_tuple = model.get_encoder()(input_ids=source, return_dict=False)
    assert isinstance(encoder_tuple, tuple)
    torch.testing.assert_close(encoder_tuple[0], as_dict.encoder_last_hidden_state)


def test_get_encoder_and_get_decoder(tiny_model):
    model = tiny_model()
    assert model.get_encoder() is model.model.encoder
    assert model.get_decoder() is model.model.decoder
    source, target = random_ids(2, 6), random_ids(2, 4, seed=1)
    memory = model.get_encoder()(input_ids=source).last_hidden_state
    hidden = model.get_decoder()(input_ids=target, encoder_hidden_states=memory, use_cache=False).last_hidden_state
    logits = model(input_ids=source, decoder_input_ids=target).logits
    torch.testing.assert_close(hidden @ model.lm_head.weight.T, logits)
    # encoder_outputs skips the encoder
    reused = model(encoder_outputs=(memory,), decoder_input_ids=target).logits
    torch.testing.assert_close(reused, model(input_ids=source, decoder_input_ids=target).logits)


# --- Padding ---


def _pad(rows, length, left):
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(length - row.shape[1], length) if left else slice(0, row.shape[1])
        ids[i, span], mask[i, span] = row[0], 1
    return ids, mask


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("position_embedding", ["sinusoidal", "learned"])
@pytest.mark.parametrize("source_side", ["right", "left"])
@pytest.mark.parametrize("target_side", ["right", "left"])
def test_padded_batch_equals_single_runs(tiny_model, implementation, position_embedding, source_side, target_side):
    model = tiny_model(position_embedding=position_embedding)
    model.set_attn_implementation(implementation)
    sources = [random_ids(1, 7), random_ids(1, 4, seed=1), random_ids(1, 1, seed=2)]
    targets = [random_ids(1, 5, seed=3), random_ids(1, 3, seed=4), random_ids(1, 2, seed=5)]
    singles = [model(input_ids=s, decoder_input_ids=t).logits[0] for s, t in zip(sources, targets)]

    source, mask = _pad(sources, 7, left=source_side == "left")
    target, decoder_mask = _pad(targets, 5, left=target_side == "left")
    inputs = dict(input_ids=source, attention_mask=mask, decoder_input_ids=target, decoder_attention_mask=decoder_mask)
    logits = model(**inputs).logits
    for i, single in enumerate(singles):
        real = decoder_mask[i].bool()
        torch.testing.assert_close(logits[i, real], single, atol=1e-5, rtol=0)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fully_padded_row_gives_no_nan(tiny_model, implementation, dtype):
    model = tiny_model().to(dtype)
    model.set_attn_implementation(implementation)
    source, target = random_ids(2, 6), random_ids(2, 4, seed=1)
    mask = torch.ones_like(source)
    mask[1] = 0
    decoder_mask = torch.ones_like(target)
    decoder_mask[1] = 0
    for dm in (None, decoder_mask):
        out = model(input_ids=source, attention_mask=mask, decoder_input_ids=target, decoder_attention_mask=dm)
        assert out.logits.dtype == dtype
        assert torch.isfinite(out.logits).all() and torch.isfinite(out.encoder_last_hidden_state).all()
        # The real row does not notice its empty neighbour.
        alone = model(input_ids=source[:1], decoder_input_ids=target[:1]).logits
        tolerance = 1e-5 if dtype == torch.float32 else 5e-2
        torch.testing.assert_close(out.logits[:1], alone, atol=tolerance, rtol=tolerance)


# --- Loss (§5.4) ---


def reference_smoothed_loss(logits, labels, epsilon):
    """Cross-entropy against (1 - eps) one-hot + eps uniform, summed over the tokens whose label is not -100."""
    log_probs = logits.double().log_softmax(-1)
    total, count = 0.0, 0
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1]):
            y = int(labels[b, t])
            if y == -100:
                continue
            total += (1 - epsilon) * -log_probs[b, t, y] + epsilon * -log_probs[b, t].mean()
            count += 1
    return total, count


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_loss_is_label_smoothed_cross_entropy_ignoring_minus_100(tiny_model, label_smoothing):
    model = tiny_model()
    source, labels = random_ids(2, 6), random_ids(2, 5, seed=1)
    labels[1, 3:] = -100
    out = model(input_ids=source, labels=labels, label_smoothing=label_smoothing)
    total, count = reference_smoothed_loss(out.logits, labels, label_smoothing)
    assert count == 8
    torch.testing.assert_close(out.loss.double(), total / count, atol=1e-5, rtol=0)

    # num_items_in_batch (all target tokens of an accumulated batch) turns the mean into sum / num_items.
    summed = model(input_ids=source, labels=labels, num_items_in_batch=20, label_smoothing=label_smoothing).loss
    torch.testing.assert_close(summed.double(), total / 20, atol=1e-5, rtol=0)
    summed = model(
        input_ids=source, labels=labels, num_items_in_batch=torch.tensor(20), label_smoothing=label_smoothing
    ).loss
    torch.testing.assert_close(summed.double(), total / 20, atol=1e-5, rtol=0)


def test_training_loss_skips_the_logits_and_keeps_loss_and_gradients(tiny_model):
    source, labels = random_ids(3, 6), random_ids(3, 5, seed=1)
    labels[0, 3:] = -100

    def run(chunked: bool, num_items=None):
        model = tiny_model(chunked_loss=chunked).train()
        out = model(input_ids=source, labels=labels, num_items_in_batch=num_items, label_smoothing=0.1)
        out.loss.backward()
        return out, {name: p.grad for name, p in model.named_parameters()}

    for num_items in (None, 40):
        (chunked, chunked_grads), (plain, plain_grads) = run(True, num_items), run(False, num_items)
        assert chunked.logits is None and plain.logits is not None
        torch.testing.assert_close(chunked.loss, plain.loss)
        for name in plain_grads:
            torch.testing.assert_close(chunked_grads[name], plain_grads[name], atol=1e-6, rtol=1e-5, msg=name)
    # Evaluation keeps the logits (Trainer's prediction_step and compute_metrics read them).
    model = tiny_model(chunked_loss=True).train()
    with torch.no_grad():
        assert model(input_ids=source, labels=labels).logits.shape == (3, 5, model.config.vocab_size)
    assert model.eval()(input_ids=source, labels=labels).logits is not None


def test_decoder_inputs_are_labels_shifted_right(tiny_model):
    model = tiny_model(decoder_start_token_id=1, pad_token_id=0)
    source, labels = random_ids(2, 6), random_ids(2, 5, seed=1)
    labels[1, 3:] = -100
    shifted = torch.tensor([[1] + labels[0, :4].tolist(), [1] + labels[1, :3].tolist() + [0]])
    from_labels = model(input_ids=source, labels=labels).logits
    explicit = model(input_ids=source, decoder_input_ids=shifted).logits
    torch.testing.assert_close(from_labels, explicit)


# --- Shape errors: the forwards check shapes only; token ids are checked where they enter (test_pipeline.py) ---

ERROR_CASES = {
    "source mask shape": (
        dict(input_ids=[[3, 4]], attention_mask=[[1, 1, 1]], decoder_input_ids=[[1]]),
        r"attention_mask has shape \(1, 3\)",
    ),
    "target mask shape": (
        dict(input_ids=[[3, 4]], decoder_input_ids=[[1, 5]], decoder_attention_mask=[[1]]),
        r"decoder_attention_mask has shape \(1, 1\)",
    ),
    "no decoder input": (dict(input_ids=[[3, 4]]), "decoder_input_ids"),
    "labels shape": (dict(input_ids=[[3, 4]], decoder_input_ids=[[1]], labels=[[5, 6]]), r"labels has shape \(1, 2\)"),
    "source not 2D": (dict(input_ids=[3, 4], decoder_input_ids=[[1]]), r"input_ids must have shape \(batch, sequence"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_invalid_inputs_raise_value_error(tiny_model, case):
    model = tiny_model()
    kwargs, message = ERROR_CASES[case]
    with pytest.raises(ValueError, match=message):
        model(**{k: torch.tensor(v) for k, v in kwargs.items()})


@pytest.mark.parametrize(
    "source_shape, target_shape, name",
    [((0, 3), (0, 1), "input_ids"), ((2, 0), (2, 1), "input_ids"), ((2, 3), (2, 0), "decoder_input_ids")],
)
def test_empty_batch_raises_value_error(tiny_model, source_shape, target_shape, name):
    model = tiny_model()
    with pytest.raises(ValueError, match=rf"{name} is empty"):
        model(
            input_ids=torch.ones(source_shape, dtype=torch.long),
            decoder_input_ids=torch.ones(target_shape, dtype=torch.long),
        )


def test_empty_inputs_embeds_raise_value_error(tiny_model):
    with pytest.raises(ValueError, match=r"inputs_embeds is empty \(shape \(0, 3\)\)"):
        tiny_model()(inputs_embeds=torch.zeros(0, 3, 16), decoder_input_ids=torch.ones(0, 1, dtype=torch.long))


@pytest.mark.parametrize("side", ["source", "target"])
def test_learned_positions_refuse_sequences_longer_than_the_table(tiny_model, side):
    model = tiny_model(position_embedding="learned", max_position_embeddings=8)
    fits = dict(input_ids=random_ids(1, 8), decoder_input_ids=random_ids(1, 8))
    assert model(**fits).logits.shape == (1, 8, 40)
    too_long = dict(fits, **{"input_ids" if side == "source" else "decoder_input_ids": random_ids(1, 9)})
    with pytest.raises(ValueError, match=r"needs 9 positions.*max_position_embeddings=8.*sinusoidal"):
        model(**too_long)


# --- No forward reads a tensor's values: on a GPU each read is a device-to-host sync per step ---

MODEL_CODE = {inspect.getsourcefile(modeling), inspect.getsourcefile(loss_module)}
VALUE_READS = ("item", "tolist", "numpy", "nonzero", "__bool__", "__int__", "__float__", "__index__")


@pytest.fixture
def value_reads_refused(monkeypatch):
    """Tensor methods that copy values to the host (and indexing by a boolean mask, whose result's size depends on
    them) raise when the model's own code calls them; transformers' code around it is left alone."""

    def guarded(name):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            caller = sys._getframe(1)
            by_mask = name == "__getitem__" and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[0] if isinstance(args[0], tuple) else args[:1])
            )
            if caller.f_code.co_filename in MODEL_CODE and (name != "__getitem__" or by_mask):
                raise AssertionError(f"Tensor.{name} read values at {caller.f_code.co_filename}:{caller.f_lineno}")
            return original(self, *args, **kwargs)

        return read

    for name in (*VALUE_READS, "__getitem__"):
        monkeypatch.setattr(torch.Tensor, name, guarded(name))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("position_embedding", ["sinusoidal", "learned"])
def test_no_forward_reads_tensor_values(tiny_model, value_reads_refused, implementation, position_embedding):
    model = tiny_model(position_embedding=position_embedding, norm_position="pre", final_logits_bias=True)
    model.set_attn_implementation(implementation)
    source, labels = random_ids(2, 6), random_ids(2, 5, seed=1)
    mask = torch.ones_like(source)
    mask[1, 4:] = 0
    labels[1, 3:] = -100
    model.train()
    for chunked in (True, False):  # the training step, with the chunked loss and with the plain one
        model.config.chunked_loss = chunked
        out = model(input_ids=source, attention_mask=mask, labels=labels, num_items_in_batch=torch.tensor(8),
                    label_smoothing=0.1)  # fmt: skip
        out.loss.backward()
    model.eval()
    with torch.no_grad():
        model(input_ids=source, attention_mask=mask, labels=labels, output_attentions=True, output_hidden_states=True)
    for options in (dict(num_beams=1), dict(num_beams=2), dict(num_beams=1, cache_implementation="static")):
        model.generate(input_ids=source, attention_mask=mask, max_new_tokens=4, **options)


def test_no_model_code_has_a_value_read_in_its_source():
    """The same for every code path of the model file and loss.py, the paths the test above does not run included
    (flash attention, a device map): no call of a method or builtin that reads values, outside `generate()`'s length
    rule, which reads Python numbers."""
    for module in (modeling, loss_module):
        tree = ast.parse(inspect.getsource(module))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == "generate":
                node.body = [ast.Pass()]
        reads = [
            (ast.unparse(node.func), node.lineno)
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr in ("item", "tolist", "numpy", "nonzero"))
                or (isinstance(node.func, ast.Name) and node.func.id in ("int", "float", "bool"))
            )
        ]
        assert not reads, f"{module.__name__} reads values: {reads}"


# --- Memory-saving pieces of the training path ---


# --- Training plumbing ---


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model):
    model = tiny_model().train()  # dropout is 0 in the tiny config, so train mode is deterministic
    source, labels = random_ids(2, 6), random_ids(2, 5, seed=1)

    def gradients():
        model.zero_grad()
        model(input_ids=source, labels=labels).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    plain = gradients()
    recomputed = []
    model.model.encoder.layers[0].feed_forward.fc1.register_forward_hook(lambda *args: recomputed.append(1))
    model.activation_checkpointing_enable()
    assert model.model.decoder.layers[1].gradient_checkpointing
    checkpointed = gradients()
    assert len(recomputed) == 2  # forward, then again in backward: checkpointing really ran
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=0, msg=name)


TIES = [(True, True), (False, True), (True, False), (False, False)]


def _embeddings(model):
    return model.model.encoder.embed_tokens.weight, model.model.decoder.embed_tokens.weight, model.lm_head.weight


def _check_ties(model, share, tie):
    source, target, output = _embeddings(model)
    assert (source is target) == share
    assert (output is target) == tie
    assert (output is source) == (share and tie)


@pytest.mark.parametrize("share, tie", TIES, ids=lambda v: str(v))
def test_each_tie_switch_is_honoured(tiny_model, share, tie):
    model = tiny_model(share_encoder_decoder_embeddings=share, tie_word_embeddings=tie)
    _check_ties(model, share, tie)
    # named_parameters() lists a shared tensor once: one (vocab x d_model) matrix, plus one per tie switched off.
    matrices = 1 + (not share) + (not tie)
    embedding_params = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" in n or "lm_head" in n)
    assert embedding_params == matrices * 40 * 16


@pytest.mark.parametrize("share, tie", TIES, ids=lambda v: str(v))
def test_resize_token_embeddings_keeps_the_ties(tiny_model, share, tie):
    model = tiny_model(share_encoder_decoder_embeddings=share, tie_word_embeddings=tie)
    before = [w.detach().clone() for w in _embeddings(model)]
    model.resize_token_embeddings(48, mean_resizing=False)
    _check_ties(model, share, tie)
    assert model.config.vocab_size == 48
    for old, new in zip(before, _embeddings(model)):
        assert new.shape == (48, 16)
        torch.testing.assert_close(new[:40], old)  # existing rows kept
    logits = model(input_ids=torch.tensor([[47, 3]]), decoder_input_ids=torch.tensor([[47]]), labels=None).logits
    assert logits.shape == (1, 1, 48)
    assert model(input_ids=torch.tensor([[47, 3]]), labels=torch.tensor([[47, 2]])).loss.isfinite()


@pytest.mark.parametrize("share, tie", TIES, ids=lambda v: str(v))
def test_a_resized_model_saves_and_reloads(tiny_model, share, tie, tmp_path):
    model = tiny_model(share_encoder_decoder_embeddings=share, tie_word_embeddings=tie)
    model.resize_token_embeddings(48, mean_resizing=False)
    assert (model.config.vocab_size, model.config.decoder_vocab_size) == (48, 48)
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path)
    source = torch.tensor([[47, 3]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=source, decoder_input_ids=source).logits,
                                   model(input_ids=source, decoder_input_ids=source).logits)  # fmt: skip


# --- Initialisation ---


def _layer_linears(model):
    return [m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and name != "lm_head"]


def test_xavier_init_is_glorot_uniform(tiny_model):
    model = tiny_model(d_model=64, d_ff=256, num_heads=4, init_scheme="xavier")
    for linear in _layer_linears(model):
        fan_out, fan_in = linear.weight.shape
        bound = math.sqrt(6 / (fan_in + fan_out))
        weight = linear.weight.detach()
        assert weight.abs().max() <= bound
        assert weight.abs().max() > 0.95 * bound  # fills the range, not PyTorch's default 1/sqrt(fan_in)
        assert abs(weight.std().item() - bound / math.sqrt(3)) < 0.1 * bound / math.sqrt(3)
        assert torch.all(linear.bias == 0)
    embed = model.model.encoder.embed_tokens.weight.detach()
    assert torch.all(embed[0] == 0)  # the padding row
    assert abs(embed[1:].std().item() - 64**-0.5) < 0.1 * 64**-0.5


@pytest.mark.parametrize("d_model, linear_std", [(64, 0.0625), (256, 0.03125)])
def test_a_default_model_starts_with_unit_size_token_vectors_and_width_scaled_linears(d_model, linear_std):
    """Issue 22: Glorot linears (the earlier "xavier" default) learned far slower than MarianMTModel; N(0, 0.02)
    embeddings (Marian's) left positions outweighing tokens, and some seeds never used the source; at d_model 256
    N(0, 0.02) linears learned slower than N(0, 0.03), so the linears start at 0.5 * d_model^-0.5."""
    torch.manual_seed(0)
    config = modeling.VanillaTransformerConfig(
        vocab_size=500, d_model=d_model, d_ff=4 * d_model, num_heads=4, encoder_layers=1, decoder_layers=1
    )
    model = modeling.VanillaTransformerForConditionalGeneration(config)
    assert (config.init_scheme, config.init_std, config.embedding_init_std) == ("normal", None, None)
    for linear in _layer_linears(model):
        assert abs(linear.weight.std().item() - linear_std) < 0.1 * linear_std and torch.all(linear.bias == 0)
    embed = model.model.encoder.embed_tokens.weight.detach()
    assert torch.all(embed[0] == 0) and abs(embed[1:].std().item() - d_model**-0.5) < 0.05 * d_model**-0.5
    scaled_tokens = model.model.encoder.embed_tokens(torch.arange(1, 500)) * config.d_model**0.5
    assert abs(scaled_tokens.pow(2).mean().sqrt().item() - 1.0) < 0.05  # 1 a dimension, beside the sinusoids' 0.71
    assert model.lm_head.weight is model.model.encoder.embed_tokens.weight


def test_normal_init_uses_init_std_and_embedding_init_std(tiny_model):
    model = tiny_model(d_model=64, d_ff=256, num_heads=4, init_scheme="normal", init_std=0.05, embedding_init_std=0.03,
                       position_embedding="learned", max_position_embeddings=512)  # fmt: skip
    positions = [m for m in model.modules() if isinstance(m, modeling.VanillaTransformerLearnedPositionalEmbedding)]
    assert positions  # a learned position table follows init_std, not embedding_init_std
    weighted = [(linear, 0.05) for linear in _layer_linears(model) + positions]
    for linear, std in weighted + [(model.model.encoder.embed_tokens, 0.03)]:
        weight = linear.weight.detach()
        assert abs(weight.std().item() - std) < 0.1 * std
        assert abs(weight.mean().item()) < 0.01
    for norm in (m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)):
        assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)
