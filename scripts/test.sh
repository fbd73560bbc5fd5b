#!/usr/bin/env bash
# Set up and run the whole test suite (the README's test command; .ci/run calls it).
#   ./scripts/test.sh [pytest args]
# Installs what the tests need and that this checkout cannot carry: the Python
# package with its test extra (in .venv, at the tested versions pinned in
# requirements/constraints.txt), socat / Xvfb / systemd-analyze / chromium +
# chromium-driver (the review page's browser test) from Debian when missing
# (root only), and the Medplum FHIR engine from npm.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

need_apt=()
command -v socat >/dev/null || need_apt+=(socat)
command -v Xvfb >/dev/null || need_apt+=(xvfb)
command -v xwd >/dev/null || need_apt+=(x11-apps)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
command -v chromium >/dev/null || need_apt+=(chromium)
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing ${need_apt[*]} (Debian)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "== warning: missing ${need_apt[*]}; install them (sudo apt-get install ${need_apt[*]}) or those tests fail" >&2
  fi
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
echo "== installing wbc-counter[test] into .venv (the tested versions: requirements/constraints.txt)"
python -m pip install -q -c requirements/constraints.txt --upgrade pip
python -m pip install -q -c requirements/constraints.txt -e ".[test]"

if command -v npm >/dev/null; then
  echo "== installing the Medplum FHIR engine for the sync tests (npm ci)"
  npm ci --prefix tests/fhir_server --no-audit --no-fund --loglevel=error
fi

echo "== ruff"
ruff check edge_app scripts tests setup.py
echo "== pytest"
set +e
python -m pytest "$@"  # not -q: the header names the CPU and its SIMD features
rc=$?
set -e
if [ $rc -eq 5 ]; then
  echo "pytest collected no tests: treating as a failure" >&2
  exit 1
fi
exit $rc
