"""Training and export: trainable parameters, DeepSpeed runs (1 and 2 processes, deepspeed and torchrun
launchers), exact kill-and-resume, atomic checkpoints, merging, fine-tuning a LISA folder, and a toy run that learns.

The launched runs use the tiny base and the toy corpus, one thread per process (2 cores on CI).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from model.loading import PRECISIONS, load_for_training, load_lisa
from model.peft_setup import FULLY_TRAINED, lora_target_regex, setup_trainable
from datasets.collate import LisaCollator
from datasets.hybrid import HybridDataset
from model.processing import LisaProcessor
from tests.lisa_fixtures import BIN, REPO, env, final_weights, free_port, run, toy_batch, train_command
from train_ds import parse_args
from utils.checkpoint import read_best, read_pointer, save_checkpoint, step_tag
from utils.distributed import use_local_device
from utils.run_folder import lock_run_folder



# ------------------------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    subprocess.run([sys.executable, "-m", "datasets.toy", "--out", str(out)], cwd=REPO, check=True, capture_output=True)
    return out


# ------------------------------------------------------------------------------------- trainable parameters
# LoRA's targets by family: LISA's q_proj and v_proj; Qwen3.5's linear-attention layers have neither, and their fused
# query/key/value projection takes LoRA in their place.
LORA_TARGETS = {"qwen3_5": ("q_proj", "v_proj", "in_proj_qkv")}


def expected_trainable(name: str, train_sam_encoder: bool, vlm: str = "llava") -> bool:
    if "lora_" in name:
        return ".language_model." in name and any(f".{t}." in name for t in LORA_TARGETS.get(vlm, ("q_proj", "v_proj")))
    return any(part in name for part in FULLY_TRAINED) or (train_sam_encoder and "sam.vision_encoder" in name)


def test_lora_regex_only_hits_the_language_model():
    pattern = lora_target_regex("q_proj,v_proj")
    assert re.fullmatch(pattern, "vlm.model.language_model.layers.0.self_attn.q_proj")
    assert not re.fullmatch(pattern, "vlm.model.vision_tower.encoder.layers.0.self_attn.q_proj")
    assert not re.fullmatch(pattern, "sam.mask_decoder.transformer.layers.0.self_attn.v_proj")


# Trainable, but with no or a zero gradient on the first step: LoRA's A while B is still zero (its initial value), and
# the parts of SAM's decoder that single-mask output never uses (masks 1-3 and the IoU head; SAM 2's object-score
# head), SAM's zero-initialised relative-position tables.
NO_GRADIENT_YET = ("lora_A", "rel_pos_", "output_hypernetworks_mlps.1.", "output_hypernetworks_mlps.2.",
                   "output_hypernetworks_mlps.3.", "iou_prediction_head", "iou_token", "obj_score_token",
                   "pred_obj_score_head")


@pytest.mark.parametrize("train_sam_encoder", [False, True])
def test_exactly_the_intended_parameters_train(tiny_base, train_sam_encoder):
    torch.manual_seed(0)
    model, processor = load_lisa(str(tiny_base.lisa_dir))
    model = setup_trainable(model, train_sam_encoder=train_sam_encoder)
    params = dict(model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    assert trainable == {n for n in params if expected_trainable(n, train_sam_encoder, tiny_base.vlm)}
    # LoRA on exactly q_proj and v_proj of every layer of the language model (Qwen3.5's linear-attention layers:
    # in_proj_qkv).
    lora_modules = {n.split(".lora_A")[0] for n in trainable if ".lora_A" in n}
    text_config = model.get_base_model().config.vlm_config.text_config
    kinds = getattr(text_config, "layer_types", None) or ["full_attention"] * text_config.num_hidden_layers
    expected = sum(2 if kind == "full_attention" else 1 for kind in kinds)
    assert len(lora_modules) == expected and all(".language_model.layers." in n for n in lora_modules)
    # Frozen: the vision tower (CLIP, Qwen's ViT), projector / patch merger, SAM prompt encoder (and the image encoder
    # in LISA's recipe), base LLM weights.
    for name in params:
        if any(k in name for k in ("vision_tower", "multi_modal_projector", "model.visual.", "prompt_encoder", "base_layer",
                                   "language_model.norm", "_layernorm")):
            assert name not in trainable, name

    before = {n: p.detach().clone() for n, p in params.items()}
    optimizer = torch.optim.AdamW([p for p in params.values() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    model(**toy_batch(processor)).loss.backward()
    for name, param in params.items():
        if name in trainable:
            if not any(part in name for part in NO_GRADIENT_YET):
                assert param.grad is not None and param.grad.abs().sum() > 0, f"{name} got no gradient"
        else:
            assert param.grad is None, f"frozen {name} got a gradient"
    optimizer.step()
    for name, param in params.items():
        if name not in trainable:
            assert torch.equal(param, before[name]), f"frozen {name} changed"
    projection = "base_model.model.text_hidden_fcs.2.weight"
    assert not torch.equal(params[projection], before[projection])  # while a trained one moved


# ------------------------------------------------------------------------------------- atomic checkpointing
class FakeEngine:
    """Writes a tag folder like DeepSpeed does; `fail=True` dies half-way, as a process killed mid-save."""

    def __init__(self, fail: bool = False):
        self.fail = fail

    def save_checkpoint(self, save_dir, tag, client_state, save_latest):
        assert not save_latest  # the pointer is ours to move
        os.makedirs(os.path.join(save_dir, tag), exist_ok=True)
        with open(os.path.join(save_dir, tag, "part0"), "w") as f:
            f.write("x")
        if self.fail:
            raise KeyboardInterrupt("killed while saving")


def test_a_save_killed_midway_leaves_the_previous_checkpoint(tmp_path):
    save_checkpoint(FakeEngine(), str(tmp_path), 10, {})
    assert read_pointer(str(tmp_path)) == step_tag(10)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(FakeEngine(fail=True), str(tmp_path), 20, {})
    assert read_pointer(str(tmp_path)) == step_tag(10)  # still the complete one
    save_checkpoint(FakeEngine(), str(tmp_path), 30, {})  # the next save cleans the half-written folder up
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith("global_step")) == [step_tag(30)]


def test_a_save_that_cannot_write_says_so_and_keeps_the_previous_checkpoint(tmp_path):
    class FullDisk(FakeEngine):
        def save_checkpoint(self, save_dir, tag, client_state, save_latest):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file")

    save_checkpoint(FakeEngine(), str(tmp_path), 10, {})
    with pytest.raises(RuntimeError, match=r"could not write checkpoint .*global_step20: disk full\?.*global_step10 is intact"):
        save_checkpoint(FullDisk(), str(tmp_path), 20, {})
    assert read_pointer(str(tmp_path)) == step_tag(10)


# ------------------------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("flag", ["--batch_size", "--grad_accumulation_steps", "--steps_per_epoch", "--epochs", "--max_pixels"])
def test_non_positive_counts_are_refused_by_the_parser(flag, capsys):
    with pytest.raises(SystemExit):
        parse_args([flag, "0"])
    assert f"argument {flag}: must be a positive integer, not 0" in capsys.readouterr().err


@pytest.mark.parametrize("version", ["/nonexistent/llava", "./nonexistent-llava", "nonexistent-llava", "tests/nonexistent"])
def test_a_missing_version_folder_is_refused_at_once(version, tmp_path, capsys):
    started = time.perf_counter()
    with pytest.raises(SystemExit):
        parse_args(["--version", version, "--log_base_dir", str(tmp_path)])
    assert f"--version {version}: no such file or folder" in capsys.readouterr().err
    assert time.perf_counter() - started < 2  # no network attempt
    assert os.listdir(tmp_path) == []  # and nothing written
    parse_args(["--version", "llava-hf/llava-1.5-7b-hf"])  # a hub id is left to the hub


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash_attn is installed")
def test_flash_attention_without_flash_attn_is_refused_by_the_parser(capsys):
    assert parse_args([]).attn_implementation == "sdpa"
    with pytest.raises(SystemExit):
        parse_args(["--attn_implementation", "flash_attention_2"])
    assert "--attn_implementation: attn_implementation flash_attention_2 needs the flash_attn package" in capsys.readouterr().err


def test_the_runs_pixel_budget_is_the_merges(tmp_path):
    """merge_lora_weights.py rebuilds the processor from the base: with the run's --max_pixels, or the folder it saves
    would hold another budget than the model trained with."""
    from merge_lora_weights import model_settings, parse_args as merge_args

    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "train_args.json").write_text(json.dumps(vars(parse_args(["--max_pixels", "2048"]))))
    merge = ["--weight", str(tmp_path / "ckpt"), "--save_path", str(tmp_path / "out")]
    assert model_settings(merge_args(merge))["max_pixels"] == 2048
    assert model_settings(merge_args(merge + ["--max_pixels", "1024"]))["max_pixels"] == 1024


# ------------------------------------------------------------------------------------------ launched runs
@pytest.fixture(scope="module")
def reference_run(tiny_dir, toy_dir, tmp_path_factory):
    """An uninterrupted run: 2 epochs x 6 steps, checkpoints every 2 steps."""
    run_dir = tmp_path_factory.mktemp("runs") / "reference"
    run(train_command(tiny_dir, toy_dir, run_dir, "--epochs", "2", "--steps_per_epoch", "6", "--save_steps", "2", "--no_eval"))
    return run_dir


@pytest.mark.slow
def test_kill_and_resume_gives_the_same_weights(tiny_dir, toy_dir, reference_run, tmp_path):
    run_dir = tmp_path / "resumed"
    command = train_command(tiny_dir, toy_dir, run_dir, "--epochs", "2", "--steps_per_epoch", "6", "--save_steps", "2", "--no_eval")
    process = subprocess.Popen(command, cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    ckpt_dir = str(run_dir / "ckpt_model")
    deadline = time.time() + 240
    while read_pointer(ckpt_dir) is None and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the launcher and its worker, mid-run
    process.wait()
    interrupted_at = read_pointer(ckpt_dir)
    assert interrupted_at is not None and interrupted_at != step_tag(12), f"the run was not interrupted ({interrupted_at})"

    output = run(command)  # --auto_resume is on by default
    assert f"resumed from {ckpt_dir}/{interrupted_at}" in output
    expected, resumed = final_weights(reference_run / "ckpt_model"), final_weights(run_dir / "ckpt_model")
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name


@pytest.mark.slow
def test_a_run_folder_is_one_runs_and_a_resume_must_continue_it(tiny_dir, toy_dir, reference_run, tmp_path):
    command = train_command(tiny_dir, toy_dir, reference_run, "--epochs", "2", "--steps_per_epoch", "6", "--save_steps", "2",
                            "--no_eval")
    ckpt_dir = reference_run / "ckpt_model"
    before = sorted(os.listdir(ckpt_dir))
    # The same command again: the run is complete.
    assert f"nothing to do: {ckpt_dir} finished all 2 epochs (latest: step 12; best: epoch 1)" in run(command)
    # Other arguments would mix two runs; the refusal names each change.
    output = run(command + ["--lr", "5e-4", "--dataset", "vqa||reason_seg"], succeed=False)
    assert "--lr 0.001 -> 0.0005" in output and "--dataset sem_seg||refer_seg||vqa||reason_seg -> vqa||reason_seg" in output
    assert "nothing to do" in run(command + ["--lr", "5e-4", "--resume_anyway"])
    assert "which --no_auto_resume would overwrite" in run(command + ["--no_auto_resume"], succeed=False)
    assert sorted(os.listdir(ckpt_dir)) == before
    # A folder another training holds is refused, before anything is written into it.
    held = tmp_path / "held"
    lock = lock_run_folder(str(held))
    try:
        output = run(train_command(tiny_dir, toy_dir, held, "--epochs", "1", "--steps_per_epoch", "2"), succeed=False)
    finally:
        lock.close()
    assert f"{held} is in use by another training (process {os.getpid()})" in output
    assert os.listdir(held) == [".lock"]


def data_counts(tiny_dir, toy_dir, samples: int, max_text_tokens: int, **data) -> str:
    """The epoch line's counts of a run's first `samples` training samples, as the library's collator gives them."""
    collator = LisaCollator(LisaProcessor.from_pretrained(str(tiny_dir / "lisa")), max_text_tokens)
    dataset = HybridDataset(str(toy_dir), samples_per_epoch=samples, check=collator.check, **data)
    counts = {"skipped samples": 0, "truncated conversations": 0, "dropped conversations": 0}
    for index in range(samples):
        batch, skipped_files = collator([dataset[index]])
        for name, count in zip(counts, (len(skipped_files), batch.truncated_rows, len(batch.dropped_rows))):
            counts[name] += count
    assert all(counts.values()), counts  # every count is tried
    return ", ".join(f"{name} {count}" for name, count in counts.items())


