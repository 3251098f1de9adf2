"""Measure what docs/understanding.md shows, from a trained model folder, and draw its figures.

    python docs/make_figures.py outputs/vanilla-builtin            # the folder hf-vanilla-train leaves
    python docs/make_figures.py outputs/vanilla-builtin --skip_toy  # without the two toy trainings (~3 min)
    python docs/make_figures.py outputs/vanilla-builtin --only_gradients  # question 6 alone: four trainings (~4 min)

Prints every table of the page (Markdown) and writes the PNGs to docs/figures/. The numbers in
docs/understanding.md are the ones this script printed; seeds are fixed, so a rerun on the same model gives
the same tables up to floating-point noise (the toy trainings may differ slightly across machines).
Needs matplotlib: pip install -e ".[viz]".
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from hf_vanilla_transformer import VanillaTransformerConfig, VanillaTransformerForConditionalGeneration, table3_config
from hf_vanilla_transformer import visualization as viz
from hf_vanilla_transformer.builtin_task import SOURCE_LANG, TARGET_LANG, load_builtin_dataset
from hf_vanilla_transformer.modeling_vanilla_transformer import scaled_dot_product_attention

EXAMPLE = "the two old farmers see a red boat near the river"
D_KS = (16, 32, 64, 128, 256, 512)


def print_table(headers: list[str], rows: list[list]) -> None:
    def cell(value) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for row in rows:
        print("| " + " | ".join(cell(value) for value in row) + " |")
    print()


def heading(text: str) -> None:
    print(f"\n## {text}\n", flush=True)


def entropy(weights: torch.Tensor) -> torch.Tensor:
    return -(weights * weights.clamp_min(1e-30).log()).sum(-1)


# --- 1. Why divide by sqrt(d_k) ---


def dot_product_variance(generator: torch.Generator, samples: int = 20000) -> list[list]:
    """var(q·k) for q, k with independent N(0, 1) components: d_k without the scale, 1 with it (§3.2.1)."""
    rows = []
    for d_k in D_KS:
        q = torch.randn(samples, d_k, generator=generator, dtype=torch.float64)
        k = torch.randn(samples, d_k, generator=generator, dtype=torch.float64)
        dots = (q * k).sum(-1)
        rows.append([d_k, round(dots.var().item(), 1), round((dots / math.sqrt(d_k)).var().item(), 3)])
    return rows


def softmax_saturation(generator: torch.Generator, keys: int = 20, trials: int = 4000) -> list[list]:
    """One query against `keys` random keys: the largest weight, the entropy and the size of the softmax's
    Jacobian diag(p) - p p^T, with and without dividing the scores by sqrt(d_k)."""
    rows = []
    for d_k in D_KS:
        q = torch.randn(trials, 1, d_k, generator=generator, dtype=torch.float64)
        k = torch.randn(trials, keys, d_k, generator=generator, dtype=torch.float64)
        scores = (q * k).sum(-1)  # (trials, keys)
        row = [d_k]
        for scale in (1.0, 1 / math.sqrt(d_k)):
            p = F.softmax(scores * scale, dim=-1)
            jacobian = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
            row += [
                round(p.max(-1).values.mean().item(), 3),
                round(entropy(p).mean().item(), 3),
                round(torch.linalg.matrix_norm(jacobian).mean().item(), 4),
            ]
        rows.append(row)
    return rows


class ScoreRecorder:
    """An attention function for transformers' registry: the eager kernel, plus statistics of the scaled scores
    q·k/sqrt(d_k) and of the weights with and without the scale, per attention module."""

    name = "eager_with_score_statistics"

    def __init__(self, model):
        self.names = {module: name for name, module in model.named_modules()}
        self.stats: dict[str, dict[str, list[float]]] = {}

    def __call__(self, module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        output, weights = scaled_dot_product_attention(module, query, key, value, attention_mask, scaling, dropout)
        _, unscaled = scaled_dot_product_attention(module, query, key, value, attention_mask, 1.0, dropout)
        allowed = torch.ones_like(weights, dtype=torch.bool)
        if attention_mask is not None:  # boolean (True: may attend) or additive (0: may attend)
            allowed = allowed & (attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0)
        scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
        stats = self.stats.setdefault(self.names[module], {k: [] for k in ("scores", "max", "entropy", "max_unscaled", "entropy_unscaled", "uniform")})
        stats["scores"] += scores[allowed].tolist()
        stats["max"] += weights.max(-1).values.flatten().tolist()
        stats["entropy"] += entropy(weights).flatten().tolist()
        stats["max_unscaled"] += unscaled.max(-1).values.flatten().tolist()
        stats["entropy_unscaled"] += entropy(unscaled).flatten().tolist()
        stats["uniform"] += allowed.sum(-1).float().log().flatten().tolist()
        return output, weights


@contextmanager
def attention_function(model, name: str, function):
    """Run `model` with `function` registered in transformers' attention (and mask) registry under `name`."""
    AttentionInterface.register(name, function)
    AttentionMaskInterface.register(name, eager_mask)
    previous = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def module_label(name: str) -> str:
    # "model.encoder.layers.0.self_attn" -> "encoder self, layer 0"
    parts = name.split(".")
    stack, layer, kind = parts[1], parts[3], parts[4]
    what = {"self_attn": "self" if stack == "encoder" else "masked self", "cross_attn": "cross"}[kind]
    return f"{stack} {what}, layer {layer}"


