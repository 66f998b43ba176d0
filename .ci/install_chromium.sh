#!/usr/bin/env bash
# Debian's chromium + chromedriver for tests/test_web_demo.py (headless end-to-end test of scripts/web_demo.py).
# Idempotent: does nothing when both are already installed. Runs as root (CI); no browser is downloaded by pip.
set -euo pipefail
if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium chromium-driver >/dev/null
/usr/bin/chromium --version
