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


def quantize_int8(model: nn.Module, inplace: bool = False) -> nn.Module:
    """A copy of `model` (or `model` itself with `inplace=True`) whose `nn.Linear` layers hold int8 weights.

    Embeddings stay fp32; the pre-softmax layer gets its own int8 copy of the tied embedding matrix.
    """
    if model.training:
        raise ValueError("quantize_int8 is for inference: call model.eval() first (a quantised model cannot train).")
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("quantize_int8 runs on CPU only; move the model with model.to('cpu') first.")
    target = model if inplace else copy.deepcopy(model)
    with warnings.catch_warnings():
        # torch marks its eager-mode quantisation API as deprecated in favour of torchao, but it is the one
        # that ships with torch and its fbgemm/onednn int8 kernels are what this path needs.
        warnings.simplefilter("ignore")
        qconfig = torch.ao.quantization.per_channel_dynamic_qconfig  # one scale per output row: less error
        torch.ao.quantization.quantize_dynamic(target, {nn.Linear: qconfig}, dtype=torch.qint8, inplace=True)
    return target
