"""The Transformer of "Attention Is All You Need" (Vaswani et al., 2017), in the paper's order.

§3.5 positional encoding, §3.2 attention, §3.3 feed-forward, §3.1 encoder and decoder layers and stacks, §3.4
embeddings and the pre-softmax projection. This file imports only torch, transformers, its configuration and loss.py
(and, when saving, the pipelines' file, named in config.json), so a saved folder carries those and loads with
`trust_remote_code=True`. No forward reads a tensor's values (on a GPU, a device-to-host sync per step): token ids are
checked where they enter (tokenizer, pipeline, command line); here only shapes, where a wrong one fails cryptically.
"""

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.generation import GenerationConfig, GenerationMixin
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput, BaseModelOutputWithPastAndCrossAttentions, Seq2SeqLMOutput, Seq2SeqModelOutput
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_vanilla_transformer import VanillaTransformerConfig
from .loss import cross_entropy, linear_cross_entropy


def check_shape(tensor: torch.Tensor | None, expected: tuple, name: str, what: str) -> None:
    """A 2D mask or labels must match the tokens they go with (a prepared 4D mask is the caller's own)."""
    if tensor is not None and tensor.dim() != 4 and tuple(tensor.shape) != tuple(expected):
        raise ValueError(f"{name} has shape {tuple(tensor.shape)} but {what} needs {tuple(expected)}.")


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Decoder inputs from labels: "the output embeddings are offset by one position" (§3.1)."""
    shifted = labels.new_full(labels.shape, pad_token_id)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill(shifted == -100, pad_token_id)


def positions_from_mask(attention_mask: torch.Tensor | None, past_length: int, length: int, device) -> torch.Tensor:
    """Position of each token counted over real tokens only, so left padding does not shift positions: (batch, length),
    or (1, length) without a mask. `attention_mask` covers past and current tokens, (batch, past_length + length)."""
    if attention_mask is None or attention_mask.dim() != 2:
        # Offset after arange: a static cache's past_length is a tensor, and a size must not depend on it.
        return (torch.arange(length, device=device) + past_length).unsqueeze(0)
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.clamp(min=0)[:, -length:]


# --- §3.5 Positional encoding ---


def sinusoids(positions: torch.Tensor, d_model: int, dtype=torch.float32, layout: str = "interleaved") -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(...): sine on even dims, cosine on odd.
    `layout="split"` puts the same sines in the first half of the dimensions and the cosines in the second."""
    exponents = torch.arange(0, d_model, 2, dtype=dtype, device=positions.device) / d_model
    angles = positions.unsqueeze(-1).to(dtype) * torch.pow(10000.0, -exponents)  # (..., d_model/2)
    if layout == "split":
        return torch.cat((angles.sin(), angles.cos()), dim=-1)  # (..., d_model)
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # (..., d_model), pairs interleaved


def sinusoid_table(num_positions: int, d_model: int, layout: str = "interleaved") -> torch.Tensor:
    """The encoding of positions 0 .. num_positions - 1, (num_positions, d_model), computed in float64."""
    return sinusoids(torch.arange(num_positions), d_model, torch.float64, layout).float()


class VanillaTransformerSinusoidalPositionalEncoding(nn.Module):
    """§3.5: fixed sinusoids, computed from the positions themselves (in float32 whatever the model's dtype),
    so no table bounds the length."""

    def __init__(self, config: VanillaTransformerConfig):
        super().__init__()
        self.d_model = config.d_model
        self.layout = config.position_layout

    def forward(self, position_ids: torch.Tensor, max_length: int) -> torch.Tensor:
        return sinusoids(position_ids, self.d_model, layout=self.layout)  # (batch, length, d_model)


class VanillaTransformerLearnedPositionalEmbedding(nn.Embedding):
    """Table 3 row E: one learned vector per position, up to `max_position_embeddings`."""

    def __init__(self, config: VanillaTransformerConfig):
        super().__init__(config.max_position_embeddings, config.d_model)

    def forward(self, position_ids: torch.Tensor, max_length: int) -> torch.Tensor:
        if max_length > self.num_embeddings:
            raise ValueError(
                f"The sequence needs {max_length} positions but the learned position table has "
                f"max_position_embeddings={self.num_embeddings}. Shorten the input (or max_new_tokens), or use "
                "a model with position_embedding='sinusoidal', which has no length limit."
            )
        return super().forward(position_ids)


