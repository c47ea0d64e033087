#!/usr/bin/env bash
# Azurite, the official Azure Storage emulator (npm), into the project-local .tools/azurite: the
# tests of az:// and *.blob.core.windows.net downloads start its blob service on 127.0.0.1.
set -euo pipefail
VERSION=3.37.0
DEST="$(cd "$(dirname "$0")/.." && pwd)/.tools/azurite"
if [ -x "$DEST/node_modules/.bin/azurite-blob" ] && grep -q "\"version\": \"$VERSION\"" "$DEST/node_modules/azurite/package.json"; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
mkdir -p "$DEST"
npm install --no-audit --no-fund --prefix "$DEST" "azurite@$VERSION"
