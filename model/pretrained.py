"""Loading a pretrained part of LISA (a vision-language base, SAM, SAM 2) whose checkpoint must cover it.

`from_pretrained` fills every weight the checkpoint lacks with a fresh random tensor and only logs it; a base whose
folder lost a shard, or whose config unties a head its checkpoint does not hold, would then train from noise in
silence. Weights that are legitimately absent — the second name of a tied pair, such as a tied `lm_head` — are not
missing: transformers ties them before it reports.
"""

from __future__ import annotations

from transformers import PreTrainedModel


def load_pretrained(model_class: type[PreTrainedModel], path_or_id: str, **kwargs) -> PreTrainedModel:
    """`model_class.from_pretrained(path_or_id, **kwargs)`, refused when the checkpoint lacks weights of the model.

    Raises:
        ValueError: naming the folder (or hub id) and every missing weight.
    """
    model, info = model_class.from_pretrained(path_or_id, output_loading_info=True, **kwargs)
    missing = sorted(map(str, info["missing_keys"]))
    if missing:
        raise ValueError(
            f"{path_or_id}: the checkpoint lacks {len(missing)} weight(s) of the {model_class.__name__} its config "
            f"describes, which would start from random values: {missing}"
        )
    return model