# --- §3.2 Attention ---


def scaled_dot_product_attention(
    module: nn.Module, query, key, value, attention_mask: torch.Tensor | None, scaling: float, dropout=0.0, **kwargs
) -> tuple[torch.Tensor, torch.Tensor]:
    """§3.2.1: softmax(Q K^T / sqrt(d_k)) V, written out so the weights can be returned ("eager")."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling  # (batch, heads, q_len, k_len)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value)  # (batch, heads, q_len, d_v)
    return output.transpose(1, 2).contiguous(), weights  # (batch, q_len, heads, d_v)


class VanillaTransformerAttention(nn.Module):
    """§3.2.2: MultiHead(Q, K, V) = Concat(head_1..head_h) W^O, head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V).

    Self-attention when `key_value_states` is None, encoder-decoder attention otherwise. The kernel comes
    from transformers' attention registry (config._attn_implementation: "sdpa", "eager", flash, flex); a call
    that asks for the weights (`output_attentions=True`) runs the eager one, the kernel that returns them.
    """

    def __init__(self, config: VanillaTransformerConfig, is_causal: bool = False, layer_idx: int | None = None):
        super().__init__()
        self.config = config
        self.num_heads = config.num_heads
        self.d_k = config.d_k
        self.d_v = config.d_v
        self.scaling = config.d_k**-0.5
        self.is_causal = is_causal
        self.layer_idx = layer_idx
        self.q_proj = nn.Linear(config.d_model, config.num_heads * config.d_k)
        self.k_proj = nn.Linear(config.d_model, config.num_heads * config.d_k)
        self.v_proj = nn.Linear(config.d_model, config.num_heads * config.d_v)
        self.out_proj = nn.Linear(config.num_heads * config.d_v, config.d_model)

    def _heads(self, states: torch.Tensor, size: int) -> torch.Tensor:
        batch, length, _ = states.shape
        return states.view(batch, length, self.num_heads, size).transpose(1, 2)  # (batch, heads, length, size)

    def project_qkv(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Self-attention's queries, keys and values, all from the same input, each (batch, heads, length, size)."""
        return (
            self._heads(self.q_proj(hidden_states), self.d_k),
            self._heads(self.k_proj(hidden_states), self.d_k),
            self._heads(self.v_proj(hidden_states), self.d_v),
        )

    def source_keys_values(
        self, key_value_states: torch.Tensor, cross_cache: EncoderDecoderCache | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder-decoder attention's keys and values, from the encoder output."""
        if cross_cache is not None and cross_cache.is_updated.get(self.layer_idx, False):
            # The encoder output does not change while decoding: its keys and values are computed once.
            layer = cross_cache.cross_attention_cache.layers[self.layer_idx]
            return layer.keys, layer.values
        key = self._heads(self.k_proj(key_value_states), self.d_k)
        value = self._heads(self.v_proj(key_value_states), self.d_v)
        if cross_cache is not None:
            key, value = cross_cache.cross_attention_cache.update(key, value, self.layer_idx)
            cross_cache.is_updated[self.layer_idx] = True
        return key, value

    def forward(
        self, hidden_states, key_value_states=None, attention_mask=None, cache: Cache | None = None, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(cache, EncoderDecoderCache):
            cache, cross_cache = cache.self_attention_cache, cache
        else:
            cross_cache = None
        if key_value_states is None:  # self-attention: this step's keys and values join the cached ones
            query, key, value = self.project_qkv(hidden_states)
            if cache is not None:
                key, value = cache.update(key, value, self.layer_idx)
        else:  # encoder-decoder attention
            query = self._heads(self.q_proj(hidden_states), self.d_k)
            key, value = self.source_keys_values(key_value_states, cross_cache)

        implementation = "eager" if kwargs.get("output_attentions") else self.config._attn_implementation
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, scaled_dot_product_attention)
        dropout = self.config.attention_dropout if self.training else 0.0
        output, weights = attention(
            self, query, key, value, attention_mask, dropout=dropout, scaling=self.scaling, **kwargs
        )
        output = output.reshape(*hidden_states.shape[:-1], self.num_heads * self.d_v)  # concat heads
        return self.out_proj(output), weights


# --- §3.3 Position-wise feed-forward network ---


class VanillaTransformerFeedForward(nn.Module):
    """§3.3: FFN(x) = max(0, x W1 + b1) W2 + b2, applied to each position alone."""

    def __init__(self, config: VanillaTransformerConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.d_model, config.d_ff)
        self.fc2 = nn.Linear(config.d_ff, config.d_model)
        self.activation = ACT2FN[config.activation_function]
        self.activation_dropout = config.activation_dropout

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden = self.activation(self.fc1(hidden_states))  # (batch, length, d_ff)
        hidden = F.dropout(hidden, p=self.activation_dropout, training=self.training)
        return self.fc2(hidden)


# --- §3.1 Encoder and decoder layers ---


class VanillaTransformerSublayer(nn.Module):
    """§3.1/§5.4: the residual connection and layer norm around every sub-layer.

    "post": LayerNorm(x + Dropout(Sublayer(x))), as in the paper; "pre": x + Dropout(Sublayer(LayerNorm(x))).
    """

    def __init__(self, config: VanillaTransformerConfig):
        super().__init__()
        self.norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.pre_norm = config.norm_position == "pre"
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, sublayer: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if self.pre_norm:
            return x + F.dropout(sublayer(self.norm(x)), p=self.dropout, training=self.training)
        return self.norm(x + F.dropout(sublayer(x), p=self.dropout, training=self.training))


class VanillaTransformerEncoderLayer(GradientCheckpointingLayer):
    """§3.1: multi-head self-attention, then the feed-forward network, each wrapped in a `Sublayer`."""

    def __init__(self, config: VanillaTransformerConfig):
        super().__init__()
        self.self_attn = VanillaTransformerAttention(config)
        self.self_attn_sublayer = VanillaTransformerSublayer(config)
        self.feed_forward = VanillaTransformerFeedForward(config)
        self.feed_forward_sublayer = VanillaTransformerSublayer(config)

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, **kwargs) -> torch.Tensor:
        hidden_states = self.self_attn_sublayer(
            hidden_states, lambda x: self.self_attn(x, attention_mask=attention_mask, **kwargs)[0]
        )
        return self.feed_forward_sublayer(hidden_states, self.feed_forward)


