#!/usr/bin/env bash
# The project's test command (README): every test, on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m pytest tests -q -p no:cacheprovider "$@"
