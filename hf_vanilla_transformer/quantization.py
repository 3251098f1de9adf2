"""Reduced-precision inference on CPU: int8 weights for every linear layer.

fp32 decoding at batch 1 is bound by reading the weights once per generated token; int8 weights are a
quarter of the bytes. Activations stay float and are quantised on the fly (dynamic quantisation), so no
calibration data is needed. Training is not supported on the result: quantise a trained model.

`quantize_int8(model)` gives an `Int8VanillaTransformerForConditionalGeneration`, which saves with
`save_pretrained` (int8 weights and their scales in model.safetensors, `quantization_config` in config.json)
and loads again with `load_int8(folder)`. transformers' own int8 route (`TorchAoConfig` with torchao's
dynamic int8 config) loads and saves this model too, but decodes 3 to 5 times slower on the CPU
(`python benchmarks/bench_int8.py`).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import warnings

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import GenerationConfig
from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING
from transformers.utils.quantization_config import QuantizationConfigMixin

from ._io import staged_folder
from .configuration_vanilla_transformer import VanillaTransformerConfig
from .cpu_inference import fuse_self_attention, restore_plain_modules, use_inference_blocks
from .modeling_vanilla_transformer import VanillaTransformerForConditionalGeneration

logger = logging.getLogger(__name__)

QUANT_METHOD = "vanilla_int8"
WEIGHTS_NAME = "model.safetensors"

# The kernel itself: `torch.ops.quantized.linear_dynamic` checks its arguments for fake script objects in Python
# on every call (about 6 us: 0.3 ms over the 49 products of a base-model decoding step); the overload's C++
# callable does not.
_LINEAR_DYNAMIC = getattr(torch.ops.quantized.linear_dynamic.default, "_op", torch.ops.quantized.linear_dynamic.default)


class Int8Linear(nn.Module):
    """y = x W^T + b with W in int8, one scale per output row; x is quantised per call (fbgemm/onednn kernels).

    It holds the packed weight of torch's dynamic quantisation and calls the kernel directly: the same numbers as
    `torch.ao.nn.quantized.dynamic.Linear`, without that module's per-call checks (with them, batch-1 greedy
    decoding of the base model ran 1.17x slower). Its state dict holds `weight` (int8, out x in), `weight_scale`
    (float64, one per row) and `bias`, unpacked when saved and packed again when loaded.
    """

    def __init__(self, packed_weight, in_features: int, out_features: int, has_bias: bool = True):
        super().__init__()
        self.packed_weight = packed_weight
        self.in_features = in_features
        self.out_features = out_features
        self.has_bias = has_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _LINEAR_DYNAMIC(x, self.packed_weight, True)  # reduce_range, as torch's own dynamic Linear

    def storage_bytes(self) -> int:
        """Bytes of what the layer holds: int8 weights, a float64 scale per row and float32 biases."""
        return self.out_features * (self.in_features + 8 + (4 if self.has_bias else 0))

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        weight, bias = torch.ops.quantized.linear_unpack(self.packed_weight)
        destination[prefix + "weight"] = weight.int_repr()
        destination[prefix + "weight_scale"] = weight.q_per_channel_scales()
        if bias is not None:
            destination[prefix + "bias"] = bias

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors):
        names = ["weight", "weight_scale"] + (["bias"] if self.has_bias else [])
        missing = [prefix + name for name in names if prefix + name not in state_dict]
        if missing:
            missing_keys.extend(missing)
            return
        weight, scale = state_dict[prefix + "weight"], state_dict[prefix + "weight_scale"].double()
        if weight.dtype != torch.int8 or tuple(weight.shape) != (self.out_features, self.in_features):
            errors.append(
                f"{prefix}weight must be int8 of shape {(self.out_features, self.in_features)}, got {weight.dtype} "
                f"{tuple(weight.shape)}."
            )
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's quantized tensors are marked deprecated; its int8 kernels need them
            # int8 x scale, divided by the scale again, is within 127 x 2^-24 of the int8: it rounds back exactly.
            quantized = torch.quantize_per_channel(
                weight.float() * scale[:, None].float(), scale, torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8
            )
            bias = state_dict[prefix + "bias"].float() if self.has_bias else None
            self.packed_weight = torch.ops.quantized.linear_prepack(quantized, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight=int8 per row"


class Int8VanillaTransformerForConditionalGeneration(VanillaTransformerForConditionalGeneration):
    """The model with `Int8Linear` layers, made by `quantize_int8`: it decodes on the CPU, saves with
    `save_pretrained` and loads with `load_int8`. It cannot train, move off the CPU or be exported, and its
    folder does not load with `from_pretrained` (which says to use `load_int8`)."""

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError(
                "An int8 model cannot train: train the float32 model, then quantize_int8 it (or load_int8 a folder)."
            )
        return super().train(False)

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Counts each int8 layer's weights and biases as well (they are not torch Parameters)."""
        count = super().num_parameters(only_trainable=only_trainable, exclude_embeddings=exclude_embeddings)
        if only_trainable:
            return count
        int8 = [m for m in self.modules() if isinstance(m, Int8Linear)]
        return count + sum(m.out_features * (m.in_features + int(m.has_bias)) for m in int8)

    def get_memory_footprint(self, return_buffers: bool = True) -> int:
        """Bytes of the float parameters (and buffers) plus every int8 layer's weights, scales and biases."""
        int8 = sum(m.storage_bytes() for m in self.modules() if isinstance(m, Int8Linear))
        return super().get_memory_footprint(return_buffers=return_buffers) + int8

    def save_pretrained(self, save_directory, **kwargs) -> None:
        """config.json (with `quantization_config`), generation_config.json and model.safetensors, written to a
        staging folder and moved in whole: a failure leaves no half-written model."""
        if kwargs.get("push_to_hub"):
            raise ValueError("An int8 model is saved to a folder; upload the folder with huggingface_hub.")
        weights = _deduplicated(self.state_dict())
        with staged_folder(save_directory, merge=True) as staging:
            self.config.save_pretrained(staging)
            self.generation_config.save_pretrained(staging)
            save_file(weights, os.path.join(staging, WEIGHTS_NAME), metadata={"format": "pt"})


