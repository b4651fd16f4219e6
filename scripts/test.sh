#!/usr/bin/env bash
# Runs every test: `scripts/test.sh [cargo test arguments]`. CI runs it too (.ci/run).
#
# Besides the Rust toolchain, a C/C++ compiler and make, one test (tests/python_snippet.rs,
# the README's Python client) needs python3 with pyzmq and msgpack. This installs them with
# pip when python3 cannot import them yet: into the active environment if pip may write
# there (a venv, pyenv, a user-managed Python), else for this user (--user), else, on a
# system Python that refuses pip (PEP 668, e.g. Debian), past that guard. Then it runs
# `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

python_modules_ok() {
  python3 -c "import zmq, msgpack; assert zmq.has('curve')" 2>/dev/null
}

install_python_modules() {
  local packages=(pyzmq msgpack)
  local pip=(python3 -m pip install --quiet --disable-pip-version-check)
  local user=(--user)
  if [ "$(id -u)" = 0 ]; then
    user=()
  fi
  "${pip[@]}" "${packages[@]}" 2>/dev/null && return
  [ "${#user[@]}" -gt 0 ] && "${pip[@]}" "${user[@]}" "${packages[@]}" 2>/dev/null && return
  "${pip[@]}" "${user[@]}" --break-system-packages "${packages[@]}"
}

if ! python_modules_ok; then
  echo "== installing the Python test dependencies (pyzmq, msgpack)"
  install_python_modules
  if ! python_modules_ok; then
    echo "scripts/test.sh: python3 still cannot import zmq (with CURVE) and msgpack;" \
      "install them with: python3 -m pip install pyzmq msgpack" >&2
    exit 1
  fi
fi

exec cargo test "$@"
