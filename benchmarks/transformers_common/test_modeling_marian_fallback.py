"""The same common suites on MarianMTModel, for a transformers tests tree without tests/models/marian/.

`benchmarks/transformers_common_tests.py` copies this file in as tests/models/marian/test_modeling_marian.py only
where transformers' own file is missing (its JSON then says `marian_tester: fallback`). The sizes match
test_modeling_vanilla_transformer.py's tester, so both models meet the suites at the same scale.
"""

import unittest

from transformers import is_torch_available
from transformers.testing_utils import require_torch

from ...generation.test_utils import GenerationTesterMixin
from ...test_modeling_common import ModelTesterMixin, ids_tensor

if is_torch_available():
    import torch

    from transformers import MarianConfig, MarianModel, MarianMTModel


class MarianFallbackModelTester:
    def __init__(self, parent, batch_size=13, seq_length=7, vocab_size=99, d_model=16, num_heads=4, layers=2):
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.is_training = True
        self.vocab_size = vocab_size
        self.hidden_size = d_model
        self.num_attention_heads = num_heads
        self.num_hidden_layers = layers
        self.encoder_seq_length = self.decoder_seq_length = seq_length
        self.key_length = self.decoder_key_length = seq_length
        self.pad_token_id, self.eos_token_id, self.decoder_start_token_id = 1, 0, 3

    def get_config(self):
        return MarianConfig(
            vocab_size=self.vocab_size,
            d_model=self.hidden_size,
            encoder_layers=self.num_hidden_layers,
            decoder_layers=self.num_hidden_layers,
            encoder_attention_heads=self.num_attention_heads,
            decoder_attention_heads=self.num_attention_heads,
            encoder_ffn_dim=4,
            decoder_ffn_dim=4,
            max_position_embeddings=20,
            pad_token_id=self.pad_token_id,
            eos_token_id=self.eos_token_id,
            decoder_start_token_id=self.decoder_start_token_id,
        )

    def prepare_config_and_inputs_for_common(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size).clamp(4)
        input_ids[:, -1] = self.eos_token_id
        decoder_input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size).clamp(4)
        decoder_input_ids[:, 0] = self.decoder_start_token_id
        inputs_dict = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "decoder_input_ids": decoder_input_ids,
            "decoder_attention_mask": torch.ones_like(decoder_input_ids),
        }
        return self.get_config(), inputs_dict


@require_torch
class MarianModelTest(ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    all_model_classes = (MarianModel, MarianMTModel) if is_torch_available() else ()
    is_encoder_decoder = True

    def setUp(self):
        self.model_tester = MarianFallbackModelTester(self)
