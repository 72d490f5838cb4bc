#!/usr/bin/env bash
# The whole test suite on a machine with only Rust: sets up what the tests beyond Rust need (a
# Python virtual environment under target/ with the official `openai` SDK, pinned; playwright-core,
# pinned, under tests/browser/; Debian's python3 and venv, Node.js, Chromium and redis-server when
# missing and this runs as root), checks formatting and lints, builds the whole workspace
# (bench/loadgen included), then runs every test, the ones marked `#[ignore]` for needing that
# set-up included (the SDK tests, the web pages in headless Chromium, screenshots in
# target/browser-screenshots/, and the limits shared through a real redis-server). Plain
# `cargo test` runs everything that needs Rust alone.
set -euo pipefail
cd "$(dirname "$0")/.."

OPENAI_VERSION=3.57.0
venv=target/test-venv

chromium=${INFERGATE_TEST_CHROMIUM:-/usr/bin/chromium}
missing=()
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3 python3-venv)
{ command -v node && command -v npm; } >/dev/null 2>&1 || missing+=(nodejs npm)
[ -x "$chromium" ] || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "scripts/test.sh: needs ${missing[*]} (Debian: apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi
if ! "$venv/bin/python" -c "import openai, sys; sys.exit(openai.__version__ != '$OPENAI_VERSION')" >/dev/null 2>&1; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "openai==$OPENAI_VERSION"
fi

# The browser tests' driver, pinned by tests/browser/package-lock.json; it needs Node.js 20 or later.
if [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
  echo "scripts/test.sh: playwright-core needs Node.js 20 or later, not $(node --version)" >&2
  exit 1
fi
playwright=$(node -p 'require("./tests/browser/package-lock.json").packages["node_modules/playwright-core"].version')
if [ "$(node -p 'try { require("./tests/browser/node_modules/playwright-core/package.json").version } catch { "" }')" != "$playwright" ]; then
  npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
fi

cargo --version
cargo fmt --all -- --check
cargo clippy --locked --all-targets --workspace -- -D warnings
cargo build --locked --workspace --all-targets
log=target/test-output.txt
INFERGATE_TEST_PYTHON="$PWD/$venv/bin/python" INFERGATE_TEST_NODE="$(command -v node)" INFERGATE_TEST_CHROMIUM="$chromium" \
  INFERGATE_TEST_REDIS="$(command -v redis-server)" \
  cargo test --locked --workspace -- --include-ignored 2>&1 | tee "$log"
# One closing line for the whole run (cargo prints one per test binary, the last often a doc-test
# binary with nothing in it).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
  END { printf "total: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
