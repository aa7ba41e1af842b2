#!/usr/bin/env bash
# A separate venv holding PyPI's MaxText, for benchmarks/maxtext_*.py.
#
# MaxText is a peer to measure against, never a dependency of mind_jax: it lives outside the
# repository, with its own JAX (the `tpu` extra asks for jax>=0.11.1), and nothing in the project
# imports it. The benchmarks reach it only by running this venv's python as a subprocess.
#
#   bash benchmarks/maxtext_venv.sh                  # -> /work/venvs/maxtext
#   bash benchmarks/maxtext_venv.sh /tmp/mt-venv     # elsewhere
#   WITH_MIND_JAX=1 bash benchmarks/maxtext_venv.sh  # also mind_jax (editable, --no-deps), so
#                                                    # our step can run on MaxText's JAX
#
# PYTHON picks the interpreter (MaxText 0.2.5 wants >= 3.12); MAXTEXT_VERSION the release;
# JAX_VERSION pins jax, jaxlib and the matching libtpu (e.g. 0.11.2, the GPU image's line):
# unpinned, the extra's jax>=0.11.1 resolves to the newest release.
set -euo pipefail

VENV="${1:-/work/venvs/maxtext}"
PYTHON="${PYTHON:-}"
MAXTEXT_VERSION="${MAXTEXT_VERSION:-0.2.5}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [[ -z "$PYTHON" ]]; then
  for candidate in python3.12 /root/.pyenv/versions/3.12.1/bin/python3.12 python3.13; do
    # pyenv's shims exist even where the version is not selected, so run the candidate
    if "$candidate" -c 'import sys; assert sys.version_info >= (3, 12)' >/dev/null 2>&1; then
      PYTHON="$(command -v "$candidate")"; break
    fi
  done
fi
if [[ -z "$PYTHON" ]]; then
  echo "maxtext_venv: no Python 3.12 found; set PYTHON=/path/to/python3.12" >&2
  exit 1
fi
case "$(realpath -m "$VENV")" in
  "$REPO"|"$REPO"/*)
    echo "maxtext_venv: $VENV is inside the repository; MaxText must stay outside it" >&2
    exit 1;;
esac

if [[ ! -x "$VENV/bin/python" ]]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip

# The tpu extra is what pulls jax>=0.11.1 and libtpu (libtpu also lets train_compile compile
# for a TPU topology on a machine without one). Where it cannot resolve, fall back to the bare
# package plus the pieces its training path imports, and say so.
PINS=()
if [[ -n "${JAX_VERSION:-}" ]]; then
  PINS=("jax[tpu]==$JAX_VERSION" "jaxlib==$JAX_VERSION")
fi
if ! "$VENV/bin/python" -m pip install "maxtext[tpu]==$MAXTEXT_VERSION" ${PINS[@]+"${PINS[@]}"}; then
  echo "maxtext_venv: maxtext[tpu]==$MAXTEXT_VERSION failed to install (pip's error above);" \
       "trying the package without the extra" >&2
  "$VENV/bin/python" -m pip install "maxtext==$MAXTEXT_VERSION" \
    "jax>=0.11.1" flax optax orbax-checkpoint grain ${PINS[@]+"${PINS[@]}"}
fi

if [[ "${WITH_MIND_JAX:-0}" == "1" ]]; then
  # No deps: our requirements must not move MaxText's JAX. The training step needs only what
  # MaxText brings already; the import below says so, or names what is missing.
  "$VENV/bin/python" -m pip install -q --no-deps -e "$REPO"
  "$VENV/bin/python" -c "import mind_jax.training._step, mind_jax.training._optim" \
    && echo "mind_jax's training step imports on this venv's JAX"
fi

"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
for name in ["maxtext", "jax", "jaxlib", "libtpu", "flax", "optax", "orbax-checkpoint", "grain",
             "qwix", "numpy", "tensorflow", "transformers"]:
  try:
    print(f"{name:18s} {md.version(name)}")
  except md.PackageNotFoundError:
    print(f"{name:18s} (not installed)")
EOF
