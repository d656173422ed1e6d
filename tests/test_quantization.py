"""bitsandbytes quantisation on the CPU: which layers are quantised, QLoRA training under DeepSpeed (resume, merge
into a full-precision folder), and the bad inputs around it.

Answers and masks of quantised models against unquantised ones: tests/test_chat.py (the chat script) and
tests/test_convert_lisa.py (a released-layout checkpoint, with NF4 / int8 rounding computed independently).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest
import torch
from torch import nn

import merge_lora_weights
import model.quantization
from model.loading import load_for_inference, load_lisa, save_lisa
from model.peft_setup import setup_trainable
from tests.lisa_fixtures import final_weights, run, toy_batch, train_command
from train_ds import parse_args
from utils.deepspeed_config import deepspeed_config

QUANTIZED_TYPES = {"8bit": "Linear8bitLt", "4bit": "Linear4bit"}


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    subprocess.run([sys.executable, "-m", "datasets.toy", "--out", str(out)], check=True, capture_output=True)
    return out


def linear_census(model: nn.Module) -> Counter:
    """(part, layer type) of every linear layer; part = the LISA component it belongs to."""
    parts = ("language_model", "vision_tower", "multi_modal_projector", "visual", "lm_head", "sam", "text_hidden_fcs")
    census = Counter()
    for name, module in model.named_modules():
        kind = type(module).__name__
        if isinstance(module, nn.Linear) or kind in QUANTIZED_TYPES.values():
            census[next(part for part in parts if part in name.split(".")), kind] += 1
    return census


def check_only_the_language_model_quantised(lisa_dir, quantization: str, device: torch.device) -> nn.Module:
    """Loads the tiny LISA in `lisa_dir` quantised on `device` and checks that exactly the language model's linear
    layers came out quantised (Qwen's vision transformer and patch merger, `visual`, stay unquantised as CLIP and
    the projector do). Returns the model."""
    unquantised = linear_census(load_lisa(str(lisa_dir))[0])
    lisa, _ = load_for_inference(str(lisa_dir), "bf16", quantization, device=device)
    quantised = linear_census(lisa)
    # The tiny LLMs: 2 layers x (q, k, v, o, gate, up, down); Qwen3.5's: 2 such layers and 2 linear-attention layers x
    # (in_proj_qkv, in_proj_z, out_proj, gate, up, down), their one-output-per-head in_proj_a / in_proj_b unquantised.
    expected, kept = {"qwen3_5": (26, 4)}.get(lisa.vlm_family.name, (14, 0))
    assert quantised[("language_model", QUANTIZED_TYPES[quantization])] == expected
    assert quantised[("language_model", "Linear")] == kept
    assert unquantised[("language_model", "Linear")] == expected + kept
    assert {key: n for key, n in quantised.items() if key[0] != "language_model"} == {
        key: n for key, n in unquantised.items() if key[0] != "language_model"
    }
    assert all(kind == "Linear" for part, kind in quantised if part != "language_model")
    # Every other weight in the asked precision (the saved tiny model is fp32), the quantised ones in int8 / uint8.
    dtypes = Counter(p.dtype for p in lisa.parameters())
    assert set(dtypes) == {torch.bfloat16, torch.int8 if quantization == "8bit" else torch.uint8}
    assert dtypes[torch.int8 if quantization == "8bit" else torch.uint8] == expected
    return lisa


@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_exactly_the_language_models_linears_are_quantised(tiny_base, quantization):
    """For every pair of families, on the CPU."""
    check_only_the_language_model_quantised(tiny_base.lisa_dir, quantization, torch.device("cpu"))


def test_a_skip_list_that_misses_clip_is_caught(tiny_dir, monkeypatch):
    # The skip list this project had: transformers matches names from the start, so "vision_tower" skipped nothing.
    monkeypatch.setattr(model.quantization, "NOT_QUANTIZED", ["sam", "text_hidden_fcs", "vision_tower", "lm_head"])
    with pytest.raises(RuntimeError, match="vision_tower.* came out quantised"):
        load_lisa(str(tiny_dir / "lisa"), dtype=torch.float32, quantization="4bit")


def test_optimizer_needs_no_compiler():
    config = deepspeed_config(2, 1, 1e-4)
    assert config["optimizer"]["params"]["torch_adam"] and config["optimizer"]["params"]["fused"]
    assert "torch_adam" not in deepspeed_config(2, 1, 1e-4, torch_adam=False)["optimizer"]["params"]
    assert not parse_args([]).deepspeed_adam and parse_args(["--deepspeed_adam"]).deepspeed_adam


def test_fp16_training_on_the_cpu_is_a_usage_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("fp16 trains on CUDA")
    with pytest.raises(SystemExit):
        parse_args(["--load_in_4bit", "--precision", "fp16"])
    assert "cannot train in fp16" in capsys.readouterr().err


def test_a_quantised_folder_cannot_be_merged(tiny_dir, tmp_path):
    quantised, processor = load_lisa(str(tiny_dir / "lisa"), dtype=torch.float32, quantization="4bit")
    save_lisa(quantised, processor, str(tmp_path / "q4"))
    with pytest.raises(SystemExit, match="saved quantised, not a training checkpoint"):
        merge_lora_weights.main(["--weight", str(tmp_path / "q4"), "--save_path", str(tmp_path / "out"),
                                 "--version", str(tiny_dir / "lisa")])
    with pytest.raises(SystemExit, match="base .* was saved quantised"):
        merge_lora_weights.main(["--weight", str(tiny_dir / "lisa"), "--save_path", str(tmp_path / "out"),
                                 "--version", str(tmp_path / "q4")])
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_qlora_training_resumes_and_merges_to_full_precision(tiny_dir, toy_dir, tmp_path):
    """`train_ds.py --load_in_4bit` under DeepSpeed: a run stopped after one epoch and resumed ends with the weights of
    an uninterrupted run; the merge is an ordinary full-precision folder computing what the trained QLoRA model does."""
    flags = ("--load_in_4bit", "--steps_per_epoch", "3", "--no_eval")
    reference = tmp_path / "reference"
    run(train_command(tiny_dir, toy_dir, reference, *flags, "--epochs", "2"))
    resumed = tmp_path / "resumed"
    run(train_command(tiny_dir, toy_dir, resumed, *flags, "--epochs", "1"))
    assert "resumed from" in run(train_command(tiny_dir, toy_dir, resumed, *flags, "--epochs", "2"))
    expected, actual = final_weights(reference / "ckpt_model"), final_weights(resumed / "ckpt_model")
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name

    merged = tmp_path / "merged"
    run([sys.executable, "merge_lora_weights.py", "--weight", str(reference / "ckpt_model"), "--save_path", str(merged),
         "--precision", "fp32"])
    assert "quantization_config" not in json.loads((merged / "config.json").read_text())
    full, processor = load_lisa(str(merged))
    assert not any(type(m).__name__ in QUANTIZED_TYPES.values() for m in full.modules())
    assert {p.dtype for p in full.parameters()} == {torch.float32}

    # The trained model as it ran: the quantised base under LoRA, the trained tensors from the checkpoint.
    args = json.loads((reference / "ckpt_model" / "train_args.json").read_text())
    trained, _ = model.loading.load_for_training(args["version"], args["vision_pretrained"], out_dim=args["out_dim"],
                                                 dtype=torch.float32, quantization="4bit")
    trained = setup_trainable(trained)
    state = merge_lora_weights.read_checkpoint(str(reference / "ckpt_model"), None)
    merge_lora_weights.load_trained(trained, state, "reference")
    assert any(name.endswith("lora_B.default.weight") and state[name].abs().sum() > 0 for name in state)  # LoRA moved
    batch = toy_batch(processor)
    with torch.no_grad():
        want, got = trained.eval()(**batch, return_logits=True), full.eval()(**batch, return_logits=True)
    torch.testing.assert_close(got.logits, want.logits, atol=1e-3, rtol=1e-3)
    for w, g in zip(want.pred_masks, got.pred_masks):
        torch.testing.assert_close(g, w, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("tiny_base", [("qwen3_5", "sam2")], indirect=True)
def test_a_4bit_qwen3_5_answers_on_the_cpu(tiny_base):
    """Its in_proj_a / in_proj_b (one output per head: 4 here, 16 in Qwen3.5-0.8B) stay unquantised: bitsandbytes'
    4-bit CPU kernel on AVX512-BF16 hosts fails on linears whose outputs are no multiple of 32."""
    from tests.test_model import QUESTION, generate_inputs, random_image

    lisa, processor = load_for_inference(str(tiny_base.lisa_dir), "fp32", "4bit", device=torch.device("cpu"))
    inputs = generate_inputs(processor, [random_image(0)], [QUESTION])
    (prediction,) = lisa.eval().generate(**inputs, max_new_tokens=4)
    assert 1 <= len(prediction.token_ids) <= 4
