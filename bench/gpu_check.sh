#!/usr/bin/env bash
# GPU proof of the paper-scale path, one command (<= 8 minutes on one H100):
#   bench/gpu_check.sh            on a CUDA machine
#   bench/gpu_check.sh --dry-run  on any machine (CPU, tiny model: the wiring only)
# Runs bench/gpu_check.py (the real base_model, sft, dpo and evaluate code: QLoRA + bf16 on a
# Llama-3-8B-shaped model built from a config, no hub), then bench/gpu_dpo.py.
#
# Needs, besides torch, transformers, peft, accelerate, numpy, pyarrow, pandas, pyyaml, xxhash,
# fsspec, tqdm, jinja2 (all on the GPU image): trl==1.16.0 datasets==5.2.0 pydantic==2.14.4
# (pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5) dill==0.4.1
# multiprocess==0.70.19 and, on a GPU, bitsandbytes==0.50.2. A machine without network takes
# them from wheels in bench/wheels/ (git-ignored; ~46 MB for Python 3.12), filled on a machine
# with PyPI by:   bench/gpu_check.sh --fetch-wheels
# and carried beside the working tree (device tool: carry ["bench/wheels"]).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=bench/wheels
PINS="trl==1.16.0 datasets==5.2.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
typing-inspection==0.4.5 dill==0.4.1 multiprocess==0.70.19 bitsandbytes==0.50.2"

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  mkdir -p "$WHEELS"
  for p in $PINS; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "${WHEEL_PY:-3.12}" \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$WHEELS" "$p" || exit 1
  done
  du -sh "$WHEELS"; exit 0
fi

need="trl datasets pydantic"
[[ "${1:-}" == "--dry-run" ]] || need="$need bitsandbytes"
missing=$("$PY" - $need <<'PY'
import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))
PY
)
if [[ -n "$missing" ]]; then
  if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    SITE=${GPU_CHECK_SITE:-/tmp/librachem-gpu-site}
    echo "gpu_check: installing wheels from $WHEELS into $SITE (missing: $missing)" >&2
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" "$WHEELS"/*.whl || exit 1
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "gpu_check: missing Python packages: $missing; no wheels in $WHEELS." >&2
    echo "  Needs: $PINS" >&2
    echo "  Fill $WHEELS on a machine with PyPI: bench/gpu_check.sh --fetch-wheels" >&2
    exit 3
  fi
fi
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
"$PY" -c "import torch, transformers, peft, accelerate, trl, datasets; print('versions:',
  'torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__,
  'accelerate', accelerate.__version__, 'trl', trl.__version__, 'datasets', datasets.__version__,
  'cuda', torch.cuda.is_available())" >&2
timeout "${GPU_CHECK_TIMEOUT:-360}" "$PY" bench/gpu_check.py "$@"
rc=$?
[[ "${1:-}" == "--dry-run" ]] && exit $rc
timeout "${GPU_DPO_TIMEOUT:-110}" "$PY" bench/gpu_dpo.py --steps 6 --warmup 2
rc2=$?
exit $(( rc != 0 ? rc : rc2 ))
