#!/usr/bin/env bash
# Install swarmd as a systemd service. Idempotent: run it again to upgrade; it never overwrites an existing
# config file or swarm key.
#
#   sudo ./scripts/install.sh [--key FILE] [--no-venv] [--no-start] [--root DIR]
#
#   --key FILE   the swarm key to install (from `swarmctl keygen` on the first machine; every machine of a
#                swarm needs the same key). Without it a new key is generated. An existing
#                /etc/swarmd/swarm.key is never replaced.
#   --no-venv    leave /opt/swarmd/venv as it is (skip scripts/setup.sh and the package install)
#   --no-start   enable the service but do not start it now
#   --root DIR   install into DIR instead of / (also: DESTDIR=DIR); systemctl then only enables offline
#
# What it does: /opt/swarmd/venv (scripts/setup.sh with SWARMD_VENV, then swarmd itself installed into it,
# not as an editable link into this checkout, which the service's ProtectHome= may hide),
# /etc/systemd/system/swarmd.service, /etc/swarmd/swarmd.toml (from systemd/swarmd.toml),
# /etc/swarmd/swarm.key (mode 0600), the system user and group "swarmd" (group members may use the API
# socket), then `systemctl daemon-reload` and `systemctl enable --now swarmd` when systemd runs this machine.
# Environment: SWARMCTL, the swarmctl used for keygen (default: the venv's, else this checkout's).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)

ROOT=${DESTDIR:-/}
KEY=""
NO_VENV=0
NO_START=0
usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --key) KEY=${2:?--key needs a file}; shift 2 ;;
    --key=*) KEY=${1#--key=}; shift ;;
    --root) ROOT=${2:?--root needs a directory}; shift 2 ;;
    --root=*) ROOT=${1#--root=}; shift ;;
    --no-venv) NO_VENV=1; shift ;;
    --no-start) NO_START=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
ROOT=$(realpath -m "$ROOT")
P=${ROOT%/}  # prefix for every installed path ("" for /)
VENV=/opt/swarmd/venv
ETC=/etc/swarmd
IS_ROOT=0; if [ "$(id -u)" = 0 ]; then IS_ROOT=1; fi
say() { echo "install.sh: $*"; }

if [ -n "$KEY" ] && [ ! -r "$KEY" ]; then
  echo "install.sh: cannot read key file $KEY" >&2
  exit 2
fi
if [ -z "$P" ] && [ "$IS_ROOT" = 0 ]; then
  echo "install.sh: run as root (or with --root DIR)" >&2
  exit 2
fi
if [ -n "$P" ] && [ "$NO_VENV" = 0 ]; then
  # A venv records its own path (scripts' #! lines, pyvenv.cfg): one built under DIR would not run at /opt.
  echo "install.sh: --root needs --no-venv (build the venv at $VENV on the target itself)" >&2
  exit 2
fi

# 1. The virtual environment.
if [ "$NO_VENV" = 1 ]; then
  [ -x "$P$VENV/bin/swarmd" ] || say "warning: --no-venv, and $P$VENV/bin/swarmd does not exist yet"
else
  SWARMD_VENV="$P$VENV" "$REPO/scripts/setup.sh"
  # setup.sh installs swarmd editable (a link to this checkout); the service gets its own copy.
  "$P$VENV/bin/python" -m pip install -q --no-deps --force-reinstall "$REPO"
  say "swarmd installed in $P$VENV"
fi

# 2. The user and group "swarmd" (DynamicUser= in the unit uses them when they exist).
if [ -z "$P" ] && getent passwd swarmd >/dev/null; then
  :
elif [ "$IS_ROOT" = 0 ]; then
  say "warning: not root: create the user and group swarmd in $ROOT yourself (or run this as root)"
elif command -v systemd-sysusers >/dev/null; then
  mkdir -p "$P/etc/sysusers.d"
  echo 'u swarmd - "swarmd LLM swarm daemon" / /usr/sbin/nologin' > "$P/etc/sysusers.d/swarmd.conf"
  systemd-sysusers --root="$ROOT" "$P/etc/sysusers.d/swarmd.conf"
elif [ -z "$P" ]; then
  getent group swarmd >/dev/null || groupadd --system swarmd
  useradd --system --gid swarmd --no-create-home --home-dir / --shell /usr/sbin/nologin swarmd
