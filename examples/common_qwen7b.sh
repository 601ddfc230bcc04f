# Settings shared by examples/run_acpo_qwen7b.sh and examples/run_grpo_qwen7b.sh (sourced, not run): the same
# model, data, batch sizes, sampling, GPU layout and evaluation, so that ACPO and GRPO are compared like with like.
# Every value can be set from the environment. Sourced with the script's arguments (`source common_qwen7b.sh "$@"`):
# --dry-run sets DRY_RUN=1, -h/--help prints the script's header comment, and the rest are the user's Hydra
# overrides, OVERRIDES. Defines: the settings, COMMON (Hydra overrides for every training run), EVAL_ARGS (for
# python -m recipe.acpo.evaluate), BENCH_FILES, run() (prints, then runs unless DRY_RUN=1), and the steps every
# script takes: check_data, train, merge, evaluate_model. The model's attention (ATTN_IMPLEMENTATION, with the
# matching use_remove_padding) and OVERRIDES reach the evaluation as well as training: a model is evaluated as it
# was trained.
# shellcheck shell=bash disable=SC2034

DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    # The calling script's header: its comment lines after the shebang.
    awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
    exit 0
fi
OVERRIDES=("$@")

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODEL_PATH=${MODEL_PATH:-Qwen/Qwen2.5-Math-7B}
DATA_DIR=${DATA_DIR:-$HOME/data/acpo}
TRAIN_FILE=${TRAIN_FILE:-$DATA_DIR/dapo17k_train.parquet}
VAL_FILE=${VAL_FILE:-$DATA_DIR/dapo17k_val.parquet}
BENCHMARKS=${BENCHMARKS:-aime2024 aime2025 amc2023 math500}
RUNS_DIR=${RUNS_DIR:-$HOME/acpo_runs}
PROJECT=${PROJECT:-acpo}
NNODES=${NNODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
# The training budget: ACPO spends STAGE1_STEPS + STAGE2_STEPS, the GRPO baseline the same total in one run.
STAGE1_STEPS=${STAGE1_STEPS:-200}
STAGE2_STEPS=${STAGE2_STEPS:-100}
TRAIN_BATCH_SIZE=${TRAIN_BATCH_SIZE:-128}   # prompts per step; x ROLLOUT_N responses
PPO_MINI_BATCH_SIZE=${PPO_MINI_BATCH_SIZE:-32}
ROLLOUT_N=${ROLLOUT_N:-8}
TEMPERATURE=${TEMPERATURE:-1.0}
MAX_PROMPT_LENGTH=${MAX_PROMPT_LENGTH:-1024}
MAX_RESPONSE_LENGTH=${MAX_RESPONSE_LENGTH:-3072}  # Qwen2.5-Math-7B has a 4k context
LR=${LR:-1e-6}
TP_SIZE=${TP_SIZE:-2}
GPU_MEMORY_UTILIZATION=${GPU_MEMORY_UTILIZATION:-0.6}
EVAL_K=${EVAL_K:-8}
EVAL_TEMPERATURE=${EVAL_TEMPERATURE:-$TEMPERATURE}
EVAL_TOP_P=${EVAL_TOP_P:-1.0}
LOGGER=${LOGGER:-"['console','tensorboard']"}
# The model's attention in training and evaluation: flash_attention_2 (verl's default; needs flash-attn) or sdpa
# (no flash-attn; padded batches, use_remove_padding=False). examples/attention.sh sets the overrides.
ATTN_IMPLEMENTATION=${ATTN_IMPLEMENTATION:-flash_attention_2}
# shellcheck source=examples/attention.sh
source "$REPO_ROOT/examples/attention.sh"
attention_overrides ATTN_IMPLEMENTATION
MAX_TOKENS_PER_GPU=$(( (MAX_PROMPT_LENGTH + MAX_RESPONSE_LENGTH) * 3 ))
# A 7B checkpoint with its optimizer state is about 91 GB (fp32 shards): keep the last few only.
MAX_CKPT_TO_KEEP=${MAX_CKPT_TO_KEEP:-2}
# Once a stage is merged its optimizer state (2/3 of each checkpoint) only serves a resume of that stage: drop it
# (recipe.acpo.merge --drop-optimizer-state; DROP_OPTIMIZER_STATE=0 keeps it).
DROP_OPTIMIZER_STATE=${DROP_OPTIMIZER_STATE:-1}
# Absolute, so that every Ray worker (on any node, in any working directory) finds the recipe's agent loops.
AGENT_LOOP_CONFIG=${AGENT_LOOP_CONFIG:-$REPO_ROOT/recipe/acpo/config/agent_loops.yaml}

run() {
    printf '+'; printf ' %q' "$@"; printf '\n'
    if [[ $DRY_RUN == 0 ]]; then "$@"; fi
}

# Every file is checked before any GPU is asked for.
check_data() {
    run python -m data_prep.check "$TRAIN_FILE" "$VAL_FILE" "${BENCH_FILES[@]}"
}

# train CONFIG_NAME MODEL EXPERIMENT_NAME CHECKPOINT_DIR STEPS [OVERRIDE...]: one training run of the recipe's entry
# point with COMMON, then the given overrides (the user's last).
train() {
    local config_name=$1 model=$2 experiment_name=$3 checkpoint_dir=$4 steps=$5
    shift 5
    run python -m recipe.acpo.main_acpo --config-name "$config_name" "${COMMON[@]}" \
        actor_rollout_ref.model.path="$model" \
        trainer.experiment_name="$experiment_name" \
        trainer.default_local_dir="$checkpoint_dir" \
        trainer.total_training_steps="$steps" \
        "$@"
}

# merge CHECKPOINT_DIR TARGET_DIR: the last checkpoint as a Hugging Face folder.
merge() {
    run python -m recipe.acpo.merge --checkpoint-dir "$1" --target-dir "$2" \
        $([[ $DROP_OPTIMIZER_STATE == 1 ]] && echo --drop-optimizer-state)
}

# evaluate_model MODEL: Acc@EVAL_K on the benchmarks (markdown + JSON under $OUT_DIR/eval), with the user's overrides
# last, as in training.
evaluate_model() {
    run python -m recipe.acpo.evaluate --model "$1" --output-dir "$OUT_DIR/eval" --name "${EXPERIMENT}_eval" \
        "${EVAL_ARGS[@]}" "${OVERRIDES[@]}"
}

BENCH_FILES=()
for name in $BENCHMARKS; do BENCH_FILES+=("$DATA_DIR/$name.parquet"); done

# Hydra overrides shared by both ACPO stages and the GRPO baseline (batch sizes and memory settings after verl's
# Qwen2.5-7B GRPO examples for one 8 x 80 GB node).
COMMON=(
    data.train_files="['$TRAIN_FILE']"
    data.val_files="['$VAL_FILE']"
    data.train_batch_size="$TRAIN_BATCH_SIZE"
    data.max_prompt_length="$MAX_PROMPT_LENGTH"
    data.max_response_length="$MAX_RESPONSE_LENGTH"
    data.filter_overlong_prompts=True
    data.truncation=error
    # FSDP2: the engine every CPU test of the recipe runs (packed attribution included).
    actor_rollout_ref.actor.strategy=fsdp2
    actor_rollout_ref.actor.optim.lr="$LR"
    actor_rollout_ref.actor.ppo_mini_batch_size="$PPO_MINI_BATCH_SIZE"
    actor_rollout_ref.actor.use_dynamic_bsz=True
    actor_rollout_ref.actor.ppo_max_token_len_per_gpu="$MAX_TOKENS_PER_GPU"
    actor_rollout_ref.actor.entropy_coeff=0
    actor_rollout_ref.actor.fsdp_config.param_offload=False
    actor_rollout_ref.actor.fsdp_config.optimizer_offload=False
    "${ATTENTION_OVERRIDES[@]}"
    actor_rollout_ref.model.enable_gradient_checkpointing=True
    actor_rollout_ref.rollout.name=vllm
    actor_rollout_ref.rollout.n="$ROLLOUT_N"
    actor_rollout_ref.rollout.temperature="$TEMPERATURE"
    actor_rollout_ref.rollout.tensor_model_parallel_size="$TP_SIZE"
    actor_rollout_ref.rollout.gpu_memory_utilization="$GPU_MEMORY_UTILIZATION"
    actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=True
    actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu="$MAX_TOKENS_PER_GPU"
    actor_rollout_ref.ref.log_prob_use_dynamic_bsz=True
    actor_rollout_ref.ref.log_prob_max_token_len_per_gpu="$MAX_TOKENS_PER_GPU"
    actor_rollout_ref.ref.fsdp_config.param_offload=True
    trainer.project_name="$PROJECT"
    trainer.logger="$LOGGER"
    trainer.nnodes="$NNODES"
    trainer.n_gpus_per_node="$GPUS_PER_NODE"
    trainer.test_freq=20
    # verl's default checkpoint contents (model, optimizer, extra): resumable, and recipe.acpo.merge turns the
    # FSDP shards into the Hugging Face folder each next step needs.
    trainer.save_freq=50
    trainer.max_actor_ckpt_to_keep="$MAX_CKPT_TO_KEEP"
)

# The evaluation (identical for every model compared): Acc@EVAL_K on the benchmarks, validation-only through verl.
EVAL_ARGS=(
    --data "${BENCH_FILES[@]}"
    --k "$EVAL_K"
    --temperature "$EVAL_TEMPERATURE"
    --top-p "$EVAL_TOP_P"
    --max-prompt-length "$MAX_PROMPT_LENGTH"
    --max-response-length "$MAX_RESPONSE_LENGTH"
    --device gpu
    --n-gpus "$GPUS_PER_NODE"
    --nnodes "$NNODES"
    --tensor-parallel-size "$TP_SIZE"
    actor_rollout_ref.rollout.name=vllm
    actor_rollout_ref.rollout.gpu_memory_utilization="$GPU_MEMORY_UTILIZATION"
    "${ATTENTION_OVERRIDES[@]}"
    actor_rollout_ref.actor.fsdp_config.param_offload=True
    data.filter_overlong_prompts=True
    data.truncation=error
)
