#!/usr/bin/env bash
# TOPA finetuning of the pre-aligned Llama-2-13B on STAR.
# GPUs: 4 (the release used 4x A100 40GB). Effective batch: 384 = 6 per GPU x 16 accumulation x 4 GPUs.
# Hyperparameters live in the shipped recipe finetune_star_llama2_13b (topa_plugin/training/configs/); extra flags override it, e.g. --output_dir runs/x --report_to wandb.
# Without DeepSpeed: torchrun --nproc_per_node 4 -m topa_plugin.training.train --config finetune_star_llama2_13b
# Environment: NUM_GPUS overrides the GPU count, LAUNCHER the launcher command (default: deepspeed on NUM_GPUS GPUs).
set -euo pipefail
NUM_GPUS=${NUM_GPUS:-4}
EFFECTIVE_BATCH=384
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LAUNCHER=${LAUNCHER:-"deepspeed --num_gpus ${NUM_GPUS} --module"}
$LAUNCHER topa_plugin.training.train --config finetune_star_llama2_13b --deepspeed "$HERE/zero2.json" "$@"
