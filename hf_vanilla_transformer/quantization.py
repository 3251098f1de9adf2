"""Reduced-precision inference on CPU: int8 weights for every linear layer, through transformers' quantizer interface.

fp32 decoding at batch 1 is bound by reading the weights once per generated token; int8 weights are a quarter of the
bytes. Activations stay float and are quantised on the fly (dynamic quantisation), so no calibration data is needed.
Training is not supported on the result: quantise a trained model.

`quantize_int8(model)` gives a copy whose linear layers are `Int8Linear`. It saves with `save_pretrained` (int8
weights and their scales in model.safetensors, `quantization_config` with quant_method "vanilla_int8" in
config.json), and the folder loads with `AutoModelForSeq2SeqLM.from_pretrained`, and so with `pipeline` and
hf-vanilla-translate, the way torchao and bitsandbytes folders load: `VanillaInt8Config` is registered with
transformers, and its `VanillaInt8Quantizer` lays out the int8 layers before the weights load and hands them to the
kernel after. `from_pretrained(float_folder, quantization_config=VanillaInt8Config())` quantises as it loads.
transformers' `TorchAoConfig` route loads and saves this model too, but decodes 3 to 5 times slower on the CPU
(`python benchmarks/bench_int8.py`).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import warnings

import torch
from torch import nn
from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING
from transformers.utils.quantization_config import QuantizationConfigMixin

from ._io import staged_folder
from .cpu_inference import fuse_self_attention, restore_plain_modules, use_inference_blocks
from .model_source import check_model_folder
from .modeling_vanilla_transformer import VanillaTransformerForConditionalGeneration

logger = logging.getLogger(__name__)

QUANT_METHOD = "vanilla_int8"

# torch's public entry point to its dynamic int8 product. Each call scans its arguments in Python for traced script
# objects (about 1.5 us, some 1% of a base-model greedy batch-1 step); only the overload's private C++ callable
# skips that.
_LINEAR_DYNAMIC = torch.ops.quantized.linear_dynamic.default


class Int8Linear(nn.Module):
    """y = x W^T + b with W in int8, one scale per output row, and x quantised per call: torch's dynamic int8 product
    (`torch.ops.quantized.linear_dynamic`, fbgemm/onednn kernels), the numbers of
    `torch.ao.nn.quantized.dynamic.Linear` with per-row weights, without that module's per-call checks.

    `weight` (int8, out x in), `weight_scale` (float64, one per row) and `bias` are what it saves and loads, as
    ordinary tensors. The kernel reads its own copy of them in its own layout, made by `pack()`: `from_linear` and
    `load_state_dict` call it, and so does the quantizer once `from_pretrained` has loaded the weights.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(
            torch.zeros(out_features, in_features, dtype=torch.int8, device=device), requires_grad=False
        )
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float64, device=device))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, device=device), requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self.packed_weight = None
        self.training = False
        self.register_load_state_dict_post_hook(_pack_after_loading)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        """`linear` with its weight rounded to int8 row by row (symmetric, scale = max |w| / 127.5 as torch's
        per-channel dynamic qconfig computes it)."""
        weight = linear.weight.detach().float()
        with warnings.catch_warnings():
            # torch marks its eager-mode quantisation API as deprecated in favour of torchao, but its observers and
            # quantized tensors are what its fbgemm/onednn int8 kernels take.
            warnings.simplefilter("ignore")
            observer = torch.ao.quantization.per_channel_dynamic_qconfig.weight()
            observer(weight)
            scale, zero_point = observer.calculate_qparams()
            quantized = torch.quantize_per_channel(weight, scale.double(), zero_point.long(), 0, torch.qint8)
            int8, scale = quantized.int_repr(), quantized.q_per_channel_scales()
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device=weight.device)
        with torch.no_grad():
            layer.weight.copy_(int8)
            layer.weight_scale.copy_(scale)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias.detach().float())
        layer.pack()
        return layer

    def pack(self) -> None:
        """Gives the kernel its copy of `weight`, `weight_scale` and `bias` (again after they change)."""
        scale = self.weight_scale.double()
        bias = None if self.bias is None else self.bias.detach().float()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's quantized tensors are marked deprecated; its kernels take them
            # int8 x scale, divided by the scale again, is within 127 x 2^-24 of the int8: it rounds back exactly.
            values, zero_points = self.weight.float() * scale[:, None].float(), torch.zeros_like(scale).long()
            quantized = torch.quantize_per_channel(values, scale, zero_points, 0, torch.qint8)
            self.packed_weight = torch.ops.quantized.linear_prepack(quantized, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed_weight is None:
            raise RuntimeError("This Int8Linear holds no packed weight yet: call pack() once its tensors are loaded.")
        return _LINEAR_DYNAMIC(x, self.packed_weight, True)  # reduce_range, as torch's dynamic Linear

    def train(self, mode: bool = True) -> Int8Linear:
        if mode:
            raise RuntimeError(
                "An int8 model cannot train (model.eval() puts back the modules this call reached): train the "
                "float32 model, then quantize_int8 it."
            )
        return super().train(False)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            "weight=int8 per row"
        )