class VanillaTransformerDecoderLayer(GradientCheckpointingLayer):
    """§3.1: masked self-attention, attention over the encoder output, then the feed-forward network."""

    def __init__(self, config: VanillaTransformerConfig, layer_idx: int):
        super().__init__()
        self.self_attn = VanillaTransformerAttention(config, is_causal=True, layer_idx=layer_idx)
        self.self_attn_sublayer = VanillaTransformerSublayer(config)
        self.cross_attn = VanillaTransformerAttention(config, layer_idx=layer_idx)
        self.cross_attn_sublayer = VanillaTransformerSublayer(config)
        self.feed_forward = VanillaTransformerFeedForward(config)
        self.feed_forward_sublayer = VanillaTransformerSublayer(config)

    def forward(
        self, hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask=None, cache=None, **kwargs
    ) -> torch.Tensor:
        hidden_states = self.self_attn_sublayer(
            hidden_states, lambda x: self.self_attn(x, attention_mask=attention_mask, cache=cache, **kwargs)[0]
        )
        hidden_states = self.cross_attn_sublayer(
            hidden_states,
            lambda x: self.cross_attn(
                x, key_value_states=encoder_hidden_states, attention_mask=encoder_attention_mask, cache=cache, **kwargs
            )[0],
        )
        return self.feed_forward_sublayer(hidden_states, self.feed_forward)


# --- Pretrained-model plumbing: weight init, ties, attention backends ---