@torch.no_grad()
def trained_scores(model, tokenizer, pairs: list[tuple[str, str]]) -> tuple[list[list], list[float]]:
    recorder = ScoreRecorder(model)
    with attention_function(model, ScoreRecorder.name, recorder):
        for source, target in pairs:
            batch = tokenizer([source], text_target=[target], return_tensors="pt")
            model(input_ids=batch["input_ids"], labels=batch["labels"])
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    rows, all_scores = [], []
    for name, stats in recorder.stats.items():
        scores = torch.tensor(stats["scores"])
        all_scores += stats["scores"]
        rows.append([
            module_label(name), round(scores.std().item(), 2), round(scores.abs().max().item(), 1),
            round(mean(stats["max"]), 3), round(mean(stats["max_unscaled"]), 3),
            round(mean(stats["entropy"]), 2), round(mean(stats["entropy_unscaled"]), 2), round(mean(stats["uniform"]), 2),
        ])
    return rows, all_scores


def plot_scaling(variance_rows, saturation_rows, trained: list[float], d_k: int, path: Path) -> Path:
    figure = viz.new_figure(14.0, 3.9)
    left, middle, right = figure.subplots(1, 3)
    d_ks = [row[0] for row in variance_rows]
    left.plot(d_ks, [row[1] for row in variance_rows], "o-", label="q·k")
    left.plot(d_ks, [row[2] for row in variance_rows], "o-", label="q·k / sqrt(d_k)")
    left.set_yscale("log", base=2)
    left.set_xlabel("d_k")
    left.set_ylabel("variance")
    left.set_title("variance of the dot product")
    left.legend(fontsize=8)
    middle.plot(d_ks, [row[1] for row in saturation_rows], "o-", color="tab:red", label="max weight, unscaled")
    middle.plot(d_ks, [row[4] for row in saturation_rows], "o-", color="tab:green", label="max weight, scaled")
    middle.plot(d_ks, [row[3] for row in saturation_rows], "s--", color="tab:red", label="softmax Jacobian norm, unscaled")
    middle.plot(d_ks, [row[6] for row in saturation_rows], "s--", color="tab:green", label="softmax Jacobian norm, scaled")
    for axes in (left, middle):
        axes.set_xscale("log", base=2)
        axes.set_xticks(d_ks, [str(d) for d in d_ks])
        axes.minorticks_off()
    middle.set_xlabel("d_k")
    middle.set_title("softmax over 20 random keys")
    middle.legend(fontsize=7)
    middle.grid(alpha=0.3)
    right.hist(trained, bins=80, color="tab:blue", alpha=0.8, density=True, label="scaled scores q·k/sqrt(d_k)")
    right.hist([s * math.sqrt(d_k) for s in trained], bins=160, color="tab:red", alpha=0.4, density=True,
               label=f"same scores unscaled (× sqrt({d_k}))")
    right.set_xlim(-60, 60)
    right.set_xlabel("attention score")
    right.set_title("trained model, all heads and layers")
    right.legend(fontsize=7)
    figure.suptitle("Why scores are divided by sqrt(d_k) (§3.2.1)", fontsize=11)
    return viz.save_figure(figure, path)


# --- 2. Does a token attend to itself ---


@torch.no_grad()
def encoder_offsets(model, tokenizer, sources: list[str], max_offset: int = 5):
    """Encoder self-attention mass at key offset j - i = -max_offset..max_offset, per layer and head, averaged over
    query positions and sentences; the mass on </s>; and the uniform baseline 1/n."""
    config = model.config
    width = 2 * max_offset + 1
    offsets = torch.zeros(config.encoder_layers, config.num_heads, width)
    counts = torch.zeros(width)
    eos_mass = torch.zeros(config.encoder_layers, config.num_heads)
    uniform = 0.0
    with viz.eager_attention(model):
        for source in sources:
            ids = tokenizer([source], return_tensors="pt")["input_ids"]
            weights = torch.stack(model.get_encoder()(input_ids=ids, output_attentions=True).attentions)[:, 0]
            n = ids.shape[1]
            for offset in range(-max_offset, max_offset + 1):
                diagonal = torch.diagonal(weights, offset=offset, dim1=-2, dim2=-1)  # (layers, heads, n - |offset|)
                if diagonal.shape[-1]:
                    offsets[..., offset + max_offset] += diagonal.mean(-1)
                    counts[offset + max_offset] += 1
            eos_mass += weights[..., :-1, -1].mean(-1)
            uniform += 1.0 / n
    return offsets / counts, eos_mass / len(sources), uniform / len(sources)


def plot_offsets(offsets: torch.Tensor, uniform: float, max_offset: int, sentences: int, path: Path) -> Path:
    figure = viz.new_figure(4.0 * offsets.shape[0] + 0.5, 3.4)
    grid = figure.subplots(1, offsets.shape[0], squeeze=False)[0]
    x = list(range(-max_offset, max_offset + 1))
    for layer, axes in enumerate(grid):
        for head in range(offsets.shape[1]):
            axes.plot(x, offsets[layer, head].numpy(), "o-", markersize=3, alpha=0.7, label=f"head {head}")
        axes.plot(x, offsets[layer].mean(0).numpy(), "k-", linewidth=2, label="mean of heads")
        axes.axhline(uniform, color="grey", linestyle="--", linewidth=1, label="uniform 1/n")
        axes.set_xlabel("key position - query position")
        axes.set_title(f"encoder layer {layer}")
        axes.grid(alpha=0.3)
    grid[0].set_ylabel("mean attention weight")
    grid[-1].legend(fontsize=7)
    figure.suptitle(f"Where encoder self-attention goes, by relative position ({sentences} validation sentences)", fontsize=11)
    return viz.save_figure(figure, path)


# --- 3. Decoding when the target is unknown ---