@pytest.mark.slow
def test_two_process_deepspeed_run(tiny_dir, toy_dir, tmp_path):
    run_dir = tmp_path / "two"
    # Batch 1 of VQA and ReasonSeg: some micro-batches have a [SEG] on one rank and none on the other, so the
    # ranks' backward passes touch different modules unless training evens that out (ZeRO-2 would hang or abort).
    # 24 text tokens cut conversations, leave some out and a sample without any: the epoch line sums both ranks'.
    output = run(train_command(tiny_dir, toy_dir, run_dir, "--epochs", "1", "--steps_per_epoch", "3", "--batch_size", "1",
                               "--dataset", "vqa||reason_seg", "--sample_rates", "1,1", "--model_max_length", "24", nproc=2))
    assert read_pointer(str(run_dir / "ckpt_model")) == step_tag(3)
    assert "val giou" in output
    # 3 steps x 2 micro-batches x 1 sample x 2 ranks
    assert data_counts(tiny_dir, toy_dir, 12, 24, dataset="vqa||reason_seg", sample_rates="1,1") in output
    # Both ranks' ZeRO-2 optimizer shards were written.
    assert len([n for n in os.listdir(run_dir / "ckpt_model" / step_tag(3)) if "optim_states" in n]) == 2
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(run_dir))


