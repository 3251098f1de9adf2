"""generate(): the cache, greedy, beam search and sampling, against uncached runs and hand-written loops.

A randomly initialised tiny model tends to repeat one token whatever the source, which would let a broken cache
go unnoticed. The tests here use a model trained for a second on reversing its source: its outputs depend on the
source and on every earlier target token, end with EOS at different steps, and are still uncertain enough for beam
search to reorder its beams.
"""

import time

import pytest
import torch
from transformers import GenerationConfig
from transformers.cache_utils import DynamicCache, EncoderDecoderCache, StaticCache

from hf_vanilla_transformer import VanillaTransformerConfig, VanillaTransformerForConditionalGeneration

PAD, START, EOS = 0, 1, 2
MAX_NEW = 10


def reversal_batch(n: int, generator: torch.Generator, length: int = 8):
    """Right-padded sources of 3..length tokens; labels are the source reversed, then EOS."""
    lengths = torch.randint(3, length + 1, (n,), generator=generator)
    mask = (torch.arange(length) < lengths[:, None]).long()
    source = torch.randint(3, 40, (n, length), generator=generator) * mask
    labels = torch.full((n, length + 1), -100)
    for i, k in enumerate(lengths.tolist()):
        labels[i, :k] = source[i, :k].flip(0)
        labels[i, k] = EOS
    return source, mask, labels


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = VanillaTransformerConfig(
        vocab_size=40, d_model=32, d_ff=64, num_heads=4, encoder_layers=2, decoder_layers=2, dropout=0.0,
        max_position_embeddings=64, pad_token_id=PAD, bos_token_id=START, eos_token_id=EOS,
        decoder_start_token_id=START, init_scheme="xavier",  # 80 steps learn the reversal only from larger weights
    )
    model = VanillaTransformerForConditionalGeneration(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(80):
        source, mask, labels = reversal_batch(32, generator)
        loss = model(input_ids=source, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture
def sources():
    """Three right-padded sources of lengths 7, 4 and 5, and their masks."""
    mask = (torch.arange(7) < torch.tensor([[7], [4], [5]])).long()
    return torch.randint(3, 40, (3, 7), generator=torch.Generator().manual_seed(5)) * mask, mask


def strip(row: torch.Tensor) -> list[int]:
    """A generated row up to its first EOS, or without its trailing padding. (Beam search fills finished rows with
    EOS rather than PAD: transformers reads `pad_token_id or eos_token_id`, and our pad id is 0.)"""
    tokens = row.tolist()
    if EOS in tokens[1:]:
        return tokens[: tokens.index(EOS, 1) + 1]
    while tokens and tokens[-1] == PAD:
        tokens.pop()
    return tokens


def greedy(model, source, mask, **kwargs):
    return model.generate(
        input_ids=source, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False, num_beams=1, **kwargs
    )


def test_the_model_is_a_fair_test(model, sources):
    # Guards the other tests: outputs differ between sources and are not one repeated token.
    source, mask = sources
    out = greedy(model, source, mask)
    rows = [strip(row) for row in out]
    assert len({tuple(r) for r in rows}) == len(rows)
    assert sum(len(set(r[1:]) - {EOS}) >= 2 for r in rows) >= 2
    assert len({len(r) for r in rows}) >= 2  # rows end at different steps


# --- The cache ---


def test_cached_and_uncached_greedy_agree(model, sources):
    source, mask = sources
    cached = greedy(model, source, mask, use_cache=True)
    uncached = greedy(model, source, mask, use_cache=False)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("cache_kind", ["dynamic", "static"])
def test_step_by_step_logits_with_cache_match_full_recompute(model, sources, implementation, cache_kind):
    model.set_attn_implementation(implementation)
    try:
        source, mask = sources
        continuation = torch.randint(3, 40, (3, 8), generator=torch.Generator().manual_seed(1))
        target = torch.cat([torch.full((3, 1), START), continuation], dim=1)
        full = model(input_ids=source, attention_mask=mask, decoder_input_ids=target, use_cache=False).logits

        encoder_outputs = model.get_encoder()(input_ids=source, attention_mask=mask)
        if cache_kind == "dynamic":
            cache = EncoderDecoderCache(DynamicCache(config=model.config), DynamicCache(config=model.config))
        else:
            cache = EncoderDecoderCache(
                StaticCache(model.config, max_cache_len=16), StaticCache(model.config, max_cache_len=7)
            )
        # One token at a time, then a chunk of three tokens on top of the cache, then one more.
        steps = [(t, t + 1) for t in range(5)] + [(5, 8), (8, 9)]
        for start, end in steps:
            out = model(
                encoder_outputs=encoder_outputs,
                attention_mask=mask,
                decoder_input_ids=target[:, start:end],
                cache=cache,
                use_cache=True,
            )
            cache = out.cache
            torch.testing.assert_close(out.logits, full[:, start:end], atol=1e-5, rtol=0, msg=f"tokens {start}:{end}")
        assert cache.get_seq_length() == 9
    finally:
        model.set_attn_implementation("sdpa")


def test_cross_attention_keys_and_values_are_computed_once(model, sources):
    source, mask = sources
    cross_calls = {i: 0 for i in range(2)}
    self_tokens = []

    def count_cross(i):
        return lambda module, args, out: cross_calls.__setitem__(i, cross_calls[i] + 1)

    decoder = model.get_decoder()
    hooks = [layer.cross_attn.k_proj.register_forward_hook(count_cross(i)) for i, layer in enumerate(decoder.layers)]
    self_k_proj = decoder.layers[0].self_attn.k_proj
    hooks.append(self_k_proj.register_forward_hook(lambda module, args, out: self_tokens.append(args[0].shape[1])))
    try:
        out = greedy(model, source, mask, min_new_tokens=MAX_NEW)
        assert cross_calls == {0: 1, 1: 1}  # once per layer for the whole generation
        # and the cache means every target token is projected once: each step feeds only the newest token
        assert self_tokens == [1] * (out.shape[1] - 1)

        cross_calls.update({0: 0, 1: 0})
        model.generate(input_ids=source, attention_mask=mask, max_new_tokens=MAX_NEW, num_beams=3)
        assert cross_calls == {0: 1, 1: 1}
    finally:
        for hook in hooks:
            hook.remove()


# --- Greedy ---


def test_greedy_matches_a_hand_written_loop(model, sources):
    source, mask = sources
    target = torch.full((3, 1), START)
    finished = torch.zeros(3, dtype=torch.bool)
    for _ in range(MAX_NEW):
        logits = model(input_ids=source, attention_mask=mask, decoder_input_ids=target, use_cache=False).logits[:, -1]
        next_token = logits.argmax(-1).masked_fill(finished, PAD)
        target = torch.cat([target, next_token[:, None]], dim=1)
        finished |= next_token == EOS
        if finished.all():
            break
    assert torch.equal(greedy(model, source, mask), target)


@pytest.mark.parametrize("side", ["right", "left"])
def test_batched_greedy_with_padding_equals_each_alone(model, sources, side):
    source, mask = sources
    if side == "left":
        for i in range(3):
            n = int(mask[i].sum())
            source[i], mask[i] = source[i].roll(7 - n), mask[i].roll(7 - n)
        assert mask[1, 0] == 0 and mask[1, -1] == 1
    batched = greedy(model, source, mask)
    for i in range(3):
        alone = greedy(model, source[i : i + 1, mask[i].bool()], None)
        assert strip(batched[i]) == strip(alone[0])


# --- Beam search ---


def sequence_log_prob(model, source, mask, sequence) -> float:
    """Sum of log p(token) over the generated tokens (EOS included), from one uncached forward pass."""
    tokens = strip(sequence)
    target = torch.tensor([tokens])
    logits = model(input_ids=source, attention_mask=mask, decoder_input_ids=target[:, :-1], use_cache=False).logits
    log_probs = logits.log_softmax(-1)
    return log_probs[0, torch.arange(len(tokens) - 1), target[0, 1:]].sum().item()


def test_beam_search_with_padding_equals_each_input_alone(model, sources):
    source, mask = sources[0][:2], sources[1][:2]  # lengths 7 and 4
    kwargs = dict(
        max_new_tokens=MAX_NEW, num_beams=3, num_return_sequences=3, length_penalty=0.0, output_scores=True,
        return_dict_in_generate=True,
    )
    batched = model.generate(input_ids=source, attention_mask=mask, **kwargs)
    for i in range(2):
        n = int(mask[i].sum())
        alone = model.generate(input_ids=source[i : i + 1, :n], **kwargs)
        for k in range(3):
            assert strip(batched.sequences[3 * i + k]) == strip(alone.sequences[k])
        scores = batched.sequences_scores[3 * i : 3 * i + 3]
        torch.testing.assert_close(scores, alone.sequences_scores, atol=1e-4, rtol=0)
        # With length_penalty 0 a beam's score is its summed log-probability. Recomputing it without a cache checks
        # that the cache followed every beam when beams were reordered.
        for k in range(3):
            expected = sequence_log_prob(model, source[i : i + 1, :n], None, batched.sequences[3 * i + k])
            assert batched.sequences_scores[3 * i + k].item() == pytest.approx(expected, abs=1e-4)


def test_beam_search_num_return_sequences(model, sources):
    source, mask = sources
    best = model.generate(input_ids=source, attention_mask=mask, max_new_tokens=MAX_NEW, num_beams=3)
    out = model.generate(
        input_ids=source, attention_mask=mask, max_new_tokens=MAX_NEW, num_beams=3, num_return_sequences=2,
        output_scores=True, return_dict_in_generate=True,
    )
    assert out.sequences.shape[0] == 6 and out.sequences_scores.shape == (6,)
    for i in range(3):
        group = out.sequences[2 * i : 2 * i + 2]
        assert strip(group[0]) == strip(best[i])  # the first returned is the best beam
        assert strip(group[0]) != strip(group[1])
        assert out.sequences_scores[2 * i] >= out.sequences_scores[2 * i + 1]
    assert torch.all(out.sequences[:, 0] == START)


# --- Sampling ---


def test_sampling_is_reproducible_and_valid(model, sources):
    source, mask = sources
    kwargs = dict(
        input_ids=source, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=True, top_k=10, top_p=0.95,
        temperature=2.0, num_beams=1,  # plain sampling, whatever a generation config says
    )
    runs = {}
    for seed in (0, 0, 1, 2):
        torch.manual_seed(seed)
        out = model.generate(**kwargs)
        assert out.min() >= 0 and out.max() < 40
        assert torch.all(out[:, 0] == START)
        if seed in runs:
            assert torch.equal(out, runs[seed])
        runs[seed] = out
    assert not all(torch.equal(runs[0], runs[s]) for s in (1, 2))


def test_top_k_one_sampling_is_greedy(model, sources):
    source, mask = sources
    torch.manual_seed(0)
    sampled = model.generate(
        input_ids=source, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=True, top_k=1, num_beams=1
    )
    assert torch.equal(sampled, greedy(model, source, mask))


# --- Static cache and torch.compile ---


def test_static_cache_equals_dynamic_cache(model, sources):
    source, mask = sources
    dynamic = greedy(model, source, mask, return_dict_in_generate=True)
    static = greedy(model, source, mask, cache_implementation="static", return_dict_in_generate=True)
    assert isinstance(static.cache.self_attention_cache, StaticCache)
    assert isinstance(dynamic.cache.self_attention_cache, DynamicCache)
    assert torch.equal(static.sequences, dynamic.sequences)


def test_static_cache_beyond_the_sinusoid_table(model, sources):
    # A static cache reports its length as a tensor; the sinusoid table must still grow past max_position_embeddings.
    config = VanillaTransformerConfig(**{**model.config.to_diff_dict(), "max_position_embeddings": 4})
    short_table = VanillaTransformerForConditionalGeneration(config).eval()
    short_table.load_state_dict(model.state_dict())  # the table is a buffer outside the state dict
    source, mask = sources
    dynamic = greedy(model, source, mask, min_new_tokens=MAX_NEW)
    static = greedy(short_table, source, mask, min_new_tokens=MAX_NEW, cache_implementation="static")
    assert dynamic.shape[1] == MAX_NEW + 1
    assert torch.equal(static, dynamic)


def _copy(model):
    copy = VanillaTransformerForConditionalGeneration(model.config).eval()
    copy.load_state_dict(model.state_dict())
    return copy


def test_generate_compiles_decoding_as_one_graph(model, sources):
    # generate() compiles the forward of the decoding steps itself when a compile_config asks it to (on a GPU it does
    # so by default with a static cache). fullgraph=True fails on any graph break, as the model claims
    # _can_compile_fullgraph. The backend records the graph and runs it as traced, without inductor's C++ code
    # generation, which takes minutes on a CPU (that path is the slow test below).
    from transformers import CompileConfig

    torch._dynamo.reset()
    graphs = []

    def recording_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    source, mask = sources
    expected = greedy(model, source, mask, cache_implementation="static")
    config = GenerationConfig.from_model_config(model.config)
    config.compile_config = CompileConfig(backend=recording_backend, fullgraph=True, mode=None)
    config.compile_config._compile_all_devices = True
    config.num_beams = 1  # greedy, as `expected`, whatever the model's own generation config says
    out = _copy(model).generate(
        input_ids=source, attention_mask=mask, generation_config=config, max_new_tokens=MAX_NEW, do_sample=False,
        cache_implementation="static",
    )
    assert graphs, "generate() did not compile the forward"
    assert torch.equal(out, expected)


@pytest.mark.slow
def test_inductor_compiled_forward_decodes_like_eager(model, sources):
    # `model.forward = torch.compile(model.forward)` with the default inductor backend: over a minute of C++ code
    # generation on a 2-core CPU, hence `slow`.
    torch._dynamo.reset()
    source, mask = sources
    expected = greedy(model, source, mask, cache_implementation="static")
    compiled = _copy(model)
    compiled.forward = torch.compile(compiled.forward)
    began = time.perf_counter()
    assert torch.equal(greedy(compiled, source, mask, cache_implementation="static"), expected)
    print(f"inductor compile + decode: {time.perf_counter() - began:.0f} s")