@torch.no_grad()
def greedy_steps(model, tokenizer, source: str, max_steps: int = 60):
    """Greedy decoding written out: the encoder runs once, then one decoder step per token with the cache.
    Counts how often the cross-attention key projection runs (once per layer: its K/V are cached)."""
    calls = {"cross k_proj": 0, "self k_proj": 0}
    hooks = []
    for layer in model.get_decoder().layers:
        hooks.append(layer.cross_attn.k_proj.register_forward_hook(lambda *_: calls.__setitem__("cross k_proj", calls["cross k_proj"] + 1)))
        hooks.append(layer.self_attn.k_proj.register_forward_hook(lambda *_: calls.__setitem__("self k_proj", calls["self k_proj"] + 1)))
    batch = tokenizer([source], return_tensors="pt")
    encoder_outputs = model.get_encoder()(input_ids=batch["input_ids"])
    cache = EncoderDecoderCache(DynamicCache(config=model.config), DynamicCache(config=model.config))
    ids = [model.config.decoder_start_token_id]
    rows, step_logits = [], []
    for step in range(1, max_steps + 1):
        outputs = model(
            encoder_outputs=encoder_outputs, attention_mask=batch["attention_mask"],
            decoder_input_ids=torch.tensor([[ids[-1]]]), cache=cache, use_cache=True,
        )
        cache = outputs.cache
        logits = outputs.logits[0, -1]
        step_logits.append(logits)
        probabilities = logits.softmax(-1)
        top = probabilities.topk(3)
        prefix = " ".join(viz.readable_tokens(tokenizer, ids))
        candidates = ", ".join(
            f"{token} {p:.2g}" for token, p in zip(viz.readable_tokens(tokenizer, top.indices.tolist()), top.values.tolist())
        )
        ids.append(int(top.indices[0]))
        rows.append([step, prefix, candidates, viz.readable_tokens(tokenizer, ids[-1:])[0]])
        if ids[-1] == model.config.eos_token_id:
            break
    for hook in hooks:
        hook.remove()
    # The same prefix in one parallel (teacher-forced) pass must give the same logits.
    full = model(**batch, decoder_input_ids=torch.tensor([ids[:-1]]), use_cache=False).logits[0]
    difference = (torch.stack(step_logits) - full).abs().max().item()
    generated = model.generate(**batch, num_beams=1, do_sample=False)[0].tolist()
    beam = tokenizer.decode(model.generate(**batch)[0], skip_special_tokens=True)
    return rows, ids, calls, difference, generated == ids, cache.get_seq_length(), beam


# --- 4. Sinusoidal vs learned positions on a copy task ---

PAD, BOS, EOS, FIRST_SYMBOL, TOY_VOCAB = 0, 1, 2, 3, 23
TRAIN_MAX_LENGTH = 12


def copy_batch(size: int, low: int, high: int, generator: torch.Generator):
    """Random symbol strings of `low`..`high` symbols + </s>; the target is the same string + </s>."""
    lengths = torch.randint(low, high + 1, (size,), generator=generator)
    width = int(lengths.max()) + 1
    symbols = torch.randint(FIRST_SYMBOL, TOY_VOCAB, (size, width), generator=generator)
    position = torch.arange(width)[None]
    input_ids = torch.where(position < lengths[:, None], symbols, PAD)
    input_ids = torch.where(position == lengths[:, None], EOS, input_ids)
    labels = input_ids.masked_fill(input_ids == PAD, -100)
    return input_ids, (input_ids != PAD).long(), labels


def toy_config(position_embedding: str, max_positions: int = 64) -> VanillaTransformerConfig:
    return VanillaTransformerConfig(
        vocab_size=TOY_VOCAB, d_model=64, d_ff=128, num_heads=4, encoder_layers=2, decoder_layers=2, dropout=0.0,
        position_embedding=position_embedding, max_position_embeddings=max_positions, init_scheme="xavier",
        pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, decoder_start_token_id=BOS,
    )


def train_copy_model(position_embedding: str, steps: int):
    """A 2+2-layer model (d_model 64) trained to copy strings of 1..12 symbols; the learned table has 64 rows,
    so positions 13..63 exist but never get a gradient."""
    torch.manual_seed(0)
    model = VanillaTransformerForConditionalGeneration(toy_config(position_embedding))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-9)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 100))
    generator = torch.Generator().manual_seed(1)
    start = time.time()
    for _ in range(steps):
        input_ids, mask, labels = copy_batch(64, 1, TRAIN_MAX_LENGTH, generator)
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        warmup.step()
    return model.eval(), time.time() - start, loss.item()


@torch.no_grad()
def copy_accuracy(model, length: int, size: int = 100) -> tuple[float, float, float]:
    """Exact-match % (all symbols and </s>), and the % of symbols copied right at positions 1-12 and 13+."""
    input_ids, mask, labels = copy_batch(size, length, length, torch.Generator().manual_seed(1000 + length))
    output = model.generate(input_ids=input_ids, attention_mask=mask, num_beams=1, do_sample=False, max_new_tokens=length + 1)
    predicted = output[:, 1:]
    predicted = F.pad(predicted, (0, labels.shape[1] - predicted.shape[1]), value=PAD)[:, : labels.shape[1]]
    correct = predicted == labels
    exact = correct.all(-1).float().mean().item()
    symbols = correct[:, :length]  # every string has `length` symbols, then </s>
    early = symbols[:, :TRAIN_MAX_LENGTH].float().mean().item()
    late = symbols[:, TRAIN_MAX_LENGTH:].float().mean().item() if length > TRAIN_MAX_LENGTH else float("nan")
    return 100 * exact, 100 * early, 100 * late


