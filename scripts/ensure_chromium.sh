#!/usr/bin/env bash
# Make sure a system Chromium exists: Playwright's own browser download is not
# available everywhere, so the project drives the distribution's Chromium.
# Debian/Ubuntu as root: installed with apt-get. Elsewhere: a clear message, and
# the browser tests skip with the same reason.
set -euo pipefail
for name in chromium chromium-browser google-chrome google-chrome-stable; do
  if command -v "$name" >/dev/null 2>&1; then exit 0; fi
done
if [ -n "${WEBSYNTHESIS_CHROMIUM:-}" ] && [ -x "$WEBSYNTHESIS_CHROMIUM" ]; then exit 0; fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "Installing Debian's chromium (needed for the live-browser environment)..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq chromium >/dev/null
  command -v chromium >/dev/null && exit 0
fi
cat >&2 <<MSG
No Chromium found. Install your distribution's Chromium (Debian/Ubuntu: sudo apt-get
install chromium) or point WEBSYNTHESIS_CHROMIUM at a Chromium/Chrome binary.
Browser tests will be skipped until then.
MSG
exit 0