class VanillaTransformerPreTrainedModel(PreTrainedModel):
    config_class = VanillaTransformerConfig
    config: VanillaTransformerConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["VanillaTransformerEncoderLayer", "VanillaTransformerDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True

    def _init_weights(self, module: nn.Module) -> None:
        config = self.config
        # The width rule of the defaults (docs/quality.md): 0.5 * d_model^-0.5 for the linear layers.
        linear_std = 0.5 * config.d_model**-0.5 if config.init_std is None else config.init_std
        if isinstance(module, nn.Linear):
            if config.init_scheme == "xavier":
                init.xavier_uniform_(module.weight)
            else:
                init.normal_(module.weight, mean=0.0, std=linear_std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, VanillaTransformerLearnedPositionalEmbedding):
            std = config.d_model**-0.5 if config.init_scheme == "xavier" else linear_std
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Embedding):
            # With scale_embedding the N(0, d_model^-0.5) token vectors reach unit size after the sqrt(d_model) factor.
            std = config.d_model**-0.5 if config.embedding_init_std is None else config.embedding_init_std
            init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        if getattr(module, "final_logits_bias", None) is not None:
            init.zeros_(module.final_logits_bias)

    def save_pretrained(self, save_directory, *args, **kwargs):
        # transformers writes the saved class's own entry in auto_map; name both model classes, so that the folder
        # loads with AutoModel as well as AutoModelForSeq2SeqLM under trust_remote_code.
        if self._auto_class is not None:
            module = type(self).__module__.rsplit(".", 1)[-1]
            self.config.auto_map = {
                **(getattr(self.config, "auto_map", None) or {}),
                "AutoModel": f"{module}.VanillaTransformerModel",
                "AutoModelForSeq2SeqLM": f"{module}.VanillaTransformerForConditionalGeneration",
            }
        if self._auto_class is not None and self.can_generate():
            # The translation and text2text-generation pipelines, named in config.json's custom_pipelines; transformers
            # copies their file beside this one (a relative import of it), so `pipeline("translation", model=folder,
            # trust_remote_code=True)` runs them where this package is not installed.
            from .pipeline_vanilla_transformer import custom_pipelines

            saved = getattr(self.config, "custom_pipelines", None) or {}
            self.config.custom_pipelines = {**saved, **custom_pipelines()}
        return super().save_pretrained(save_directory, *args, **kwargs)

    def get_expanded_tied_weights_keys(self, all_submodels: bool = False) -> dict:
        # transformers gates every tie on `tie_word_embeddings`; here each of §3.4's two ties has its own
        # switch, so `_tied_weights_keys` (built from the config in __init__) is the whole answer.
        if all_submodels:
            return super().get_expanded_tied_weights_keys(all_submodels=True)
        return dict(self._tied_weights_keys or {})


# --- §3.1 The two stacks ---


def _mask_config(config: VanillaTransformerConfig, kwargs: dict) -> VanillaTransformerConfig:
    """The config the masks are built for: eager's when the weights are asked for, since the attention then runs eager
    (an sdpa mask may be None, leaving causality to the kernel)."""
    if not kwargs.get("output_attentions") or config._attn_implementation == "eager":
        return config
    eager = copy.copy(config)
    eager._attn_implementation = "eager"
    return eager


