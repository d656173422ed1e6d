"""LISA's mask losses: sigmoid cross-entropy and Dice, as the original's `model/LISA.py` computes them.

The original computes, per image, the sum of per-mask losses divided by the image's mask count, multiplies
that back by the count, sums over images and divides by the batch's mask count: a plain average over all
masks of the micro-batch. So the functions here return one value per mask and `mean_over_masks` averages
them; images of different sizes simply contribute their masks' values.
"""

import torch
import torch.nn.functional as F

IGNORE_LABEL = -100  # label of a token that takes no loss (prompt, image, padding), as in transformers
DICE_SCALE = 1000.0
DICE_EPS = 1e-6
COUNT_EPS = 1e-8


def sigmoid_ce_per_mask(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sigmoid cross-entropy averaged over the pixels of each mask.

    Args:
        logits, targets: (n, H, W) mask logits and {0, 1} targets.

    Returns:
        (n,) losses.
    """
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none").flatten(1).mean(1)


def dice_per_mask(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 - Dice of each mask, with LISA's scale 1000 and eps 1e-6.

    Args:
        logits, targets: (n, H, W) mask logits and {0, 1} targets.

    Returns:
        (n,) losses.
    """
    probs, targets = logits.float().sigmoid().flatten(1), targets.float().flatten(1)
    numerator = 2 * (probs / DICE_SCALE * targets).sum(1)
    denominator = (probs / DICE_SCALE).sum(1) + (targets / DICE_SCALE).sum(1)
    return 1 - (numerator + DICE_EPS) / (denominator + DICE_EPS)


def mean_over_masks(per_mask: torch.Tensor) -> torch.Tensor:
    """Average over all masks of the batch; 0 (still in the graph) when there are none."""
    return per_mask.sum() / (per_mask.shape[0] + COUNT_EPS)


def next_token_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where the text loss is read: the token `labels[r, t + 1]` is predicted at position (r, t).

    Args:
        labels: (R, L) with `IGNORE_LABEL` where no loss is taken.

    Returns:
        (rows, columns) (n,) each, the positions predicting a labelled token (row-major), and (n,) those tokens.
    """
    rows, columns = (labels[:, 1:] != IGNORE_LABEL).nonzero(as_tuple=True)
    return rows, columns, labels[rows, columns + 1]


def causal_lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, mean over the labelled tokens of the batch.

    Args:
        logits: (n, V) the logits at the positions of `next_token_targets`; targets: (n,) its tokens.

    Returns:
        the mean; 0 when n is 0, still in the graph (DeepSpeed expects every trained weight to get a gradient). The
        count is read from the shape, so no value is copied back from the device.
    """
    return F.cross_entropy(logits.float(), targets, reduction="sum") / max(targets.shape[0], 1)
