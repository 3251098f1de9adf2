"""§5.4's label-smoothed cross-entropy: on the logits, and fused with §3.4's pre-softmax projection, a block of
target positions at a time, so that the (tokens x vocabulary) logits are never held whole in training.

This file imports only torch: a saved model folder carries it beside the modeling file.
"""

from __future__ import annotations

import torch

# The products of a block stay large enough to run at full speed on any device below this many rows.
MIN_BLOCK_ROWS = 128


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Sum over target positions of the label-smoothed cross-entropy of `hidden @ weight.T`, `block_rows` rows
    at a time. Each block's gradient, softmax - ((1 - eps) one_hot + eps / vocab), is formed and multiplied
    back into the hidden-state and weight gradients at once, so no (tokens x vocab) tensor outlives its block
    and the matmul FLOPs equal the plain path's. Rows labelled -100 add nothing. `bias` (vocab,), if given, is a
    constant added to every row's logits (it gets no gradient)."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, label_smoothing: float, block_rows: int, bias=None):
        vocab = weight.shape[0]
        accumulate = torch.promote_types(hidden.dtype, torch.float32)  # half-precision logits are summed in float32
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if want_hidden else None  # every block writes its rows
        grad_weight = torch.zeros(weight.shape, dtype=accumulate, device=weight.device) if want_weight else None
        total = torch.zeros((), dtype=accumulate, device=hidden.device)
        for start in range(0, hidden.shape[0], block_rows):
            rows = slice(start, start + block_rows)
            target = labels[rows]
            keep = target != -100
            target = target.clamp(min=0).unsqueeze(1)  # (block, 1)
            logits = (hidden[rows] @ weight.T).to(accumulate)  # (block, vocab)
            if bias is not None:
                logits += bias
            log_z = torch.logsumexp(logits, dim=-1)
            nll = log_z - logits.gather(1, target).squeeze(1)
            if label_smoothing:
                # -mean_v log p_v = log Z - mean_v logit_v
                nll = (1.0 - label_smoothing) * nll + label_smoothing * (log_z - logits.mean(dim=-1))
            total += torch.where(keep, nll, 0.0).sum()
            if want_hidden or want_weight:
                probs = logits.sub_(log_z.unsqueeze(1)).exp_()  # softmax, in place of the logits
                if label_smoothing:
                    probs.sub_(label_smoothing / vocab)
                probs.scatter_add_(1, target, probs.new_full(target.shape, label_smoothing - 1.0))
                probs.mul_(keep.unsqueeze(1))
                probs = probs.to(hidden.dtype)
                if want_hidden:
                    grad_hidden[rows] = probs @ weight
                if want_weight and grad_weight.dtype == hidden.dtype:
                    grad_weight.addmm_(probs.T, hidden[rows])
                elif want_weight:
                    grad_weight += probs.T @ hidden[rows]
        ctx.weight_dtype = weight.dtype
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_total.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_total).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None, None


def block_rows_for(rows: int, hidden_size: int, vocab_size: int) -> int:
    """Rows per block such that a block's logits hold no more numbers than the hidden states themselves (the
    loss then needs at most about the memory of its input, on any device), and never fewer than MIN_BLOCK_ROWS."""
    return max(MIN_BLOCK_ROWS, -(-rows * hidden_size // vocab_size))


def linear_cross_entropy(
    hidden_states: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    label_smoothing: float = 0.0,
    num_items_in_batch: int | torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean label-smoothed cross-entropy of `hidden_states @ weight.T (+ bias)` against `labels` (-100: no loss),
    without the whole logits tensor. `num_items_in_batch` replaces the count of labelled positions as the divisor
    (the Trainer passes the count over all accumulated batches and processes)."""
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])  # (tokens, d_model)
    labels = labels.reshape(-1).to(hidden.device)
    block_rows = block_rows_for(hidden.shape[0], hidden.shape[1], weight.shape[0])
    bias = bias.reshape(-1) if bias is not None else None
    total = ChunkedLinearCrossEntropy.apply(hidden, weight, labels, label_smoothing, block_rows, bias)
    return total / (num_items_in_batch if num_items_in_batch is not None else (labels != -100).sum())


def cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    label_smoothing: float = 0.0,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean label-smoothed cross-entropy of `logits` (..., vocab) against `labels` (-100: no loss), in float32;
    `num_items_in_batch` as in `linear_cross_entropy`."""
    loss = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        labels.reshape(-1).to(logits.device),
        ignore_index=-100,
        label_smoothing=label_smoothing,
        reduction="sum" if num_items_in_batch is not None else "mean",
    )
    return loss / num_items_in_batch if num_items_in_batch is not None else loss
