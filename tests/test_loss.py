"""The fused pre-softmax projection + label-smoothed cross-entropy against the plain one on the full logits."""

import pytest
import torch

from hf_vanilla_transformer.loss import MIN_BLOCK_ROWS, ChunkedLinearCrossEntropy, block_rows_for, linear_cross_entropy


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("block_rows", [1, 5, 64])
def test_chunked_loss_matches_cross_entropy_of_the_full_logits(label_smoothing, block_rows):
    # 23 rows in blocks of 1, 5 (a ragged last block) or one block; rows labelled -100 add nothing.
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(23, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 11, (23,), generator=generator)
    labels[[2, 7, 8]] = -100
    total = ChunkedLinearCrossEntropy.apply(hidden, weight, labels, label_smoothing, block_rows)
    (3.0 * total).backward()  # a non-unit upstream gradient must scale both gradients
    chunked = (total.detach(), hidden.grad.clone(), weight.grad.clone())

    hidden.grad, weight.grad = None, None
    plain = torch.nn.functional.cross_entropy(
        hidden @ weight.T, labels, ignore_index=-100, label_smoothing=label_smoothing, reduction="sum"
    )
    (3.0 * plain).backward()
    torch.testing.assert_close(chunked[0], plain.detach())
    torch.testing.assert_close(chunked[1], hidden.grad)
    torch.testing.assert_close(chunked[2], weight.grad)


def test_a_block_of_logits_holds_no_more_numbers_than_the_hidden_states():
    assert block_rows_for(4096, 512, 37000) == MIN_BLOCK_ROWS  # a large vocabulary: the floor
    rows = block_rows_for(20000, 1024, 8000)  # a narrow one: blocks grow with the batch
    assert rows * 8000 >= 20000 * 1024 > (rows - 1) * 8000


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_linear_cross_entropy_is_the_mean_over_labelled_positions(label_smoothing):
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(3, 200, 6, generator=generator, dtype=torch.float64, requires_grad=True)  # 600 rows in blocks of 400
    weight = torch.randn(9, 6, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 9, (3, 200), generator=generator)
    labels[0, 150:] = -100
    plain = torch.nn.functional.cross_entropy(
        (hidden @ weight.T).reshape(-1, 9), labels.reshape(-1), label_smoothing=label_smoothing
    )
    torch.testing.assert_close(linear_cross_entropy(hidden, weight, labels, label_smoothing), plain)
    summed = plain * (labels != -100).sum()
    torch.testing.assert_close(linear_cross_entropy(hidden, weight, labels, label_smoothing, 1000), summed / 1000)