def _deduplicated(state_dict: dict) -> dict:
    """The state dict with each tied tensor once (safetensors refuses two names for one storage)."""
    seen, kept = set(), {}
    for name, tensor in state_dict.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key not in seen:
            seen.add(key)
            kept[name] = tensor.contiguous()
    return kept


def _quantization_config(folder) -> dict:
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        return {}
    with open(config_path) as file:
        return json.load(file).get("quantization_config") or {}


def is_int8_folder(folder) -> bool:
    """Whether `folder` is a local folder an int8 model was saved to."""
    return _quantization_config(folder).get("quant_method") == QUANT_METHOD


def load_int8(folder: str) -> Int8VanillaTransformerForConditionalGeneration:
    """A model saved by an int8 model's `save_pretrained`, ready to decode on the CPU."""
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise ValueError(f"{folder} has no config.json: it is not a saved model folder.")
    quantization = _quantization_config(folder)
    if quantization.get("quant_method") != QUANT_METHOD:
        raise ValueError(
            f"{folder} holds no int8 model saved by quantize_int8 (its config.json has no quantization_config with "
            f"quant_method {QUANT_METHOD!r}). Load it with from_pretrained, then call quantize_int8."
        )
    config = VanillaTransformerConfig.from_pretrained(folder)
    del config.quantization_config
    model = VanillaTransformerForConditionalGeneration(config).eval()  # the layout; the weights come below
    model = quantize_int8(model, inplace=True, fuse_qkv=quantization.get("fuse_qkv", True))
    missing, unexpected = model.load_state_dict(load_file(os.path.join(folder, WEIGHTS_NAME)), strict=False)
    tied = {name for name, _ in model.named_parameters(remove_duplicate=False)} - set(_deduplicated(model.state_dict()))
    if set(missing) - tied or unexpected:
        raise ValueError(f"{folder} does not match its config: missing {sorted(set(missing) - tied)}, unexpected {unexpected}.")
    if os.path.isfile(os.path.join(folder, "generation_config.json")):
        model.generation_config = GenerationConfig.from_pretrained(folder)
    return model


