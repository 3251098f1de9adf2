"""Marian (Opus-MT) models as this package's model: the same architecture, so the outputs are the same.

A `MarianMTModel` is the Transformer of the paper with a few choices of its own, each a config value here:
sinusoids with the sines in the first half of the dimensions (`position_layout="split"`), a fixed bias on the
logits (`final_logits_bias`), the SiLU ("swish") feed-forward activation of Opus-MT, optionally separate source
and target vocabularies (`share_encoder_decoder_embeddings=False`, `decoder_vocab_size`), and its pad token as
the decoder start token. `convert_marian` copies the weights across; `from_marian(name_or_path)` (exported by the
package) and `hf-vanilla-convert --from marian SRC OUT` call it.
"""

from __future__ import annotations

import copy
import os
from typing import get_args

import torch

from .configuration_vanilla_transformer import VanillaTransformerConfig
from .modeling_vanilla_transformer import VanillaTransformerForConditionalGeneration

ACTIVATIONS = get_args(VanillaTransformerConfig.__dataclass_fields__["activation_function"].type)

# Marian's module names within a layer -> ours.
LAYER_MODULES = {
    "self_attn": "self_attn",
    "encoder_attn": "cross_attn",
    "fc1": "feed_forward.fc1",
    "fc2": "feed_forward.fc2",
    "self_attn_layer_norm": "self_attn_sublayer.norm",
    "encoder_attn_layer_norm": "cross_attn_sublayer.norm",
    "final_layer_norm": "feed_forward_sublayer.norm",
}


def marian_config(marian_config) -> VanillaTransformerConfig:
    """Our config for a `MarianConfig`; ValueError for a Marian setting this model cannot express."""
    mc = marian_config
    differing = [
        (name, a, b)
        for name, a, b in (
            ("ffn_dim", mc.encoder_ffn_dim, mc.decoder_ffn_dim),
            ("attention_heads", mc.encoder_attention_heads, mc.decoder_attention_heads),
        )
        if a != b
    ]
    if differing:
        name, a, b = differing[0]
        raise ValueError(f"The Marian model's encoder_{name}={a} and decoder_{name}={b} differ; this model has one value.")
    if mc.activation_function not in ACTIVATIONS:
        raise ValueError(f"The Marian model's activation_function {mc.activation_function!r} is not one of {ACTIVATIONS}.")
    if mc.d_model % mc.encoder_attention_heads:
        raise ValueError(f"The Marian model's d_model {mc.d_model} is not divisible by its {mc.encoder_attention_heads} heads.")
    return VanillaTransformerConfig(
        vocab_size=mc.vocab_size,
        decoder_vocab_size=mc.decoder_vocab_size,
        share_encoder_decoder_embeddings=mc.share_encoder_decoder_embeddings,
        tie_word_embeddings=mc.tie_word_embeddings,
        d_model=mc.d_model,
        d_ff=mc.encoder_ffn_dim,
        num_heads=mc.encoder_attention_heads,
        encoder_layers=mc.encoder_layers,
        decoder_layers=mc.decoder_layers,
        dropout=mc.dropout,
        attention_dropout=mc.attention_dropout,
        activation_dropout=mc.activation_dropout,
        activation_function=mc.activation_function,
        position_embedding="sinusoidal",
        position_layout="split",
        max_position_embeddings=mc.max_position_embeddings,
        scale_embedding=mc.scale_embedding,
        norm_position="post",
        final_logits_bias=True,
        init_std=mc.init_std,
        embedding_init_std=mc.init_std,
        pad_token_id=mc.pad_token_id,
        bos_token_id=mc.bos_token_id,
        eos_token_id=mc.eos_token_id,
        decoder_start_token_id=mc.decoder_start_token_id,
    )


def marian_weight_names(config: VanillaTransformerConfig) -> dict[str, str]:
    """Our state-dict names -> a `MarianMTModel`'s, for every weight ours holds once (ties restore the rest)."""
    names = {
        "model.encoder.embed_tokens.weight": (
            "model.shared.weight" if config.share_encoder_decoder_embeddings else "model.encoder.embed_tokens.weight"
        ),
        "final_logits_bias": "final_logits_bias",
    }
    if not config.share_encoder_decoder_embeddings:
        names["model.decoder.embed_tokens.weight"] = "model.decoder.embed_tokens.weight"
    if not config.tie_word_embeddings:
        names["lm_head.weight"] = "lm_head.weight"
    for stack, layers in (("encoder", config.encoder_layers), ("decoder", config.decoder_layers)):
        for i in range(layers):
            for theirs, ours in LAYER_MODULES.items():
                if stack == "encoder" and theirs.startswith("encoder_attn"):
                    continue
                projections = ("q_proj", "k_proj", "v_proj", "out_proj") if theirs.endswith("attn") else ("",)
                for projection in projections:
                    for parameter in ("weight", "bias"):
                        tail = ".".join(p for p in (projection, parameter) if p)
                        names[f"model.{stack}.layers.{i}.{ours}.{tail}"] = f"model.{stack}.layers.{i}.{theirs}.{tail}"
    return names


def convert_marian(marian):
    """Our `VanillaTransformerForConditionalGeneration` holding a `MarianMTModel`'s weights (and its generation
    config), in eval mode: its logits are Marian's."""
    config = marian_config(marian.config)
    config._attn_implementation = marian.config._attn_implementation
    theirs = marian.state_dict()
    with torch.device("meta"):  # every weight comes from Marian: nothing to initialise
        model = VanillaTransformerForConditionalGeneration(config)
    weights = {ours: theirs[name] for ours, name in marian_weight_names(config).items()}
    missing, unexpected = model.load_state_dict(weights, strict=False, assign=True)
    tied = {"model.decoder.embed_tokens.weight", "lm_head.weight"} - set(weights)
    if set(missing) - tied or unexpected:
        raise ValueError(f"The Marian weights do not fit: missing {sorted(set(missing) - tied)}, unexpected {unexpected}.")
    model.tie_weights()
    model.generation_config = copy.deepcopy(marian.generation_config)
    return model.to(dtype=next(marian.parameters()).dtype).eval()


def from_marian(name_or_path, **kwargs):
    """`convert_marian` of a `MarianMTModel` object, folder or Hub id (`kwargs` go to its `from_pretrained`)."""
    from transformers import MarianMTModel

    marian = name_or_path
    if isinstance(name_or_path, (str, os.PathLike)):
        marian = MarianMTModel.from_pretrained(name_or_path, **kwargs)
    if not isinstance(marian, MarianMTModel):
        raise TypeError(f"from_marian takes a MarianMTModel, a folder or a Hub id, got {type(marian).__name__}.")
    return convert_marian(marian)


__all__ = ["convert_marian", "from_marian", "marian_config", "marian_weight_names"]