def plot_positions(results: dict, tables: dict[str, torch.Tensor], path: Path) -> Path:
    figure = viz.new_figure(14.0, 3.9)
    left, middle, right = figure.subplots(1, 3)
    for name, rows in results.items():
        left.plot([r[0] for r in rows], [r[1] for r in rows], "o-", markersize=3, label=name)
    left.axvline(TRAIN_MAX_LENGTH + 0.5, color="grey", linestyle="--", linewidth=1)
    left.text(TRAIN_MAX_LENGTH + 2.5, 40, "longer than any\ntraining string", fontsize=8)
    left.set_xlabel("string length (symbols)")
    left.set_ylabel("exact copies (%)")
    left.set_title("copy task, greedy decoding")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    for axes, (name, table) in zip((middle, right), tables.items()):
        image = axes.imshow((table @ table.T).numpy(), cmap="magma", interpolation="nearest")
        axes.axhline(TRAIN_MAX_LENGTH + 0.5, color="cyan", linewidth=0.8)
        axes.axvline(TRAIN_MAX_LENGTH + 0.5, color="cyan", linewidth=0.8)
        axes.set_title(f"PE(p)·PE(q), {name} (encoder)")
        axes.set_xlabel("position q")
        axes.set_ylabel("position p")
        figure.colorbar(image, ax=axes, shrink=0.8)
    figure.suptitle("Sinusoidal vs learned positions (Table 3 row E); cyan: last position seen in training", fontsize=11)
    return viz.save_figure(figure, path)


# --- 5. The decoder's mask ---


@torch.no_grad()
def masking_facts(model, tokenizer, pairs: list[tuple[str, str]], maps: viz.AttentionMaps):
    """The largest decoder self-attention weight above the diagonal over many sentences; and how far the logits
    move when one future target token is replaced (before it: not at all; from it on: a lot)."""
    above = 0.0
    with viz.eager_attention(model):
        for source, target in pairs:
            batch = tokenizer([source], text_target=[target], return_tensors="pt")
            weights = model(input_ids=batch["input_ids"], labels=batch["labels"], output_attentions=True).decoder_attentions
            above = max(above, max(torch.triu(w, diagonal=1).abs().max().item() for w in weights))
    source_ids = torch.tensor([maps.source_ids])
    decoder_ids = torch.tensor([maps.decoder_input_ids])
    changed_at = decoder_ids.shape[1] // 2
    other = decoder_ids.clone()
    other[0, changed_at] = (other[0, changed_at] + 7) % model.config.vocab_size
    before = model(input_ids=source_ids, decoder_input_ids=decoder_ids).logits[0]
    after = model(input_ids=source_ids, decoder_input_ids=other).logits[0]
    delta = (before - after).abs().amax(-1)
    return above, changed_at, delta[:changed_at].max().item(), delta[changed_at:].max().item()


def plot_mask(maps: viz.AttentionMaps, path: Path) -> Path:
    tokens = maps.target_tokens
    n = len(tokens)
    side = max(2.5, 0.28 * n)
    figure = viz.new_figure(2 * side + 3.0, side + 1.4)
    left, right = figure.subplots(1, 2)
    mask = torch.tril(torch.ones(n, n))
    viz.draw_heatmap(left, mask, tokens, tokens, fontsize=8)
    left.set_title("causal mask: 1 = may attend", fontsize=10)
    left.set_xlabel("key (earlier decoder inputs)")
    left.set_ylabel("query")
    image = viz.draw_heatmap(right, maps.decoder[0].mean(0), tokens, tokens, fontsize=8)
    right.set_title("decoder self-attention, layer 0, mean of heads", fontsize=10)
    right.set_xlabel("key")
    figure.colorbar(image, ax=right, shrink=0.8, label="attention weight")
    return viz.save_figure(figure, path)


# --- 6. Backpropagation through the stacks, post-LN vs pre-LN ---

BACKPROP_LAYERS = 6  # the paper's N: with 2 layers a stack is too shallow to show a trend across depth
# Half the built-in recipe's peak rate of 2e-3 (its warm-up steps and clipping are kept): at 2e-3 the 6-layer post-LN
# model stalls even with 100 warm-up steps (--gradient_learning_rate 2e-3 shows it), so warm-up would make no difference.
BACKPROP_LEARNING_RATE = 1e-3
BACKPROP_WARMUP = 100
BACKPROP_CLIP = 1.0
BACKPROP_LABEL_SMOOTHING = 0.1  # epsilon_ls of §5.4, as the recipes train


def backprop_config(tokenizer, norm_position: str, layers: int = BACKPROP_LAYERS) -> VanillaTransformerConfig:
    """The built-in model's widths (d_model 128, 4 heads, d_ff 512) with `layers` layers per stack and no dropout,
    so that a gradient measured twice on the same batch is the same; Glorot-uniform weights, which start each
    sub-layer as large as its input, so that what the LayerNorm's place does to the gradient shows plainly."""
    return VanillaTransformerConfig(
        vocab_size=len(tokenizer), d_model=128, d_ff=512, num_heads=4, encoder_layers=layers, decoder_layers=layers,
        dropout=0.0, norm_position=norm_position, init_scheme="xavier", pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.bos_token_id,
    )


