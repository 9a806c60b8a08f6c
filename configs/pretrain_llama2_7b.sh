#!/usr/bin/env bash
# TOPA pre-alignment of Llama-2-7B on TextVid.
# GPUs: 4 (the release used 4x A100 40GB). Effective batch: 288 = 18 per GPU x 4 accumulation x 4 GPUs.
# Hyperparameters live in the shipped recipe pretrain_llama2_7b (topa_plugin/training/configs/); extra flags override it, e.g. --output_dir runs/x --report_to wandb.
# Without DeepSpeed: torchrun --nproc_per_node 4 -m topa_plugin.training.train --config pretrain_llama2_7b
# Environment: NUM_GPUS overrides the GPU count, LAUNCHER the launcher command (default: deepspeed on NUM_GPUS GPUs).
set -euo pipefail
NUM_GPUS=${NUM_GPUS:-4}
EFFECTIVE_BATCH=288
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LAUNCHER=${LAUNCHER:-"deepspeed --num_gpus ${NUM_GPUS} --module"}
$LAUNCHER topa_plugin.training.train --config pretrain_llama2_7b --deepspeed "$HERE/zero2.json" "$@"