@pytest.mark.slow
def test_sam_encoder_frozen_steps_hold_the_encoder_then_release_it(tiny_dir, toy_dir, tmp_path):
    from transformers import SamModel

    initial = {f"base_model.model.sam.{name}": p for name, p in SamModel.from_pretrained(str(tiny_dir / "sam")).state_dict().items()}
    encoder = [name for name in initial if ".vision_encoder." in name]
    decoder = [name for name in initial if ".mask_decoder." in name]
    run_dir = tmp_path / "late"
    command = train_command(tiny_dir, toy_dir, run_dir, "--train_sam_encoder", "--sam_encoder_frozen_steps", "3",
                            "--steps_per_epoch", "3", "--no_eval")
    run(command + ["--epochs", "1"])
    weights = final_weights(run_dir / "ckpt_model")
    assert all(torch.equal(weights[name], initial[name]) for name in encoder)  # 3 steps at learning rate 0
    assert not all(torch.equal(weights[name], initial[name]) for name in decoder)  # while the rest trained

    run(command + ["--epochs", "2"])  # resumes at step 3, where the encoder's learning rate starts its warmup
    weights = final_weights(run_dir / "ckpt_model")
    assert not any(torch.equal(weights[name], initial[name]) for name in encoder if "rel_pos" not in name)

    with pytest.raises(SystemExit):
        parse_args(["--sam_encoder_frozen_steps", "3"])  # without --train_sam_encoder it would do nothing


