"""The GPU's side of the project on the tiny bases, marked `cuda` (skipped without a CUDA GPU; `bash
benchmarks/cuda_check.sh` runs them with the benchmarks on a GPU machine): DeepSpeed bf16 training with gradient
checkpointing, resumed and merged, for every family of vision-language model; QLoRA steps; chat and evaluation in bf16
and fp16, and 4-bit / 8-bit loading onto the GPU; attention through SDPA and, where the flash_attn package is
installed, FlashAttention-2.

The flows and their checks are the CPU tests' own (tests/test_train.py, test_chat.py, test_eval.py,
test_quantization.py), here in the precisions and on the device a GPU user trains and answers with.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

import eval_reasonseg
from datasets.hybrid import build_val_dataset
from model.evaluation import evaluate
from model.loading import load_lisa
from model.quantization import check_quantized
from tests.test_chat import check_answers_as_fp32, files, seg_model_dir  # noqa: F401 (fixtures)
from tests.test_eval import data_dir, seg_model  # noqa: F401 (fixtures)
from tests.test_quantization import QUANTIZED_TYPES, check_only_the_language_model_quantised
from tests.lisa_fixtures import REPO, env, final_weights, run
from tests.test_train import through_the_scripts, toy_dir, train_and_resume  # noqa: F401 (fixtures)

needs_flash_attn = pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None,
                                      reason="the flash_attn package is not installed")
ATTENTION = ["sdpa", pytest.param("flash_attention_2", marks=needs_flash_attn)]
# Per sample, how far a half-precision evaluation's IoU may be from fp32's: the masks are the same but for pixels
# where the random tiny SAM's logits are within rounding of 0 (on the CPU: at most 0.0007 in bf16, 0.002 in fp16).
HALF_PRECISION_IOU = 0.02


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.parametrize("tiny_base, attention", [
    pytest.param(("llava", "sam"), "sdpa", id="llava+sam-sdpa"),
    pytest.param(("qwen2_5_vl", "sam2"), "sdpa", id="qwen2_5_vl+sam2-sdpa"),
    pytest.param(("qwen3_vl", "sam2"), "sdpa", id="qwen3_vl+sam2-sdpa"),
    # One family with FlashAttention-2: a whole training flow per family and kernel would not fit the GPU check's time.
    pytest.param(("qwen2_5_vl", "sam2"), "flash_attention_2", id="qwen2_5_vl+sam2-flash_attention_2",
                 marks=needs_flash_attn),
], indirect=["tiny_base"])
def test_bf16_training_resumes_merges_and_answers(tiny_base, toy_dir, tmp_path, attention):
    """DeepSpeed bf16 training with gradient checkpointing on the GPU, resumed; the bf16 merge answers as the unmerged
    model; evaluation and chat of the merged model in bf16."""
    through_the_scripts(tiny_base, toy_dir, tmp_path, "bf16", gradient_checkpointing=True,
                        model_flags=("--attn_implementation", attention))


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.parametrize("tiny_base", [("llava", "sam")], indirect=True, ids="+".join)
def test_qlora_steps_resume_and_merge(tiny_base, toy_dir, tmp_path):
    """`--load_in_4bit` under DeepSpeed on the GPU in bf16: LoRA trains on the NF4 language model, the run resumes,
    and the merge is an unquantised folder."""
    ckpt_dir = train_and_resume(tiny_base, toy_dir, tmp_path / "run", "--load_in_4bit", "--precision", "bf16",
                                "--attn_implementation", "sdpa", gradient_checkpointing=True)
    weights = final_weights(ckpt_dir)
    lora_b = [tensor for name, tensor in weights.items() if name.endswith("lora_B.default.weight")]
    assert lora_b and any(tensor.abs().sum() > 0 for tensor in lora_b)  # LoRA's B starts at 0: it trained
    assert all(torch.isfinite(tensor).all() for tensor in weights.values() if tensor.is_floating_point())
    merged = tmp_path / "merged"
    run([sys.executable, "merge_lora_weights.py", "--weight", str(ckpt_dir), "--save_path", str(merged),
         "--precision", "bf16"])
    assert "quantization_config" not in json.loads((merged / "config.json").read_text())
    model, _ = load_lisa(str(merged), dtype=torch.bfloat16)
    assert not any(type(m).__name__ in QUANTIZED_TYPES.values() for m in model.modules())


@pytest.mark.cuda
@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_quantised_loading_onto_the_gpu(tiny_base, quantization):
    lisa = check_only_the_language_model_quantised(tiny_base.lisa_dir, quantization, torch.device("cuda", 0))
    assert {p.device.type for p in lisa.parameters()} == {"cuda"}
    check_quantized(lisa, quantization)  # what loading checks


@pytest.mark.cuda
@pytest.mark.parametrize("attention", ATTENTION)
@pytest.mark.parametrize("flags", [("--precision", "bf16"), ("--precision", "fp16"), ("--load_in_8bit", "--precision", "bf16"),
                                   ("--load_in_4bit", "--precision", "bf16")],
                         ids=["bf16", "fp16", "8bit", "4bit"])
def test_chat_answers_as_in_fp32(seg_model_dir, files, capsys, flags, attention):  # noqa: F811 (fixtures)
    check_answers_as_fp32(seg_model_dir, files, capsys, *flags, "--attn_implementation", attention)


@pytest.mark.cuda
@pytest.mark.parametrize("attention", ATTENTION)
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_evaluation_scores_as_in_fp32(seg_model, tiny_dir, data_dir, tmp_path, precision, attention):  # noqa: F811
    """eval_reasonseg.py in half precision gives each sample the IoU fp32 gives it, up to rounding."""
    dataset = build_val_dataset(data_dir, "ReasonSeg|val")
    reference = evaluate(*seg_model, dataset, mode="generate", max_new_tokens=4, progress=False).summary["per_sample"]
    output = tmp_path / "eval.json"
    eval_reasonseg.main(["--version", str(tiny_dir / "seg_once"), "--dataset_dir", data_dir, "--precision", precision,
                         "--attn_implementation", attention, "--mode", "generate", "--max_new_tokens", "4",
                         "--batch_size", "2", "--workers", "0", "--output", str(output)])
    per_sample = json.loads(output.read_text())["per_sample"]
    assert per_sample.keys() == reference.keys()
    for key, iou in reference.items():
        assert per_sample[key] == pytest.approx(iou, abs=HALF_PRECISION_IOU), key


@pytest.mark.slow
def test_the_cuda_tests_collect():
    """Without a GPU every test above is skipped, so a broken import, parametrisation or a missing `cuda` mark would
    wait for a GPU machine to show: each must at least collect under `pytest --collect-only -m cuda`."""
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "cuda", "-p", "no:cacheprovider", __file__]
    result = subprocess.run(command, cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    collected = {line.split("::")[1].split("[")[0] for line in result.stdout.splitlines() if "::" in line}
    assert collected == {name for name in globals() if name.startswith("test_")} - {"test_the_cuda_tests_collect"}
