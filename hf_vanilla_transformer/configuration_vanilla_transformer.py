"""Configuration of the vanilla Transformer: every choice of Vaswani et al. (2017) in one place.

The defaults are the paper's "base" model (§3, Table 3 first row). `VanillaTransformerConfig.big()` gives
the "big" model and `table3_config(row)` any row of Table 3. Values are checked by `huggingface_hub`'s `@strict`
dataclass validation, as transformers' own configs are: each field's type and range on assignment, and what no
single field shows in `validate_architecture` and `validate_token_ids`.
"""

from typing import Literal

from huggingface_hub.dataclasses import as_validated_field, strict
from transformers import PreTrainedConfig
from transformers.utils.type_validators import interval

positive = interval(min=1)
probability = interval(min=0.0, max=1.0, exclude_max=True)


@as_validated_field
def unset_or_positive(value: float | int | None):
    if value is not None and not value > 0:
        raise ValueError(f"Value must be None or greater than 0, got {value}.")


@strict
class VanillaTransformerConfig(PreTrainedConfig):
    r"""
    Configuration of [`VanillaTransformerModel`] and [`VanillaTransformerForConditionalGeneration`].

    Sizes use the paper's names (§3): `d_model`, `d_ff`, `num_heads` (h), `d_k`, `d_v`. `d_k` and `d_v`
    default to `d_model // num_heads` (which must then divide evenly) and may be set independently (Table 3 rows
    A and B).

    The model's `loss` is plain cross-entropy, as in every transformers model. The paper's label smoothing
    (epsilon_ls = 0.1, §5.4) is a training choice: the Trainer's `label_smoothing_factor`, which
    `VanillaSeq2SeqTrainer` fuses into the model's chunked loss (see `table3_training_arguments` for rows D).

    Args:
        vocab_size: size of the shared source/target vocabulary (§3.4; the paper used about 37000).
        d_model: width of every sub-layer output and of the embeddings.
        d_ff: inner size of the position-wise feed-forward network (§3.3).
        num_heads: number of attention heads h (§3.2.2).
        d_k: size of each head's queries and keys; `None` means `d_model // num_heads`.
        d_v: size of each head's values; `None` means `d_model // num_heads`.
        encoder_layers, decoder_layers: N for each stack.
        dropout: P_drop, applied to each sub-layer output and to the embedding + position sums (§5.4).
        attention_dropout: dropout on the attention weights (not in the paper; 0 by default).
        activation_dropout: dropout after the feed-forward activation (not in the paper; 0 by default).
        activation_function: the feed-forward non-linearity; "relu" is the paper's max(0, x).
        position_embedding: "sinusoidal" (§3.5) or "learned" (Table 3 row E).
        position_layout: where the sinusoids' sines and cosines sit: "interleaved" is §3.5's (sin on even
            dimensions, cos on odd); "split" puts the sines in the first half and the cosines in the second, with the
            same frequencies, as Marian, fairseq and tensor2tensor do (models converted from Marian use it).
        max_position_embeddings: rows of the position table. Learned positions cannot go beyond it;
            sinusoids are computed for any position.
        scale_embedding: multiply token embeddings by sqrt(d_model) (§3.4).
        norm_position: "post" is the paper's LayerNorm(x + Dropout(Sublayer(x))); "pre" is
            x + Dropout(Sublayer(LayerNorm(x))) with a final LayerNorm on each stack.
        share_encoder_decoder_embeddings: one embedding matrix for source and target tokens (§3.4).
        decoder_vocab_size: size of the target vocabulary when it is not shared; `None` means `vocab_size`.
        tie_word_embeddings: the pre-softmax projection reuses the decoder embedding (§3.4).
        final_logits_bias: a fixed bias added to the logits (a buffer, not trained), as Marian has; off in the paper.
        init_scheme: how the linear layers start: "normal" (N(0, init_std), zero biases, as MarianMTModel and
            BART) or "xavier" (Glorot-uniform, as fairseq and tensor2tensor). The paper does not say. "normal" is
            the default: with "xavier" the post-LN model learned far slower than MarianMTModel trained alike on
            real corpora (docs/quality.md has the runs).
        init_std: standard deviation of the linear layers under `init_scheme="normal"` (and of learned position
            tables); `None` (the default) means 0.5 * d_model^-0.5: 0.022 at the base width 512, near the 0.02 of
            MarianMTModel and BART, and the larger start narrower models need (0.031 at 256, 0.044 at 128). On real
            corpora at d_model 256, 0.01 never learned to use the source and 0.02 learned slower than 0.03.
        embedding_init_std: standard deviation of the token embeddings; `None` (the default) means d_model^-0.5, so
            that with `scale_embedding` the token vectors start at 1 a dimension, beside the sinusoids' 0.71. With
            N(0, 0.02) embeddings instead (MarianMTModel's), positions outweigh tokens at the start and on real
            corpora some seeds never learn to use the source: the decoder writes one sentence for every input.
            Larger than d_model^-0.5 learned slower (docs/quality.md has the runs).
        layer_norm_eps: epsilon of every LayerNorm.
        chunked_loss: in training (`model.train()`, labels given, gradients on), compute the loss a block of
            target positions at a time, fused with the pre-softmax projection, so the (tokens x vocab) logits
            are never held whole: less memory and time. `outputs.logits` is then None; set False to get them.
    """

    model_type = "vanilla_transformer"
    keys_to_ignore_at_inference = ["cache"]
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "num_heads",
        "num_hidden_layers": "decoder_layers",
        "intermediate_size": "d_ff",
        "head_dim": "d_k",
    }

    vocab_size: int = positive(default=37000)
    d_model: int = positive(default=512)
    d_ff: int = positive(default=2048)
    num_heads: int = positive(default=8)
    d_k: int | None = None
    d_v: int | None = None
    encoder_layers: int = interval(min=0)(default=6)
    decoder_layers: int = interval(min=0)(default=6)
    dropout: float | int = probability(default=0.1)
    attention_dropout: float | int = probability(default=0.0)
    activation_dropout: float | int = probability(default=0.0)
    activation_function: Literal["relu", "gelu", "gelu_new", "silu", "swish", "tanh"] = "relu"
    position_embedding: Literal["sinusoidal", "learned"] = "sinusoidal"
    position_layout: Literal["interleaved", "split"] = "interleaved"
    max_position_embeddings: int = positive(default=1024)
    scale_embedding: bool = True
    norm_position: Literal["post", "pre"] = "post"
    share_encoder_decoder_embeddings: bool = True
    decoder_vocab_size: int | None = None
    tie_word_embeddings: bool = True
    final_logits_bias: bool = False
    init_scheme: Literal["normal", "xavier"] = "normal"
    init_std: float | int | None = unset_or_positive(default=None)
    embedding_init_std: float | int | None = unset_or_positive(default=None)
    layer_norm_eps: float | int = interval(min=0.0, exclude_min=True)(default=1e-5)
    chunked_loss: bool = True
    use_cache: bool = True
    is_encoder_decoder: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    decoder_start_token_id: int | None = 1

    def __post_init__(self, **kwargs):
        # Unset head sizes stay None where num_heads does not divide d_model; validate_architecture says so.
        per_head = self.d_model // self.num_heads if self.d_model % self.num_heads == 0 else None
        self.d_k = per_head if self.d_k is None else self.d_k
        self.d_v = per_head if self.d_v is None else self.d_v
        self.decoder_vocab_size = self.vocab_size if self.decoder_vocab_size is None else self.decoder_vocab_size
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Part of `@strict`-powered validation: the head sizes, the sinusoids' pairs and the shared embedding."""
        unset = " and ".join(name for name in ("d_k", "d_v") if getattr(self, name) is None)
        if unset:
            raise ValueError(
                f"num_heads={self.num_heads} does not divide d_model={self.d_model}, so {unset} cannot default to "
                f"d_model // num_heads. Choose a num_heads that divides d_model, or set {unset} explicitly "
                "(the heads' total width may then differ from d_model, as in Table 3 rows A and B)."
            )
        for name in ("d_k", "d_v", "decoder_vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}.")
        if self.position_embedding == "sinusoidal" and self.d_model % 2:
            raise ValueError(
                f"d_model must be even for sinusoidal positions (sin and cos pairs, §3.5), got {self.d_model}. "
                "Use an even d_model or position_embedding='learned'."
            )
        if self.share_encoder_decoder_embeddings and self.decoder_vocab_size != self.vocab_size:
            raise ValueError(
                f"decoder_vocab_size={self.decoder_vocab_size} differs from vocab_size={self.vocab_size}, but one "
                "embedding is shared by source and target: set share_encoder_decoder_embeddings=False for two "
                "vocabularies."
            )

    def validate_token_ids(self):
        """Part of `@strict`-powered validation: every special token is an id that both embeddings hold."""
        vocabulary = min(self.vocab_size, self.decoder_vocab_size)
        eos_ids = self.eos_token_id if isinstance(self.eos_token_id, list) else [self.eos_token_id]
        for name, value in (
            ("pad_token_id", self.pad_token_id),
            ("bos_token_id", self.bos_token_id),
            ("decoder_start_token_id", self.decoder_start_token_id),
            *(("eos_token_id", v) for v in eos_ids),
        ):
            if value is not None and not 0 <= value < vocabulary:
                raise ValueError(f"{name} must be None or a token id in [0, vocab_size={vocabulary}), got {value!r}.")

    @classmethod
    def base(cls, **overrides) -> "VanillaTransformerConfig":
        """The paper's base model: N=6, d_model=512, d_ff=2048, h=8, P_drop=0.1."""
        return table3_config("base", **overrides)

    @classmethod
    def big(cls, **overrides) -> "VanillaTransformerConfig":
        """The paper's big model: N=6, d_model=1024, d_ff=4096, h=16, P_drop=0.3."""
        return table3_config("big", **overrides)


