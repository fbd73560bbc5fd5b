#!/usr/bin/env bash
# Install the WBC counter kiosk on a Jetson (JetPack 5 or 6): idempotent.
#
#   sudo scripts/install_jetson.sh [--dry-run] [--camera URI] [--wheels DIR]
#
# Every step first checks whether it is already done and only then changes
# something, so running it twice changes nothing the second time. --dry-run
# prints every step and what it would change, and changes nothing.
#
# It uses the system TensorRT (python3-libnvinfer from JetPack) and a pycuda
# built against the local CUDA: the virtual environment sees system packages,
# and pip's "tensorrt" package (a stub on Jetson) is never installed. Python
# packages are fetched at install time only (from --wheels DIR when given, for
# offline sites); at run time nothing is downloaded or built: the first-boot
# engine build (wbc-engine.service) works from the shipped ONNX and calibration
# set alone.
#
# Options:
#   --dry-run        print the steps and what would change; change nothing
#   --camera URI     camera for the kiosk (default v4l2:///dev/video0), kept in /etc/wbc-counter/kiosk.env
#   --wheels DIR     install Python packages from this folder only (pip --no-index)
#   --root DIR       install into a staging root (an image being prepared; used by the tests):
#                    users are created with useradd --prefix, units enabled with systemctl --root
#   --venv DIR       use this existing Python environment instead of creating /opt/wbc-counter/venv
#   --source DIR     the wbc-counter checkout to install (default: this script's repository)
#   --models DIR     the model release folder (default: <source>/models)
set -euo pipefail

USER_NAME=wbc
APP_DIR=/opt/wbc-counter
DATA_DIR=/var/lib/wbc-counter
CONF_DIR=/etc/wbc-counter
UNIT_DIR=/etc/systemd/system
UNITS=(wbc-counter.service wbc-engine.service wbc-sync.service wbc-sync.timer)
ENABLE=(wbc-engine.service wbc-counter.service wbc-sync.timer)
# import name -> pip requirement, as setup.py lists them (starlette, uvicorn, jinja2: the review page)
PY_MODULES=(numpy cv2 pydantic serial onnx starlette uvicorn jinja2)
PIP_PACKAGES=("numpy>=1.21" "opencv-python-headless>=4.5" "pydantic>=2.5" "pyserial>=3.5" "onnx>=1.12"
              "starlette>=0.37" "uvicorn>=0.29" "jinja2>=3.1")
DEFAULT_CAMERA=v4l2:///dev/video0

DRY_RUN=0
ROOT=/
CAMERA=""
WHEELS=""
VENV=""
SOURCE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODELS=""

die() { echo "install_jetson: error: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --root) ROOT="${2:?--root needs a folder}"; shift ;;
        --camera) CAMERA="${2:?--camera needs a URI}"; shift ;;
        --wheels) WHEELS="${2:?--wheels needs a folder}"; shift ;;
        --venv) VENV="${2:?--venv needs a folder}"; shift ;;
        --source) SOURCE="${2:?--source needs a folder}"; shift ;;
        --models) MODELS="${2:?--models needs a folder}"; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e 's/^# \{0,1\}//' -e '/^set -euo/d'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done

