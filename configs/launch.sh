#!/usr/bin/env bash
# LLaVA-style launch of a shipped TOPA recipe: bash configs/launch.sh RECIPE [flags that override it]
# RECIPE is a name from topa_plugin/training/configs/ (pretrain_llama2_7b, ...) or a YAML path.
# Environment: NUM_GPUS (default 4); DEEPSPEED_CONFIG (default zero2.json beside this script, or zero3.json);
# LAUNCHER replaces the launcher command (default: deepspeed on NUM_GPUS GPUs). On a host without CUDA,
# see docs/training.md ("DeepSpeed, torchrun and several nodes") for the CPU launch.
set -euo pipefail
RECIPE=${1:?usage: bash configs/launch.sh RECIPE [flags]}
shift
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NUM_GPUS=${NUM_GPUS:-4}
LAUNCHER=${LAUNCHER:-"deepspeed --num_gpus ${NUM_GPUS} --module"}
$LAUNCHER topa_plugin.training.train --config "$RECIPE" --deepspeed "${DEEPSPEED_CONFIG:-$HERE/zero2.json}" "$@"