class VanillaInt8Config(QuantizationConfigMixin):
    """What an int8 folder's config.json says about its weights; transformers reads it when `from_pretrained` is
    pointed at such a folder, and the quantizer below then says to use `load_int8`."""

    def __init__(self, fuse_qkv: bool = True, **kwargs):
        self.quant_method = QUANT_METHOD
        self.fuse_qkv = fuse_qkv


class VanillaInt8Quantizer(HfQuantizer):
    requires_calibration = False

    def validate_environment(self, *args, **kwargs):
        raise ValueError(
            "This folder holds int8 weights saved from quantize_int8, which from_pretrained cannot load: load it "
            "with hf_vanilla_transformer.quantization.load_int8(folder)."
        )

    def is_serializable(self):
        return True

    @property
    def is_trainable(self) -> bool:
        return False


# Once per process: a second copy of this package (say, an older commit a benchmark imports) finds them registered.
if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
    register_quantization_config(QUANT_METHOD)(VanillaInt8Config)
if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
    register_quantizer(QUANT_METHOD)(VanillaInt8Quantizer)


def quantize_int8(model: nn.Module, inplace: bool = False, fuse_qkv: bool = True) -> nn.Module:
    """A copy of `model` (or `model` itself with `inplace=True`) whose `nn.Linear` layers are `Int8Linear`.

    Embeddings stay fp32; the pre-softmax layer gets its own int8 copy of the tied embedding matrix. Each
    self-attention becomes a `FusedQKVAttention` with one int8 layer for Q, K and V together: rows are quantised
    one by one and the input once per call, so it gives the same numbers as three int8 layers, and at batch 1 the
    fixed cost of an int8 product (tens of microseconds) comes once instead of three times (`fuse_qkv=False`
    keeps the three).
    """
    if model.training:
        raise ValueError("quantize_int8 is for inference: call model.eval() first (a quantised model cannot train).")
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("quantize_int8 runs on CPU only; move the model with model.to('cpu') first.")
    target = model if inplace else copy.deepcopy(model)
    if next(target.parameters()).dtype != torch.float32:
        # The int8 kernels take float32 activations: a bfloat16 or float16 model is quantised from float32.
        logger.info("Converting the %s model to float32 before quantising it.", next(target.parameters()).dtype)
        target.float()
    restore_plain_modules(target)  # quantize_dynamic matches nn.Linear by exact type
    if fuse_qkv:
        fuse_self_attention(target)
    use_inference_blocks(target)
    with warnings.catch_warnings():
        # torch marks its eager-mode quantisation API as deprecated in favour of torchao, but it is the one
        # that ships with torch and its fbgemm/onednn int8 kernels are what this path needs.
        warnings.simplefilter("ignore")
        qconfig = torch.ao.quantization.per_channel_dynamic_qconfig  # one scale per output row: less error
        torch.ao.quantization.quantize_dynamic(target, {nn.Linear: qconfig}, dtype=torch.qint8, inplace=True)
    quantized_type = torch.ao.nn.quantized.dynamic.Linear
    for name, module in list(target.named_modules()):
        if type(module) is quantized_type:
            parent_name, _, child = name.rpartition(".")
            packed = module._packed_params._packed_params
            bias = torch.ops.quantized.linear_unpack(packed)[1] is not None
            layer = Int8Linear(packed, module.in_features, module.out_features, bias)
            setattr(target.get_submodule(parent_name), child, layer)
    if isinstance(target, VanillaTransformerForConditionalGeneration):
        target.__class__ = Int8VanillaTransformerForConditionalGeneration
        target.config.quantization_config = {"quant_method": QUANT_METHOD, "fuse_qkv": fuse_qkv}
        # The output layer has its own int8 copy of the embedding now: no tie to restore on loading.
        target._tied_weights_keys = {k: v for k, v in (target._tied_weights_keys or {}).items() if k != "lm_head.weight"}
    return target
