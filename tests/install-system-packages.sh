#!/usr/bin/env bash
# The Debian packages the test suite needs besides Python's: Chromium (the explorer page's browser
# tests, driven by Playwright) and PostgreSQL (tune's shared-storage tests start a real server).
# Installs only what is missing; as root directly, else through sudo. Part of the README's test
# command and of .ci/run, so a fresh machine gets them without a step done by hand.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then sudo=(); elif command -v sudo >/dev/null 2>&1; then sudo=(sudo); else
  echo "error: the tests need the Debian packages ${missing[*]}; install them as root (apt-get install ${missing[*]})" >&2
  exit 2
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "installed: ${missing[*]}"
