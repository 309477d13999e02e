#!/usr/bin/env bash
# Makes the head's MLflow server run as a system user of its own, `raytrain-mlflow`, so that the
# Ray user (every job) cannot read MLflow's admin password, its database password or its TLS key.
# onprem.yaml and gcp.yaml run it as head_setup_commands, as the Ray (SSH) user, with the MLflow
# settings of cluster_configs/start_mlflow.sh in its environment. As root (through `sudo -n`,
# which the first `ray up` needs, passwordless) it
#   - creates the system user raytrain-mlflow (home /var/lib/raytrain-mlflow, mode 700, no login);
#   - installs MLflow from its hash-pinned lock (requirements/mlflow-server.txt: mlflow[auth],
#     psycopg, google-cloud-storage; `make locks`)
#     into the venv /opt/raytrain-mlflow, owned by root, from ~/raytrain-wheelhouse when it holds
#     wheels (air-gapped), else from the package index;
#   - copies start_mlflow.sh there and writes the settings (/opt/raytrain-mlflow/settings, no
#     secrets in it) and the wrapper /opt/raytrain-mlflow/bin/raytrain-mlflow, which runs
#     start_mlflow.sh as raytrain-mlflow;
#   - moves the Ray user's ~/.pgpass and ~/mlflow/admin_password (an earlier setup's) into
#     raytrain-mlflow's home, mode 600;
#   - writes /etc/sudoers.d/raytrain-mlflow: the Ray user may run exactly
#     `sudo -n /opt/raytrain-mlflow/bin/raytrain-mlflow start` and `... stop`, nothing else.
# Run again with the same scripts and settings and nothing to move, it needs no sudo: once the
# first `ray up` is done, take the Ray user's general sudo right away (docs/security.md).
set -euo pipefail

name=raytrain-mlflow
prefix=/opt/raytrain-mlflow
server_home=/var/lib/raytrain-mlflow
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
# What start_mlflow.sh reads that may be set here; the passwords never are (they are generated
# in raytrain-mlflow's home).
SETTINGS=(MLFLOW_HOST MLFLOW_PORT MLFLOW_BACKEND_STORE_URI MLFLOW_PGPASS_SECRET
  MLFLOW_AUTH_DATABASE_URI MLFLOW_ARTIFACTS_DESTINATION MLFLOW_DEFAULT_PERMISSION
  MLFLOW_ALLOWED_HOSTS MLFLOW_WORKERS MLFLOW_SERVER_ENABLE_JOB_EXECUTION MLFLOW_TLS)

settings() {
  local key
  for key in "${SETTINGS[@]}"; do
    if [ -n "${!key:-}" ]; then printf 'export %s=%q\n' "$key" "${!key}"; fi
  done
}
# Everything the installed state depends on: a setup with the same digest has nothing to do.
digest() {
  { settings; cat "$here/start_mlflow.sh" "$here/mlflow_user.sh" \
      "$repo/requirements/mlflow-server.txt"; echo "$1"; } | sha256sum | cut -d' ' -f1
}

if [ "$(id -u)" != 0 ]; then
  ray_user=$(id -un)
  if [ "$(cat "$prefix/setup.sha256" 2> /dev/null)" = "$(digest "$ray_user")" ] &&
    [ ! -e "$HOME/.pgpass" ] && [ ! -e "$HOME/mlflow/admin_password" ]; then
    echo "mlflow_user.sh: MLflow's user $name is set up"
    exit 0
  fi
  if ! sudo -n true 2> /dev/null; then
    echo "mlflow_user.sh: setting up MLflow's own user ($name) needs passwordless sudo for" \
      "$ray_user on the head, this once (docs/how-to/on-prem.md)" >&2
    exit 1
  fi
  passed=()
  for key in "${SETTINGS[@]}"; do
    if [ -n "${!key:-}" ]; then passed+=("$key=${!key}"); fi
  done
  exec sudo -n env RAYTRAIN_RAY_USER="$ray_user" "${passed[@]}" bash "$here/mlflow_user.sh"
fi

