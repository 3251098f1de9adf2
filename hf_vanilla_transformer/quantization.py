"""Reduced-precision inference on CPU: int8 weights for every linear layer.

fp32 decoding at batch 1 is bound by reading the weights once per generated token; int8 weights are a
quarter of the bytes. Activations stay float and are quantised on the fly (dynamic quantisation), so no
calibration data is needed. Training is not supported on the result: quantise a trained model.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from .cpu_inference import fuse_self_attention, restore_plain_modules, use_inference_blocks

# The kernel itself: `torch.ops.quantized.linear_dynamic` checks its arguments for fake script objects in Python
# on every call (about 6 us: 0.3 ms over the 49 products of a base-model decoding step); the overload's C++
# callable does not.
_LINEAR_DYNAMIC = getattr(torch.ops.quantized.linear_dynamic.default, "_op", torch.ops.quantized.linear_dynamic.default)


_SAVE_INSTEAD = "Save the fp32 model instead, and call quantize_int8 after loading it."


def _refuse_to_save(*args, **kwargs):
    raise RuntimeError(
        f"This model has int8 layers made by quantize_int8, which have no weights to save. {_SAVE_INSTEAD}"
    )


class Int8Linear(nn.Module):
    """y = x W^T + b with W in int8, one scale per output row; x is quantised per call (fbgemm/onednn kernels).

    It holds the packed weight of torch's dynamic quantisation and calls the kernel directly: the same numbers as
    `torch.ao.nn.quantized.dynamic.Linear`, without that module's per-call checks (with them, batch-1 greedy
    decoding of the base model ran 1.17x slower). It has no parameters to save: save the fp32 model, and quantise
    after loading it.
    """

    def __init__(self, packed_weight, in_features: int, out_features: int):
        super().__init__()
        self.packed_weight = packed_weight
        self.in_features = in_features
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _LINEAR_DYNAMIC(x, self.packed_weight, True)  # reduce_range, as torch's own dynamic Linear

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        layer = prefix.rstrip(".") or "This"
        raise RuntimeError(f"{layer} is an int8 layer, which has no weights to save. {_SAVE_INSTEAD}")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight=int8 per row"


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
            layer = Int8Linear(module._packed_params._packed_params, module.in_features, module.out_features)
            setattr(target.get_submodule(parent_name), child, layer)
    if hasattr(target, "save_pretrained"):
        target.save_pretrained = _refuse_to_save  # before it writes the config: no half-written folder
    return target
