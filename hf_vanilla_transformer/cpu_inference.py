"""Opt-in speed for decoding on the CPU, by module replacement: the model file stays the paper.

`optimize_for_cpu_inference(model)` replaces every `nn.Linear` with a `RowBlockLinear`, an `nn.Linear` subclass
over the same parameters (the state dict, ties and saving are unchanged) whose products are faster when a
decoding step has few rows and they measure faster on the machine (it may store its weight transposed, the same
values, where one-row products read it faster so), each self-attention with a `FusedQKVAttention`,
which computes Q, K and V in one product, the residual blocks, feed-forward networks and sinusoids with inference
versions, each decoder layer with an `InferenceDecoderLayer`, whose decoding steps run as one straight-line
forward, and the decoder stack with an `InferenceDecoder`, whose decoding steps skip the input checks and mask
builders. Each replacement is a new module set on the parent in place of the old one and takes over its submodules,
as PEFT and transformers' quantizers replace layers; only the self-attention, the decoder layers and the decoder
stack change their class in place, to keep the hooks on them.
`restore_plain_modules(model)` puts plain modules back. The int8 path in quantization.py fuses Q, K and V too.

`python benchmarks/bench_linear_rows.py` prints the products side by side; `benchmarks/bench_cpu_engines.py`
times the whole model, one engine per process.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions
from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY

from .configuration_vanilla_transformer import VanillaTransformerConfig
from .modeling_vanilla_transformer import (
    VanillaTransformerAttention,
    VanillaTransformerDecoder,
    VanillaTransformerDecoderLayer,
    VanillaTransformerFeedForward,
    VanillaTransformerSinusoidalPositionalEncoding,
    VanillaTransformerSublayer,
    sinusoid_table,
)

# Weights smaller than this (1 MB in float32) sit in cache, where the extra steps cost more than they save.
MIN_WEIGHT_ELEMENTS = 1 << 18
MAX_FEW_ROWS = 32
# RowBlockLinear's choice per (out_features, in_features, rows, threads, bias, W stored row by row): True where its own
# product measured faster than F.linear at first use in this process.
PRODUCT_CHOICES: dict[tuple[int, int, int, int, bool, bool], bool] = {}
# RowBlockLinear's choice per (out_features, in_features, threads, bias) at its first one-row call with W stored row
# by row: True where the product measured faster over W stored transposed, which it then keeps.
LAYOUT_CHOICES: dict[tuple[int, int, int, bool], bool] = {}
TIMING_TRIALS = 3
OWN_PRODUCT_MARGIN = 0.95  # a product other than F.linear over W as stored must be this much faster to be taken
EVICTION_BYTES = 64 << 20  # read between timings: more than the last-level cache of most processors


def row_block_product(
    weight: torch.Tensor, bias: torch.Tensor | None, columns: torch.Tensor, blocks: int
) -> torch.Tensor:
    """W columns + b, (out_features, n), with W split by output rows into `blocks` equal blocks whose products run as
    one batched product, a block per thread; the out_features % blocks rows left over get a product of their own.
    `columns` (in_features, n) should be a transposed view of x (stride in_features along its rows): with a
    contiguous one, bmm runs about 3x slower."""
    out_features, in_features = weight.shape
    size = out_features // blocks
    blocked = blocks * size
    block_weights = weight[:blocked].view(blocks, size, in_features)
    shared = columns.expand(blocks, *columns.shape)
    if bias is None:
        out = torch.bmm(block_weights, shared)
    else:
        out = torch.baddbmm(bias[:blocked].view(blocks, size, 1), block_weights, shared)
    out = out.view(blocked, columns.shape[1])
    if blocked < out_features:  # e.g. a vocabulary of 32001 on 2 threads
        rest_weight = weight[blocked:]
        rest = rest_weight @ columns if bias is None else torch.addmm(bias[blocked:, None], rest_weight, columns)
        out = torch.cat([out, rest])
    return out


class RowBlockLinear(nn.Linear):
    """`nn.Linear` whose product may stream a large float32 weight faster on the CPU when there are 1 to 32 rows
    and no autograd (a decoding step); anything else is `F.linear`, so it trains, and its numbers are the same up
    to the order of summation.

    - 1 row (greedy search at batch 1): W stored transposed in memory (the same tensor, its `t()` contiguous), so
      that MKL's matrix-vector product runs along rows of out_features rather than in_features; or, on several
      threads, W split by output rows into one block per thread, the blocks' products run as one batched product,
      a block per thread (where MKL's matrix-vector product keeps to one core);
    - 2 to 32 rows (a small batch or beam): (W x^T)^T instead of x W^T.

    Which is faster depends on the processor, the BLAS build and the thread count: on an AMD EPYC row blocks doubled
    the speed of a 2-thread batch-1 step, on a Xeon they halved it; W stored transposed halved the time of the
    decoder's wide layers on one thread of the EPYC, and lost to row blocks on two. So the first one-row call of
    each (weight shape, threads) times the products over W as stored and over a transposed copy, and takes the
    transposed storage for good if it is clearly faster (`LAYOUT_CHOICES`); the first call of each (weight shape and
    storage, rows, threads) times x W^T against the own product on its own input and keeps the faster for the rest
    of the process (`PRODUCT_CHOICES`), F.linear unless the other is clearly faster. Under `torch.compile` it is
    `F.linear`. `optimize_for_cpu_inference` gives the model a state-dict hook that puts weights stored transposed
    into the state dict row by row, as saving needs them (a layer used on its own gives its weight as stored).
    """

    weight_stored_transposed = False  # set by `_store_weight_transposed`

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        rows = x.numel() // x.shape[-1] if x.dim() else 0
        if (
            not 1 <= rows <= MAX_FEW_ROWS
            or weight.numel() < MIN_WEIGHT_ELEMENTS
            or x.device.type != "cpu"
            or x.dtype != torch.float32
            or weight.dtype != torch.float32
            or torch.is_grad_enabled()
            or torch.compiler.is_compiling()
        ):
            return F.linear(x, weight, bias)
        threads = torch.get_num_threads()
        row_by_row = weight.is_contiguous()
        if rows == 1 and row_by_row:
            layout_key = (*weight.shape, threads, bias is not None)
            transposed = LAYOUT_CHOICES.get(layout_key)
            if transposed is None:
                transposed = LAYOUT_CHOICES[layout_key] = self._transposed_weight_is_faster(threads)
            if transposed:
                self._store_weight_transposed()
                return F.linear(x, self.weight, bias)
        if rows == 1 and (threads == 1 or weight.shape[0] < threads or not row_by_row):
            return F.linear(x, weight, bias)  # row blocks need W stored row by row, and several threads
        key = (*weight.shape, rows, threads, bias is not None, row_by_row)
        own = PRODUCT_CHOICES.get(key)
        if own is None:
            own = PRODUCT_CHOICES[key] = self._own_product_is_faster(x, rows, threads)
        return self._own_product(x, rows, threads) if own else F.linear(x, weight, bias)

    def _own_product(self, x: torch.Tensor, rows: int, threads: int) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        out_features, in_features = weight.shape
        if rows == 1:
            out = row_block_product(weight, bias, x.reshape(1, in_features).t(), threads)
            return out.view(*x.shape[:-1], out_features)
        columns = x.reshape(rows, in_features).t()
        out = torch.mm(weight, columns) if bias is None else torch.addmm(bias.unsqueeze(1), weight, columns)
        return out.t().contiguous().view(*x.shape[:-1], out_features)

    def _own_product_is_faster(self, x: torch.Tensor, rows: int, threads: int) -> bool:
        """Both products timed with W out of the processor's caches; the own one wins only by OWN_PRODUCT_MARGIN."""
        times = fastest_times(
            {"own": lambda: self._own_product(x, rows, threads), "linear": lambda: F.linear(x, self.weight, self.bias)}
        )
        return times["own"] < OWN_PRODUCT_MARGIN * times["linear"]

    def _transposed_weight_is_faster(self, threads: int) -> bool:
        """A one-row product over W stored transposed timed against the faster of x W^T and (on several threads) row
        blocks over W stored row by row, W out of the processor's caches; the transposed one wins only by
        OWN_PRODUCT_MARGIN."""
        weight, bias = self.weight.detach(), None if self.bias is None else self.bias.detach()
        x = torch.randn(1, weight.shape[1])
        transposed = weight.t().contiguous().t()
        products = {"transposed": lambda: F.linear(x, transposed, bias), "linear": lambda: F.linear(x, weight, bias)}
        if threads > 1 and weight.shape[0] >= threads:
            products["row blocks"] = lambda: row_block_product(weight, bias, x.t(), threads)
        times = fastest_times(products)
        return times.pop("transposed") < OWN_PRODUCT_MARGIN * min(times.values())

    def _store_weight_transposed(self) -> None:
        """W stored transposed in memory: the same tensor and values, its `t()` contiguous (`F.linear` reads either
        without a copy). `restore_plain_modules` stores it row by row again."""
        with torch.inference_mode(False), torch.no_grad():  # a plain tensor, even in an inference-mode generate()
            self.weight.data = self.weight.data.t().contiguous().t()
        self.weight_stored_transposed = True

    def extra_repr(self) -> str:
        return super().extra_repr() + ", few-row CPU products"


def fastest_times(products: dict) -> dict[str, float]:
    """The fastest of TIMING_TRIALS timings of each product (a function of no arguments), taken in turn, each after
    reading EVICTION_BYTES of other memory: W out of the processor's caches, as a decoding step finds it after
    reading every other layer's weights."""
    other_memory = torch.ones(EVICTION_BYTES // 4)
    times = {name: [] for name in products}
    for _ in range(TIMING_TRIALS):
        for name, product in products.items():
            other_memory.sum()
            start = time.perf_counter()
            product()
            times[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in times.items()}


class FusedQKVAttention(VanillaTransformerAttention):
    """Self-attention whose queries, keys and values come from one product with W^Q, W^K and W^V stacked by output
    rows (`qkv_proj`), where the plain module makes three. Built from a trained attention for inference only: it
    refuses `train()`, since training would leave `qkv_proj` behind the three layers it stands for.

    With `keep_projections` (the float32 path) the three layers stay, as the same modules: the state dict holds
    them and not `qkv_proj`, so the model saves as the plain one, and with autograd on they are used directly.
    Without it (the int8 path) they are dropped, and `qkv_proj` is quantised with the other layers."""

    @classmethod
    def fuse(cls, attention: VanillaTransformerAttention, keep_projections: bool = False) -> FusedQKVAttention:
        """Turns `attention` itself into a fused one, where the other blocks get new modules: transformers' output
        capturing hooks the attention modules once per model (and a user may have hooked one too), and a new module
        would not carry those hooks. `unfuse` turns it back when the three layers were kept."""
        projections = (attention.q_proj, attention.k_proj, attention.v_proj)
        weight = attention.q_proj.weight
        stacked = (RowBlockLinear if keep_projections else nn.Linear)(
            weight.shape[1], sum(p.out_features for p in projections), device=weight.device, dtype=weight.dtype
        )
        with torch.no_grad():
            stacked.weight.copy_(torch.cat([p.weight for p in projections]))
            stacked.bias.copy_(torch.cat([p.bias for p in projections]))
        stacked.requires_grad_(False)
        attention.__class__ = cls
        attention.train(False)
        attention.qkv_proj = stacked
        if not keep_projections:
            del attention.q_proj, attention.k_proj, attention.v_proj  # self-attention no longer calls them
        return attention

    def unfuse(self, training: bool) -> VanillaTransformerAttention:
        """The plain self-attention over the three kept layers, in place."""
        del self.qkv_proj
        self.__class__ = VanillaTransformerAttention
        return self.train(training)

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        state = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        if hasattr(self, "q_proj"):  # the three layers are what saves; `qkv_proj` is a copy of them
            for key in [key for key in state if key.startswith(prefix + "qkv_proj.")]:
                del state[key]
        return state

    def project_qkv(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if torch.is_grad_enabled() and hasattr(self, "q_proj"):
            return super().project_qkv(hidden_states)  # gradients belong to the three layers
        query, key, value = self.qkv_states(hidden_states)
        return self._heads(query, self.d_k), self._heads(key, self.d_k), self._heads(value, self.d_v)

    def qkv_states(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The queries, keys and values from the one product, each (batch, length, heads * size)."""
        sizes = (self.num_heads * self.d_k, self.num_heads * self.d_k, self.num_heads * self.d_v)
        return self.qkv_proj(hidden_states).split(sizes, dim=-1)

    def train(self, mode: bool = True) -> FusedQKVAttention:
        if mode:
            raise RuntimeError(
                "This model has fused Q/K/V self-attention for inference and cannot train (model.eval() puts back "
                "the modules this call reached). Train the plain model: "
                "restore_plain_modules(model) undoes optimize_for_cpu_inference; an int8 model cannot be undone "
                "(train the model quantize_int8 copied from)."
            )
        return super().train(False)


class InferenceSublayer(VanillaTransformerSublayer):
    """The residual and LayerNorm of §3.1 without the dropout call, which does nothing in eval mode but costs a
    call per sub-layer and decoding step."""

    def forward(self, x, sublayer):
        if self.training:
            return super().forward(x, sublayer)
        return x + sublayer(self.norm(x)) if self.pre_norm else self.norm(x + sublayer(x))


class InferenceFeedForward(VanillaTransformerFeedForward):
    """§3.3 with the ReLU applied in place and no dropout call (no autograd to keep fc1's output for)."""

    def forward(self, hidden_states):
        if self.training or torch.is_grad_enabled() or not isinstance(self.activation, nn.ReLU):
            return super().forward(hidden_states)
        return self.fc2(self.fc1(hidden_states).relu_())


class TableSinusoidalPositionalEncoding(VanillaTransformerSinusoidalPositionalEncoding):
    """§3.5's sinusoids read from a float64-built table (grown to the next power of two when a longer sequence
    comes) instead of computed from every decoding step's position."""

    def __init__(self, config: VanillaTransformerConfig):
        super().__init__(config)
        # Filled at the first call; not saved, since d_model and the layout determine it.
        self.register_buffer("table", torch.empty(0, config.d_model, device="cpu"), persistent=False)

    def forward(self, position_ids, max_length):
        if self.table.shape[0] < max_length or self.table.device != position_ids.device:
            size = 1 << max(max_length - 1, 63).bit_length()
            self.table = sinusoid_table(size, self.d_model, self.layout).to(position_ids.device)
        return self.table[position_ids]


class InferenceDecoderLayer(VanillaTransformerDecoderLayer):
    """A decoder layer whose decoding steps (one new position, what generate() runs) take one straight-line forward:
    the LayerNorms and linear layers called directly and SDPA over the cached keys and values, where the plain layer
    makes some seventeen module calls, three residual-block closures and two trips through transformers' attention
    dispatch (together about a tenth of an int8 greedy step at batch 1, `docs/performance.md`). It computes what the
    plain layer does. Anything else runs the plain layer: training or autograd, several positions at once, recorded
    outputs (`output_attentions`, ...), an attention implementation other than "sdpa". In the steps it takes, forward
    hooks on the layer's sub-modules do not run (hooks on the layer itself do); `restore_plain_modules` gives the
    plain layer back. Set by changing the class in place, as `FusedQKVAttention`, so the hooks on the layer stay."""

    def forward(
        self, hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask=None, cache=None, **kwargs
    ) -> torch.Tensor:
        if (
            kwargs
            or self.training
            or torch.is_grad_enabled()
            or hidden_states.shape[1] != 1
            or self.self_attn.config._attn_implementation != "sdpa"
        ):
            return super().forward(
                hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask, cache=cache, **kwargs
            )
        if isinstance(cache, EncoderDecoderCache):
            self_cache, cross_cache = cache.self_attention_cache, cache
        else:
            self_cache, cross_cache = cache, None
        self_attn, cross_attn, feed_forward = self.self_attn, self.cross_attn, self.feed_forward

        def masked_self_attention(x):
            query, key, value = _one_position_qkv(self_attn, x)
            if self_cache is not None:
                key, value = self_cache.update(key, value, self_attn.layer_idx)
            return _attend(self_attn, query, key, value, attention_mask)

        def encoder_decoder_attention(x):
            query = _one_position_heads(cross_attn.q_proj.forward(x), cross_attn.num_heads, cross_attn.d_k)
            key, value = cross_attn.source_keys_values(encoder_hidden_states, cross_cache)
            return _attend(cross_attn, query, key, value, encoder_attention_mask)

        hidden_states = _residual(self.self_attn_sublayer, hidden_states, masked_self_attention)
        hidden_states = _residual(self.cross_attn_sublayer, hidden_states, encoder_decoder_attention)
        return _residual(self.feed_forward_sublayer, hidden_states, feed_forward.forward)


class InferenceDecoder(VanillaTransformerDecoder):
    """A decoder stack whose decoding steps (one new position a sequence over transformers' dynamic cache, what
    generate() runs) skip what the plain forward does for any input: the input checks, transformers' two mask builders
    (about 15 microseconds each here) and output capturing. A step needs no mask over the targets (its one position
    sees every cached one), and the source's padding mask is the one transformers builds for SDPA. It computes what
    the plain stack does. Anything else runs the plain forward: training, autograd or torch.compile, several
    positions, embeddings or a decoder attention mask passed in, another cache, recorded outputs, an attention
    implementation other than "sdpa". Set by changing the class in place, as `InferenceDecoderLayer`."""

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        cache=None,
        inputs_embeds=None,
        use_cache=None,
        **kwargs,
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        config = self.config
        if (
            self.training
            or torch.is_grad_enabled()
            or torch.compiler.is_compiling()
            or input_ids is None
            or input_ids.dim() != 2
            or input_ids.shape[1] != 1
            or attention_mask is not None
            or inputs_embeds is not None
            or encoder_hidden_states is None
            or encoder_hidden_states.shape[0] != input_ids.shape[0]
            or (encoder_attention_mask is not None and encoder_attention_mask.dim() != 2)
            or not isinstance(cache, EncoderDecoderCache)
            or not isinstance(cache.self_attention_cache, DynamicCache)
            or not (config.use_cache if use_cache is None else use_cache)
            or kwargs.keys() - {"return_dict"}
            or not kwargs.get("return_dict", config.return_dict)
            or config.output_attentions
            or config.output_hidden_states
            or config._attn_implementation != "sdpa"
        ):
            return super().forward(
                input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=encoder_hidden_states,
                encoder_attention_mask=encoder_attention_mask, cache=cache, inputs_embeds=inputs_embeds,
                use_cache=use_cache, **kwargs,
            )  # fmt: skip
        past_length = cache.self_attention_cache.get_seq_length()
        position_ids = torch.full((1, 1), past_length, device=input_ids.device)
        hidden_states = self.embed(self.embed_tokens(input_ids), position_ids, past_length + 1)
        source_mask = encoder_attention_mask
        if source_mask is not None:  # as transformers builds it for SDPA: none where no source is padded
            source_mask = None if source_mask.all() else source_mask[:, None, None, :].bool()
        for layer in self.layers:
            hidden_states = layer(hidden_states, None, encoder_hidden_states, source_mask, cache=cache)
        return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=self.finish(hidden_states), cache=cache)


def _one_position_heads(states: torch.Tensor, heads: int, size: int) -> torch.Tensor:
    """(batch, 1, heads * size) -> (batch, heads, 1, size): with one position, a view without the transpose."""
    return states.view(states.shape[0], heads, 1, size)


def _one_position_qkv(attention: VanillaTransformerAttention, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Self-attention's query, key and value for one position, each (batch, heads, 1, size)."""
    heads, d_k, d_v = attention.num_heads, attention.d_k, attention.d_v
    if isinstance(attention, FusedQKVAttention):
        query, key, value = attention.qkv_states(x)
    else:  # three layers, say wrapped by an adapter: called as modules
        query, key, value = attention.q_proj(x), attention.k_proj(x), attention.v_proj(x)
    return (
        _one_position_heads(query, heads, d_k),
        _one_position_heads(key, heads, d_k),
        _one_position_heads(value, heads, d_v),
    )


def _attend(attention: VanillaTransformerAttention, query, key, value, mask) -> torch.Tensor:
    """§3.2.2 for one query position: SDPA over every head, the heads concatenated (with one position, a view of
    the (batch, heads, 1, d_v) output), W^O."""
    output = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=attention.scaling)
    return attention.out_proj.forward(output.reshape(output.shape[0], 1, attention.num_heads * attention.d_v))


def _residual(block: VanillaTransformerSublayer, x: torch.Tensor, sublayer) -> torch.Tensor:
    """`block`'s residual connection and LayerNorm around `sublayer` (post- or pre-LN), without module calls."""
    norm = block.norm
    if block.pre_norm:
        return x + sublayer(F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps))
    return F.layer_norm(x + sublayer(x), norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def use_inference_decoder_layers(model: nn.Module) -> int:
    """Makes each plain decoder layer of `model` an `InferenceDecoderLayer` and its decoder stack an
    `InferenceDecoder`, in place; returns how many layers."""
    for decoder in [module for module in model.modules() if type(module) is VanillaTransformerDecoder]:
        decoder.__class__ = InferenceDecoder
        # transformers' output capturing looks up what a model records by its class, registered when a model is
        # built; the swapped stack records what the plain one does (hidden states and attentions, by its plain forward)
        _CAN_RECORD_REGISTRY[decoder] = decoder._can_record_outputs
    return _swap_class(model, VanillaTransformerDecoderLayer, InferenceDecoderLayer)


def _swap_class(model: nn.Module, old: type[nn.Module], new: type[nn.Module]) -> int:
    """Every submodule of exactly type `old` becomes a `new` in place (same object, so its hooks stay)."""
    modules = [module for module in model.modules() if type(module) is old]
    for module in modules:
        module.__class__ = new
    return len(modules)


# Subclasses that only change forward; each replaces its plain module, and back.
_INFERENCE_CLASSES = {
    VanillaTransformerSublayer: InferenceSublayer,
    VanillaTransformerFeedForward: InferenceFeedForward,
    VanillaTransformerSinusoidalPositionalEncoding: TableSinusoidalPositionalEncoding,
}


def use_inference_blocks(model: nn.Module) -> nn.Module:
    """Replaces the residual blocks, feed-forward networks and sinusoids of `model` with their inference versions
    and makes its decoder layers `InferenceDecoderLayer`s (in eval mode they compute the same; in training they run
    the plain forward)."""
    _replace_blocks(model, _INFERENCE_CLASSES)
    use_inference_decoder_layers(model)
    return model


def _replace_blocks(model: nn.Module, mapping: dict) -> None:
    """Each submodule whose type is a key of `mapping` is replaced on its parent by a module of the mapped type, built
    from the model's config on the meta device (nothing allocated) and then given the old module's own submodules:
    the same parameters, ties and state-dict keys."""
    config = None
    for name, module in list(model.named_modules()):
        new_type = mapping.get(type(module))
        if new_type is None or not name:
            continue
        config = config or _model_config(model)
        with torch.device("meta"):
            new = new_type(config)
        for child_name, child in module.named_children():
            setattr(new, child_name, child)
        new.train(module.training)
        parent, _, child_name = name.rpartition(".")
        setattr(model.get_submodule(parent), child_name, new)


def _model_config(model: nn.Module) -> VanillaTransformerConfig:
    for module in model.modules():  # the model, a stack of layers, or an attention module: each holds the config
        config = getattr(module, "config", None)
        if isinstance(config, VanillaTransformerConfig):
            return config
    raise TypeError(f"{type(model).__name__} holds no VanillaTransformerConfig: pass the model (or one of its stacks).")


def _replace_linears(model: nn.Module, old: type[nn.Linear], new: type[nn.Linear]) -> None:
    """Every submodule of exactly type `old` becomes a `new` holding the very same parameters (so ties and the
    state dict are unchanged)."""
    for name, module in list(model.named_modules()):
        if name and type(module) is old:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, _swap_linear(module, new))


def _swap_linear(layer: nn.Linear, cls: type[nn.Linear]) -> nn.Linear:
    new = cls(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
    new.weight = layer.weight
    new.bias = layer.bias
    new.train(layer.training)
    return new


def fuse_self_attention(model: nn.Module, keep_projections: bool = False) -> int:
    """Turns each layer's self-attention (the encoder's, and the decoder's masked one) into a `FusedQKVAttention`;
    attention over the encoder output keeps its three products. Returns the number fused."""
    swapped = 0
    for layer in model.modules():
        attention = getattr(layer, "self_attn", None)
        if type(attention) is not VanillaTransformerAttention:
            continue
        projections = (attention.q_proj, attention.k_proj, attention.v_proj)
        if not all(type(p) in (nn.Linear, RowBlockLinear) and p.bias is not None for p in projections):
            continue  # wrapped (say, by an adapter) or without bias: left as three products
        FusedQKVAttention.fuse(attention, keep_projections)
        swapped += 1
    return swapped


def optimize_for_cpu_inference(model: nn.Module) -> nn.Module:
    """Replaces, in place, every plain `nn.Linear` of `model` with a `RowBlockLinear` over the same parameters, the
    residual blocks, feed-forward networks and sinusoids with inference versions without eval mode's per-step calls,
    fuses each self-attention (`FusedQKVAttention`, keeping its three layers) and makes each decoder layer an
    `InferenceDecoderLayer` (decoding steps as one straight-line forward) and the decoder stack an `InferenceDecoder`
    (decoding steps without the input checks and mask builders); returns the model: faster greedy and small-batch
    decoding on the CPU, the same weights, and it saves as the plain model. It refuses `train()` until
    `restore_plain_modules`. Layers wrapped by something else (an adapter, a quantiser) are left alone."""
    _replace_linears(model, nn.Linear, RowBlockLinear)
    fuse_self_attention(model, keep_projections=True)
    use_inference_blocks(model)
    if getattr(model, "row_by_row_state_hook", None) is None:
        model.row_by_row_state_hook = model.register_state_dict_post_hook(_state_row_by_row)
    return model


def _state_row_by_row(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """Puts the weights a `RowBlockLinear` stored transposed into the state dict stored row by row, as the plain
    model has them: transformers' saving and safetensors read a tensor as one contiguous block. Tied entries stay one
    tensor (so they still save once); parameters asked for as such (`keep_vars=True`) are left as they are."""
    copies = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix) or isinstance(value, nn.Parameter) or value.is_contiguous():
            continue
        layout = (value.data_ptr(), tuple(value.shape), value.stride())
        if layout not in copies:
            copies[layout] = value.contiguous()
        state_dict[key] = copies[layout]


def restore_plain_modules(model: nn.Module) -> nn.Module:
    """Undoes `optimize_for_cpu_inference`: each fused self-attention becomes a plain one over the same three
    layers, every `RowBlockLinear` an `nn.Linear` over the same parameters (stored row by row again), and the
    inference blocks plain ones."""
    for module in model.modules():
        if getattr(module, "weight_stored_transposed", False):
            with torch.inference_mode(False), torch.no_grad():
                module.weight.data = module.weight.data.contiguous()
            module.weight_stored_transposed = False
    for layer in model.modules():
        attention = getattr(layer, "self_attn", None)
        if isinstance(attention, FusedQKVAttention) and hasattr(attention, "q_proj"):
            attention.unfuse(layer.training)
    _replace_linears(model, RowBlockLinear, nn.Linear)
    _replace_blocks(model, {new: old for old, new in _INFERENCE_CLASSES.items()})
    _swap_class(model, InferenceDecoderLayer, VanillaTransformerDecoderLayer)
    _swap_class(model, InferenceDecoder, VanillaTransformerDecoder)
    hook = getattr(model, "row_by_row_state_hook", None)
    if hook is not None:
        hook.remove()
        model.row_by_row_state_hook = None
    return model


__all__ = [
    "FusedQKVAttention",
    "InferenceDecoder",
    "InferenceDecoderLayer",
    "InferenceFeedForward",
    "InferenceSublayer",
    "TableSinusoidalPositionalEncoding",
    "RowBlockLinear",
    "fuse_self_attention",
    "optimize_for_cpu_inference",
    "restore_plain_modules",
    "row_block_product",
    "use_inference_blocks",
    "use_inference_decoder_layers",
]
