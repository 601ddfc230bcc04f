#!/usr/bin/env bash
# The project's test command (README): every test, on CPU; or only the test files / node ids given
# (`bash tests/run_tests.sh tests/core/test_config.py -x`); other arguments go to pytest.
# On a fresh clone it first installs what is missing the way the demo does (examples/setup_env.sh: a virtual
# environment if none is active, torch pinned first, the project with its test extra, the offline assets); when
# everything is installed already it installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=examples/setup_env.sh
source examples/setup_env.sh
acpo_setup_env test
# Without a test path among the arguments, the whole suite.
for arg in "$@"; do
    if [[ "$arg" != -* && -e "${arg%%::*}" ]]; then
        exec python -m pytest -q -p no:cacheprovider "$@"
    fi
done
exec python -m pytest tests -q -p no:cacheprovider "$@"
