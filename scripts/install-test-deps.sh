#!/usr/bin/env bash
# Installs every dependency the test suite needs, idempotently: Debian packages (kcat;
# Node.js and npm; Ceph's radosgw, ceph-mon and ceph-osd for the real S3 server of
# scripts/rgw.sh), a Python virtualenv with the Kafka clients, boto3, the aws CLI and
# pytest, KafkaJS in tests/node (pinned by its package-lock.json), and cargo-nextest.
# Safe to run again: anything already present is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v kcat >/dev/null || need_apt+=(kcat)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
command -v curl >/dev/null || need_apt+=(curl) # scripts/rgw.sh waits for radosgw with it
command -v make >/dev/null || need_apt+=(make) # jemalloc is built from source
command -v radosgw >/dev/null || need_apt+=(radosgw)
command -v ceph-mon >/dev/null || need_apt+=(ceph-mon)
command -v ceph-osd >/dev/null || need_apt+=(ceph-osd)
# A Debian python3 without its venv module (python3-venv) cannot make the virtualenv.
command -v python3 >/dev/null && python3 -c 'import ensurepip, venv' 2>/dev/null ||
  need_apt+=(python3 python3-venv)
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

# KafkaJS for the Node.js group tests: `npm ci` again only when the lock file changed.
lock_sum=$(sha256sum tests/node/package-lock.json | cut -d' ' -f1)
stamp=tests/node/node_modules/.installed-lock-sha256
if [ "$(cat "$stamp" 2>/dev/null)" != "$lock_sum" ]; then
  echo "installing Node.js test dependencies (npm ci in tests/node)"
  (cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
  echo "$lock_sum" >"$stamp"
fi

command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest

# Helm, promtool, checkov and the other tools of the deployment tests.
./scripts/install-deploy-tools.sh