def _pack_after_loading(module: Int8Linear, incompatible_keys) -> None:
    if module.weight.device.type != "meta":
        module.pack()


def _replace_linears(model: nn.Module, make) -> None:
    """Every `nn.Linear` of `model` (by exact type) is replaced on its parent by `make(layer)`."""
    for name, module in list(model.named_modules()):
        if name and type(module) is nn.Linear:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, make(module))


def _untie_output_layer(model: VanillaTransformerForConditionalGeneration) -> None:
    """The output layer has its own int8 copy of the embedding matrix: no tie to make when loading or saving."""
    ties = {key: value for key, value in (model._tied_weights_keys or {}).items() if key != "lm_head.weight"}
    model._tied_weights_keys = ties or None
    model.all_tied_weights_keys.pop("lm_head.weight", None)


class _StagedSave:
    """An int8 model's `save_pretrained`: transformers' own, written into a staging folder that is moved into place
    once every file is in (`_io.staged_folder`: renamed whole where the folder is new, each file moved into an
    existing one), so a save that fails midway leaves the folder as it was, never half an int8 model. Set on the
    model as an attribute by `quantize_int8` and by the quantizer, the way the model is marked quantised."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __call__(self, save_directory: str | os.PathLike, *args, **kwargs):
        if kwargs.get("push_to_hub"):
            # transformers names the repository after the folder it writes to: the target's name, not the staging's.
            kwargs.setdefault("repo_id", os.fspath(save_directory).split(os.path.sep)[-1])
        with staged_folder(save_directory, merge=os.path.isdir(save_directory)) as staging:
            return type(self.model).save_pretrained(self.model, staging, *args, **kwargs)


class VanillaInt8Config(QuantizationConfigMixin):
    """The `quantization_config` of a folder saved from an int8 model (`fuse_qkv`: one int8 product for each
    self-attention's Q, K and V). transformers reads it when `from_pretrained` loads such a folder; pass one as
    `from_pretrained(float_folder, quantization_config=VanillaInt8Config())` to quantise a float model as it loads."""

    def __init__(self, fuse_qkv: bool = True, **kwargs):
        if not isinstance(fuse_qkv, bool):
            raise TypeError(f"fuse_qkv must be True or False, got {fuse_qkv!r}.")
        self.quant_method = QUANT_METHOD
        self.fuse_qkv = fuse_qkv


class VanillaInt8Quantizer(HfQuantizer):
    """transformers' side of `VanillaInt8Config`: before the weights of an int8 folder load, the model gets the layout
    `quantize_int8` gave it (fused self-attention, `Int8Linear` layers, on the meta device); after, each layer packs
    its weights for the kernel. A float folder loaded with the config is quantised once its weights are in."""

    requires_calibration = False

    def validate_environment(self, device_map=None, **kwargs):
        devices = set(device_map.values()) if isinstance(device_map, dict) else {device_map}
        if any(device is not None and str(device).partition(":")[0] != "cpu" for device in devices):
            raise ValueError(
                f"An int8 model decodes on the CPU only, got device_map={device_map!r}: leave device_map out, or "
                "load the float model for other devices."
            )

    def update_dtype(self, dtype: torch.dtype) -> torch.dtype:
        if dtype not in (None, torch.float32):
            logger.info("An int8 model takes float32 activations: loading it in float32, not %s.", dtype)
        return torch.float32

    def _process_model_before_weight_loading(self, model, **kwargs):
        if self.pre_quantized:
            if self.quantization_config.fuse_qkv:
                fuse_self_attention(model)
            _replace_linears(
                model,
                lambda layer: Int8Linear(
                    layer.in_features, layer.out_features, bias=layer.bias is not None, device=layer.weight.device
                ),
            )
            _untie_output_layer(model)
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        if not self.pre_quantized:
            return quantize_int8(model, inplace=True, fuse_qkv=self.quantization_config.fuse_qkv)
        for module in model.modules():
            if isinstance(module, Int8Linear):
                module.pack()
        model.save_pretrained = _StagedSave(model)
        return use_inference_blocks(model)

    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return False


def register_int8() -> None:
    """Point transformers' quantization registry at this module's int8 config and quantizer (done at import; again
    from `register_with_transformers`, since an older copy of this package that a benchmark imported beside this one
    may have registered its own classes under this name). transformers' register_* refuse a name twice."""
    for mapping, register, registered in (
        (AUTO_QUANTIZATION_CONFIG_MAPPING, register_quantization_config, VanillaInt8Config),
        (AUTO_QUANTIZER_MAPPING, register_quantizer, VanillaInt8Quantizer),
    ):
        mapping.pop(QUANT_METHOD, None)
        register(QUANT_METHOD)(registered)


register_int8()


def quantize_int8(model: nn.Module, inplace: bool = False, fuse_qkv: bool = True) -> nn.Module:
    """A copy of `model` (or `model` itself with `inplace=True`) whose `nn.Linear` layers are `Int8Linear`.

    Embeddings stay fp32; the pre-softmax layer gets its own int8 copy of the tied embedding matrix. Each
    self-attention becomes a `FusedQKVAttention` with one int8 layer for Q, K and V together: rows are quantised
    one by one and the input once per call, so it gives the same numbers as three int8 layers, and at batch 1 the
    fixed cost of an int8 product (tens of microseconds) comes once instead of three times (`fuse_qkv=False`
    keeps the three). The model is marked quantised as transformers marks its quantizers' models
    (`config.quantization_config`, `hf_quantizer`), so `save_pretrained` writes a folder that
    `AutoModelForSeq2SeqLM.from_pretrained` loads as this model; it writes it whole or not at all (`_StagedSave`).
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
    restore_plain_modules(target)  # Int8Linear replaces nn.Linear by exact type
    if fuse_qkv:
        fuse_self_attention(target)
    _replace_linears(target, Int8Linear.from_linear)
    if isinstance(target, VanillaTransformerForConditionalGeneration):
        use_inference_blocks(target)
        _untie_output_layer(target)
        config = VanillaInt8Config(fuse_qkv=fuse_qkv)
        target.config.quantization_config = config
        if not isinstance(getattr(target, "hf_quantizer", None), VanillaInt8Quantizer):  # from_pretrained set one
            target.hf_quantizer = VanillaInt8Quantizer(config, pre_quantized=False)
        target.is_quantized, target.quantization_method = True, QUANT_METHOD
        target.save_pretrained = _StagedSave(target)
    return target


def _quantization_config(folder) -> dict:
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        return {}
    with open(config_path) as file:
        return json.load(file).get("quantization_config") or {}


def is_int8_folder(folder) -> bool:
    """Whether `folder` is a local folder an int8 model was saved to."""
    return _quantization_config(folder).get("quant_method") == QUANT_METHOD


def load_int8(folder: str) -> VanillaTransformerForConditionalGeneration:
    """`AutoModelForSeq2SeqLM.from_pretrained(folder)` for a folder an int8 model was saved to, refusing any other
    folder and any weight the folder lacks or has in excess (from_pretrained only warns of those)."""
    from transformers import AutoModelForSeq2SeqLM

    check_model_folder(folder, needs_tokenizer=False)
    if not is_int8_folder(folder):
        raise ValueError(
            f"{folder} holds no int8 model saved by quantize_int8 (its config.json has no quantization_config with "
            f"quant_method {QUANT_METHOD!r}). Load it with from_pretrained, then call quantize_int8."
        )
    model, info = AutoModelForSeq2SeqLM.from_pretrained(folder, output_loading_info=True)
    wrong = {name: info[name] for name in ("missing_keys", "unexpected_keys", "mismatched_keys") if info[name]}
    if wrong:
        raise ValueError(f"{folder} does not match its config: {wrong}.")
    return model
