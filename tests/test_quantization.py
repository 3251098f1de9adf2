"""int8 inference: every linear layer quantised, outputs close to fp32, the fp32 model left alone."""

import pytest
import torch
from torch import nn

from hf_vanilla_transformer.quantization import quantize_int8


def _linear_types(model):
    """The module paths of the classes of every linear layer (float or quantised)."""
    return {type(m).__module__ for m in model.modules() if type(m).__name__ == "Linear"}


def test_every_linear_becomes_int8_and_the_original_stays_fp32(tiny_model):
    model = tiny_model(d_model=64, d_ff=128, num_heads=4)
    quantized = quantize_int8(model)
    assert _linear_types(quantized) == {"torch.ao.nn.quantized.dynamic.modules.linear"}
    assert _linear_types(model) == {"torch.nn.modules.linear"}  # a copy was quantised
    assert model.lm_head.weight is model.model.encoder.embed_tokens.weight


def test_int8_logits_stay_close_to_fp32(tiny_model):
    model = tiny_model(d_model=64, d_ff=128, num_heads=4, vocab_size=100)
    source = torch.randint(4, 100, (3, 9), generator=torch.Generator().manual_seed(1))
    labels = torch.randint(4, 100, (3, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = model(input_ids=source, labels=labels).logits
        approx = quantize_int8(model)(input_ids=source, labels=labels).logits
    relative = (approx - reference).norm() / reference.norm()
    assert relative < 0.05, f"int8 logits differ from fp32 by {relative:.3f} (relative L2)"
    assert relative > 0  # it really ran in int8


def test_quantized_model_generates(tiny_model):
    model = tiny_model(d_model=64, d_ff=128, num_heads=4)
    source = torch.randint(4, 40, (2, 6), generator=torch.Generator().manual_seed(3))
    out = quantize_int8(model).generate(input_ids=source, max_new_tokens=5, num_beams=2)
    assert out.shape[0] == 2 and out.shape[1] <= 6


def test_training_mode_is_refused(tiny_model):
    model = tiny_model().train()
    with pytest.raises(ValueError, match="model.eval"):
        quantize_int8(model)