else
  say "warning: no systemd-sysusers: create the user and group swarmd in $ROOT yourself"
fi

# 3. The unit (always refreshed: it belongs to this version) and the config (only when missing).
install -d -m 0755 "$P/etc/systemd/system"
[ -d "$P$ETC" ] || install -d -m 0755 "$P$ETC"  # an existing /etc/swarmd keeps its mode
if ! cmp -s "$REPO/systemd/swarmd.service" "$P/etc/systemd/system/swarmd.service"; then
  install -m 0644 "$REPO/systemd/swarmd.service" "$P/etc/systemd/system/swarmd.service"
  say "installed /etc/systemd/system/swarmd.service"
fi
if [ -e "$P$ETC/swarmd.toml" ]; then
  cmp -s "$REPO/systemd/swarmd.toml" "$P$ETC/swarmd.toml" ||
    say "keeping $ETC/swarmd.toml (compare with systemd/swarmd.toml for new options)"
else
  install -m 0644 "$REPO/systemd/swarmd.toml" "$P$ETC/swarmd.toml"
  say "installed $ETC/swarmd.toml"
fi

# 4. The swarm key: root-only; systemd hands it to the service as a credential. Never replaced.
keygen() {
  if [ -n "${SWARMCTL:-}" ]; then
    "$SWARMCTL" keygen
  elif [ -x "$P$VENV/bin/swarmctl" ]; then
    "$P$VENV/bin/swarmctl" keygen
  else  # swarmctl is standard library only: run it from this checkout
    PYTHONPATH="$REPO" "${PYTHON:-python3}" -m swarmd.cli.swarmctl keygen
  fi
}
if [ -L "$P$ETC/swarm.key" ]; then
  echo "install.sh: $ETC/swarm.key is a symbolic link; replace it with the key file itself (mode 0600)" >&2
  exit 1
elif [ -e "$P$ETC/swarm.key" ]; then
  if [ -n "$KEY" ] && ! cmp -s "$KEY" "$P$ETC/swarm.key"; then
    echo "install.sh: $ETC/swarm.key exists and differs from $KEY; keeping it (remove it first to replace it)" >&2
    exit 1
  fi
  chmod 0600 "$P$ETC/swarm.key"
else
  tmp=$(mktemp "$P$ETC/.swarm.key.XXXXXX")
  trap 'rm -f "$tmp"' EXIT
  chmod 0600 "$tmp"
  if [ -n "$KEY" ]; then
    cat "$KEY" > "$tmp"
    say "installed $ETC/swarm.key from $KEY"
  else
    keygen > "$tmp"
    say "generated $ETC/swarm.key: copy it (same path, mode 0600) to every other machine of this swarm"
  fi
  [ -s "$tmp" ] || { echo "install.sh: empty swarm key" >&2; exit 1; }
  mv -n "$tmp" "$P$ETC/swarm.key"  # -n: a key that appeared meanwhile is never replaced
  trap - EXIT
fi
if [ "$IS_ROOT" = 1 ]; then chown root:root "$P$ETC/swarm.key"; fi

# 5. systemd: enable (and start) the service.
if [ -n "$P" ]; then
  if command -v systemctl >/dev/null; then
    systemctl --root="$ROOT" enable swarmd.service >/dev/null 2>&1 || say "warning: systemctl --root enable failed"
  fi
  say "installed into $ROOT"
elif [ -d /run/systemd/system ]; then  # systemd runs this machine (sd_booted)
  systemctl daemon-reload
  if [ "$NO_START" = 1 ]; then
    systemctl enable swarmd.service
    say "enabled swarmd.service; start it with: systemctl start swarmd"
  else
    was_active=0; systemctl is-active --quiet swarmd.service && was_active=1
    systemctl enable --now --no-block swarmd.service  # READY=1 may take minutes (the first model conversion)
    if [ "$was_active" = 1 ]; then say "swarmd was already running: systemctl restart swarmd to use this version"; fi
    say "started; follow it with: journalctl -u swarmd -f; check it with: $VENV/bin/swarmctl status"
  fi
  say "add users to the group swarmd to let them use the API socket: usermod -aG swarmd USER"
else
  say "systemd is not running here: not enabling or starting swarmd.service"
fi
