"""Quantising LISA's language model with bitsandbytes (8-bit LLM.int8 or 4-bit NF4, on CUDA or on the CPU), and back.

Exactly the language model's linear layers are quantised, but those its family keeps out
(`VlmFamily.unquantized_linears`); every other weight stays in the chosen precision (`check_quantized` checks it after
every load).
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn
from transformers import PretrainedConfig

QUANTIZATIONS = ("8bit", "4bit")
LANGUAGE_MODEL = "language_model"  # the module name of the LLM inside every family's VLM (and so inside LISA)
# Everything outside the language model stays unquantised — CLIP and the projector (the original loaded CLIP after
# quantising, so it stayed unquantised), SAM (the original skipped `visual_model`; its decoder reads weights
# directly), the [SEG] projection and `lm_head`. transformers matches a skip name from the start of a module's full
# name, so a bare "vision_tower" misses `vlm.model.vision_tower.…` and CLIP came out quantised; one pattern that
# matches every name not inside the language model holds for a LISA model and a base of any family alike (Qwen's
# vision transformer and patch merger, `model.visual`, stay unquantised as CLIP does).
NOT_QUANTIZED = [rf"(?!.*\b{LANGUAGE_MODEL}\.).*"]


def is_quantized_folder(version: str) -> bool:
    """Whether a model folder or hub id was saved with quantised weights (its config holds a `quantization_config`)."""
    config, _ = PretrainedConfig.get_config_dict(version)
    return "quantization_config" in config


def quantization_config(quantization: str, dtype: torch.dtype | None, unquantized: tuple[str, ...] = ()):
    """The `BitsAndBytesConfig` of "8bit" (LLM.int8) or "4bit" (NF4 with double quantisation and `dtype`
    compute, as the original's `--load_in_4bit`), quantising the language model only, but its linears named
    `unquantized` (the family's `unquantized_linears`).

    Raises:
        ValueError: an unknown kind.
        RuntimeError: bitsandbytes is not installed.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantisation {quantization!r}; choose from {', '.join(QUANTIZATIONS)}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise RuntimeError("8-bit / 4-bit loading needs bitsandbytes: pip install bitsandbytes")
    from transformers import BitsAndBytesConfig

    skip = NOT_QUANTIZED + list(unquantized)  # a bare name matches as the end of a module's name
    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype or torch.float32, llm_int8_skip_modules=skip,
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)


def quantization_kwargs(
    quantization: str | None, dtype: torch.dtype | None, device: torch.device | None, unquantized: tuple[str, ...] = ()
) -> dict:
    """`from_pretrained`'s arguments for `quantization` (see `quantization_config`): the config, and the device
    bitsandbytes quantises on."""
    if quantization is None:
        return {}
    device = torch.device(device or "cpu")
    where = (device.index or 0) if device.type == "cuda" else device.type
    return {"quantization_config": quantization_config(quantization, dtype, unquantized), "device_map": {"": where}}


def is_quantized_linear(module: nn.Module) -> bool:
    """A bitsandbytes `Linear8bitLt` / `Linear4bit` (checked by name: bitsandbytes is optional)."""
    return type(module).__name__ in ("Linear8bitLt", "Linear4bit")


def is_quantized_weight(tensor: torch.Tensor) -> bool:
    """A bitsandbytes-quantised weight: `Int8Params` or `Params4bit`."""
    return type(tensor).__name__ in ("Int8Params", "Params4bit")


def cast_unquantized(model: nn.Module, dtype: torch.dtype) -> None:
    """Every floating-point parameter and buffer but the quantised weights to `dtype`, in place.

    (`model.to(dtype)` is refused by transformers once a model is quantised.)
    """
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if param.is_floating_point() and not is_quantized_weight(param):
                param.data = param.data.to(dtype)
        for name, buffer in module.named_buffers(recurse=False):
            if buffer.is_floating_point():
                module._buffers[name] = buffer.to(dtype)


def check_quantized(model: nn.Module, quantization: str | None, unquantized: tuple[str, ...] = ()) -> None:
    """Checks that exactly the language model's linear layers are quantised (all of them but those named
    `unquantized`, nothing else), or none.

    Raises:
        RuntimeError: naming the first layer that is not as it should be.
    """
    for name, module in model.named_modules():
        if not (isinstance(module, nn.Linear) or is_quantized_linear(module)):
            continue
        in_language_model = f".{LANGUAGE_MODEL}." in f".{name}"
        should = quantization is not None and in_language_model and name.rpartition(".")[2] not in unquantized
        if is_quantized_linear(module) != should:
            state = "quantised" if is_quantized_linear(module) else "not quantised"
            raise RuntimeError(f"{name} came out {state} with quantisation {quantization}")


def dequantize(model: nn.Module, dtype: torch.dtype = torch.float32) -> None:
    """Replaces every bitsandbytes linear layer of `model` by an `nn.Linear` holding its dequantised weight in
    `dtype`, in place: the model the quantised one computes, in full precision (what merging a QLoRA run needs)."""
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse
    from transformers.integrations.bitsandbytes import dequantize_bnb_weight

    for name, module in list(model.named_modules()):
        if is_quantized_linear(module):
            quant_state = getattr(module.weight, "quant_state", None)
            if getattr(quant_state, "packing_format_for_cpu", False):
                # After a CPU forward in eval mode, bitsandbytes holds a 4-bit weight in its CPU kernel's layout;
                # back to the standard one (as bitsandbytes itself does before saving).
                module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(module.weight.data, quant_state)
            linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
            linear.weight = nn.Parameter(dequantize_bnb_weight(module.weight, getattr(module, "state", None)).to(dtype))
            if module.bias is not None:
                linear.bias = nn.Parameter(module.bias.data.to(dtype))
            model.set_submodule(name, linear)
    if (quantizer := getattr(model, "hf_quantizer", None)) is not None:
        quantizer.remove_quantization_config(model)  # a model loaded quantised would otherwise save as quantised
