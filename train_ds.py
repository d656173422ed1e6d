"""Train LISA with DeepSpeed (ZeRO-2) and LoRA — the recipe of the paper and of the original's `train_ds.py`.

    deepspeed train_ds.py --version llava-hf/llava-1.5-7b-hf --vision_pretrained sam_vit_h_4b8939.pth \\
        --dataset_dir ./dataset --exp_name lisa-7b
    deepspeed train_ds.py --version Qwen/Qwen2.5-VL-3B-Instruct --vision_pretrained facebook/sam2.1-hiera-tiny \\
        --dataset_dir ./dataset --exp_name lisa-qwen-3b
    torchrun --standalone --nproc_per_node 2 train_ds.py ...
    python train_ds.py ...          # one process, no launcher

`--version` is a vision-language base of a supported family (listed under --version below) or a trained LISA folder
(fine-tuning: nothing is re-initialised, the loss weights come from the flags); `--vision_pretrained` is a mask head of
a supported family. Each family is read from its folder's (or hub id's) config. Logs, TensorBoard events and checkpoints go to
`<log_base_dir>/<exp_name>/`; `ckpt_model/` there holds the last checkpoint (`latest`, for `--auto_resume`) and
the one with the best validation gIoU (`best`). `merge_lora_weights.py` turns either into a LISA folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import IO

import deepspeed
import torch
from peft import PeftModel
from torch.utils.data import DataLoader, Sampler
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from datasets.collate import LisaCollator
from datasets.hybrid import DATASET, HybridDataset, build_val_dataset
from datasets.vos import VOS_DATA, VOS_SETS, VideoValDataset, eval_question, parse_video_set
from datasets.reason_seg import REASON_SEG_DATA, REASON_SEG_VAL
from datasets.refer_seg import REFER_SEG_DATA
from datasets.sem_seg import SEM_SEG_DATA
from datasets.vqa import VQA_DATA
from model.evaluation import evaluate
from model.video_evaluation import evaluate_video
from model.families import CHAT_TEMPLATES, MASK_HEAD_FAMILIES, VLM_FAMILIES, describe
from model.lisa import LisaConfig, LisaForCausalLM
from model.cli import add_image_and_attention_arguments
from model.loading import PRECISIONS, check_attn_package, load_for_training
from model.peft_setup import (
    LORA_ALPHA, LORA_DROPOUT, LORA_R, count_parameters, lora_targets_by_family, parameter_groups, setup_trainable,
)
from model.processing import LisaBatch
from model.video import TRAIN_FRAMES
from utils.checkpoint import TRAIN_ARGS_FILE, read_best, read_pointer, save_checkpoint, tag_step
from utils.cli import HelpFormatter, non_negative_int, positive_int
from utils.deepspeed_config import deepspeed_config, delayed_start_scale
from utils.distributed import (
    broadcast_from_main, finish_distributed, is_main, mean_over_ranks, rank_and_world, single_process_environment,
    use_local_device,
)
from utils.locations import location_problem
from utils.log_filters import dropping_log_message
from utils.metrics import format_table
from utils.video_metrics import format_video_table
from utils.run_folder import RunFolderBusy, argument_changes, lock_run_folder

LOSS_TERMS = ("loss", "ce_loss", "mask_bce_loss", "mask_dice_loss", "mask_loss")
# What training did to its data, counted over an epoch and all ranks: bad samples skipped (drawn again), conversations
# cut to --model_max_length, conversations left out because the cut would have taken what they train.
DATA_COUNTS = ("skipped samples", "truncated conversations", "dropped conversations")
# What a resumed run may change: none of them alters the model, the data order or the optimisation of the steps
# already taken (--epochs extends or shortens the run; the learning-rate schedule follows the new length; the attention
# implementation computes the same attention, with other kernels).
RESUMABLE_ARGS = ("epochs", "workers", "auto_resume", "resume_anyway", "eval", "val_mode", "val_batch_size",
                  "save_steps", "log_base_dir", "local_rank", "attn_implementation")


def add_switch(parser: argparse.ArgumentParser, name: str, default: bool, help: str) -> None:
    """`--name` turns an option on and `--no_name` off (several of the original's switches could not be turned off)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(f"--{name}", dest=name, action="store_true", help=f"{help} (default: {'on' if default else 'off'})")
    group.add_argument(f"--no_{name}", dest=name, action="store_false", help=f"turn off --{name}")
    parser.set_defaults(**{name: default})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument("--version", default="llava-hf/llava-1.5-7b-hf",
                       help=f"vision-language base (hub id or folder) of a family of {describe(VLM_FAMILIES)}; or a "
                            "trained LISA folder to fine-tune")
    model.add_argument("--vision_pretrained", default="facebook/sam-vit-huge",
                       help=f"mask-head weights, a folder or hub id of a family of {describe(MASK_HEAD_FAMILIES)} "
                            "(such as facebook/sam2.1-hiera-tiny), or SAM's sam_vit_h_4b8939.pth (original layout); "
                            "unused when --version is a LISA folder (default: %(default)s)")
    model.add_argument("--conv_type", default=None, choices=sorted(CHAT_TEMPLATES),
                       help="conversation format (default: the base family's first: "
                            + ", ".join(f"{next(iter(f.chat_templates))} for {f.title}" for f in VLM_FAMILIES.values())
                            + "; the folder's own for LISA)")
    model.add_argument("--out_dim", type=int, default=None,
                       help="output width of the [SEG] projection; must equal SAM's prompt width (default: read from "
                            "the SAM weights, 256 for the released SAM and SAM 2; base only)")
    model.add_argument("--precision", default="bf16", choices=list(PRECISIONS), help="training precision (default: %(default)s)")
    model.add_argument("--load_in_4bit", action="store_true",
                       help="QLoRA: the frozen language model in 4-bit NF4 (bitsandbytes, CUDA or CPU); LoRA on it and the "
                            "fully trained modules in --precision")
    add_switch(model, "gradient_checkpointing", True, "recompute activations in the backward pass to save memory")
    add_image_and_attention_arguments(
        model, max_pixels_default="for a base 1280 tokens' worth, 1,003,520 px for Qwen2.5-VL and 1,310,720 for Qwen3-VL, "
                                  "4 tiles (802,816 px) + thumbnail for InternVL3, or the base's own cap where lower; "
                                  "for a LISA folder its own")

    lora = parser.add_argument_group("trainable parameters (LoRA on the language model; lm_head, embed_tokens, "
                                      "SAM mask decoder and [SEG] projection in full)")
    lora.add_argument("--lora_r", type=positive_int, default=LORA_R, help="LoRA rank (default: %(default)s)")
    lora.add_argument("--lora_alpha", type=int, default=LORA_ALPHA,
                      help="LoRA scaling numerator (scale = alpha / r; default: %(default)s)")
    lora.add_argument("--lora_dropout", type=float, default=LORA_DROPOUT, help="dropout on the LoRA input (default: %(default)s)")
    lora.add_argument("--lora_target_modules", default=None,
                      help="comma-separated linear names of the *language model* that get LoRA (default: the base "
                           f"family's: {lora_targets_by_family()})")
    add_switch(lora, "train_sam_encoder", False,
               "research option: also train SAM's image encoder in full (frozen in LISA's recipe)")
    lora.add_argument("--sam_encoder_frozen_steps", type=non_negative_int, default=0,
                      help="with --train_sam_encoder: hold the image encoder still (learning rate 0) for the first N "
                           "optimizer steps, then warm it up over --warmup_steps. On a random SAM (the toy run) the "
                           "mask decoder then first learns to read colour, which the random encoder's features "
                           "carry and an encoder trained from step 0 gives up for shape")

    data = parser.add_argument_group("data")
    data.add_argument("--dataset_dir", default="./dataset", help="root of all data sets")
    data.add_argument("--dataset", default=DATASET,
                      help="data families, '||'-separated: sem_seg, refer_seg, vqa, reason_seg, custom (--custom_data) and "
                           "vos (videos, --vos_data)")
    data.add_argument("--sample_rates", default=None,
                      help="relative sampling rate of each family in --dataset, comma-separated (default: LISA's 9,3,3,1 "
                           "for sem_seg, refer_seg, vqa, reason_seg, and 1 for custom and for vos)")
    data.add_argument("--sem_seg_data", default=SEM_SEG_DATA,
                      help="semantic segmentation data sets")
    data.add_argument("--refer_seg_data", default=REFER_SEG_DATA, help="referring data sets")
    data.add_argument("--vqa_data", default=VQA_DATA, help="VQA data (LLaVA-Instruct json name)")
    data.add_argument("--reason_seg_data", default=REASON_SEG_DATA, help="ReasonSeg splits, 'name|split[_split]'")
    data.add_argument("--custom_data", default="",
                      help="custom data folders for the family 'custom', '||'-separated; each one's train.jsonl is read "
                           "(format: docs/custom_data.md)")
    data.add_argument("--vos_data", default=VOS_DATA,
                      help="video segmentation sets of the family 'vos', '||'-separated, each 'name' (its train split) "
                           "or 'name|split', read from DATASET_DIR/<name>/ in its own layout: mevis (MeViS), refytvos "
                           "(Ref-YouTube-VOS), revos (ReVOS), reasonvos (ReasonVOS)")
    data.add_argument("--num_frames", type=positive_int, default=TRAIN_FRAMES,
                      help="frames of a training video the model sees, one spread over each equal part of the video; "
                           "the answer's [SEG] is decoded and supervised on each")
    data.add_argument("--val_dataset", default=REASON_SEG_VAL,
                      help="validation set: 'ReasonSeg|val', a referring split such as 'refcoco|unc|val', a custom "
                           "folder's split 'custom|DIR|val', or a video split 'mevis|ROOT|valid_u' (also revos, refytvos, "
                           "reasonvos; ROOT is the set's own folder), scored by J&F with --num_frames key frames and "
                           "each [SEG] decoded on every frame; the best epoch is the one with the highest gIoU (J&F)")
    data.add_argument("--explanatory", type=float, default=0.1,
                      help="probability that a ReasonSeg sample with an explanation asks for it")
    data.add_argument("--num_classes_per_sample", type=positive_int, default=3,
                      help="conversations (classes/expressions) per sem-seg or referring image")
    data.add_argument("--model_max_length", type=positive_int, default=512,
                      help="cut each training conversation after this many text tokens: chat markup and answer count, "
                           "the image's own tokens do not (576 for LLaVA-1.5, size-dependent for Qwen). Memory and time "
                           "grow with the longest row of a batch, and multi-turn LLaVA-Instruct conversations run to "
                           "thousands of tokens. A "
                           "conversation the cut would part from its image, a [SEG] or its whole answer is left out "
                           "(with its masks, named in a warning) and a sample left without any is drawn again; the epoch "
                           "line counts both. The original LISA cut at 512 tokens with its 256 image tokens counted, "
                           "i.e. at 256 text tokens (default: %(default)s)")
    data.add_argument("--workers", type=non_negative_int, default=4, help="data loader worker processes per rank")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--lr", type=float, default=3e-4, help="peak learning rate")
    optim.add_argument("--beta1", type=float, default=0.9, help="AdamW beta1")
    optim.add_argument("--beta2", type=float, default=0.95, help="AdamW beta2")
    optim.add_argument("--warmup_steps", type=non_negative_int, default=100, help="linear warmup steps, then linear decay to 0")
    optim.add_argument("--epochs", type=positive_int, default=10, help="epochs (validation and a checkpoint after each)")
    optim.add_argument("--steps_per_epoch", type=positive_int, default=500, help="optimizer steps per epoch")
    optim.add_argument("--batch_size", type=positive_int, default=2, help="images per micro-batch per process")
    optim.add_argument("--grad_accumulation_steps", type=positive_int, default=10, help="micro-batches per optimizer step")
    optim.add_argument("--ce_loss_weight", type=float, default=LisaConfig.ce_loss_weight,
                       help="weight of the text cross-entropy (default: %(default)s)")
    optim.add_argument("--bce_loss_weight", type=float, default=LisaConfig.bce_loss_weight,
                       help="weight of the mask BCE (default: %(default)s)")
    optim.add_argument("--dice_loss_weight", type=float, default=LisaConfig.dice_loss_weight,
                       help="weight of the mask Dice loss (default: %(default)s)")
    add_switch(optim, "deepspeed_adam", False,
               "DeepSpeed's own fused Adam instead of torch's fused AdamW (on CUDA it is JIT-compiled with nvcc)")
    optim.add_argument("--seed", type=int, default=0, help="seed of the data order, new weights and dropout")

    run = parser.add_argument_group("run")
    run.add_argument("--exp_name", default="lisa", help="run name: logs and checkpoints in <log_base_dir>/<exp_name>")
    run.add_argument("--log_base_dir", default="./runs", help="parent folder of runs")
    run.add_argument("--save_steps", type=non_negative_int, default=0,
                     help="also checkpoint every N optimizer steps (0: only after each epoch)")
    add_switch(run, "auto_resume", True, "continue from <run>/ckpt_model if it holds a checkpoint")
    run.add_argument("--resume_anyway", action="store_true",
                     help="resume even though arguments other than " + ", ".join(f"--{a}" for a in RESUMABLE_ARGS[:-1])
                          + " changed since the run started (refused by default: the result would mix two runs)")
    add_switch(run, "eval", True, "validate after each epoch (--no_eval: never, and keep every epoch as best)")
    add_switch(run, "eval_only", False, "only validate --version and exit")
    run.add_argument("--val_mode", default="teacher", choices=("teacher", "generate"),
                     help="teacher: the original's teacher-forced answer '[SEG].'; generate: the model must emit [SEG]")
    run.add_argument("--val_batch_size", type=positive_int, default=1, help="validation images per batch per process (on a video split: expressions of one video)")
    run.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # passed by the deepspeed launcher
    args = parser.parse_args(argv)
    if args.sam_encoder_frozen_steps and not args.train_sam_encoder:
        parser.error("--sam_encoder_frozen_steps needs --train_sam_encoder")
    for flag in ("version", "vision_pretrained"):
        if (problem := location_problem(getattr(args, flag))) is not None:
            parser.error(f"--{flag} {problem}")
    try:
        check_attn_package(args.attn_implementation)
    except RuntimeError as error:
        parser.error(f"--attn_implementation: {error}")
    if args.precision == "fp16" and not deepspeed.get_accelerator().is_fp16_supported():
        # Checked here, before minutes of loading: DeepSpeed refuses only when the engine starts.
        parser.error(f"--precision fp16: DeepSpeed cannot train in fp16 on {deepspeed.get_accelerator().device_name()} "
                     "(with or without --load_in_4bit); use bf16 or fp32")
    return args


class RangeSampler(Sampler[int]):
    """This rank's share of `range(length)` from item `start` on: rank r gets r, r + world, r + 2·world, ...

    The hybrid data set is a pure function of (seed, epoch, index), so starting at the right item after a resume
    reproduces the interrupted run's data exactly.
    """

    def __init__(self, length: int, rank: int, world: int, start: int = 0):
        self.indices = range(start * world + rank, length, world)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def touch_all(params: list[torch.Tensor]) -> torch.Tensor:
    """A zero that depends on every trainable parameter.

    ZeRO-2 reduces gradients across ranks bucket by bucket as backward produces them, so every rank must produce
    a gradient for the same parameters. A micro-batch without any [SEG] (e.g. only VQA) never runs SAM's mask
    decoder; added to the loss, this zero gives those parameters a zero gradient instead of none, and the
    ranks' collectives stay in step.
    """
    return 0.0 * sum(p.view(-1)[0] for p in params)


def claim_run_folder(run_dir: str, ckpt_dir: str, args: argparse.Namespace) -> tuple[IO[str] | None, str | None]:
    """Makes this training the only one in `run_dir` and checks that a resume continues the same run.

    Rank 0 decides (lock, arguments, progress) and every rank gets the verdict, so all of them stop together.

    Returns:
        the lock (rank 0; held while the file stays open), and a message when there is nothing to train.

    Raises:
        SystemExit: another process holds the folder, or a resume's arguments changed (without --resume_anyway), or
            --no_auto_resume would overwrite the folder's checkpoints.
    """
    lock, verdict = None, (None, None)
    if is_main():
        try:
            lock = lock_run_folder(run_dir)
            verdict = (None, resume_verdict(ckpt_dir, args))
        except (RunFolderBusy, ValueError) as error:
            verdict = (str(error), None)
    verdict = broadcast_from_main(verdict)
    if verdict[0] is not None:
        finish_distributed()
        sys.exit(verdict[0])
    return lock, verdict[1]


def resume_verdict(ckpt_dir: str, args: argparse.Namespace) -> str | None:
    """None when training should go on (fresh or resumed); a message when the run has already finished.

    Raises:
        ValueError: the run folder's checkpoint may not be continued with these arguments.
    """
    tag = read_pointer(ckpt_dir)
    if tag is None:
        return None
    if not args.auto_resume:
        raise ValueError(f"{ckpt_dir} holds checkpoint {tag}, which --no_auto_resume would overwrite: resume it "
                         "(drop --no_auto_resume) or choose another --exp_name")
    saved_file = os.path.join(ckpt_dir, TRAIN_ARGS_FILE)
    if os.path.isfile(saved_file) and not args.resume_anyway:
        with open(saved_file) as f:
            changes = argument_changes(json.load(f), vars(args), RESUMABLE_ARGS)
        if changes:
            raise ValueError(f"{ckpt_dir} was trained with other arguments:\n  " + "\n  ".join(changes)
                             + "\nResume with the run's arguments, choose another --exp_name, or pass --resume_anyway.")
    if tag_step(tag) >= args.epochs * args.steps_per_epoch:
        return f"nothing to do: {ckpt_dir} finished all {args.epochs} epochs ({describe_checkpoints(ckpt_dir)})"
    return None


def score_of(metrics: dict) -> str:
    """The validation figure that picks the best epoch: gIoU on images, J&F on videos."""
    return "JF" if "JF" in metrics else "giou"


def describe_best(best: dict) -> str:
    """`epoch E (giou G)`: the best epoch's record."""
    scores = [name for name in ("giou", "JF") if name in best]
    return f"epoch {best['epoch']}" + (f" ({scores[0]} {best[scores[0]]:.4f})" if scores else "")


def describe_checkpoints(ckpt_dir: str) -> str:
    """`latest: step N; best: epoch E (giou G)`, as the run's pointers say."""
    text = f"latest: step {tag_step(read_pointer(ckpt_dir))}"
    best = read_best(ckpt_dir)
    if best is not None:
        text += f"; best: {describe_best(best)}"
    return text


# Answer tokens of a video validation question ("Sure, [SEG]." and its like take fewer than ten).
VIDEO_VAL_NEW_TOKENS = 32


def build_validation(args: argparse.Namespace) -> torch.utils.data.Dataset:
    """The validation set `--val_dataset` names: an image split, or a video split "name|ROOT|split"."""
    if args.val_dataset.split("|")[0] in VOS_SETS:
        return VideoValDataset(*parse_video_set(args.val_dataset))
    return build_val_dataset(args.dataset_dir, args.val_dataset)


def validate(model, processor, val_dataset, args: argparse.Namespace) -> dict:
    """gIoU/cIoU of `model` on an image validation set, J&F on a video one (`--num_frames` key frames, each [SEG]
    decoded on every frame: training does not need the mask head's video model), by the same code as
    `eval_reasonseg.py`. The figure that picks the best epoch is `score_of`'s."""
    if isinstance(val_dataset, VideoValDataset):
        scores = evaluate_video(model, processor, val_dataset.expressions, eval_question, num_frames=args.num_frames,
                                max_new_tokens=VIDEO_VAL_NEW_TOKENS, propagate="per_frame", batch_size=args.val_batch_size)
        return scores.summary(groups=val_dataset.name == "revos")
    report = evaluate(model, processor, val_dataset, mode=args.val_mode, batch_size=args.val_batch_size)
    if report.skipped and is_main():
        print(f"validation skipped {len(report.skipped)} unusable sample(s) or record(s), e.g. {report.skipped[0]}")
    return report.summary


def start_distributed() -> tuple[int, int, torch.device]:
    """Sets this rank's device and joins the launcher's process group (a one-process group of our own under plain
    `python`): gloo on CPU, nccl on CUDA. Returns (rank, world size, this rank's device)."""
    single_process_environment()
    device = use_local_device()  # before the first collective (claim_run_folder's broadcast)
    deepspeed.init_distributed()
    rank, world = rank_and_world()
    return rank, world, device


def make_trainable(model: LisaForCausalLM, args: argparse.Namespace) -> PeftModel:
    """LISA's recipe on `model`: gradient checkpointing if asked, LoRA, the fully trained modules."""
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()  # checkpointed blocks need an input that requires grad
    model = setup_trainable(
        model, args.lora_r, args.lora_alpha, args.lora_dropout, args.lora_target_modules, args.train_sam_encoder
    )
    trainable, total = count_parameters(model)
    if is_main():
        print(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")
    return model


def build_train_dataset(args: argparse.Namespace, world: int, collator: LisaCollator) -> HybridDataset:
    """One epoch's items: item i goes to rank i % world; micro-batch k of a rank holds its items k·B .. k·B+B-1.
    A sample `collator` could not use is drawn again."""
    micro_batches_per_epoch = args.steps_per_epoch * args.grad_accumulation_steps
    return HybridDataset(
        args.dataset_dir, samples_per_epoch=micro_batches_per_epoch * args.batch_size * world,
        num_classes_per_sample=args.num_classes_per_sample, dataset=args.dataset, sample_rates=args.sample_rates,
        sem_seg_data=args.sem_seg_data, refer_seg_data=args.refer_seg_data, vqa_data=args.vqa_data,
        reason_seg_data=args.reason_seg_data, explanatory=args.explanatory, custom_data=args.custom_data,
        vos_data=args.vos_data, num_frames=args.num_frames, seed=args.seed, check=collator.check,
    )


def build_engine(model: PeftModel, args: argparse.Namespace, device: torch.device) -> deepspeed.DeepSpeedEngine:
    """ZeRO-2 engine with LISA's optimizer and schedule; two optimizer groups with --train_sam_encoder (the
    encoder's learning rate can start late), else one."""
    ds_config = deepspeed_config(
        args.batch_size, args.grad_accumulation_steps, args.lr, (args.beta1, args.beta2), args.precision,
        args.epochs * args.steps_per_epoch, args.warmup_steps, torch_adam=not args.deepspeed_adam,
    )
    # DeepSpeed's warmup scheduler asks itself for a learning rate while it is built, before step 0, and warns that it
    # "has not started"; the rate it then returns is the warmup's start, the right one for step 0.
    with dropping_log_message("DeepSpeed", "Attempting to get learning rate from scheduler before it has started"):
        engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=parameter_groups(model), config=ds_config)
    return engine


def resume(engine: deepspeed.DeepSpeedEngine, ckpt_dir: str, args: argparse.Namespace) -> dict | None:
    """Continues from the run's `latest` checkpoint, if any and --auto_resume: DeepSpeed restores weights, optimizer,
    scheduler and its step counter, and the step fixes the data. Returns the best epoch's record so far."""
    tag = read_pointer(ckpt_dir) if args.auto_resume else None
    if tag is None:
        return None
    # bitsandbytes' 4-bit layers save their quantisation state beside each weight (absmax, quant_map, ...), keys that
    # load_state_dict does not take back; those weights are the frozen base, quantised alike on every load.
    engine.load_checkpoint(ckpt_dir, tag=tag, load_module_strict=not args.load_in_4bit)
    if is_main():
        print(f"resumed from {ckpt_dir}/{tag} at step {engine.global_steps}")
    return read_best(ckpt_dir)


def set_learning_rates(engine: deepspeed.DeepSpeedEngine, global_step: int, args: argparse.Namespace) -> list[float]:
    """The learning rate of each optimizer group for this step. The scheduler sets every group to the schedule's
    rate after each step; with --train_sam_encoder the encoder's group is scaled to join late."""
    groups = engine.optimizer.param_groups
    if args.train_sam_encoder:
        groups[1]["lr"] = groups[0]["lr"] * delayed_start_scale(global_step, args.sam_encoder_frozen_steps, args.warmup_steps)
    return [group["lr"] for group in groups]


def train_step(
    engine: deepspeed.DeepSpeedEngine,
    batches: Iterator[tuple[LisaBatch, list[str]]],
    args: argparse.Namespace,
    device: torch.device,
    dtype: torch.dtype,
    trainable_params: list[torch.Tensor],
) -> tuple[dict[str, float], dict[str, int]]:
    """One optimizer step over --grad_accumulation_steps micro-batches.

    Returns:
        the loss terms averaged over the micro-batches and ranks, and this rank's `DATA_COUNTS`.
    """
    terms = dict.fromkeys(LOSS_TERMS, 0.0)
    counts = dict.fromkeys(DATA_COUNTS, 0)
    for _ in range(args.grad_accumulation_steps):
        batch, skipped_files = next(batches)
        for name, count in zip(DATA_COUNTS, (len(skipped_files), batch.truncated_rows, len(batch.dropped_rows))):
            counts[name] += count
        output = engine(**batch.to(device, dtype))
        engine.backward(output.loss + touch_all(trainable_params))
        engine.step()  # applies the optimizer at the accumulation boundary only
        for name in LOSS_TERMS:
            value = getattr(output, name)
            terms[name] += 0.0 if value is None else value.item() / args.grad_accumulation_steps
    return mean_over_ranks(terms, device), counts


def train_epoch(
    engine: deepspeed.DeepSpeedEngine,
    collator: LisaCollator,
    train_dataset: HybridDataset,
    epoch: int,
    first_step: int,
    args: argparse.Namespace,
    device: torch.device,
    dtype: torch.dtype,
    writer: SummaryWriter | None,
    ckpt_dir: str,
) -> tuple[dict[str, float], dict[str, int]]:
    """Steps `first_step` .. --steps_per_epoch of one epoch (a resumed run starts mid-epoch).

    Returns:
        each loss term averaged over the steps run, and the `DATA_COUNTS` of all ranks.
    """
    rank, world = rank_and_world()
    train_dataset.set_epoch(epoch)
    loader = DataLoader(
        train_dataset, batch_size=args.batch_size, num_workers=args.workers,
        sampler=RangeSampler(len(train_dataset), rank, world, start=first_step * args.grad_accumulation_steps * args.batch_size),
        collate_fn=collator, drop_last=True,
    )
    batches = iter(loader)
    trainable_params = [p for p in engine.module.parameters() if p.requires_grad]
    engine.train()
    sums = dict.fromkeys(LOSS_TERMS, 0.0)
    counts = dict.fromkeys(DATA_COUNTS, 0)
    bar = tqdm(range(first_step, args.steps_per_epoch), desc=f"epoch {epoch}", disable=rank != 0, dynamic_ncols=True)
    for step in bar:
        global_step = epoch * args.steps_per_epoch + step
        # Dropout noise is a function of (seed, step, rank), so a resumed run draws what the interrupted one would.
        torch.manual_seed((args.seed * 1_000_003 + global_step) * world + rank)
        lrs = set_learning_rates(engine, global_step, args)
        started = time.perf_counter()
        terms, step_counts = train_step(engine, batches, args, device, dtype, trainable_params)
        for name in DATA_COUNTS:
            counts[name] += step_counts[name]
        for name in LOSS_TERMS:
            sums[name] += terms[name]
        if writer is not None:
            for name, value in terms.items():
                writer.add_scalar(f"train/{name}", value, global_step + 1)
            writer.add_scalar("train/lr", lrs[0], global_step + 1)
            if args.train_sam_encoder:
                writer.add_scalar("train/lr_sam_encoder", lrs[1], global_step + 1)
            writer.add_scalar("metrics/secs_per_step", time.perf_counter() - started, global_step + 1)
            bar.set_postfix(loss=f"{terms['loss']:.3f}", mask=f"{terms['mask_loss']:.3f}", lr=f"{lrs[0]:.2e}")
        done = global_step + 1
        if args.save_steps and done % args.save_steps == 0 and done % args.steps_per_epoch != 0:
            save_checkpoint(engine, ckpt_dir, done, {"epoch": epoch}, best=None)
    steps = max(args.steps_per_epoch - first_step, 1)
    counts = {name: round(mean * world) for name, mean in mean_over_ranks(counts, device).items()}
    return {name: total / steps for name, total in sums.items()}, counts


def checkpoint_epoch(
    engine: deepspeed.DeepSpeedEngine, ckpt_dir: str, epoch: int, metrics: dict | None, best: dict | None,
    args: argparse.Namespace,
) -> dict:
    """Saves the epoch's checkpoint as `latest`, and as `best` if its gIoU improved (every epoch, without
    validation). Returns the best epoch's record after this one."""
    score = None if metrics is None else score_of(metrics)
    improved = metrics is None or best is None or score not in best or metrics[score] > best[score]
    kept = {"giou": ("giou", "ciou"), "JF": ("JF", "J", "F")}
    record = {"epoch": epoch, **({name: metrics[name] for name in kept[score]} if metrics else {})}
    save_checkpoint(engine, ckpt_dir, (epoch + 1) * args.steps_per_epoch, {"epoch": epoch}, best=record if improved else None)
    return record if improved else best


def log_epoch(
    epoch: int, losses: dict[str, float], metrics: dict | None, counts: dict[str, int], best: dict,
    writer: SummaryWriter | None, args: argparse.Namespace,
) -> None:
    """The epoch's line on the console, its validation figures and `DATA_COUNTS` in TensorBoard (rank 0 only)."""
    if writer is None:
        return
    for name, count in counts.items():
        writer.add_scalar(f"data/{name.replace(' ', '_')}", count, (epoch + 1) * args.steps_per_epoch)
    line = " ".join(f"{name} {value:.4f}" for name, value in losses.items())
    if metrics is not None:
        names = ("giou", "ciou") if score_of(metrics) == "giou" else ("JF", "J", "F")
        for name in names:
            writer.add_scalar(f"val/{name}", metrics[name], (epoch + 1) * args.steps_per_epoch)
        line += " | val " + " ".join(f"{name} {metrics[name]:.4f}" for name in names)
    best_text = describe_best(best)
    data = ", ".join(f"{name} {count}" for name, count in counts.items())
    print(f"epoch {epoch}: {line} | {data} | best {best_text}", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rank, world, device = start_distributed()
    dtype = PRECISIONS[args.precision]
    run_dir = os.path.join(args.log_base_dir, args.exp_name)
    ckpt_dir = os.path.join(run_dir, "ckpt_model")
    if not args.eval_only:
        # The folder stays ours while `run_lock` lives: to the end of main, after the last checkpoint.
        run_lock, done = claim_run_folder(run_dir, ckpt_dir, args)
        if done is not None:
            if rank == 0:
                print(done)
            finish_distributed()
            return
        os.makedirs(ckpt_dir, exist_ok=True)

    torch.manual_seed(args.seed)  # the new [SEG] row and projection of a base
    model, processor = load_for_training(
        args.version, args.vision_pretrained, args.conv_type, dtype=dtype, out_dim=args.out_dim,
        quantization="4bit" if args.load_in_4bit else None, device=device, max_pixels=args.max_pixels,
        attn_implementation=args.attn_implementation,
        ce_loss_weight=args.ce_loss_weight, bce_loss_weight=args.bce_loss_weight, dice_loss_weight=args.dice_loss_weight,
    )
    val_dataset = build_validation(args) if args.eval or args.eval_only else None
    if args.eval_only:
        summary = validate(model.to(device), processor, val_dataset, args)
        if rank == 0 and score_of(summary) == "JF":
            print(format_video_table(summary, title=f"{args.val_dataset}: {args.version} (per_frame)"))
        elif rank == 0:
            print(format_table(summary, f"{args.val_dataset}: {args.version} ({args.val_mode})"))
            print(f"val giou {summary['giou']:.4f} ciou {summary['ciou']:.4f}")
        finish_distributed()
        return

    model = make_trainable(model, args)
    if rank == 0:
        with open(os.path.join(ckpt_dir, TRAIN_ARGS_FILE), "w") as f:
            json.dump(vars(args), f, indent=2)
    collator = LisaCollator(processor, args.model_max_length)
    train_dataset = build_train_dataset(args, world, collator)
    engine = build_engine(model, args, device)
    best = resume(engine, ckpt_dir, args)

    writer = SummaryWriter(run_dir) if rank == 0 else None
    start_step = engine.global_steps
    for epoch in range(start_step // args.steps_per_epoch, args.epochs):
        first_step = max(start_step - epoch * args.steps_per_epoch, 0)
        losses, counts = train_epoch(engine, collator, train_dataset, epoch, first_step, args, device, dtype, writer, ckpt_dir)
        metrics = validate(engine.module.get_base_model(), processor, val_dataset, args) if args.eval else None
        best = checkpoint_epoch(engine, ckpt_dir, epoch, metrics, best, args)
        log_epoch(epoch, losses, metrics, counts, best, writer, args)
    if writer is not None:
        writer.close()
        print(f"checkpoints in {ckpt_dir} ({describe_checkpoints(ckpt_dir)}); export one with "
              f"python merge_lora_weights.py --weight {ckpt_dir} --save_path DIR (the best epoch by default)")
    finish_distributed()


if __name__ == "__main__":
    main()
