#!/usr/bin/env bash
# The GRPO baseline for examples/run_acpo_qwen7b.sh: the same model, data, batch sizes, sampling, GPU layout,
# step budget (STAGE1_STEPS + STAGE2_STEPS steps, one run) and evaluation (Acc@8 on the same benchmarks), through
# the same entry point and reward, with verl's plain GRPO advantage.
#   check data -> GRPO -> merge the last checkpoint -> Acc@8 on the benchmarks.
#
# Usage: bash examples/run_grpo_qwen7b.sh [--dry-run] [hydra overrides, for training and the evaluation...]
# Settings come from the environment (examples/common_qwen7b.sh lists them). The KL term follows verl's GRPO
# examples (K3 to the initial model, coefficient 0.001); GRPO_USE_KL=False gives KL-free GRPO.
# Results: $OUT_DIR/eval/results.md next to the ACPO run's, e.g. $RUNS_DIR/acpo_qwen2.5_math_7b/eval/results.md.
set -euo pipefail

# shellcheck source=examples/common_qwen7b.sh
source "$(dirname "${BASH_SOURCE[0]}")/common_qwen7b.sh" "$@"

EXPERIMENT=${EXPERIMENT:-grpo_qwen2.5_math_7b}
OUT_DIR=${OUT_DIR:-$RUNS_DIR/$EXPERIMENT}
GRPO_USE_KL=${GRPO_USE_KL:-True}
GRPO_KL_COEF=${GRPO_KL_COEF:-0.001}
TRAIN_DIR=$OUT_DIR/train
MERGED=$OUT_DIR/merged_hf

# 1. The data.
check_data

# 2. GRPO for the whole budget.
train acpo_trainer "$MODEL_PATH" "$EXPERIMENT" "$TRAIN_DIR" $(( STAGE1_STEPS + STAGE2_STEPS )) \
    algorithm.adv_estimator=grpo \
    actor_rollout_ref.actor.use_kl_loss="$GRPO_USE_KL" \
    actor_rollout_ref.actor.kl_loss_coef="$GRPO_KL_COEF" \
    actor_rollout_ref.actor.kl_loss_type=low_var_kl \
    "${OVERRIDES[@]}"

# 3. The last checkpoint as a Hugging Face folder.
merge "$TRAIN_DIR" "$MERGED"

# 4. The same evaluation as the ACPO run.
evaluate_model "$MERGED"
