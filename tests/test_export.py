"""The plain model exports: torch.export (strict and not) with dynamic batch and lengths, transformers'
ExecuTorch wrapper with its defaults, and ONNX through torch.onnx's dynamo exporter, each run at shapes other
than the example's (more than 32 rows, more than 1024 positions) and compared with the eager model."""

import pytest
import torch
from torch.export import Dim

from hf_vanilla_transformer import VanillaTransformerConfig, VanillaTransformerForConditionalGeneration


class LogitsOnly(torch.nn.Module):
    """Positional tensors in, logits out: the signature exporters take."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, decoder_input_ids):
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids, use_cache=False
        ).logits


def small_model(**overrides):
    torch.manual_seed(0)
    config = VanillaTransformerConfig(
        vocab_size=100, d_model=32, d_ff=64, num_heads=4, encoder_layers=1, decoder_layers=1,
        max_position_embeddings=64, **overrides,
    )
    return VanillaTransformerForConditionalGeneration(config).eval()


def inputs(batch, source, target, seed=0):
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, source, dtype=torch.long)
    mask[0, -2:] = 0  # one padded sentence
    return (
        torch.randint(3, 100, (batch, source), generator=generator),
        mask,
        torch.randint(3, 100, (batch, target), generator=generator),
    )


DYNAMIC = ({0: Dim("batch"), 1: Dim("source")}, {0: Dim("batch"), 1: Dim("source")}, {0: Dim("batch"), 1: Dim("target")})
# 40 x 3 = 120 decoder rows; 1100 source and 1030 target positions, past max_position_embeddings and 1024.
SHAPES = [(40, 7, 3), (2, 1100, 1030)]


@pytest.mark.parametrize("strict", [True, False])
def test_torch_export_with_dynamic_batch_and_lengths_runs_past_32_rows_and_1024_positions(strict):
    wrapped = LogitsOnly(small_model()).eval()
    with torch.no_grad():
        program = torch.export.export(wrapped, inputs(2, 5, 4), dynamic_shapes=DYNAMIC, strict=strict)
    for shape in SHAPES:
        example = inputs(*shape, seed=1)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(*example), wrapped(*example), atol=1e-5, rtol=1e-5)


def test_executorch_wrapper_exports_with_its_defaults_and_decodes_as_generate():
    from transformers.integrations.executorch import Seq2SeqLMExportableModule

    model = small_model(init_scheme="normal", init_std=0.3)
    exported = Seq2SeqLMExportableModule(model).export()  # batch 1, static cache of 1024, source up to 4096
    source = torch.randint(3, 100, (1, 12), generator=torch.Generator().manual_seed(2))
    # Its decoding starts from token 0 (T5's start token); ours from config.decoder_start_token_id.
    expected = model.generate(input_ids=source, decoder_start_token_id=0, num_beams=1, do_sample=False, max_new_tokens=9)
    assert exported.generate(source, max_new_tokens=10) == expected[0].tolist()

    # Step by step along a forced target: each step's logits equal the full forward's at that position.
    target = torch.randint(3, 100, (1, 6), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        encoded = exported.exported_encoder.module()(source)
        full = model(input_ids=source, decoder_input_ids=target).logits
        for step in range(target.shape[1]):
            logits = exported.exported_decoder.module()(target[:, step : step + 1], encoded, torch.tensor([step]))
            torch.testing.assert_close(logits[:, -1], full[:, step], atol=1e-5, rtol=1e-5)


def test_onnx_export_runs_in_onnxruntime_at_new_shapes(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    wrapped = LogitsOnly(small_model()).eval()
    path = tmp_path / "model.onnx"
    with torch.no_grad():
        torch.onnx.export(wrapped, inputs(2, 5, 4), str(path), dynamo=True, dynamic_shapes=DYNAMIC, verbose=False)
    session = onnxruntime.InferenceSession(str(path))
    names = [node.name for node in session.get_inputs()]
    for shape in SHAPES:
        example = inputs(*shape, seed=1)
        (logits,) = session.run(None, {name: tensor.numpy() for name, tensor in zip(names, example)})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(logits), wrapped(*example), atol=1e-4, rtol=1e-4)
