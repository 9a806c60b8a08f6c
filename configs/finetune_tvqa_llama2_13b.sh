#!/usr/bin/env bash
# TOPA finetuning of the pre-aligned Llama-2-13B on TVQA. Recipe: finetune_tvqa_llama2_13b (topa_plugin/training/configs/).
# GPUs: 4 (the release used 4x A100 40GB). Effective batch: 384 = 6 per GPU x 16 accumulation x 4 GPUs.
# Flags override the recipe, e.g. --output_dir runs/x --report_to wandb; NUM_GPUS and LAUNCHER: see launch.sh.
# Without DeepSpeed: torchrun --nproc_per_node 4 -m topa_plugin.training.train --config finetune_tvqa_llama2_13b
NUM_GPUS=${NUM_GPUS:-4}
EFFECTIVE_BATCH=384  # stated for readers; the recipe's batch and accumulation give it on NUM_GPUS=4
NUM_GPUS=$NUM_GPUS exec bash "$(dirname "${BASH_SOURCE[0]}")/launch.sh" finetune_tvqa_llama2_13b "$@"
