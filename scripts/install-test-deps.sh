#!/usr/bin/env bash
# Installs every dependency the test suite needs, idempotently: Debian packages (kcat),
# a Python virtualenv with the Kafka clients and pytest, and cargo-nextest.
# Safe to run again: anything already present is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v kcat >/dev/null || need_apt+=(kcat)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

venv=.venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check -r tests/python/requirements.txt

command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