def translation_batch(tokenizer, pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    batch = tokenizer([s for s, _ in pairs], text_target=[t for _, t in pairs], padding=True, return_tensors="pt")
    batch["labels"] = batch["labels"].masked_fill(batch["labels"] == tokenizer.pad_token_id, -100)
    return dict(batch)


def gradient_groups(model) -> dict[str, list[torch.nn.Parameter]]:
    """The parameters whose gradient is measured together: the token embeddings (with the tied §3.4 weights one
    matrix serves the encoder input, the decoder input and the pre-softmax projection), then every parameter of
    each encoder and decoder layer: its attention and feed-forward weights and the LayerNorms of its sub-layers.
    Pre-LN's final LayerNorm of each stack belongs to no layer and is left out."""
    groups: dict[str, list[torch.nn.Parameter]] = {"embeddings": []}
    for stack, count in (("encoder", model.config.encoder_layers), ("decoder", model.config.decoder_layers)):
        for layer in range(count):
            groups[f"{stack} layer {layer}"] = []
    for name, parameter in model.named_parameters():  # a tied matrix is listed once
        parts = name.split(".")
        if "embed_tokens" in parts or name.startswith("lm_head."):
            groups["embeddings"].append(parameter)
        elif len(parts) > 3 and parts[2] == "layers":  # model.{encoder,decoder}.layers.{i}.…
            groups[f"{parts[1]} layer {parts[3]}"].append(parameter)
    return groups


def gradient_norms(model, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """The L2 norm of the loss gradient over each group's parameters, averaged over `batches`."""
    groups = gradient_groups(model)
    norms = dict.fromkeys(groups, 0.0)
    for batch in batches:
        model.zero_grad()
        model(**batch, label_smoothing=BACKPROP_LABEL_SMOOTHING).loss.backward()
        for group, parameters in groups.items():
            squares = sum(p.grad.pow(2).sum() for p in parameters if p.grad is not None)
            norms[group] += float(squares) ** 0.5 / len(batches)
    model.zero_grad()
    return norms


@torch.no_grad()
def layer_norm_input_spread(model, batch: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    """Per stack, for each sub-layer's LayerNorm in order: the standard deviation over d_model of the vectors it
    normalises, averaged over real (not padding) tokens. Backwards, a LayerNorm divides the gradient by it."""
    masks = {"encoder": batch["attention_mask"].bool(), "decoder": batch["labels"] != -100}
    spreads: dict[str, list[float]] = {"encoder": [], "decoder": []}
    hooks = []
    for name, module in model.named_modules():
        if name.endswith("_sublayer.norm"):  # model.{encoder,decoder}.layers.{i}.{kind}_sublayer.norm
            stack = name.split(".")[1]

            def record(_, inputs, stack=stack):
                spreads[stack].append(inputs[0].std(-1, unbiased=False)[masks[stack]].mean().item())

            hooks.append(module.register_forward_pre_hook(record))
    try:
        model(**batch)
    finally:
        for hook in hooks:
            hook.remove()
    return spreads


@torch.no_grad()
def mean_loss(model, batches: list[dict[str, torch.Tensor]]) -> float:
    return sum(model(**batch, label_smoothing=BACKPROP_LABEL_SMOOTHING).loss.item() for batch in batches) / len(batches)


def constant_guess_loss(tokenizer, train_pairs: list[tuple[str, str]], batches: list[dict], label_smoothing: float) -> float:
    """The loss, on `batches`, of always predicting the training targets' token frequencies (mixed with the uniform
    distribution as label smoothing mixes the targets, which makes it the best input-blind guess): where a model
    sits that has learned which tokens are common but uses neither the source nor the earlier target tokens."""
    counts = torch.zeros(len(tokenizer))
    for ids in tokenizer([target for _, target in train_pairs])["input_ids"]:
        counts += torch.bincount(torch.tensor(ids), minlength=len(tokenizer))
    log_guess = ((1 - label_smoothing) * counts / counts.sum() + label_smoothing / len(tokenizer)).log()
    # The smoothed share of the loss; without smoothing unseen tokens have log 0 = -inf, and no share.
    uniform_part = -label_smoothing * log_guess.mean() if label_smoothing else 0.0
    losses = []
    for batch in batches:
        labels = batch["labels"][batch["labels"] != -100]
        losses.append(((1 - label_smoothing) * -log_guess[labels] + uniform_part).mean().item())
    return sum(losses) / len(losses)


def inverse_sqrt_schedule(warmup: int, use_warmup: bool = True):
    """§5.3's shape as a factor of the peak rate: a linear ramp for `warmup` steps, then step^-0.5. Without warm-up
    the ramp is replaced by the peak rate; the decay after it is the same."""
    def factor(step: int) -> float:
        step += 1
        decay = (warmup / step) ** 0.5
        return min(step / warmup, decay) if use_warmup else min(1.0, decay)
    return factor


def train_and_measure(config: VanillaTransformerConfig, fixed: list[dict], draw_batch, steps: int, use_warmup: bool,
                      learning_rate: float = BACKPROP_LEARNING_RATE, warmup: int = BACKPROP_WARMUP) -> dict:
    """A model from seed 0: gradient norms on the `fixed` batches at initialisation, `steps` Adam steps (§5.3's
    betas and epsilon) on `draw_batch()` batches with gradients clipped to norm BACKPROP_CLIP, the norms again."""
    torch.manual_seed(0)
    model = VanillaTransformerForConditionalGeneration(config).train()
    at_init = gradient_norms(model, fixed)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate, betas=(0.9, 0.98), eps=1e-9)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, inverse_sqrt_schedule(warmup, use_warmup))
    losses, start = [], time.time()
    for _ in range(steps):
        loss = model(**draw_batch(), label_smoothing=BACKPROP_LABEL_SMOOTHING).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), BACKPROP_CLIP)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    seconds = time.time() - start
    return {"init": at_init, "trained": gradient_norms(model, fixed), "losses": losses, "seconds": seconds,
            "fixed_loss": mean_loss(model, fixed), "batches": len(fixed), "learning_rate": learning_rate}


def backprop_runs(tokenizer, train_pairs, fixed: list[dict], steps: int, batch_size: int = 32,
                  layers: int = BACKPROP_LAYERS, learning_rate: float = BACKPROP_LEARNING_RATE) -> dict:
    """Post-LN and pre-LN, each trained with and without warm-up on the same batches and measured on `fixed`."""
    runs = {}
    for norm_position in ("post", "pre"):
        for use_warmup in (True, False):
            runs[norm_position, use_warmup] = train_and_measure(
                backprop_config(tokenizer, norm_position, layers), fixed,
                batch_drawer(tokenizer, train_pairs, batch_size, seed=1), steps, use_warmup, learning_rate,
            )
    return runs