class VanillaTransformerStack(VanillaTransformerPreTrainedModel):
    """What both stacks share: the bottom of §3.4 + §3.5 (token embedding x sqrt(d_model), plus positions,
    then dropout) and, for pre-norm, the final LayerNorm. Hidden states and attention weights are recorded
    from the layers by transformers' output capturing (`_can_record_outputs`) when asked for."""

    def __init__(self, config: VanillaTransformerConfig, embed_tokens: nn.Embedding):
        super().__init__(config)
        self.embed_tokens = embed_tokens
        if config.position_embedding == "learned":
            self.embed_positions = VanillaTransformerLearnedPositionalEmbedding(config)
        else:
            self.embed_positions = VanillaTransformerSinusoidalPositionalEncoding(config)
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        self.final_norm = (
            nn.LayerNorm(config.d_model, eps=config.layer_norm_eps) if config.norm_position == "pre" else None
        )

    def token_embeddings(self, input_ids, inputs_embeds, names: tuple[str, str]) -> torch.Tensor:
        """The token embeddings, (batch, length, d_model), of exactly one of `input_ids` and `inputs_embeds`."""
        if (input_ids is None) == (inputs_embeds is None):
            labels = " (or labels, which the decoder inputs are made from)" if names[0].startswith("decoder") else ""
            raise ValueError(f"Pass exactly one of {names[0]} and {names[1]}{labels}.")
        if input_ids is not None and input_ids.dim() != 2:
            raise ValueError(f"{names[0]} must have shape (batch, sequence_length), got {tuple(input_ids.shape)}.")
        embeds = self.embed_tokens(input_ids) if input_ids is not None else inputs_embeds
        if 0 in embeds.shape[:2]:
            name = names[0] if input_ids is not None else names[1]
            raise ValueError(f"{name} is empty (shape {tuple(embeds.shape[:2])}): pass at least one token a sequence.")
        return embeds

    def embed(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, max_length: int) -> torch.Tensor:
        # Sinusoids are computed in float32: they take the embeddings' dtype (say bfloat16) here.
        positions = self.embed_positions(position_ids, max_length).to(inputs_embeds.dtype)
        hidden_states = inputs_embeds * self.embed_scale + positions
        return F.dropout(hidden_states, p=self.config.dropout, training=self.training)

    def finish(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.final_norm(hidden_states) if self.final_norm is not None else hidden_states


class VanillaTransformerEncoder(VanillaTransformerStack):
    """§3.1: a stack of `encoder_layers` identical layers over the embedded source."""

    _can_record_outputs = {"hidden_states": VanillaTransformerEncoderLayer, "attentions": VanillaTransformerAttention}

    def __init__(self, config: VanillaTransformerConfig, embed_tokens: nn.Embedding):
        super().__init__(config, embed_tokens)
        self.layers = nn.ModuleList(VanillaTransformerEncoderLayer(config) for _ in range(config.encoder_layers))
        self.post_init()

    @capture_outputs
    def forward(
        self, input_ids=None, attention_mask=None, inputs_embeds=None, **kwargs: Unpack[TransformersKwargs]
    ) -> BaseModelOutput:
        inputs_embeds = self.token_embeddings(input_ids, inputs_embeds, ("input_ids", "inputs_embeds"))
        batch, length = inputs_embeds.shape[:2]
        check_shape(attention_mask, (batch, length), "attention_mask", "input_ids")

        position_ids = positions_from_mask(attention_mask, 0, length, inputs_embeds.device)
        hidden_states = self.embed(inputs_embeds, position_ids, length)
        mask = create_bidirectional_mask(
            config=_mask_config(self.config, kwargs), inputs_embeds=inputs_embeds, attention_mask=attention_mask
        )
        for layer in self.layers:
            hidden_states = layer(hidden_states, mask, **kwargs)
        return BaseModelOutput(last_hidden_state=self.finish(hidden_states))


class VanillaTransformerDecoder(VanillaTransformerStack):
    """§3.1: a stack of `decoder_layers` layers; position i attends to target positions <= i and to the source."""

    _can_record_outputs = {
        "hidden_states": VanillaTransformerDecoderLayer,
        "attentions": OutputRecorder(VanillaTransformerAttention, index=1, layer_name="self_attn"),
        "cross_attentions": OutputRecorder(VanillaTransformerAttention, index=1, layer_name="cross_attn"),
    }

    def __init__(self, config: VanillaTransformerConfig, embed_tokens: nn.Embedding):
        super().__init__(config, embed_tokens)
        self.layers = nn.ModuleList(
            VanillaTransformerDecoderLayer(config, layer_idx=i) for i in range(config.decoder_layers)
        )
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask=None,
        cache: Cache | None = None,
        inputs_embeds=None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        if encoder_hidden_states is None:  # cross-attention would otherwise attend to the targets themselves
            raise ValueError("The decoder needs encoder_hidden_states: run the encoder first (or pass input_ids).")
        inputs_embeds = self.token_embeddings(input_ids, inputs_embeds, ("decoder_input_ids", "decoder_inputs_embeds"))
        batch, length = inputs_embeds.shape[:2]
        if encoder_hidden_states.shape[0] != batch:
            raise ValueError(f"The decoder input's batch is {batch}, the encoder's {encoder_hidden_states.shape[0]}.")
        check_shape(encoder_attention_mask, encoder_hidden_states.shape[:2], "attention_mask", "the source")

        if use_cache and cache is None:
            cache = EncoderDecoderCache(DynamicCache(config=self.config), DynamicCache(config=self.config))
        past_length = cache.get_seq_length() if cache is not None else 0
        max_length = past_length + length
        if isinstance(max_length, torch.Tensor):  # a static cache counts on the device; its capacity bounds it
            max_length = cache.get_max_length(0)
        else:
            check_shape(attention_mask, (batch, max_length), "decoder_attention_mask", "past + current targets")

        position_ids = positions_from_mask(attention_mask, past_length, length, inputs_embeds.device)
        hidden_states = self.embed(inputs_embeds, position_ids, max_length)
        mask_config = _mask_config(self.config, kwargs)
        self_cache = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
        causal_mask = create_causal_mask(
            config=mask_config, inputs_embeds=inputs_embeds, attention_mask=attention_mask, cache=self_cache
        )
        cross_mask = create_bidirectional_mask(
            config=mask_config,
            inputs_embeds=inputs_embeds,
            attention_mask=encoder_attention_mask,
            encoder_hidden_states=encoder_hidden_states,
        )
        for layer in self.layers:
            hidden_states = layer(hidden_states, causal_mask, encoder_hidden_states, cross_mask, cache=cache, **kwargs)
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=self.finish(hidden_states), cache=cache if use_cache else None
        )


