"""LISA's mask losses (reference/lisa.md §2.8).

The original computes, per image, the sum of per-mask losses divided by the image's mask count, multiplies
that back by the count, sums over images and divides by the batch's mask count: a plain average over all
masks of the micro-batch, which is what these functions compute directly.
"""

import torch
import torch.nn.functional as F

DICE_SCALE = 1000.0
DICE_EPS = 1e-6
COUNT_EPS = 1e-8


def mask_bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sigmoid cross-entropy, mean over pixels of each mask, then mean over masks.

    Args:
        logits, targets: (n, P) mask logits and {0, 1} targets, one flattened mask per row.
    """
    per_mask = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none").mean(1)
    return per_mask.sum() / (per_mask.shape[0] + COUNT_EPS)


def mask_dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 - Dice per mask (LISA's scale 1000 and eps 1e-6), mean over masks.

    Args:
        logits, targets: (n, P) mask logits and {0, 1} targets, one flattened mask per row.
    """
    probs, targets = logits.float().sigmoid(), targets.float()
    numerator = 2 * (probs / DICE_SCALE * targets).sum(1)
    denominator = (probs / DICE_SCALE).sum(1) + (targets / DICE_SCALE).sum(1)
    per_mask = 1 - (numerator + DICE_EPS) / (denominator + DICE_EPS)
    return per_mask.sum() / (per_mask.shape[0] + COUNT_EPS)