def batch_drawer(tokenizer, pairs: list[tuple[str, str]], batch_size: int, seed: int):
    """A function returning a new batch of `batch_size` random pairs at each call; the same seed, the same batches."""
    generator = torch.Generator().manual_seed(seed)

    def draw_batch() -> dict[str, torch.Tensor]:
        chosen = torch.randint(len(pairs), (batch_size,), generator=generator).tolist()
        return translation_batch(tokenizer, [pairs[i] for i in chosen])

    return draw_batch


def run_label(norm_position: str, use_warmup: bool) -> str:
    return f"{norm_position}-LN, {'warm-up' if use_warmup else 'no warm-up'}"


RUN_STYLE = {("post", True): ("tab:red", "o-"), ("pre", True): ("tab:blue", "s-"),
             ("post", False): ("tab:red", "o:"), ("pre", False): ("tab:blue", "s:")}


def plot_gradient_norms(runs: dict, steps: int, path: Path, constant_guess: float | None = None) -> Path:
    from matplotlib.ticker import FormatStrFormatter

    figure = viz.new_figure(15.0, 4.4)
    left, middle, right = figure.subplots(1, 3)
    groups = list(runs["post", True]["init"])
    # Embeddings, encoder and decoder are drawn apart: a line between the last encoder and the first decoder layer
    # would suggest a path that the gradient does not take.
    segments = [[i for i, g in enumerate(groups) if g.startswith(part)] for part in ("embeddings", "encoder", "decoder")]

    def draw(axes, norms: dict, key, label: str) -> None:
        color, style = RUN_STYLE[key]
        for number, segment in enumerate(segments):
            axes.plot(segment, [norms[groups[i]] for i in segment], style, color=color, markersize=4,
                      label=label if number == 0 else None)

    for norm_position in ("post", "pre"):
        draw(left, runs[norm_position, True]["init"], (norm_position, True), f"{norm_position}-LN")
    for key, run in runs.items():
        draw(middle, run["trained"], key, run_label(*key))
        right.plot(range(1, len(run["losses"]) + 1), run["losses"], RUN_STYLE[key][1][1:], color=RUN_STYLE[key][0],
                   label=run_label(*key))
    for axes, title in ((left, "at initialisation (same weights)"), (middle, f"after {steps} training steps")):
        axes.set_yscale("log")
        axes.set_xticks(range(len(groups)), [g.replace(" layer ", " ").replace("embeddings", "embed") for g in groups],
                        rotation=60, fontsize=8)
        for segment in segments[1:]:
            axes.axvline(segment[0] - 0.5, color="grey", linewidth=0.8)
        axes.set_ylabel(f"gradient norm (mean of {runs['post', True]['batches']} batches)")
        axes.set_title(title, fontsize=10)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    left.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    left.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    left.tick_params(axis="y", which="minor", labelsize=7)
    if constant_guess is not None:
        right.axhline(constant_guess, color="grey", linestyle="--", linewidth=1, label="constant guess (token frequencies),\nvalidation sentences")
    right.set_xlabel("training step")
    right.set_ylabel("training loss (label smoothing 0.1)")
    right.set_title("training loss", fontsize=10)
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    figure.suptitle(f"Gradient norm per layer, post-LN (the paper, §3.1) vs pre-LN: {len(segments[1])}+{len(segments[2])} "
                    f"layers, built-in task, peak learning rate {runs['post', True]['learning_rate']}", fontsize=11)
    return viz.save_figure(figure, path)


