#!/usr/bin/env bash
# Video reasoning segmentation on CPU: a tiny random Qwen2.5-VL + SAM 2 base, the toy corpus (coloured shapes in every
# real image layout, and short videos of moving shapes as MeViS, Ref-YouTube-VOS and ReVOS), DeepSpeed training on
# images and videos together, merging, evaluation on the toy MeViS valid_u split (J&F) and a chat about one toy video.
#
#     bash examples/toy_video.sh OUT
#
# Writes OUT/tiny (the base, with SAM 2's video model in OUT/tiny/sam2_video), OUT/data (the corpus), OUT/runs/toy_video
# (TensorBoard + checkpoints), OUT/lisa-toy-video (the merged model), OUT/eval_video_val.json (toy MeViS valid_u,
# per-frame decoding: a tiny random SAM 2's memory modules are untrained), OUT/baseline_video_val.json (the query-blind
# baseline: every shape of every frame) and OUT/vis (the chat's masks, one PNG per frame, and the overlay video).
#
# The training recipe is examples/toy.sh's (a random tiny SAM image encoder trained after 1500 steps, a higher learning
# rate); each training video shows the model 4 frames (--num_frames), its [SEG] supervised on each.
set -euo pipefail
OUT=${1:?usage: bash examples/toy_video.sh OUT}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
export OMP_NUM_THREADS=1  # two processes of one thread each on a 2-core machine (see examples/toy.sh)
FRAMES=4
VAL="mevis|$OUT/data/mevis|valid_u"

python -m model.tiny --out "$OUT/tiny" --vlm qwen2_5_vl --sam sam2
python -m datasets.toy --out "$OUT/data" --train_factor 20

port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
start=$(date +%s)
deepspeed --num_gpus 2 --master_port "$port" train_ds.py \
    --version "$OUT/tiny/qwen2_5_vl" --vision_pretrained "$OUT/tiny/sam2" --out_dim 64 \
    --dataset_dir "$OUT/data" --dataset "sem_seg||refer_seg||reason_seg||vos" --sample_rates "2,2,2,6" \
    --vos_data "mevis||refytvos" --num_frames $FRAMES \
    --precision fp32 --no_gradient_checkpointing --train_sam_encoder --sam_encoder_frozen_steps 1500 \
    --lr 1e-3 --warmup_steps 50 --epochs ${TOY_EPOCHS:-12} --steps_per_epoch ${TOY_STEPS_PER_EPOCH:-700} \
    --batch_size 4 --grad_accumulation_steps 1 --workers 0 --no_eval \
    --log_base_dir "$OUT/runs" --exp_name toy_video
echo "training took $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s"

python merge_lora_weights.py --weight "$OUT/runs/toy_video/ckpt_model" --save_path "$OUT/lisa-toy-video" --precision fp32

python eval_reasonseg.py --version "$OUT/lisa-toy-video" --val_dataset "$VAL" --precision fp32 --num_frames $FRAMES \
    --propagate per_frame --max_new_tokens 16 --batch_size 8 --workers 0 --output "$OUT/eval_video_val.json"

python -m examples.toy_video_baseline --val_dataset "$VAL" --out "$OUT/baseline_video_masks"
python eval_reasonseg.py --pred_dir "$OUT/baseline_video_masks" --val_dataset "$VAL" --output "$OUT/baseline_video_val.json"

# One-shot chat on the first toy valid_u video (an mp4), with the first expression about it.
video=$(ls "$OUT"/data/videos/mevis/valid_u/*.mp4 | head -n 1)
prompt=$(python -c 'import json, os, sys
meta = json.load(open(sys.argv[1]))["videos"][os.path.basename(sys.argv[2])[:-4]]
expression = next(iter(meta["expressions"].values()))["exp"]
print(f"Can you segment {expression} in this video?")' "$OUT/data/mevis/valid_u/meta_expressions.json" "$video")
python chat.py --version "$OUT/lisa-toy-video" --precision fp32 --video "$video" --prompt "$prompt" \
    --num_frames $FRAMES --propagate per_frame --vis_save_path "$OUT/vis"

python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
model, baseline = json.load(open(f"{out}/eval_video_val.json")), json.load(open(f"{out}/baseline_video_val.json"))
print(f"toy MeViS valid_u J&F: model {model['JF']:.3f} (J {model['J']:.3f}, F {model['F']:.3f}; per-frame decoding), "
      f"query-blind baseline {baseline['JF']:.3f}")
PY
