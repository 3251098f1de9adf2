"""The model against transformers' MarianMTModel started from the same weights.

Marian is the same architecture (post-LN, scaled and tied embeddings, sinusoids) up to the order of the
sinusoid dimensions. Given Marian's weights and our interleaved position table, the two must compute the same
logits and, trained on the same batches with the same optimiser, the same losses and weights: any difference
in the forward or backward (the chunked label-smoothed loss, masks, the decoder shift) would show here. A gap
in translation quality between the two can then only come from the initial weights and the dropout draws,
which `benchmarks/bench_quality.py` measures over seeds.
"""

import pytest
import torch
import torch.nn.functional as F
from transformers import MarianConfig, MarianMTModel

from hf_vanilla_transformer import VanillaTransformerConfig, VanillaTransformerForConditionalGeneration
from hf_vanilla_transformer.convert_marian import LAYER_MODULES
from hf_vanilla_transformer.modeling_vanilla_transformer import sinusoid_table

SIZES = dict(vocab=60, d_model=32, d_ff=64, heads=4, layers=2)
MODULES = LAYER_MODULES  # Marian's layer module names -> ours


def marian_and_ours():
    torch.manual_seed(0)
    common = dict(vocab_size=SIZES["vocab"], d_model=SIZES["d_model"], pad_token_id=0, eos_token_id=2,
                  decoder_start_token_id=1, dropout=0.0, max_position_embeddings=64)  # fmt: skip
    marian = MarianMTModel(
        MarianConfig(
            **common,
            bos_token_id=1,
            encoder_ffn_dim=SIZES["d_ff"],
            decoder_ffn_dim=SIZES["d_ff"],
            encoder_attention_heads=SIZES["heads"],
            decoder_attention_heads=SIZES["heads"],
            encoder_layers=SIZES["layers"],
            decoder_layers=SIZES["layers"],
            activation_function="relu",
            scale_embedding=True,
            share_encoder_decoder_embeddings=True,
            tie_word_embeddings=True,
            forced_eos_token_id=None,
            attn_implementation="eager",
        )
    )
    ours = VanillaTransformerForConditionalGeneration(
        VanillaTransformerConfig(
            **common,
            bos_token_id=1,
            d_ff=SIZES["d_ff"],
            num_heads=SIZES["heads"],
            encoder_layers=SIZES["layers"],
            decoder_layers=SIZES["layers"],
        )
    )
    names = {"model.encoder.embed_tokens.weight": "model.shared.weight"}  # ours -> Marian's
    for name in marian.state_dict():
        parts = name.split(".")  # model.encoder.layers.0.self_attn.q_proj.weight
        if len(parts) > 4 and parts[2] == "layers":
            names[".".join(["model", parts[1], "layers", parts[3], MODULES[parts[4]], *parts[5:]])] = name
    marian_weights = marian.state_dict()
    weights = {ours_name: marian_weights[name] for ours_name, name in names.items()}
    result = ours.load_state_dict(weights, strict=False)
    assert set(result.missing_keys) <= {"model.decoder.embed_tokens.weight", "lm_head.weight"}  # tied to the above
    table = sinusoid_table(64, SIZES["d_model"])
    with torch.no_grad():
        marian.model.encoder.embed_positions.weight.copy_(table)
        marian.model.decoder.embed_positions.weight.copy_(table)
    return marian, ours, names


def batches(count: int):
    """Right-padded source and target batches (the target is the source's first tokens): two batches in turn,
    so that a few steps learn them."""
    generator = torch.Generator().manual_seed(1)
    fixed = []
    for _ in range(2):
        ids = torch.randint(4, SIZES["vocab"], (8, 12), generator=generator)
        lengths = torch.randint(4, 12, (8,), generator=generator)
        mask = torch.arange(12)[None] < lengths[:, None]
        ids = ids.masked_fill(~mask, 0)
        labels = ids[:, :9].masked_fill(~mask[:, :9], -100)
        fixed.append({"input_ids": ids, "attention_mask": mask.long(), "labels": labels})
    for step in range(count):
        yield fixed[step % 2]


def test_same_weights_give_marians_logits():
    marian, ours, _ = marian_and_ours()
    batch = next(batches(1))
    with torch.no_grad():
        expected = marian.eval()(**batch).logits
        got = ours.eval()(**batch).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_trains_like_marian_from_the_same_weights(label_smoothing):
    marian, ours, names = marian_and_ours()
    marian.train()
    ours.train()  # in training the loss is the chunked one (loss.py)
    optimizers = [torch.optim.Adam(m.parameters(), lr=3e-3, betas=(0.9, 0.98), eps=1e-9) for m in (marian, ours)]
    losses = {"marian": [], "ours": []}
    for batch in batches(30):
        for name, model, optimizer in zip(losses, (marian, ours), optimizers):
            output = model(**batch) if name == "marian" else model(**batch, label_smoothing=label_smoothing)
            if name == "marian":  # Marian's own loss has no smoothing: the Trainer's label smoother, written out
                logits = output.logits
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1),
                                       label_smoothing=label_smoothing)  # fmt: skip
            else:
                loss = output.loss
            optimizer.zero_grad()
            loss.backward()
            losses[name].append(loss.item())
        if len(losses["ours"]) == 1:  # Adam hides a gradient's scale, so the first gradients are compared directly
            marian_parameters = dict(marian.named_parameters())
            for ours_name, parameter in ours.named_parameters():
                expected = marian_parameters[names[ours_name]].grad
                torch.testing.assert_close(parameter.grad, expected, rtol=1e-4, atol=1e-6, msg=ours_name)
        for optimizer in optimizers:
            optimizer.step()
    assert losses["marian"][-1] < losses["marian"][0] - 0.3  # the task is learnt, so the weights really moved
    torch.testing.assert_close(torch.tensor(losses["ours"]), torch.tensor(losses["marian"]), rtol=1e-4, atol=1e-4)
    ours_fc1 = ours.model.decoder.layers[1].feed_forward.fc1.weight
    torch.testing.assert_close(ours_fc1, marian.model.decoder.layers[1].fc1.weight, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.lm_head.weight, marian.lm_head.weight, rtol=1e-4, atol=1e-4)
