# shellcheck shell=bash
# Sourced, not run: the model's attention for every run a GPU script starts (training and evaluation), shared by
# examples/run_gpu_smoke.sh and examples/common_qwen7b.sh so that a model is evaluated as it was trained.
#
#   source examples/attention.sh && attention_overrides VARIABLE
#
# attention_overrides reads the attention implementation from the variable named VARIABLE (e.g. ATTN_IMPLEMENTATION)
# and sets ATTENTION_OVERRIDES to the Hydra overrides that load the model with it, with the matching
# use_remove_padding: verl's remove-padding path under flash_attention_2 (flash-attn's variable-length kernels), padded
# batches under sdpa or eager (as the CPU preset runs). Any other value stops the script, naming VARIABLE.
# recipe/acpo/preflight.py checks, before Ray starts, that flash_attention_2 has flash_attn to import.

attention_overrides() {
    local name=$1 implementation=${!1:-} remove_padding
    case "$implementation" in
        flash_attention_2) remove_padding=True ;;
        sdpa | eager) remove_padding=False ;;
        *)
            echo "$name must be flash_attention_2 (needs flash-attn), sdpa or eager, got '$implementation'" >&2
            exit 2
            ;;
    esac
    ATTENTION_OVERRIDES=(
        "++actor_rollout_ref.model.override_config.attn_implementation=$implementation"
        "actor_rollout_ref.model.use_remove_padding=$remove_padding"
    )
}
