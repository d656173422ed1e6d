#!/usr/bin/env bash
# The whole LISA pipeline on CPU in about 10 minutes: a tiny random base, the toy corpus (coloured shapes in
# every real data layout), DeepSpeed training on all four data families, merging, evaluation and a chat.
#
#     bash examples/toy.sh OUT [--vlm llava|qwen2_5_vl|qwen3_vl] [--sam sam|sam2|sam3_tracker]
#
# --vlm and --sam choose the families of the tiny base (default: LISA's LLaVA-1.5 + SAM; `--vlm qwen2_5_vl --sam sam2`
# is the Qwen2.5-VL + SAM 2 pair). Writes OUT/tiny (the base), OUT/data (the corpus), OUT/runs/toy (TensorBoard + checkpoints), OUT/lisa-toy (the
# merged model), OUT/eval_val.json (toy ReasonSeg val, generate mode), OUT/baseline_val.json (the query-blind
# baseline: every shape of the image) and OUT/vis (the chat's masks).
#
# A random tiny SAM image encoder gives features too poor to segment shapes from, so this run uses the research
# flag --train_sam_encoder, a higher learning rate and a short warmup; everything else is LISA's recipe (LoRA on the
# language model's q/v, lm_head, embed_tokens, mask decoder and [SEG] projection trained in full).
# --sam_encoder_frozen_steps holds the encoder still for the first 1500 steps: the random encoder's features carry
# colour, and the decoder learns to read it; an encoder trained from step 0 turns to shape alone, and queries that
# name only a colour then stay at the query-blind baseline.
set -euo pipefail
USAGE="usage: bash examples/toy.sh OUT [--vlm llava|qwen2_5_vl|qwen3_vl] [--sam sam|sam2|sam3_tracker]"
OUT=${1:?$USAGE}
shift
VLM=llava
SAM=sam
while (( $# )); do
    case "$1" in
        --vlm) VLM=${2:?$USAGE}; shift 2 ;;
        --sam) SAM=${2:?$USAGE}; shift 2 ;;
        *) echo "$USAGE" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
# Two processes of one thread each, one per core of a 2-core machine: 8 samples per step at ~14-15 steps/s against
# 4 at ~18 for one process (torch's default of 2 threads per process oversubscribes the cores and runs far slower).
export OMP_NUM_THREADS=1

python -m model.tiny --out "$OUT/tiny" --vlm "$VLM" --sam "$SAM"
# 20x the default training images: with a few dozen per family the model memorises them and fails on val.
python -m datasets.toy --out "$OUT/data" --train_factor 20

# A free port for the launcher's rendezvous: its default, 29500, is taken whenever another job uses it.
port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
start=$(date +%s)
deepspeed --num_gpus 2 --master_port "$port" train_ds.py \
    --version "$OUT/tiny/$VLM" --vision_pretrained "$OUT/tiny/$SAM" --out_dim 64 \
    --dataset_dir "$OUT/data" --dataset "sem_seg||refer_seg||vqa||reason_seg" --sample_rates "3,3,1,3" \
    --precision fp32 --no_gradient_checkpointing --train_sam_encoder --sam_encoder_frozen_steps 1500 \
    --lr 1e-3 --warmup_steps 50 --epochs ${TOY_EPOCHS:-10} --steps_per_epoch ${TOY_STEPS_PER_EPOCH:-700} \
    --batch_size 4 --grad_accumulation_steps 1 --workers 0 \
    --log_base_dir "$OUT/runs" --exp_name toy
echo "training took $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s"

python merge_lora_weights.py --weight "$OUT/runs/toy/ckpt_model" --save_path "$OUT/lisa-toy" --precision fp32

python eval_reasonseg.py --version "$OUT/lisa-toy" --dataset_dir "$OUT/data" --split val --mode generate \
    --precision fp32 --batch_size 8 --workers 0 --output "$OUT/eval_val.json"

python examples/toy_baseline.py --dataset_dir "$OUT/data" --split val --out "$OUT/baseline_masks"
python eval_reasonseg.py --pred_dir "$OUT/baseline_masks" --dataset_dir "$OUT/data" --split val \
    --output "$OUT/baseline_val.json"

# One-shot chat on the first toy val image, with its first query.
image=$(ls "$OUT"/data/reason_seg/ReasonSeg/val/*.jpg | head -n 1)
prompt=$(python -c 'import json, sys; d = json.load(open(sys.argv[1])); t = d["text"][0]
print(f"{t} Please output segmentation mask." if d["is_sentence"] else f"What is {t} in this image? Please output segmentation mask.")' "${image%.jpg}.json")
python chat.py --version "$OUT/lisa-toy" --precision fp32 --image "$image" --prompt "$prompt" --vis_save_path "$OUT/vis"

python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
model, baseline = json.load(open(f"{out}/eval_val.json")), json.load(open(f"{out}/baseline_val.json"))
print(f"toy ReasonSeg val gIoU: model {model['giou']:.3f} (generate mode), query-blind baseline {baseline['giou']:.3f}")
PY
