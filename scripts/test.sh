#!/usr/bin/env bash
# Runs every test: `scripts/test.sh [cargo test arguments]`. CI runs it too (.ci/run).
#
# Besides the Rust toolchain, a C/C++ compiler and make, the Python client (clients/python)
# and one Rust test (tests/python_snippet.rs, the README's Python client) need python3 with
# pyzmq, msgpack and pytest. This installs them with pip when python3 cannot import them yet,
# and installs the Python client itself (`pip install ./clients/python`) every run: into the
# active environment if pip may write there (a venv, pyenv, a user-managed Python), else for
# this user (--user), else, on a system Python that refuses pip (PEP 668, e.g. Debian), past
# that guard. Then it runs `cargo test` (which builds the binaries) and the Python client's
# tests against real nodes (`python3 -m pytest clients/python/tests`).
set -euo pipefail
cd "$(dirname "$0")/.."

python_modules_ok() {
  python3 -c "import zmq, msgpack, pytest; assert zmq.has('curve')" 2>/dev/null
}

# pip_install WHAT...: installs with pip, where pip may write (see above).
pip_install() {
  local pip=(python3 -m pip install --quiet --disable-pip-version-check)
  local user=(--user)
  if [ "$(id -u)" = 0 ]; then
    user=()
  fi
  "${pip[@]}" "$@" 2>/dev/null && return
  [ "${#user[@]}" -gt 0 ] && "${pip[@]}" "${user[@]}" "$@" 2>/dev/null && return
  "${pip[@]}" "${user[@]}" --break-system-packages "$@"
}

if ! python_modules_ok; then
  echo "== installing the Python test dependencies (pyzmq, msgpack, pytest)"
  pip_install pyzmq msgpack pytest
  if ! python_modules_ok; then
    echo "scripts/test.sh: python3 still cannot import zmq (with CURVE), msgpack and pytest;" \
      "install them with: python3 -m pip install pyzmq msgpack pytest" >&2
    exit 1
  fi
fi

echo "== installing the Python client (pip install ./clients/python)"
pip_install ./clients/python
if ! python3 -c "import rrmq" 2>/dev/null; then
  echo "scripts/test.sh: python3 cannot import rrmq after installing ./clients/python" >&2
  exit 1
fi

cargo test "$@"

echo "== Python client tests (clients/python/tests, against real nodes)"
python3 -m pytest clients/python/tests -q
