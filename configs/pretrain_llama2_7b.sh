#!/usr/bin/env bash
# TOPA pre-alignment of Llama-2-7B on TextVid. Recipe: pretrain_llama2_7b (topa_plugin/training/configs/).
# GPUs: 4 (the release used 4x A100 40GB). Effective batch: 288 = 18 per GPU x 4 accumulation x 4 GPUs.
# Flags override the recipe, e.g. --output_dir runs/x --report_to wandb; NUM_GPUS and LAUNCHER: see launch.sh.
# Without DeepSpeed: torchrun --nproc_per_node 4 -m topa_plugin.training.train --config pretrain_llama2_7b
NUM_GPUS=${NUM_GPUS:-4}
EFFECTIVE_BATCH=288  # stated for readers; the recipe's batch and accumulation give it on NUM_GPUS=4
NUM_GPUS=$NUM_GPUS exec bash "$(dirname "${BASH_SOURCE[0]}")/launch.sh" pretrain_llama2_7b "$@"
