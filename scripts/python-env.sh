#!/usr/bin/env bash
# Creates target/venv with paho-mqtt (the original demo's client library), used by the
# interop tests and the benchmark's baseline row. Idempotent; prints the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/venv
if ! "$venv/bin/python" -c 'import paho.mqtt' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'paho-mqtt>=2,<3'
fi
echo "$venv/bin/python"