# --- The model ---


class VanillaTransformerModel(VanillaTransformerPreTrainedModel):
    """Encoder and decoder (§3.1), returning the decoder's last hidden states (`Seq2SeqModelOutput`)."""

    def __init__(self, config: VanillaTransformerConfig):
        super().__init__(config)
        # Two modules even when §3.4 shares them: the tie below makes them one parameter, and through it
        # transformers knows which checkpoint key holds the embedding and reports it when it is missing.
        embed_source = nn.Embedding(config.vocab_size, config.d_model, config.pad_token_id)
        embed_target = nn.Embedding(config.decoder_vocab_size, config.d_model, config.pad_token_id)
        self.encoder = VanillaTransformerEncoder(config, embed_source)
        self.decoder = VanillaTransformerDecoder(config, embed_target)
        self._tied_weights_keys = (
            {"decoder.embed_tokens.weight": "encoder.embed_tokens.weight"}
            if config.share_encoder_decoder_embeddings
            else None
        )
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.encoder.embed_tokens = value
        if self.config.share_encoder_decoder_embeddings:
            self.decoder.embed_tokens = value

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Seq2SeqModelOutput:
        if encoder_outputs is None:
            encoder_outputs = self.encoder(input_ids, attention_mask, inputs_embeds, return_dict=True, **kwargs)
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(*encoder_outputs)
        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=encoder_outputs.last_hidden_state,
            encoder_attention_mask=attention_mask,
            cache=cache,
            inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        return Seq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            cache=decoder_outputs.cache,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )


# --- §3.4 The pre-softmax projection, the training loss (§5.4), and decoding ---


def max_new_tokens_for(generation_config, source_length: int) -> int | None:
    """The tokens `generate()` makes at most for a source of `source_length` tokens when the call sets no length: the
    generation config's `max_new_tokens`, else §6.1's source length + `max_new_tokens_beyond_source`; None when it
    sets neither (its `max_length` applies). The output-length rule, here once for `generate` and the checks."""
    if generation_config.max_new_tokens is not None:
        return generation_config.max_new_tokens
    beyond = getattr(generation_config, "max_new_tokens_beyond_source", None)
    return None if beyond is None else source_length + beyond


