#!/usr/bin/env bash
# ACPO on Qwen2.5-Math-7B with DAPO-Math-17k, the paper's setup, on one 8-GPU node (FSDP + vLLM):
#   check data -> Stage 1 (KL-free exploration, difficulty-aware sampling) -> merge the last Stage-1 checkpoint
#   -> Stage 2 (K3 KL to the Stage-1 policy, confidence-weighted tokens) -> merge -> Acc@8 on the benchmarks.
#
# Usage: bash examples/run_acpo_qwen7b.sh [--dry-run] [hydra overrides applied to both stages and the evaluation...]
# Every setting of examples/common_qwen7b.sh (shared with the GRPO baseline) comes from the environment, e.g.
#   MODEL_PATH=/models/Qwen2.5-Math-7B STAGE1_STEPS=300 bash examples/run_acpo_qwen7b.sh trainer.logger=[console]
# Without flash-attn: ATTN_IMPLEMENTATION=sdpa (training and evaluation load the model with torch's SDPA).
# Prepare the data first (see README):
#   python -m data_prep.dapo17k --input /data/dapo-math-17k.parquet --output-dir "$DATA_DIR" --val-size 512 --seed 0
#   python -m data_prep.benchmarks --name aime2024 --input ... --output "$DATA_DIR/aime2024.parquet" (etc.)
# Compare with: bash examples/run_grpo_qwen7b.sh (same data, model, step budget and evaluation).
set -euo pipefail

# shellcheck source=examples/common_qwen7b.sh
source "$(dirname "${BASH_SOURCE[0]}")/common_qwen7b.sh" "$@"

EXPERIMENT=${EXPERIMENT:-acpo_qwen2.5_math_7b}
OUT_DIR=${OUT_DIR:-$RUNS_DIR/$EXPERIMENT}
STAGE1_DIR=$OUT_DIR/stage1
STAGE2_DIR=$OUT_DIR/stage2
MERGED_STAGE1=$OUT_DIR/stage1_merged_hf
MERGED_STAGE2=$OUT_DIR/stage2_merged_hf

# 1. The data.
check_data

# 2. Stage 1: KL-free exploration with the difficulty-aware curriculum (its agent loop samples hard prompts hotter).
train acpo_stage1 "$MODEL_PATH" "${EXPERIMENT}_stage1" "$STAGE1_DIR" "$STAGE1_STEPS" \
    actor_rollout_ref.rollout.agent.agent_loop_config_path="$AGENT_LOOP_CONFIG" "${OVERRIDES[@]}"

# 3. The last Stage-1 checkpoint as a Hugging Face folder: Stage 2's start and its KL reference.
merge "$STAGE1_DIR" "$MERGED_STAGE1"

# 4. Stage 2: convergence with the K3 KL to the Stage-1 policy and confidence-weighted tokens.
train acpo_stage2 "$MERGED_STAGE1" "${EXPERIMENT}_stage2" "$STAGE2_DIR" "$STAGE2_STEPS" "${OVERRIDES[@]}"
merge "$STAGE2_DIR" "$MERGED_STAGE2"

# 5. Acc@k on the benchmarks (one row per benchmark and the average).
evaluate_model "$MERGED_STAGE2"
