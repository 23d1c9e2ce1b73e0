#!/usr/bin/env bash
# Install (or update) Sleepwell as a systemd service from this checkout. As root:
#
#   deploy/systemd/install.sh                 # GPU box: CUDA 12.8 build of torch
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu deploy/systemd/install.sh
#
# Puts the code in /opt/sleepwell with its own venv, the settings in
# /etc/sleepwell/sleepwell.env (from .env.example, never overwritten), creates the
# sleepwell system user, then enables and (re)starts sleepwell.service.
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PREFIX=${PREFIX:-/opt/sleepwell}
ETC=${ETC:-/etc/sleepwell}
UNIT_DIR=${UNIT_DIR:-/etc/systemd/system}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cu128}
PYTHON=${PYTHON:-python3}

if [[ $(id -u) -ne 0 ]]; then
  echo "run as root" >&2
  exit 1
fi

torch_version=$(sed -n 's/.*"torch==\([0-9.]*\)".*/\1/p' "$SRC/pyproject.toml")
[[ -n $torch_version ]] || { echo "no torch pin in pyproject.toml" >&2; exit 1; }

if ! id -u sleepwell >/dev/null 2>&1; then
  useradd --system --home-dir "$PREFIX" --no-create-home --shell /usr/sbin/nologin \
    --comment "Sleepwell API" sleepwell
fi

# Code: owned by root, readable by the service user, not writable by it.
install -d -m 0755 "$PREFIX" "$PREFIX/docs"
cp -a "$SRC/app" "$SRC/gunicorn.conf.py" "$SRC/pyproject.toml" "$PREFIX/"
if [[ -f $SRC/docs/deployment.md ]]; then
  cp "$SRC/docs/deployment.md" "$PREFIX/docs/"
fi
find "$PREFIX/app" -name __pycache__ -prune -exec rm -rf {} +

"$PYTHON" -m venv "$PREFIX/.venv"
"$PREFIX/.venv/bin/pip" install -q --upgrade pip
"$PREFIX/.venv/bin/pip" install -q --index-url "$TORCH_INDEX_URL" "torch==$torch_version"
"$PREFIX/.venv/bin/pip" install -q "$PREFIX"
chmod -R a+rX,go-w "$PREFIX"

# Settings: root-owned, readable by the service group only (it may hold API keys).
install -d -m 0750 -g sleepwell "$ETC"
if [[ ! -e $ETC/sleepwell.env ]]; then
  install -m 0640 -g sleepwell "$SRC/.env.example" "$ETC/sleepwell.env"
fi

install -m 0644 "$SRC/deploy/systemd/sleepwell.service" "$UNIT_DIR/sleepwell.service"
systemctl daemon-reload
systemctl enable sleepwell.service
systemctl restart sleepwell.service
echo "installed; readiness: curl -fsS http://127.0.0.1:8000/health/ready"