class VanillaTransformerForConditionalGeneration(VanillaTransformerPreTrainedModel, GenerationMixin):
    """The model with its pre-softmax linear layer (§3.4): next-token logits, a loss from `labels`, `generate()`."""

    def __init__(self, config: VanillaTransformerConfig):
        super().__init__(config)
        self.model = VanillaTransformerModel(config)
        self.lm_head = nn.Linear(config.d_model, config.decoder_vocab_size, bias=False)
        if config.final_logits_bias:
            self.register_buffer("final_logits_bias", torch.zeros(1, config.decoder_vocab_size))
        else:
            self.final_logits_bias = None
        ties = {f"model.{k}": f"model.{v}" for k, v in (self.model._tied_weights_keys or {}).items()}
        if config.tie_word_embeddings:
            ties["lm_head.weight"] = "model.decoder.embed_tokens.weight"
            if config.share_encoder_decoder_embeddings:
                ties["lm_head.weight"] = "model.encoder.embed_tokens.weight"
        self._tied_weights_keys = ties or None
        # Greedy, as any model built from a config, with §6.1's output limit (source length + 50); hf-vanilla-train
        # saves §6.1's beam search with the model (translation.paper_generation_config).
        tokens = ("decoder_start_token_id", "bos_token_id", "eos_token_id", "pad_token_id")
        self.generation_config = GenerationConfig(num_beams=1, **{t: getattr(config, t) for t in tokens})
        self.generation_config.max_new_tokens_beyond_source = 50
        self.post_init()

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing=True) -> nn.Embedding:
        """Resize source, target and output vocabularies together, keeping the ties of §3.4."""
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        if not self.config.share_encoder_decoder_embeddings:
            decoder_embed = self._get_resized_embeddings(
                self.model.decoder.embed_tokens, embeddings.num_embeddings, mean_resizing=mean_resizing
            )
            self.model.decoder.embed_tokens = decoder_embed
            if self.config.tie_word_embeddings:
                self.lm_head.weight = decoder_embed.weight
        self.config.decoder_vocab_size = embeddings.num_embeddings  # transformers updates vocab_size only
        return embeddings

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        label_smoothing: float = 0.0,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Seq2SeqLMOutput:
        r"""
        labels: target token ids, -100 where no loss is wanted. Decoder inputs default to them shifted right.
        num_items_in_batch: number of target tokens in the whole (accumulated, all-rank) batch; the Trainer
            passes it so that gradient accumulation and several processes give the loss of one big batch.
        label_smoothing: epsilon_ls of §5.4 for this loss, in [0, 1); 0 (plain cross-entropy) by default, as in every
            transformers model. `VanillaSeq2SeqTrainer` passes the Trainer's `label_smoothing_factor` here.
        """
        if labels is not None:
            use_cache = False
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            cache=cache,
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        loss = logits = None
        if labels is not None:
            check_shape(labels, hidden_states.shape[:2], "labels", "the decoder output")
        if labels is not None and self.config.chunked_loss and self.training and torch.is_grad_enabled():
            # The logits are never held whole: see loss.py.
            loss = linear_cross_entropy(
                hidden_states, self.lm_head.weight, labels, label_smoothing, num_items_in_batch, self.final_logits_bias
            )
        else:
            logits = self.lm_head(hidden_states)  # (batch, tgt_len, vocab)
            if self.final_logits_bias is not None:
                logits = logits + self.final_logits_bias
            if labels is not None:
                loss = cross_entropy(logits, labels, label_smoothing, num_items_in_batch)
        # The base model's other outputs (cache, hidden states, attentions), as it gave them.
        others = {key: value for key, value in outputs.items() if key != "last_hidden_state"}
        return Seq2SeqLMOutput(loss=loss, logits=logits, **others)

    def generate(self, inputs: torch.Tensor | None = None, generation_config=None, **kwargs):
        """`GenerationMixin.generate`, plus §6.1's length limit: when the generation config carries
        `max_new_tokens_beyond_source` (50 by default) and the call sets no length, at most source length + that many
        tokens are generated."""
        config = generation_config if generation_config is not None else self.generation_config
        source = inputs if inputs is not None else kwargs.get("input_ids")
        if source is not None and kwargs.get("max_new_tokens") is None and kwargs.get("max_length") is None:
            limit = max_new_tokens_for(config, source.shape[-1])
            if limit is not None:
                kwargs["max_new_tokens"] = limit
        return super().generate(inputs, generation_config=generation_config, **kwargs)


__all__ = [
    "VanillaTransformerPreTrainedModel",
    "VanillaTransformerModel",
    "VanillaTransformerForConditionalGeneration",
]
