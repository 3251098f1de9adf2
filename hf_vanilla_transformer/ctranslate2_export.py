"""Export to CTranslate2, the inference engine translation deployments run Marian, fairseq and OpenNMT models on.

    hf-vanilla-export outputs/vanilla-builtin outputs/vanilla-ct2 --to ctranslate2 --quantization int8

CTranslate2's Transformer spec expresses this model as it is: post- or pre-LN (with the final LayerNorm of each
pre-LN stack), the embedding scale, §3.5's interleaved sinusoids or Table 3 row E's learned positions (both
written as a position table), shared or separate embeddings and output layer, every activation of the config,
and heads of any size as long as queries and values have the same one. The written folder loads with
`ctranslate2.Translator(folder)`, holds the tokenizer, and decodes as `model.generate()`
(tests/test_export_ctranslate2.py checks greedy and beam search token for token).

Needs the `ctranslate2` package: `pip install "hf-vanilla-transformer[ctranslate2]"`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ._io import check_free, staged_folder

if TYPE_CHECKING:
    from .configuration_vanilla_transformer import VanillaTransformerConfig

# CTranslate2's weight types (`ctranslate2.specs.model_spec.ACCEPTED_MODEL_TYPES`), here so that the command's
# --help and argument check work without the package (and without torch: this module imports it where it is used).
QUANTIZATIONS = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16", "bfloat16", "float32")

# Our activation names -> CTranslate2's `common_spec.Activation` members: every activation the config allows.
ACTIVATIONS = {
    "relu": "RELU", "gelu": "GELU", "gelu_new": "GELUTanh", "silu": "SWISH", "swish": "SWISH", "tanh": "Tanh"
}

# Translator.translate_batch truncates sources at max_input_length=1024 tokens by default: a sinusoid table at least
# that long covers every source it accepts unless told otherwise.
DEFAULT_SINUSOID_ROWS = 1024


def _ctranslate2():
    try:
        import ctranslate2
    except ImportError as error:
        raise ImportError(
            "Exporting to CTranslate2 needs the ctranslate2 package: pip install 'hf-vanilla-transformer[ctranslate2]' "
            "(or pip install ctranslate2)."
        ) from error
    return ctranslate2


def check_exportable(config: VanillaTransformerConfig) -> None:
    """Raise ValueError naming the first setting that CTranslate2's Transformer cannot express.

    Dropout values and training settings do not matter at inference and are not checked.
    """
    if config.d_k != config.d_v:
        raise ValueError(
            f"d_k={config.d_k} differs from d_v={config.d_v}: CTranslate2's attention has one head size for queries, "
            "keys and values, so this model (Table 3 rows B, say) cannot be exported to it."
        )
    if config.activation_function not in ACTIVATIONS:
        raise ValueError(
            f"activation_function={config.activation_function!r} has no CTranslate2 counterpart; it has "
            f"{', '.join(map(repr, ACTIVATIONS))}."
        )
    if config.final_logits_bias or config.decoder_vocab_size != config.vocab_size:
        raise ValueError(
            "This model has a final_logits_bias or a target vocabulary of its own (decoder_vocab_size="
            f"{config.decoder_vocab_size}, vocab_size={config.vocab_size}), as models converted from Marian do; the "
            "export writes one shared vocabulary and no logits bias. Convert the Marian model with CTranslate2's own "
            "Marian converter instead."
        )
    eos = config.eos_token_id
    if isinstance(eos, list) and len(eos) != 1:
        raise ValueError(
            f"eos_token_id={eos}: a CTranslate2 model has exactly one end token. Set config.eos_token_id to the one "
            "the model ends its outputs with (others can still be passed to translate_batch as end_token)."
        )
    if eos is None:
        raise ValueError("eos_token_id is None: a CTranslate2 model needs an end token to stop decoding.")
    if config.decoder_start_token_id is None and config.bos_token_id is None:
        raise ValueError(
            "decoder_start_token_id and bos_token_id are both None: CTranslate2 needs the token the decoder starts "
            "from. Set config.decoder_start_token_id."
        )


def vocabulary(tokenizer, vocab_size: int) -> list[str]:
    """The token of every id 0 .. vocab_size - 1, from a tokenizer or a list of tokens in id order.

    Ids the tokenizer does not use (a model resized past its tokenizer) get placeholder tokens, which no input
    produces: CTranslate2 maps tokens to ids by this list, so it must be as long as the embedding.
    """
    if isinstance(tokenizer, Sequence) and not isinstance(tokenizer, str):
        tokens = list(tokenizer)
        if len(set(tokens)) != len(tokens):
            raise ValueError("The vocabulary lists a token twice; CTranslate2 maps each token to one id.")
        by_id = dict(enumerate(tokens))
    else:
        by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    beyond = sorted(index for index in by_id if index >= vocab_size)
    if beyond:
        raise ValueError(
            f"The tokenizer has token ids up to {beyond[-1]} but the model's vocab_size is {vocab_size}: they do not "
            "belong together (model.resize_token_embeddings(len(tokenizer)) makes the model fit)."
        )
    taken = set(by_id.values())

    def placeholder(index: int) -> str:
        name = f"<unused_{index}>"
        while name in taken:  # a tokenizer's own token of that name
            name = f"<{name}>"
        return name

    return [by_id[index] if index in by_id else placeholder(index) for index in range(vocab_size)]


def _token(tokens: list[str], token_id: int, name: str) -> str:
    if not 0 <= token_id < len(tokens):
        raise ValueError(f"{name}={token_id} is outside the vocabulary of {len(tokens)} tokens.")
    return tokens[token_id]


def ctranslate2_spec(model, tokenizer, max_positions: int | None = None):
    """CTranslate2's `TransformerSpec` holding `model`'s weights, its vocabulary (from `tokenizer`, or a list of
    tokens in id order) and its special tokens, unvalidated and unquantized.

    `max_positions`: rows of the position table written for sinusoidal positions (default: the larger of
    max_position_embeddings and 1024, CTranslate2's default input limit). CTranslate2 refuses an input or output
    longer than the table. Learned positions are written as their table; max_positions must then be unset.
    """
    _ctranslate2()
    import torch
    from ctranslate2.specs import common_spec, transformer_spec

    from .modeling_vanilla_transformer import sinusoid_table

    config = model.config
    check_exportable(config)
    if config.position_embedding == "learned" and max_positions is not None:
        raise ValueError(
            f"max_positions={max_positions} applies to sinusoidal positions only: this model's learned table has "
            f"max_position_embeddings={config.max_position_embeddings} rows, and is written as it is."
        )
    if max_positions is not None and (not isinstance(max_positions, int) or max_positions < 1):
        raise ValueError(f"max_positions must be a positive integer, got {max_positions!r}.")
    tokens = vocabulary(tokenizer, config.vocab_size)
    unk = getattr(tokenizer, "unk_token", None) if not isinstance(tokenizer, Sequence) else "<unk>"
    if unk not in tokens:
        raise ValueError(
            f"The vocabulary has no unknown token ({unk!r}): CTranslate2 would add one beyond the embedding. Use a "
            "tokenizer with an unk_token in its vocabulary."
        )

    # The state dict rather than the modules: optimize_for_cpu_inference swaps modules but keeps these names.
    weights = {name: value.detach().to("cpu", torch.float32).contiguous() for name, value in model.state_dict().items()}
    pre_norm = config.norm_position == "pre"
    stack_options = {
        "pre_norm": pre_norm,
        "activation": common_spec.Activation[ACTIVATIONS[config.activation_function]],
    }
    if config.d_k != config.d_model // config.num_heads:  # only then: older CTranslate2 4.x lacks head_dim
        stack_options["head_dim"] = config.d_k
    encoder = transformer_spec.TransformerEncoderSpec(config.encoder_layers, config.num_heads, **stack_options)
    decoder = transformer_spec.TransformerDecoderSpec(config.decoder_layers, config.num_heads, **stack_options)
    spec = transformer_spec.TransformerSpec(encoder, decoder)

    def linear(target, name: str) -> None:
        target.weight = weights[f"{name}.weight"]
        if f"{name}.bias" in weights:
            target.bias = weights[f"{name}.bias"]

    def layer_norm(target, name: str) -> None:
        target.gamma, target.beta = weights[f"{name}.weight"], weights[f"{name}.bias"]

    def attention(target, name: str, self_attention: bool) -> None:
        # CTranslate2 fuses the input projections: Q, K and V in one for self-attention; Q alone and K, V in one for
        # encoder-decoder attention, whose keys and values it computes once from the encoder output.
        q, k, v = ([weights[f"{name}.{p}_proj.{part}"] for part in ("weight", "bias")] for p in "qkv")
        groups = [[q, k, v]] if self_attention else [[q], [k, v]]
        for target_linear, group in zip(target.linear, groups):
            target_linear.weight = torch.cat([w for w, _ in group])
            target_linear.bias = torch.cat([b for _, b in group])
        linear(target.linear[-1], f"{name}.out_proj")

    if config.position_embedding == "sinusoidal":
        rows = max_positions or max(config.max_position_embeddings, DEFAULT_SINUSOID_ROWS)
        sinusoids = sinusoid_table(rows, config.d_model, config.position_layout)  # written out in the model's layout
    for name, stack in (("encoder", encoder), ("decoder", decoder)):
        prefix = f"model.{name}"
        stack.scale_embeddings = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        embeddings = stack.embeddings[0] if name == "encoder" else stack.embeddings
        embeddings.weight = weights[f"{prefix}.embed_tokens.weight"]
        if config.position_embedding == "learned":
            stack.position_encodings.encodings = weights[f"{prefix}.embed_positions.weight"]
        else:
            stack.position_encodings.encodings = sinusoids
        if pre_norm:
            layer_norm(stack.layer_norm, f"{prefix}.final_norm")
        for index, layer in enumerate(stack.layer):
            at = f"{prefix}.layers.{index}"
            # Each sub-layer's LayerNorm belongs to it in CTranslate2, before it (pre) or after the residual (post).
            attention(layer.self_attention, f"{at}.self_attn", self_attention=True)
            layer_norm(layer.self_attention.layer_norm, f"{at}.self_attn_sublayer.norm")
            if name == "decoder":
                attention(layer.attention, f"{at}.cross_attn", self_attention=False)
                layer_norm(layer.attention.layer_norm, f"{at}.cross_attn_sublayer.norm")
            linear(layer.ffn.linear_0, f"{at}.feed_forward.fc1")
            linear(layer.ffn.linear_1, f"{at}.feed_forward.fc2")
            layer_norm(layer.ffn.layer_norm, f"{at}.feed_forward_sublayer.norm")
    decoder.projection.weight = weights["lm_head.weight"]

    spec.register_source_vocabulary(tokens)
    spec.register_target_vocabulary(tokens)
    eos = config.eos_token_id[0] if isinstance(config.eos_token_id, list) else config.eos_token_id
    start = config.decoder_start_token_id if config.decoder_start_token_id is not None else config.bos_token_id
    spec.config.eos_token = _token(tokens, eos, "eos_token_id")
    spec.config.decoder_start_token = _token(tokens, start, "decoder_start_token_id")
    bos = config.bos_token_id if config.bos_token_id is not None else start
    spec.config.bos_token = _token(tokens, bos, "bos_token_id")
    spec.config.unk_token = unk
    spec.config.layer_norm_epsilon = config.layer_norm_eps
    # The tokenizer ends every source with </s> itself (tokenization.py), so CTranslate2 adds nothing.
    spec.config.add_source_eos = False
    spec.config.add_source_bos = False
    return spec


def export_ctranslate2(
    model,
    output_dir: str | os.PathLike,
    tokenizer=None,
    quantization: str | None = None,
    max_positions: int | None = None,
) -> Path:
    """Write `model` as a CTranslate2 model folder at `output_dir`, which must not exist or be empty.

    `model` is a trained model folder (or Hub id), whose tokenizer is used unless `tokenizer` is given, or a
    `VanillaTransformerForConditionalGeneration` with its `tokenizer` (or its vocabulary as a list of tokens in id
    order). `quantization` is CTranslate2's weight type ("int8", "float16", ...; default: float32).
    `max_positions`: see `ctranslate2_spec`. The folder is written beside `output_dir` and renamed into place, so a
    failure leaves nothing behind. A tokenizer is saved in it too.
    """
    _ctranslate2()
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)} (or None), got {quantization!r}.")
    output = Path(output_dir)
    check_free(output)
    if isinstance(model, (str, os.PathLike)):
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(model)
        model = AutoModelForSeq2SeqLM.from_pretrained(model)
    elif tokenizer is None:
        raise ValueError("Pass the model's tokenizer (or its vocabulary as a list of tokens): CTranslate2 needs it.")
    spec = ctranslate2_spec(model, tokenizer, max_positions)
    spec.validate()
    spec.optimize(quantization=quantization)  # also stores tied weights once

    with staged_folder(output) as staging:
        spec.save(str(staging))
        if hasattr(tokenizer, "save_pretrained"):
            # CTranslate2 takes tokens; the tokenizer that makes them travels with the model. Its files do not clash
            # with CTranslate2's (config.json, model.bin, shared_vocabulary.json).
            tokenizer.save_pretrained(staging)
    return output


__all__ = ["QUANTIZATIONS", "check_exportable", "vocabulary", "ctranslate2_spec", "export_ctranslate2"]