# --- main ---


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="outputs/vanilla-builtin", help="Trained model folder (default: %(default)s).")
    parser.add_argument("--output_dir", default=str(Path(__file__).parent / "figures"), help="Where the PNGs go (default: docs/figures).")
    parser.add_argument("--sentences", type=int, default=200, help="Validation sentences to average over (default: %(default)s).")
    parser.add_argument("--toy_steps", type=int, default=1500, help="Training steps of each toy copy model (default: %(default)s).")
    parser.add_argument("--skip_toy", action="store_true", help="Skip the sinusoidal-vs-learned toy trainings.")
    parser.add_argument("--gradient_steps", type=int, default=200, help="Training steps of each model of question 6 (default: %(default)s).")
    parser.add_argument("--gradient_learning_rate", type=float, default=BACKPROP_LEARNING_RATE,
                        help="Peak learning rate of question 6's trainings (default: %(default)s).")
    parser.add_argument("--skip_gradients", action="store_true", help="Skip question 6's four trainings (~4 min).")
    parser.add_argument("--only_gradients", action="store_true", help="Run question 6 alone (it uses only the model's tokenizer).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)  # tiny models: threads only add overhead, and the measurements stay reproducible
    started = time.time()
    out = Path(args.output_dir)
    viz.require_matplotlib()
    model, tokenizer = viz.load_model(args.model, device="cpu")
    config = model.config
    validation = load_builtin_dataset(seed=0, train_size=1)["validation"]
    pairs = [(row["translation"][SOURCE_LANG], row["translation"][TARGET_LANG]) for row in validation][: args.sentences]
    print(f"model: {args.model} (d_model {config.d_model}, {config.num_heads} heads, d_k {config.d_k}, "
          f"{config.encoder_layers}+{config.decoder_layers} layers); {len(pairs)} validation sentences of the built-in task")
    figures = {} if args.only_gradients else questions_1_to_5(args, model, tokenizer, pairs, out)

    heading("6. Backpropagation, post-LN vs pre-LN")
    if args.skip_gradients:
        print("(skipped)")
    else:
        figures["gradients"] = question_6(tokenizer, args.gradient_steps, args.gradient_learning_rate, out)

    heading("Figures")
    for name, path in figures.items():
        print(f"{name}: {path} ({path.stat().st_size // 1024} KB)")
    print(f"\ntotal time: {time.time() - started:.0f} s")


def questions_1_to_5(args, model, tokenizer, pairs: list[tuple[str, str]], out: Path) -> dict[str, Path]:
    config = model.config
    heading("See inside: one sentence")
    maps = viz.collect_attention(model, tokenizer, EXAMPLE)
    print(f"source: {EXAMPLE}\ntranslation (beam 4, the model's default): {maps.translation}")
    best = viz.cross_attention_alignment(maps).argmax(-1).tolist()
    pairs_text = ", ".join(f"{target} <- {maps.source_tokens[j]}" for target, j in zip(maps.predicted_tokens, best))
    print(f"strongest source token per target token (last layer, mean of heads): {pairs_text}")
    figures = viz.plot_maps(maps, out)
    figures["positional_encoding"] = viz.plot_positional_encoding(viz.position_table(model, 100), out / "positional_encoding.png")
    try:
        figures["training_curves"] = viz.plot_training_curves(args.model, out / "training_curves.png")
    except (FileNotFoundError, ValueError) as error:
        print(f"no training curves: {error}")

    heading("1. Why divide by sqrt(d_k)")
    generator = torch.Generator().manual_seed(0)
    variance = dot_product_variance(generator)
    print_table(["d_k", "var(q·k)", "var(q·k / sqrt(d_k))"], variance)
    saturation = softmax_saturation(generator)
    print_table(
        ["d_k", "max weight, unscaled", "entropy, unscaled", "Jacobian norm, unscaled",
         "max weight, scaled", "entropy, scaled", "Jacobian norm, scaled"],
        saturation,
    )
    print(f"(20 keys: uniform attention has max weight 0.05 and entropy ln 20 = {math.log(20):.3f})\n")
    rows, all_scores = trained_scores(model, tokenizer, pairs)
    print_table(
        ["attention", "std of scaled scores", "largest |score|", "max weight", "max weight if unscaled",
         "entropy", "entropy if unscaled", "uniform entropy"],
        rows,
    )
    figures["scaling"] = plot_scaling(variance, saturation, all_scores, config.d_k, out / "scaling_sqrt_dk.png")

    heading("2. Does a token attend mostly to itself?")
    max_offset = 5
    offsets, eos_mass, uniform = encoder_offsets(model, tokenizer, [s for s, _ in pairs], max_offset)
    rows = []
    for layer in range(config.encoder_layers):
        for head in range(config.num_heads):
            rows.append([layer, head, round(offsets[layer, head, max_offset].item(), 3), round(offsets[layer, head, max_offset - 1].item(), 3),
                         round(offsets[layer, head, max_offset + 1].item(), 3), round(eos_mass[layer, head].item(), 3)])
        rows.append([layer, "mean", round(offsets[layer, :, max_offset].mean().item(), 3), round(offsets[layer, :, max_offset - 1].mean().item(), 3),
                     round(offsets[layer, :, max_offset + 1].mean().item(), 3), round(eos_mass[layer].mean().item(), 3)])
    print_table(["layer", "head", "itself (i→i)", "previous (i→i-1)", "next (i→i+1)", "</s>"], rows)
    print(f"uniform attention would give 1/n = {uniform:.3f} on average\n")
    figures["offsets"] = plot_offsets(offsets, uniform, max_offset, len(pairs), out / "encoder_attention_by_offset.png")

    heading("3. Decoding step by step (greedy, with the cache)")
    steps, ids, calls, difference, same, cache_length, beam = greedy_steps(model, tokenizer, EXAMPLE)
    print(f"source: {EXAMPLE}\n")
    print_table(["step", "decoder input so far", "top 3 next tokens (probability)", "chosen"], steps)
    print(f"greedy output: {tokenizer.decode(ids, skip_special_tokens=True)}")
    print(f"beam 4 output: {beam}")
    print(f"same tokens as model.generate(num_beams=1): {same}")
    print(f"cross-attention k_proj ran {calls['cross k_proj']} times for {len(steps)} steps "
          f"({config.decoder_layers} decoder layers: once per layer); self-attention k_proj ran {calls['self k_proj']} times "
          f"(once per layer and step, on the new token only)")
    print(f"self-attention cache length after the last step: {cache_length}")
    print(f"largest |logit difference| between the step-by-step run and one parallel pass over the same prefix: {difference:.2e}")

    heading("4. Sinusoidal vs learned positions")
    if args.skip_toy:
        print("(skipped)")
    else:
        models, results = {}, {}
        for kind in ("sinusoidal", "learned"):
            model_kind, seconds, loss = train_copy_model(kind, args.toy_steps)
            models[kind] = model_kind
            print(f"{kind}: {args.toy_steps} steps of 64 strings of 1..{TRAIN_MAX_LENGTH} symbols, {seconds:.0f} s, final loss {loss:.4f}")
            results[kind] = [(length, *copy_accuracy(model_kind, length)) for length in range(1, 25)]
        rows = []
        for low, high in ((1, 12), (13, 16), (17, 20), (21, 24)):
            row = [f"{low}-{high}"]
            for kind in ("sinusoidal", "learned"):
                chosen = [r for r in results[kind] if low <= r[0] <= high]
                row += [round(sum(r[1] for r in chosen) / len(chosen), 1), round(sum(r[2] for r in chosen) / len(chosen), 1)]
                late = [r[3] for r in chosen if not math.isnan(r[3])]
                row.append(round(sum(late) / len(late), 1) if late else "-")
            rows.append(row)
        for kind in ("sinusoidal", "learned"):
            print(f"{kind}, exact % by length 1..24: " + " ".join(f"{r[1]:.0f}" for r in results[kind]))
        print()
        print_table(
            ["length", "sin: exact %", "sin: symbols 1-12 right %", "sin: symbols 13+ right %",
             "learned: exact %", "learned: symbols 1-12 right %", "learned: symbols 13+ right %"],
            rows,
        )
        with torch.device("meta"):
            base = VanillaTransformerForConditionalGeneration(table3_config("base", vocab_size=37000))
            row_e = VanillaTransformerForConditionalGeneration(table3_config("E", vocab_size=37000))
        extra = sum(p.numel() for p in row_e.parameters()) - sum(p.numel() for p in base.parameters())
        print(f"Table 3 row E adds {extra:,} parameters to the base model (vocabulary 37000): a "
              f"{row_e.config.max_position_embeddings} x {row_e.config.d_model} table in each of the two stacks\n")
        # A learned table cut to the training length (12 symbols + </s>) has no row for position 13 and beyond.
        small = VanillaTransformerForConditionalGeneration(toy_config("learned", TRAIN_MAX_LENGTH + 1)).eval()
        small.load_state_dict(
            {k: v[: TRAIN_MAX_LENGTH + 1] if "embed_positions" in k else v for k, v in models["learned"].state_dict().items()}
        )
        input_ids, mask, _ = copy_batch(1, 20, 20, torch.Generator().manual_seed(0))
        try:
            small.generate(input_ids=input_ids, attention_mask=mask, num_beams=1, max_new_tokens=21)
        except ValueError as error:
            print(f"the learned model with its table cut to {TRAIN_MAX_LENGTH + 1} rows, on a 20-symbol string: ValueError: {error}")
        tables = {
            "sinusoidal": viz.position_table(models["sinusoidal"], 24),
            "learned": viz.position_table(models["learned"], 24),
        }
        figures["positions"] = plot_positions({k: [(r[0], r[1]) for r in v] for k, v in results.items()}, tables, out / "positions_sinusoidal_vs_learned.png")

    heading("5. What the mask does in the decoder")
    above, changed_at, before, after = masking_facts(model, tokenizer, pairs, maps)
    print(f"largest decoder self-attention weight above the diagonal, all layers and heads, {len(pairs)} sentences: {above}")
    print(f"replacing decoder input {changed_at} of the example: largest logit change at positions < {changed_at}: {before:.2e}; "
          f"at positions >= {changed_at}: {after:.2f}")
    figures["mask"] = plot_mask(maps, out / "decoder_causal_mask.png")
    return figures


def question_6(tokenizer, steps: int, learning_rate: float, out: Path, fixed_sentences: int = 128) -> Path:
    splits = load_builtin_dataset(seed=0)
    as_pairs = lambda split: [(r["translation"][SOURCE_LANG], r["translation"][TARGET_LANG]) for r in splits[split]]  # noqa: E731
    train_pairs, fixed_pairs = as_pairs("train"), as_pairs("validation")[:fixed_sentences]
    print(f"{BACKPROP_LAYERS}+{BACKPROP_LAYERS} layers, d_model 128, 4 heads, d_ff 512, no dropout, vocabulary "
          f"{len(tokenizer)} (the model's tokenizer), seed 0; gradient norms averaged over {fixed_sentences} validation "
          f"sentences in batches of 32; training: {steps} Adam steps of 32 random pairs of the built-in training split, "
          f"peak learning rate {learning_rate}, warm-up {BACKPROP_WARMUP} steps then step^-0.5 (or the same "
          f"without the ramp), gradients clipped to norm {BACKPROP_CLIP}\n")
    fixed = [translation_batch(tokenizer, fixed_pairs[i : i + 32]) for i in range(0, len(fixed_pairs), 32)]
    runs = backprop_runs(tokenizer, train_pairs, fixed, steps, learning_rate=learning_rate)
    for key, run in runs.items():
        last = run["losses"][-20:]
        print(f"{run_label(*key)}: {run['seconds']:.0f} s; training loss {run['losses'][0]:.2f} at step 1, "
              f"{sum(last) / len(last):.2f} over the last {len(last)} steps; loss on the {fixed_sentences} validation "
              f"sentences {run['fixed_loss']:.2f}")
    guess = constant_guess_loss(tokenizer, train_pairs, fixed, BACKPROP_LABEL_SMOOTHING)
    print(f"the best constant guess (the training targets' token frequencies), on the same sentences: {guess:.2f}\n")
    order = [("post", True), ("pre", True), ("post", False), ("pre", False)]
    rows = [[group, runs["post", True]["init"][group], runs["pre", True]["init"][group],
             *(runs[key]["trained"][group] for key in order)] for group in runs["post", True]["init"]]
    print_table(["parameters", "init: post-LN", "init: pre-LN", *(f"after {steps} steps: {run_label(*key)}" for key in order)], rows)
    for norm_position in ("post", "pre"):
        init = runs[norm_position, True]["init"]
        top, bottom = init[f"decoder layer {BACKPROP_LAYERS - 1}"], init["decoder layer 0"]
        print(f"{norm_position}-LN at initialisation: decoder layer {BACKPROP_LAYERS - 1} / decoder layer 0 = {top / bottom:.2f}")
    print("\nstd over d_model of what each sub-layer LayerNorm normalises, at initialisation, first batch, bottom to top")
    for norm_position, what in (("post", "the sums x + Sublayer(x)"), ("pre", "the residual stream x")):
        torch.manual_seed(0)
        model = VanillaTransformerForConditionalGeneration(backprop_config(tokenizer, norm_position)).train()
        for stack, spreads in layer_norm_input_spread(model, fixed[0]).items():
            print(f"{norm_position}-LN {stack} ({what}): {' '.join(f'{v:.2f}' for v in spreads)}")
    return plot_gradient_norms(runs, steps, out / "gradient_norms_post_vs_pre.png", guess)


if __name__ == "__main__":
    main()