# Table 3 of the paper: each row as the config values that differ from the base row. Blank cells of
# the table are the base values. Where the paper's row leaves d_k/d_v blank but changes h or d_model,
# the per-head sizes are written out so the row is exactly the paper's. Rows D3 and D4 vary label smoothing, a
# training value (training.TABLE3_TRAINING).
TABLE3 = {
    "base": {},
    "A1": {"num_heads": 1, "d_k": 512, "d_v": 512},
    "A2": {"num_heads": 4, "d_k": 128, "d_v": 128},
    "A3": {"num_heads": 16, "d_k": 32, "d_v": 32},
    "A4": {"num_heads": 32, "d_k": 16, "d_v": 16},
    "B1": {"d_k": 16},
    "B2": {"d_k": 32},
    "C1": {"encoder_layers": 2, "decoder_layers": 2},
    "C2": {"encoder_layers": 4, "decoder_layers": 4},
    "C3": {"encoder_layers": 8, "decoder_layers": 8},
    "C4": {"d_model": 256, "d_k": 32, "d_v": 32},
    "C5": {"d_model": 1024, "d_k": 128, "d_v": 128},
    "C6": {"d_ff": 1024},
    "C7": {"d_ff": 4096},
    "D1": {"dropout": 0.0},
    "D2": {"dropout": 0.2},
    "D3": {},  # epsilon_ls = 0
    "D4": {},  # epsilon_ls = 0.2
    "E": {"position_embedding": "learned", "max_position_embeddings": 1024},
    "big": {"d_model": 1024, "d_ff": 4096, "num_heads": 16, "dropout": 0.3},
}


def check_table3_row(row: str) -> None:
    if row not in TABLE3:
        raise ValueError(f"Unknown Table 3 row {row!r}; choose one of {', '.join(TABLE3)}.")


def table3_config(row: str, **overrides) -> VanillaTransformerConfig:
    """A config for a row of Table 3 ("base", "A1".."A4", "B1", "B2", "C1".."C7", "D1".."D4", "E", "big").

    Rows are numbered top to bottom within each letter, as the table lists them. `overrides` (for example
    `vocab_size`) are applied on top. Rows D3 and D4 differ from the base model in training only:
    `table3_training_arguments(row)` gives their label smoothing.
    """
    check_table3_row(row)
    return VanillaTransformerConfig(**{**TABLE3[row], **overrides})


__all__ = ["VanillaTransformerConfig", "TABLE3", "table3_config"]
