"""The DeepSpeed configuration of LISA's training, built in code from the flags as the original's `train_ds.py` does."""

from __future__ import annotations


def deepspeed_config(
    batch_size: int,
    grad_accumulation_steps: int,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.95),
    precision: str = "bf16",
    total_steps: int = 5000,
    warmup_steps: int = 100,
    torch_adam: bool = True,
) -> dict:
    """ZeRO-2, AdamW (no weight decay), linear warmup then linear decay to 0, gradient clipping 1.0.

    Args:
        batch_size: micro-batch per process (images, each with its conversations).
        total_steps: optimizer steps of the whole run (epochs x steps_per_epoch): the decay ends there.
        warmup_steps: linear warmup from 0 to `lr` (LISA: 100).
        precision: "bf16", "fp16" or "fp32".
        torch_adam: torch's fused AdamW (no compiler needed) rather than DeepSpeed's own fused Adam, which is
            JIT-compiled on first use: with nvcc on CUDA (a build that fails wherever the CUDA toolkit is missing)
            and with a C++ compiler on the CPU.
    """
    if precision not in ("bf16", "fp16", "fp32"):
        raise ValueError(f"precision {precision!r}: choose bf16, fp16 or fp32")
    optimizer_params = {"lr": lr, "weight_decay": 0.0, "betas": list(betas)}
    if torch_adam:
        optimizer_params.update(torch_adam=True, fused=True)  # passed on to torch.optim.AdamW
    return {
        "train_micro_batch_size_per_gpu": batch_size,
        "gradient_accumulation_steps": grad_accumulation_steps,
        "optimizer": {"type": "AdamW", "params": optimizer_params},
        "scheduler": {
            "type": "WarmupDecayLR",
            "params": {
                "total_num_steps": total_steps,
                "warmup_min_lr": 0,
                "warmup_max_lr": lr,
                "warmup_num_steps": min(warmup_steps, total_steps),
                "warmup_type": "linear",
            },
        },
        "fp16": {"enabled": precision == "fp16"},
        "bf16": {"enabled": precision == "bf16"},
        "gradient_clipping": 1.0,
        "zero_optimization": {
            "stage": 2,  # not 3: SAM's mask decoder reads its weights directly, which ZeRO-3 partitions away
            "contiguous_gradients": True,
            "overlap_comm": True,
            "reduce_scatter": True,
            "reduce_bucket_size": 5e8,
            "allgather_bucket_size": 5e8,
        },
        "steps_per_print": 10**9,  # our own logging reports progress
        "wall_clock_breakdown": False,
    }


def delayed_start_scale(step: int, frozen_steps: int, warmup_steps: int) -> float:
    """Factor on the scheduled learning rate of a parameter group that joins training late: 0 for the first
    `frozen_steps` optimizer steps, then a linear ramp to 1 over `warmup_steps` (as the run's own warmup), then 1.

    `step` is 0-based: the factor for the update that step makes.
    """
    if step < frozen_steps:
        return 0.0
    return min(1.0, (step - frozen_steps + 1) / max(warmup_steps, 1))
