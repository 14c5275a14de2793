#!/usr/bin/env bash
# Set up Etude on a fresh Debian/Ubuntu machine: system audio library, a virtual
# environment in .venv, the CPU build of torch, then the project with dev extras.
set -euo pipefail
cd "$(dirname "$0")/.."

# FluidSynth renders samples with a real piano soundfont; without it Etude falls
# back to sine synthesis. Chromium runs the report's browser test.
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  if ! (ldconfig -p | grep -q libfluidsynth) || ! command -v chromium >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libfluidsynth3 chromium >/dev/null) \
      || echo "setup: apt-get failed; audio falls back to sine synthesis, browser test needs chromium" >&2
  fi
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# Install torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[dev]"