ray_user=${RAYTRAIN_RAY_USER:-${SUDO_USER:-}}
if [ -z "$ray_user" ] || [ "$ray_user" = root ]; then
  echo "mlflow_user.sh: run it as the Ray user (it uses sudo itself)" >&2
  exit 1
fi
ray_home=$(getent passwd "$ray_user" | cut -d: -f6)
umask 022

# The user and its home.
if ! getent passwd "$name" > /dev/null; then
  useradd --system --user-group --home-dir "$server_home" --create-home \
    --shell /usr/sbin/nologin "$name"
fi
mkdir -p "$server_home"
chown "$name:$name" "$server_home"
chmod 700 "$server_home"

# MLflow in a venv of root's: neither the Ray user nor the server's user can change its code.
[ -x "$prefix/bin/python" ] || python3.11 -m venv "$prefix"
pip=("$prefix/bin/python" -m pip install -q --disable-pip-version-check --require-hashes
  -r "$repo/requirements/mlflow-server.txt")
if ls "$ray_home"/raytrain-wheelhouse/*.whl > /dev/null 2>&1; then
  pip+=(--no-index --find-links "$ray_home/raytrain-wheelhouse")
fi
"${pip[@]}"
install -m 755 "$here/start_mlflow.sh" "$prefix/bin/start_mlflow.sh"
settings > "$prefix/settings.new" && chmod 644 "$prefix/settings.new"
mv -f "$prefix/settings.new" "$prefix/settings"
cat > "$prefix/bin/$name" <<WRAPPER
#!/bin/bash
# raytrain's MLflow server, run as the user $name: start or stop (cluster_configs/mlflow_user.sh
# wrote this; /etc/sudoers.d/$name lets $ray_user run it with sudo).
set -euo pipefail
case \${1:-} in start | stop) ;; *) echo "usage: sudo $prefix/bin/$name start|stop" >&2; exit 2 ;; esac
export PATH=$prefix/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/snap/bin
source $prefix/settings
export MLFLOW_SERVER_USER=$name MLFLOW_CALLER=$ray_user
cd /
exec bash $prefix/bin/start_mlflow.sh "\$1"
WRAPPER
chmod 755 "$prefix/bin/$name"

# The secrets: into the server user's home (mode 600), out of the Ray user's. Symbolic links
# are refused (root would copy what they point to).
move_secret() {  # FROM TO
  [ -e "$1" ] || return 0
  if [ -L "$1" ] || [ ! -f "$1" ]; then
    echo "mlflow_user.sh: $1 is not a plain file: not moved" >&2
    return 1
  fi
  install -d -o "$name" -g "$name" -m 700 "$(dirname "$2")"
  install -o "$name" -g "$name" -m 600 "$1" "$2"
  rm -f "$1"
  echo "mlflow_user.sh: moved $1 to $2"
}
move_secret "$ray_home/.pgpass" "$server_home/.pgpass"
if [ -e "$server_home/mlflow/admin_password" ]; then
  rm -f "$ray_home/mlflow/admin_password"
else
  move_secret "$ray_home/mlflow/admin_password" "$server_home/mlflow/admin_password"
fi

# A local artifacts folder is the server's.
artifacts=${MLFLOW_ARTIFACTS_DESTINATION:-}
if [[ $artifacts == /* ]]; then
  install -d -o "$name" -g "$name" -m 750 "$artifacts"
  chown "$name:$name" "$artifacts"
fi

# The Ray user may start and stop the server, nothing else.
rule=$(mktemp)
cat > "$rule" <<SUDOERS
# raytrain: $ray_user may start and stop MLflow's server (run as $name), nothing else.
$ray_user ALL=(root) NOPASSWD: $prefix/bin/$name start, $prefix/bin/$name stop
SUDOERS
visudo -cqf "$rule"
install -o root -g root -m 440 "$rule" "/etc/sudoers.d/$name"
rm -f "$rule"

digest "$ray_user" > "$prefix/setup.sha256"
chmod 644 "$prefix/setup.sha256"
echo "mlflow_user.sh: MLflow runs as $name; $ray_user may only start and stop it:" \
  "sudo -n $prefix/bin/$name start|stop"
