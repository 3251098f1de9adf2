"""transformers' common model tests, run on this package's models.

This file is not part of the package's own test suite: `benchmarks/transformers_common_tests.py` copies it into a
transformers checkout as `tests/models/vanilla_transformer/test_modeling_vanilla_transformer.py`, where the relative
imports below find `ModelTesterMixin` (tests/test_modeling_common.py) and `GenerationTesterMixin`
(tests/generation/test_utils.py). The tester follows the conventions of transformers' own model testers: a
`...ModelTester` that builds a tiny config and inputs, and a `unittest.TestCase` that mixes the common suites in.
"""

import unittest
from unittest.mock import patch

from transformers import is_torch_available
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES, MODEL_MAPPING_NAMES
from transformers.testing_utils import require_torch, torch_device

from ...generation.test_utils import GenerationTesterMixin
from ...test_modeling_common import ModelTesterMixin, ids_tensor

try:  # a checkout without tests/utils/ cannot import the config tester; test_config then skips
    from ...test_configuration_common import ConfigTester
except ImportError:
    ConfigTester = None

try:  # likewise for the pipeline tests, which need tests/pipelines/ and tests/utils/tiny_model_summary.json
    from ...test_pipeline_mixin import PipelineTesterMixin
except (ImportError, OSError):

    class PipelineTesterMixin:
        pass


if is_torch_available():
    import torch

    from hf_vanilla_transformer import (
        VanillaTransformerConfig,
        VanillaTransformerForConditionalGeneration,
        VanillaTransformerModel,
    )


class VanillaTransformerModelTester:
    """Tiny configs and random inputs: 2 layers each side, d_model 16, 4 heads, a 99-token vocabulary."""

    def __init__(
        self,
        parent,
        batch_size=13,
        seq_length=7,
        is_training=True,
        use_labels=False,
        vocab_size=99,
        d_model=16,
        d_ff=4,
        num_heads=4,
        encoder_layers=2,
        decoder_layers=2,
        dropout=0.1,
        max_position_embeddings=20,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    ):
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.is_training = is_training
        self.use_labels = use_labels
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.hidden_size = d_model
        self.d_ff = d_ff
        self.num_heads = num_heads
        self.num_attention_heads = num_heads
        self.encoder_layers = encoder_layers
        self.decoder_layers = decoder_layers
        self.num_hidden_layers = decoder_layers
        self.dropout = dropout
        self.max_position_embeddings = max_position_embeddings
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.decoder_start_token_id = decoder_start_token_id
        # Source and target are the same length here; the common tests read these for attention shapes.
        self.encoder_seq_length = seq_length
        self.decoder_seq_length = seq_length
        self.key_length = seq_length
        self.decoder_key_length = seq_length

    def get_config(self):
        return VanillaTransformerConfig(
            vocab_size=self.vocab_size,
            d_model=self.d_model,
            d_ff=self.d_ff,
            num_heads=self.num_heads,
            encoder_layers=self.encoder_layers,
            decoder_layers=self.decoder_layers,
            dropout=self.dropout,
            max_position_embeddings=self.max_position_embeddings,
            pad_token_id=self.pad_token_id,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            decoder_start_token_id=self.decoder_start_token_id,
        )

    def prepare_config_and_inputs(self):
        # Ids from 3 up, then an eos at the end of every row: no padding inside a row, one eos where it belongs.
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size).clamp(3)
        input_ids[:, -1] = self.eos_token_id
        decoder_input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size).clamp(3)
        decoder_input_ids[:, 0] = self.decoder_start_token_id
        config = self.get_config()
        inputs_dict = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "decoder_input_ids": decoder_input_ids,
            "decoder_attention_mask": torch.ones_like(decoder_input_ids),
        }
        return config, inputs_dict

    def prepare_config_and_inputs_for_common(self):
        return self.prepare_config_and_inputs()

    def create_and_check_decoder_model_past_large_inputs(self, config, inputs_dict):
        """Decoding three more tokens from a cache gives the hidden states of a full pass over the longer target."""
        model = VanillaTransformerModel(config).to(torch_device).eval()
        input_ids, attention_mask = inputs_dict["input_ids"], inputs_dict["attention_mask"]
        decoder_input_ids = inputs_dict["decoder_input_ids"]
        with torch.no_grad():
            first = model(input_ids, attention_mask, decoder_input_ids=decoder_input_ids, use_cache=True)
            next_tokens = ids_tensor((self.batch_size, 3), config.vocab_size).clamp(3)
            full_ids = torch.cat([decoder_input_ids, next_tokens], dim=-1)
            encoder_outputs = (first.encoder_last_hidden_state,)
            from_scratch = model(
                attention_mask=attention_mask, encoder_outputs=encoder_outputs, decoder_input_ids=full_ids
            ).last_hidden_state
            from_cache = model(
                attention_mask=attention_mask,
                encoder_outputs=encoder_outputs,
                decoder_input_ids=next_tokens,
                cache=first.cache,
            ).last_hidden_state
        self.parent.assertEqual(from_cache.shape[1], next_tokens.shape[1])
        self.parent.assertTrue(torch.allclose(from_scratch[:, -3:], from_cache, atol=1e-3))


@require_torch
class VanillaTransformerModelTest(ModelTesterMixin, GenerationTesterMixin, PipelineTesterMixin, unittest.TestCase):
    all_model_classes = (VanillaTransformerModel, VanillaTransformerForConditionalGeneration) if is_torch_available() else ()
    pipeline_model_mapping = (
        {
            "feature-extraction": VanillaTransformerModel,
            "summarization": VanillaTransformerForConditionalGeneration,
            "text2text-generation": VanillaTransformerForConditionalGeneration,
            "translation": VanillaTransformerForConditionalGeneration,
        }
        if is_torch_available()
        else {}
    )
    is_encoder_decoder = True
    test_missing_keys = True

    def setUp(self):
        self.model_tester = VanillaTransformerModelTester(self)
        # The common tests tell a base model from a seq2seq LM by looking class names up in transformers' task
        # tables, which list built-in models only. For each test, the tables also name this model's classes, as
        # they would if it were built in (the Auto classes themselves find it through registration either way).
        for table, class_name in (
            (MODEL_MAPPING_NAMES, "VanillaTransformerModel"),
            (MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES, "VanillaTransformerForConditionalGeneration"),
        ):
            patcher = patch.dict(table, {VanillaTransformerConfig.model_type: class_name})
            patcher.start()
            self.addCleanup(patcher.stop)
        if ConfigTester is not None:
            self.config_tester = ConfigTester(self, config_class=VanillaTransformerConfig, has_text_modality=False)

    def test_config(self):
        if ConfigTester is None:
            self.skipTest(reason="this transformers checkout has no tests/utils/ for ConfigTester")
        self.config_tester.run_common_tests()

    def test_decoder_model_past_with_large_inputs(self):
        config, inputs_dict = self.model_tester.prepare_config_and_inputs()
        self.model_tester.create_and_check_decoder_model_past_large_inputs(config, inputs_dict)

    def is_pipeline_test_to_skip(self, *args, **kwargs):
        # The pipeline tests load tiny checkpoints and tokenizers from the Hub (tests/utils/tiny_model_summary.json),
        # none of which exists for this model.
        return True