@pytest.fixture(scope="module")
def merged_dir(reference_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("merged")
    run([sys.executable, "merge_lora_weights.py", "--weight", str(reference_run / "ckpt_model"), "--save_path", str(out),
         "--precision", "fp32"])
    return out


def unmerged_model(reference_run):
    """The trained PEFT model rebuilt from the checkpoint, LoRA not merged."""
    from merge_lora_weights import read_checkpoint

    args = json.loads((reference_run / "ckpt_model" / "train_args.json").read_text())
    model, processor = load_for_training(args["version"], args["vision_pretrained"], out_dim=args["out_dim"])
    peft_model = setup_trainable(model)
    peft_model.load_state_dict(read_checkpoint(str(reference_run / "ckpt_model"), None), strict=True)
    return peft_model.eval(), processor


@pytest.mark.slow
def test_merged_model_matches_unmerged(reference_run, merged_dir, tmp_path):
    peft_model, processor = unmerged_model(reference_run)
    merged, merged_processor = load_lisa(str(merged_dir))
    merged.eval()
    batch = toy_batch(merged_processor)
    with torch.no_grad():
        expected, actual = peft_model(**batch, return_logits=True), merged(**batch, return_logits=True)
    # LoRA changed something, and merging kept it.
    assert torch.allclose(expected.logits, actual.logits, atol=1e-4)
    for e, a in zip(expected.pred_masks, actual.pred_masks):
        assert torch.allclose(e, a, atol=1e-3)

    # --adapter_only, then merging that adapter folder, gives the same model.
    adapter = tmp_path / "adapter"
    run([sys.executable, "merge_lora_weights.py", "--weight", str(reference_run / "ckpt_model"), "--save_path", str(adapter),
         "--precision", "fp32", "--adapter_only"])
    assert {"adapter_config.json", "adapter_model.safetensors", "trained_modules.safetensors"} <= set(os.listdir(adapter))
    again = tmp_path / "again"
    run([sys.executable, "merge_lora_weights.py", "--weight", str(adapter), "--save_path", str(again), "--precision", "fp32"])
    remerged, _ = load_lisa(str(again))
    for (name, p), q in zip(merged.state_dict().items(), remerged.state_dict().values()):
        assert torch.equal(p, q), name


def train_and_resume(base, toy_dir, run_dir, *extra: str, gradient_checkpointing: bool = False):
    """`train_ds.py` on `base` (a `TinyBase`) with `extra` flags: one epoch of 2 steps, then resumed for a second.
    Returns the run's checkpoint folder."""
    ckpt_dir = run_dir / "ckpt_model"
    command = train_command(base.root, toy_dir, run_dir, "--steps_per_epoch", "2", "--val_mode", "generate", *extra,
                            vlm=base.vlm, sam=base.sam, gradient_checkpointing=gradient_checkpointing)
    run(command + ["--epochs", "1"])
    assert f"resumed from {ckpt_dir}/{step_tag(2)}" in run(command + ["--epochs", "2"])
    assert read_pointer(str(ckpt_dir)) == step_tag(4)
    return ckpt_dir


# How far the merged model's logits and mask logits may be from the unmerged one's (atol of each, rtol): in fp32 the
# same sums rounded in another order; in bf16 (8 significant bits) the merged weight W + BA is rounded once more
# (torch.testing's tolerance of bf16).
MERGE_TOLERANCE = {"fp32": (1e-4, 1e-3, 1e-5), "bf16": (1e-5, 1e-5, 1.6e-2)}


def through_the_scripts(base, toy_dir, tmp_path, precision: str = "fp32", gradient_checkpointing: bool = False,
                        model_flags: tuple[str, ...] = ()):
    """`base` (a `TinyBase`) through the scripts as a user runs them, all in `precision`: DeepSpeed training with LoRA,
    resumed after one epoch; merge (the merged model answers as the unmerged one, on the GPU where there is one);
    evaluation and chat. `model_flags` go to the training and the answering scripts alike. Returns the run's
    checkpoint folder."""
    ckpt_dir = train_and_resume(base, toy_dir, tmp_path / "run", "--precision", precision, *model_flags,
                                gradient_checkpointing=gradient_checkpointing)
    merged_dir = tmp_path / "merged"
    run([sys.executable, "merge_lora_weights.py", "--weight", str(ckpt_dir), "--precision", precision,
         "--save_path", str(merged_dir)])
    dtype, device = PRECISIONS[precision], use_local_device()
    peft_model, _ = unmerged_model(ckpt_dir.parent)
    merged, processor = load_lisa(str(merged_dir), dtype=dtype)
    assert (merged.vlm_family.name, merged.sam_family.name) == (base.vlm, base.sam)
    batch = toy_batch(processor).to(device, dtype)
    with torch.no_grad():
        expected = peft_model.to(device, dtype)(**batch, return_logits=True)
        actual = merged.to(device).eval()(**batch, return_logits=True)
    logits_atol, masks_atol, rtol = MERGE_TOLERANCE[precision]
    torch.testing.assert_close(actual.logits, expected.logits, atol=logits_atol, rtol=rtol)
    for e, a in zip(expected.pred_masks, actual.pred_masks):
        torch.testing.assert_close(a, e, atol=masks_atol, rtol=rtol)

    image = sorted((toy_dir / "reason_seg" / "ReasonSeg" / "val").glob("*.jpg"))[0]
    report = tmp_path / "eval.json"
    run([sys.executable, "eval_reasonseg.py", "--version", str(merged_dir), "--dataset_dir", str(toy_dir), "--split", "val",
         "--mode", "generate", "--precision", precision, *model_flags, "--workers", "0", "--output", str(report)])
    assert 0 <= json.loads(report.read_text())["giou"] <= 1
    output = run([sys.executable, "chat.py", "--version", str(merged_dir), "--precision", precision, *model_flags,
                  "--image", str(image), "--prompt", "Where is the red circle? Please output segmentation mask.",
                  "--vis_save_path", str(tmp_path / "vis")])
    assert "Answer:" in output
    return ckpt_dir


@pytest.mark.slow
@pytest.mark.parametrize("tiny_base", [("qwen2_5_vl", "sam2"), ("qwen3_vl", "sam2"), ("qwen3_5", "sam2")], indirect=True,
                         ids="+".join)
def test_qwen_sam2_through_the_scripts(tiny_base, tiny_dir, toy_dir, tmp_path):
    """Qwen2.5-VL, Qwen3-VL or Qwen3.5 + SAM 2 through the same scripts as LLaVA + SAM: DeepSpeed training with LoRA, resume,
    merge (the merged model answers as the unmerged one, its images take the run's pixel budget), evaluation and chat."""
    ckpt_dir = through_the_scripts(tiny_base, toy_dir, tmp_path, model_flags=("--max_pixels", "2048", "--attn_implementation", "eager"))
    assert LisaProcessor.from_pretrained(str(tmp_path / "merged")).image_processor.size["longest_edge"] == 2048
    # Merging with a mask head of the other family names it.
    output = run([sys.executable, "merge_lora_weights.py", "--weight", str(ckpt_dir), "--precision", "fp32",
                  "--save_path", str(tmp_path / "wrong"), "--vision_pretrained", str(tiny_dir / "sam")], succeed=False)
    assert "holds the weights of a SAM 2 mask head, not of a SAM one" in output


@pytest.mark.slow
def test_finetune_from_a_lisa_folder(merged_dir, toy_dir, tmp_path):
    # Nothing is re-initialised and the loss weights come from the flags (the original's issue #85).
    saved, _ = load_lisa(str(merged_dir))
    loaded, _ = load_for_training(str(merged_dir), "unused", bce_loss_weight=5.0)
    assert loaded.config.bce_loss_weight == 5.0
    for (name, p), q in zip(saved.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(p, q), name

    run_dir = tmp_path / "finetune"
    command = [os.path.join(BIN, "torchrun"), "--nproc_per_node", "1", "--master_port", str(free_port()), "train_ds.py",
               "--version", str(merged_dir), "--dataset_dir", str(toy_dir), "--precision", "fp32", "--workers", "0",
               "--log_base_dir", str(tmp_path), "--exp_name", "finetune", "--epochs", "1", "--steps_per_epoch", "2",
               "--batch_size", "2", "--grad_accumulation_steps", "1", "--bce_loss_weight", "5.0", "--no_eval"]
    run(command)
    out = tmp_path / "finetuned"
    run([sys.executable, "merge_lora_weights.py", "--weight", str(run_dir / "ckpt_model"), "--save_path", str(out),
         "--precision", "fp32"])
    finetuned, _ = load_lisa(str(out))
    assert finetuned.config.bce_loss_weight == 5.0


@pytest.mark.slow
def test_a_short_toy_run_learns(tiny_dir, tmp_path):
    """The toy pipeline in short: ~1 minute of training on all four families must lift toy ReasonSeg val gIoU
    (teacher mode, 100 queries) clearly above the untrained model's (measured: 0.03 untrained, 0.17 after 900 steps).

    Margin: per-query IoUs spread with a standard deviation of about 0.3, so the mean of 100 has a standard
    error of about 0.03; 0.08 is more than two and a half of them. The untrained model's masks are near-empty
    noise and score near 0.
    """
    data = tmp_path / "data"
    # More training images than the default corpus: with a few dozen the model memorises instead of generalising.
    subprocess.run([sys.executable, "-m", "datasets.toy", "--out", str(data), "--train_factor", "10"], cwd=REPO,
                   check=True, capture_output=True)
    common = ["--dataset_dir", str(data), "--precision", "fp32", "--workers", "0", "--log_base_dir", str(tmp_path)]
    untrained = run([os.path.join(BIN, "deepspeed"), "--num_gpus", "1", "--master_port", str(free_port()), "train_ds.py",
                     "--version", str(tiny_dir / "lisa"), "--exp_name", "untrained", "--eval_only", *common])
    untrained_giou = float(re.search(r"val giou ([0-9.]+)", untrained).group(1))

    run_dir = tmp_path / "toy"
    run(train_command(tiny_dir, data, run_dir, "--sample_rates", "3,3,1,3", "--train_sam_encoder", "--batch_size", "4",
                      "--grad_accumulation_steps", "1", "--warmup_steps", "50", "--epochs", "1", "--steps_per_epoch", "900"))
    trained_giou = json.loads((run_dir / "ckpt_model" / "best.json").read_text())["giou"]
    assert trained_giou > untrained_giou + 0.08, (untrained_giou, trained_giou)


@pytest.mark.slow
# Not --safe_serialization: zero_to_fp32 then refuses SAM's tied positional embedding (shared memory).
@pytest.mark.parametrize("extra", [[], ["--max_shard_size", "500KB"]], ids=["bin", "sharded"])
def test_merge_from_zero_to_fp32_output(reference_run, merged_dir, tmp_path, extra):
    """DeepSpeed's own export (now a folder, possibly sharded) merges to the same model as the checkpoint itself."""
    ckpt = reference_run / "ckpt_model"
    consolidated = tmp_path / "fp32"
    run([sys.executable, str(ckpt / "zero_to_fp32.py"), str(ckpt), str(consolidated), *extra])
    if extra:
        assert len(list(consolidated.glob("*.bin"))) > 1 and list(consolidated.glob("*.index.json"))
    out = tmp_path / "merged"
    run([sys.executable, "merge_lora_weights.py", "--weight", str(consolidated), "--train_args", str(ckpt / "train_args.json"),
         "--save_path", str(out), "--precision", "fp32"])
    expected, _ = load_lisa(str(merged_dir))
    actual, _ = load_lisa(str(out))
    for (name, p), q in zip(expected.state_dict().items(), actual.state_dict().values()):
        assert torch.equal(p, q), name


def test_merge_refuses_a_missing_checkpoint_folder(tmp_path, capsys):
    from merge_lora_weights import parse_args as merge_args

    with pytest.raises(SystemExit):
        merge_args(["--weight", str(tmp_path / "runs" / "missing"), "--save_path", str(tmp_path / "out")])
    assert f"--weight {tmp_path / 'runs' / 'missing'}: no such file or folder" in capsys.readouterr().err


@pytest.mark.slow
def test_two_process_training_on_videos_and_images_validated_by_j_and_f(tiny_dir, toy_dir, tmp_path):
    """Video samples (3 frames, masks on each) beside ReasonSeg images in one two-rank ZeRO-2 run; the epoch is
    validated on the toy MeViS valid_u split by J&F, which then picks the best epoch."""
    run_dir = tmp_path / "video"
    output = run(train_command(tiny_dir, toy_dir, run_dir, "--epochs", "1", "--steps_per_epoch", "2", "--batch_size", "2",
                               "--grad_accumulation_steps", "1", "--dataset", "vos||reason_seg", "--sample_rates", "3,1",
                               "--vos_data", "mevis||refytvos", "--num_frames", "3",
                               "--val_dataset", f"mevis|{toy_dir / 'mevis'}|valid_u", nproc=2))
    assert read_pointer(str(run_dir / "ckpt_model")) == step_tag(2)
    assert re.search(r"val JF \d\.\d{4} J \d\.\d{4} F \d\.\d{4}", output)
    best = read_best(str(run_dir / "ckpt_model"))
    assert best["epoch"] == 0 and 0 <= best["JF"] <= 1 and best["JF"] == pytest.approx((best["J"] + best["F"]) / 2)