ROOT="$(cd "$ROOT" 2>/dev/null && pwd)" || die "--root folder does not exist"
[ -f "$SOURCE/edge_app/cli.py" ] || die "$SOURCE is not a wbc-counter checkout (no edge_app/cli.py)"
MODELS="${MODELS:-$SOURCE/models}"
STAGING=0
[ "$ROOT" != "/" ] && STAGING=1
R="${ROOT%/}"  # prefix for every path written
PREFIX=()
[ "$STAGING" = 1 ] && PREFIX=(--prefix "$ROOT")
if [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
    die "run as root (sudo), or try --dry-run"
fi
VENV_TARGET="${VENV:-$APP_DIR/venv}"
if [ -n "$VENV" ]; then VENV_PATH="$VENV"; else VENV_PATH="$R$APP_DIR/venv"; fi
PY="$VENV_PATH/bin/python"

STEP=0
TOTAL=12
CHANGES=0
UNITS_CHANGED=0

STEP_CHANGES=0
step() { STEP=$((STEP + 1)); STEP_CHANGES=0; printf '[%d/%d] %s: ' "$STEP" "$TOTAL" "$1"; }
ok() { echo "ok ($*)"; }
skip() { echo "skipped ($*)"; }
# change "what" cmd...: count it, then run it (or only say it in a dry run).
change() {
    local what="$1"; shift
    CHANGES=$((CHANGES + 1))
    STEP_CHANGES=$((STEP_CHANGES + 1))
    [ "$STEP_CHANGES" = 1 ] || printf '        '  # further changes of one step: indented lines
    if [ "$DRY_RUN" = 1 ]; then
        echo "would $what"
    else
        echo "$what"
        "$@"
    fi
}
systemctl_r() { if [ "$STAGING" = 1 ]; then systemctl --root="$ROOT" "$@"; else systemctl "$@"; fi; }
user_exists() {
    if [ "$STAGING" = 1 ]; then grep -q "^$USER_NAME:" "$R/etc/passwd" 2>/dev/null; else id -u "$USER_NAME" >/dev/null 2>&1; fi
}
in_group() {  # in_group GROUP: is the service user a member?
    if [ "$STAGING" = 1 ]; then
        grep -E "^$1:" "$R/etc/group" 2>/dev/null | cut -d: -f4 | tr ',' '\n' | grep -qx "$USER_NAME"
    else
        id -nG "$USER_NAME" 2>/dev/null | tr ' ' '\n' | grep -qx "$1"
    fi
}
tree_sha() { (cd "$1" && find edge_app -type f \( -name '*.py' -o -name '*.sql' \) | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1); }

echo "wbc-counter install: source $SOURCE, root $ROOT$([ "$DRY_RUN" = 1 ] && echo ', DRY RUN: nothing is changed')"

# 1. Platform: which JetPack (L4T R35 = JetPack 5, R36 = JetPack 6); TensorRT comes from it.
step "platform"
if [ -f "$R/etc/nv_tegra_release" ]; then
    ok "$(head -n1 "$R/etc/nv_tegra_release" | cut -d, -f1 | sed 's/^# //')"
else
    ok "not a Jetson: no TensorRT, the counter will run on the CPU (TFLite)"
fi

# 2. Service user in the video (camera, GPU) and dialout (serial LIS) groups.
step "user $USER_NAME"
if ! user_exists; then
    change "create system user $USER_NAME (groups video, dialout)" \
        useradd "${PREFIX[@]}" --system --user-group --no-create-home --home-dir "$DATA_DIR" \
        --shell /usr/sbin/nologin --groups video,dialout "$USER_NAME"
else
    missing=""
    for g in video dialout; do in_group "$g" || missing="$missing,$g"; done
    if [ -n "$missing" ]; then
        change "add $USER_NAME to ${missing#,}" usermod "${PREFIX[@]}" -a -G "${missing#,}" "$USER_NAME"
    else
        ok "exists, in video and dialout"
    fi
fi

# 3. Data dir (database, engines, models), owned by the service user, private.
step "data dir $DATA_DIR"
ids() { grep "^$USER_NAME:" "$R/etc/passwd" 2>/dev/null | cut -d: -f3,4; }  # uid:gid of the service user
todo=()
for d in "$DATA_DIR" "$DATA_DIR/engines" "$DATA_DIR/models"; do
    if [ ! -d "$R$d" ] || [ "$(stat -c '%u:%g:%a' "$R$d")" != "$(ids):750" ]; then todo+=("$d"); fi
done
mkdirs() {
    for d in "$@"; do
        install -d -m 0750 "$R$d"
        chown "$(ids)" "$R$d"
    done
}
if [ "${#todo[@]}" -gt 0 ]; then
    change "create/fix ${todo[*]} (owner $USER_NAME, mode 0750)" mkdirs "${todo[@]}"
else
    ok "exists, owned by $USER_NAME, mode 0750"
fi

# 4. Python environment: sees the system site-packages (JetPack's tensorrt, cv2, numpy).
step "python environment $VENV_TARGET"
if [ -x "$PY" ]; then
    ok "exists"
else
    change "create $VENV_TARGET (python3 -m venv --system-site-packages)" \
        python3 -m venv --system-site-packages "$VENV_PATH"
fi

# 5. Python packages the counter needs (never pip's tensorrt).
step "python packages"
# The versions the suite passed with (requirements/constraints.txt: aarch64 rows for JetPack, tflite-runtime
# with NumPy 1.x); a checkout without it installs the ranges alone.
LOCK="$SOURCE/requirements/constraints.txt"
PIN=()
[ -f "$LOCK" ] && PIN=(-c "$LOCK")
pip_install() {
    if [ -n "$WHEELS" ]; then "$PY" -m pip install "${PIN[@]}" --no-index --find-links "$WHEELS" "$@"
    else "$PY" -m pip install "${PIN[@]}" "$@"; fi
}
missing=()
if [ -x "$PY" ]; then
    for i in "${!PY_MODULES[@]}"; do
        "$PY" -c "import ${PY_MODULES[$i]}" 2>/dev/null || missing+=("${PIP_PACKAGES[$i]}")
    done
    "$PY" -c 'import sys; sys.exit(sys.version_info >= (3, 11))' && ! "$PY" -c 'import tomli' 2>/dev/null \
        && missing+=("tomli>=2.0")
    "$PY" -c 'import ai_edge_litert' 2>/dev/null || "$PY" -c 'import tflite_runtime' 2>/dev/null \
        || missing+=("$([ "$(uname -m)" = aarch64 ] && echo 'tflite-runtime>=2.13' || echo 'ai-edge-litert>=1.0')")
else
    missing=("${PIP_PACKAGES[@]}" "tomli>=2.0 (Python < 3.11)" "tflite-runtime>=2.13")
fi
if [ "${#missing[@]}" -gt 0 ]; then
    change "pip install ${missing[*]}${PIN[*]:+ (pinned by requirements/constraints.txt)}" pip_install "${missing[@]}"
else
    ok "numpy, cv2, pydantic, pyserial, onnx, starlette, uvicorn, jinja2, TFLite runtime present"
fi

# 6. TensorRT must be JetPack's, and pycuda built against the local CUDA.
step "tensorrt + pycuda"
trt_file="$([ -x "$PY" ] && "$PY" -c 'import tensorrt; print(tensorrt.__file__)' 2>/dev/null || true)"
if [ -z "$trt_file" ]; then
    skip "no TensorRT importable: CPU (TFLite) fallback; on a Jetson: apt-get install python3-libnvinfer"
elif case "$trt_file" in "$VENV_PATH"/*) true ;; *) false ;; esac; then
    die "TensorRT in $VENV_PATH comes from pip ($trt_file): remove it ('$PY -m pip uninstall -y tensorrt'); the system TensorRT (python3-libnvinfer) is used"
elif "$PY" -c 'import pycuda.driver' 2>/dev/null; then
    ok "system TensorRT $("$PY" -c 'import tensorrt; print(tensorrt.__version__)'), pycuda present"
else
    pip_pycuda() { (export PATH="/usr/local/cuda/bin:$PATH" CUDA_ROOT=/usr/local/cuda; pip_install pycuda); }
    change "pip install pycuda (compiles against /usr/local/cuda; install time only)" pip_pycuda
fi

# 7. The application code (root-owned: the service user cannot change it) and its launcher.
step "application $APP_DIR"
want="$(tree_sha "$SOURCE")"
have="$(cat "$R$APP_DIR/app/.source-sha256" 2>/dev/null || true)"
launcher="#!/bin/sh
# wbc-counter launcher (written by install_jetson.sh)
export PYTHONPATH=$APP_DIR/app\${PYTHONPATH:+:\$PYTHONPATH}
exec $VENV_TARGET/bin/python -m edge_app \"\$@\""
copy_app() {
    local new="$R$APP_DIR/app.new"
    rm -rf "$new"
    install -d -m 0755 "$new" "$R$APP_DIR/bin"
    (cd "$SOURCE" && find edge_app -type f \( -name '*.py' -o -name '*.sql' \) -print0 \
        | xargs -0 cp --parents -t "$new")
    echo "$want" > "$new/.source-sha256"
    chmod -R u=rwX,go=rX "$new"
    rm -rf "$R$APP_DIR/app"
    mv "$new" "$R$APP_DIR/app"
}
write_launcher() { printf '%s\n' "$launcher" > "$R$APP_DIR/bin/wbc-counter"; chmod 0755 "$R$APP_DIR/bin/wbc-counter"; }
if [ "$want" != "$have" ]; then
    change "copy edge_app to $APP_DIR/app" copy_app
else
    printf 'code up to date; '
fi
if [ "$(cat "$R$APP_DIR/bin/wbc-counter" 2>/dev/null || true)" != "$launcher" ]; then
    change "write launcher $APP_DIR/bin/wbc-counter" write_launcher
else
    ok "launcher up to date"
fi

# 8. The model release as a versioned folder; 'active' is set only on a first install
#    (later releases go through 'wbc-counter selftest --update-from DIR', which can roll back).
step "model"
if [ ! -f "$MODELS/manifest.json" ]; then
    skip "no model release in $MODELS (copy one later with: wbc-counter selftest --update-from DIR)"
else
    version="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' "$MODELS/manifest.json")"
    install_model() {
        PYTHONPATH="$SOURCE" "$PY" -c 'import sys; from edge_app.updates import install_version; install_version(sys.argv[1], sys.argv[2])' \
            "$MODELS" "$R$DATA_DIR/models"
        [ -L "$R$DATA_DIR/models/active" ] || ln -s "$version" "$R$DATA_DIR/models/active"
        chown -R -h "$(ids)" "$R$DATA_DIR/models"
    }
    if [ -d "$R$DATA_DIR/models/$version" ] && [ -L "$R$DATA_DIR/models/active" ]; then
        ok "$version installed, active -> $(readlink "$R$DATA_DIR/models/active")"
    else
        change "install model $version into $DATA_DIR/models (sha256-checked)" install_model
    fi
fi

# 9. Configuration: written once, never overwritten (a technician may have edited it).
step "config $CONF_DIR"
config="# wbc-counter kiosk configuration (see config.example.toml for every key)
[model]
dir = \"$DATA_DIR/models/active\"

[inference]
backend = \"auto\"
engine_dir = \"$DATA_DIR/engines\"

[kiosk]
device_id = \"$(cat "$R/etc/hostname" 2>/dev/null || hostname)\""
write_config() { install -d -m 0755 "$R$CONF_DIR"; printf '%s\n' "$config" > "$R$CONF_DIR/config.toml"; chmod 0644 "$R$CONF_DIR/config.toml"; }
write_env() { install -d -m 0755 "$R$CONF_DIR"; printf 'WBC_SOURCE=%s\n' "${CAMERA:-$DEFAULT_CAMERA}" > "$R$CONF_DIR/kiosk.env"; chmod 0644 "$R$CONF_DIR/kiosk.env"; }
did=0
if [ ! -f "$R$CONF_DIR/config.toml" ]; then change "write $CONF_DIR/config.toml" write_config; did=1; fi
current_cam="$(sed -n 's/^WBC_SOURCE=//p' "$R$CONF_DIR/kiosk.env" 2>/dev/null || true)"
if [ -z "$current_cam" ] || { [ -n "$CAMERA" ] && [ "$CAMERA" != "$current_cam" ]; }; then
    change "write $CONF_DIR/kiosk.env (camera ${CAMERA:-$DEFAULT_CAMERA})" write_env; did=1
fi
[ "$did" = 1 ] || ok "config.toml kept, camera $current_cam"

# 10. systemd units.
step "systemd units"
for u in "${UNITS[@]}"; do
    if ! cmp -s "$SOURCE/systemd/$u" "$R$UNIT_DIR/$u"; then
        change "install $UNIT_DIR/$u" install -D -m 0644 "$SOURCE/systemd/$u" "$R$UNIT_DIR/$u"
        UNITS_CHANGED=1
    fi
done
[ "$UNITS_CHANGED" = 1 ] || ok "all ${#UNITS[@]} up to date"

# 11. Reload systemd when units changed (not in a staging root: no systemd runs there).
step "daemon-reload"
if [ "$UNITS_CHANGED" = 0 ]; then
    ok "units unchanged"
elif [ "$STAGING" = 1 ] || [ ! -d /run/systemd/system ]; then
    skip "systemd is not running here; it reads the units at boot"
else
    change "systemctl daemon-reload" systemctl daemon-reload
fi

# 12. Enable at boot (started by the next boot, or now with: sudo systemctl start wbc-counter).
step "enable"
todo=()
for u in "${ENABLE[@]}"; do
    [ "$(systemctl_r is-enabled "$u" 2>/dev/null || true)" = enabled ] || todo+=("$u")
done
if [ "${#todo[@]}" -gt 0 ]; then
    change "enable ${todo[*]}" systemctl_r enable "${todo[@]}"
else
    ok "${ENABLE[*]} enabled"
fi

if [ "$DRY_RUN" = 1 ]; then
    echo "dry run: $CHANGES change(s) would be made"
else
    echo "done: $CHANGES change(s) made"
    [ "$CHANGES" = 0 ] || echo "next: reboot, or 'sudo systemctl start wbc-engine wbc-counter'; check with 'wbc-counter status'"
fi
