#!/usr/bin/env bash
# Downloads into .whl/ (ignored by git) the wheels that benchmarks/gpu_session.sh installs on a
# lent device machine: the packages mind_jax's engine and training import that the machine's
# image lacks (see /work/.library/device/KINDS.md), plus flax so the run uses the version tested
# here; each at the version installed here, built for its CPython 3.12 on x86-64 Linux.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF /.whl/ .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo /.whl/ >> .git/info/exclude; }
missing="flax grain array-record dm-tree pydantic pydantic-core annotated-types typing-inspection
         portpicker googleapis-common-protos"
pins=$(python - $missing <<'PY'
import importlib.metadata as md
import sys
print(" ".join(f"{name}=={md.version(name)}" for name in sys.argv[1:]))
PY
)
python -m pip download -q --no-deps --only-binary=:all: --python-version "${PYTHON_VERSION:-3.12}" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "${WHEELS:-.whl}" $pins
ls "${WHEELS:-.whl}"
