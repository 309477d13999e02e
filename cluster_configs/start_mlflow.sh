#!/usr/bin/env bash
# Starts raytrain's MLflow tracking server with MLflow's basic-auth app: every request needs a
# user name and password. Every cluster config runs this script on the head (ray up), and the
# Kubernetes server pod runs it too; docs/how-to/tracking-server.md explains the whole setup.
#
# Settings (environment variables; all optional):
#   MLFLOW_HOST                   address to listen on. Default: the machine's first address
#                                 (`hostname -I`); set it when the workers reach another one.
#   MLFLOW_PORT                   5000
#   MLFLOW_BACKEND_STORE_URI      runs and model registry. Default sqlite:///$MLFLOW_HOME/mlflow.db
#                                 (lost with the disk); a cluster that should keep its runs names
#                                 PostgreSQL: postgresql://USER@HOST:5432/mlflow. The database
#                                 password never goes in the URI: it is read from ~/.pgpass
#                                 (mode 600) or PGPASSWORD, the PostgreSQL client's own places.
#   MLFLOW_PGPASS_SECRET          on GCP: a Secret Manager secret holding ~/.pgpass's line(s)
#                                 (HOST:5432:*:USER:PASSWORD), fetched with the VM's service
#                                 account (Secret Manager's REST API) into ~/.pgpass on each start
#   MLFLOW_AUTH_DATABASE_URI      the users and permissions. Default
#                                 sqlite:///$MLFLOW_HOME/basic_auth.db; on PostgreSQL, a database
#                                 of its own: postgresql://USER@HOST:5432/mlflow_auth
#   MLFLOW_ARTIFACTS_DESTINATION  models and files: gs://BUCKET/mlflow or a shared folder.
#                                 Default $MLFLOW_HOME/artifacts
#   MLFLOW_DEFAULT_PERMISSION     what every signed-in user may do on experiments and models
#                                 others created: READ (default), or NO_PERMISSIONS. EDIT (log
#                                 runs, register versions, move the champion alias) would let any
#                                 user plant a model that serving and export load; grant it per
#                                 experiment or model instead (docs/how-to/tracking-server.md). The jobs user
#                                 may edit every experiment and model; deleting and granting stay
#                                 with their creator and the admin.
#   MLFLOW_ALLOWED_HOSTS          Host headers the server accepts. Default: MLFLOW_HOST and
#                                 localhost (an SSH tunnel or port-forward)
#   MLFLOW_WORKERS                server processes, 4 by default
#   MLFLOW_AUTH_CACHE_TTL_S       seconds a server process trusts a password it checked: 60 by
#                                 default, 0 to check every request. Each check is a scrypt hash
#                                 (~0.1 s of CPU), and a run signs in on every request (its
#                                 epochs, parameters, files, registry calls): without the cache
#                                 the server's CPU went to hashing. A changed or deleted
#                                 password can still work for up to this long.
#   MLFLOW_SERVER_ENABLE_JOB_EXECUTION   MLflow's GenAI job runner: false by default (unused)
#   MLFLOW_HOME                   the server's own files. Default ~/mlflow
#   MLFLOW_AUTH_ADMIN_PASSWORD    the admin's password; default: generated once into
#                                 $MLFLOW_HOME/admin_password (mode 600)
#   MLFLOW_JOBS_PASSWORD          the password of the user `raytrain-jobs` that jobs and Ray
#                                 workers log in as; default: generated once
#   MLFLOW_FOREGROUND=1           run the server in this process (a container's command) instead
#                                 of detached
#   MLFLOW_TLS=1                  serve HTTPS: a CA and a server certificate for MLFLOW_HOST (plus
#                                 localhost) are made with openssl on the first start, in
#                                 $MLFLOW_HOME/tls (keys mode 600, never copied); the CA's
#                                 certificate is also written to ~/.mlflow/ca.pem, which clients
#                                 verify the server with (raytrain sets MLFLOW_TRACKING_SERVER_CERT_PATH
#                                 from it) and the cluster configs copy to each worker
#   MLFLOW_SERVER_USER            run the server as this system user (cluster_configs/mlflow_user.sh
#                                 makes `raytrain-mlflow`): started as root (sudo, through the
#                                 wrapper mlflow_user.sh installs), the script runs itself again as
#                                 that user, whose home keeps every secret, then hands the public
#                                 files (tracking_uri, the jobs' credentials, ca.pem) to
#                                 MLFLOW_CALLER (default: SUDO_USER), written as that user
#
# Usage: start_mlflow.sh [start|stop]   (start by default; stop ends the server it started)
#
# What it writes (mode 600, in folders of mode 700):
#   $MLFLOW_HOME/admin_password   the user `admin` (every right; adds users): for the UI
#   ~/.mlflow/credentials         MLflow's own credentials file, user `raytrain-jobs`: every MLflow
#                                 client on this machine (raytrain jobs, Ray Train workers) logs
#                                 in with it; the cluster configs copy it to each worker
#                                 (cluster_synced_files)
#   $MLFLOW_HOME/tracking_uri     the URI for experiments: http://HOST:PORT (https with MLFLOW_TLS)
#   $MLFLOW_HOME/server.log, server.pid
# Passwords are never printed, never on a command line and never in a URI. The script is
# idempotent: run again, it leaves a running server alone. On each start it sets the two users'
# passwords in the user database to those files, so a new head on a kept database still works.
set -euo pipefail
umask 077

action=${1:-start}
case $action in
  start | stop) ;;
  *) echo "usage: start_mlflow.sh [start|stop]" >&2; exit 2 ;;
esac

# As root for a server user: run again as that user, then hand its public files to the caller.
if [ -n "${MLFLOW_SERVER_USER:-}" ] && [ "$(id -un)" != "$MLFLOW_SERVER_USER" ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "start_mlflow.sh: MLFLOW_SERVER_USER=$MLFLOW_SERVER_USER needs root:" \
      "sudo /opt/raytrain-mlflow/bin/raytrain-mlflow $action" >&2
    exit 1
  fi
  server_home=$(getent passwd "$MLFLOW_SERVER_USER" | cut -d: -f6)
  env HOME="$server_home" USER="$MLFLOW_SERVER_USER" LOGNAME="$MLFLOW_SERVER_USER" \
    runuser -u "$MLFLOW_SERVER_USER" -- bash "$0" "$action"
  caller=${MLFLOW_CALLER:-${SUDO_USER:-}}
  if [ "$action" = stop ] || [ -z "$caller" ] || [ "$caller" = root ]; then exit 0; fi
  caller_home=$(getent passwd "$caller" | cut -d: -f6)
  server_files=${MLFLOW_HOME:-$server_home/mlflow}
  # Written by the caller's own processes (never root into a folder the caller owns).
  hand_over() {  # SOURCE DEST (relative to the caller's home) MODE
    [ -f "$1" ] || return 0
    env HOME="$caller_home" runuser -u "$caller" -- sh -c 'umask 077
      mkdir -p "$HOME/$(dirname "$1")" && cat > "$HOME/$1.new" && chmod "$2" "$HOME/$1.new" &&
      mv -f "$HOME/$1.new" "$HOME/$1"' sh "$2" "$3" < "$1"
  }
  hand_over "$server_home/.mlflow/credentials" .mlflow/credentials 600
  hand_over "$server_files/tracking_uri" mlflow/tracking_uri 644
  if [ -f "$server_files/tls/ca.pem" ]; then
    hand_over "$server_files/tls/ca.pem" .mlflow/ca.pem 644
  else
    env HOME="$caller_home" runuser -u "$caller" -- rm -f "$caller_home/.mlflow/ca.pem"
  fi
  exit 0
fi

home=${MLFLOW_HOME:-$HOME/mlflow}
host=${MLFLOW_HOST:-$(hostname -I | awk '{print $1}')}
port=${MLFLOW_PORT:-5000}
backend=${MLFLOW_BACKEND_STORE_URI:-sqlite:///$home/mlflow.db}
auth_db=${MLFLOW_AUTH_DATABASE_URI:-sqlite:///$home/basic_auth.db}
artifacts=${MLFLOW_ARTIFACTS_DESTINATION:-$home/artifacts}
permission=${MLFLOW_DEFAULT_PERMISSION:-READ}
auth_cache_ttl=${MLFLOW_AUTH_CACHE_TTL_S:-60}
allowed=${MLFLOW_ALLOWED_HOSTS:-$host,$host:$port,localhost,localhost:*,127.0.0.1,127.0.0.1:*}
jobs_user=raytrain-jobs
credentials=$HOME/.mlflow/credentials
tls=$home/tls
scheme=http
[ "${MLFLOW_TLS:-}" = 1 ] && scheme=https

if [ "$action" = stop ]; then
  pid=$(cat "$home/server.pid" 2> /dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2> /dev/null; then
    kill -- -"$pid" 2> /dev/null || kill "$pid"
    for _ in $(seq 30); do kill -0 "$pid" 2> /dev/null || break; sleep 1; done
    echo "MLflow stopped"
  else
    echo "MLflow is not running"
  fi
  rm -f "$home/server.pid"
  exit 0
fi

if [ -z "$host" ]; then
  echo "start_mlflow.sh: no address to listen on: set MLFLOW_HOST" >&2
  exit 1
fi
case $auth_cache_ttl in
  '' | *[!0-9]*)
    echo "start_mlflow.sh: MLFLOW_AUTH_CACHE_TTL_S must be a whole number of seconds," \
      "not '$auth_cache_ttl'" >&2
    exit 1 ;;
esac
for uri in "$backend" "$auth_db"; do
  case $uri in
    *://*:*@*) echo "start_mlflow.sh: a database URI holds a password: put it in ~/.pgpass" \
      "(mode 600) or PGPASSWORD instead" >&2; exit 1 ;;
  esac
done
if [ -n "${MLFLOW_PGPASS_SECRET:-}" ]; then
  # Secret Manager's REST API with the VM's service account (google-auth, which MLflow's GCS
  # client brings): no gcloud, whose snap refuses homes outside /home (raytrain-mlflow's).
  python - "$MLFLOW_PGPASS_SECRET" > "$HOME/.pgpass.new" <<'EOF'
import base64
import sys

import google.auth
from google.auth.transport.requests import AuthorizedSession

credentials, project = google.auth.default(
    scopes=["https://www.googleapis.com/auth/cloud-platform"]
)
name = sys.argv[1] if "/" in sys.argv[1] else f"projects/{project}/secrets/{sys.argv[1]}"
url = f"https://secretmanager.googleapis.com/v1/{name}/versions/latest:access"
answer = AuthorizedSession(credentials).get(url, timeout=60)
answer.raise_for_status()
sys.stdout.write(base64.b64decode(answer.json()["payload"]["data"]).decode())
EOF
  mv "$HOME/.pgpass.new" "$HOME/.pgpass"
fi
mkdir -p "$home" "$HOME/.mlflow"
chmod 700 "$home" "$HOME/.mlflow"
echo "$scheme://$host:$port" > "$home/tracking_uri"
chmod 644 "$home/tracking_uri"

tls_options=()
if [ "$scheme" = https ]; then
  # A CA of this server's own, once; a server certificate for the address it listens on, made
  # again when that changes. Only the CA's certificate leaves this folder.
  mkdir -p "$tls"
  chmod 700 "$tls"
  if [ ! -s "$tls/ca.pem" ] || [ ! -s "$tls/ca.key" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
      -subj "/CN=raytrain MLflow CA $(hostname)" -keyout "$tls/ca.key" -out "$tls/ca.pem" \
      -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" 2> /dev/null
    rm -f "$tls/server.pem"
  fi
  if [[ $host =~ ^[0-9.]+$|: ]]; then san="IP:$host"; else san="DNS:$host"; fi
  san="$san,DNS:localhost,IP:127.0.0.1"
  if [ ! -s "$tls/server.pem" ] || [ "$(cat "$tls/server.san" 2> /dev/null)" != "$san" ]; then
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -subj "/CN=$host" -keyout "$tls/server.key" -out "$tls/server.csr" 2> /dev/null
    printf 'subjectAltName=%s\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' \
      "$san" > "$tls/server.ext"
    openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" \
      -CAcreateserial -days 825 -sha256 -extfile "$tls/server.ext" -out "$tls/server.pem" \
      2> /dev/null
    echo "$san" > "$tls/server.san"
  fi
  chmod 600 "$tls/ca.key" "$tls/server.key"
  chmod 644 "$tls/ca.pem" "$tls/server.pem"
  cp "$tls/ca.pem" "$HOME/.mlflow/ca.pem"
  chmod 644 "$HOME/.mlflow/ca.pem"
  tls_options=(--ssl-keyfile "$tls/server.key" --ssl-certfile "$tls/server.pem")
else
  rm -f "$HOME/.mlflow/ca.pem"
fi

new_secret() { python -c 'import secrets; print(secrets.token_urlsafe(32))'; }
healthy() {
  python -c 'import ssl, sys, urllib.request
context = ssl.create_default_context(cafile=sys.argv[2]) if sys.argv[2] else None
urllib.request.urlopen(sys.argv[1], timeout=5, context=context)' \
    "$scheme://$host:$port/health" "$([ "$scheme" = https ] && echo "$tls/ca.pem")" \
    > /dev/null 2>&1
}
if [ -n "${MLFLOW_AUTH_ADMIN_PASSWORD:-}" ]; then
  printf '%s\n' "$MLFLOW_AUTH_ADMIN_PASSWORD" > "$home/admin_password"
elif [ ! -s "$home/admin_password" ]; then
  new_secret > "$home/admin_password"
fi
[ -s "$home/flask_secret_key" ] || new_secret > "$home/flask_secret_key"
jobs_password=${MLFLOW_JOBS_PASSWORD:-}
if [ -z "$jobs_password" ] && [ -s "$credentials" ]; then
  jobs_password=$(sed -n 's/^mlflow_tracking_password *= *//p' "$credentials")
fi
jobs_password=${jobs_password:-$(new_secret)}
printf '[mlflow]\nmlflow_tracking_username = %s\nmlflow_tracking_password = %s\n' \
  "$jobs_user" "$jobs_password" > "$credentials"
chmod 600 "$credentials" "$home/admin_password" "$home/flask_secret_key"

# MLflow's auth app reads its settings from this file; no password in it.
cat > "$home/basic_auth.ini" <<EOF
[mlflow]
default_permission = $permission
database_uri = $auth_db
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = $auth_cache_ttl
EOF

if healthy; then
  echo "MLflow is already running at $scheme://$host:$port"
  exit 0
fi

# The users, before the server starts (it would create the admin itself only in an empty user
# database): the passwords go to Python through its environment, never its command line.
ADMIN_PASSWORD=$(cat "$home/admin_password") JOBS_PASSWORD=$jobs_password AUTH_DB=$auth_db \
JOBS_USER=$jobs_user python - <<'EOF'
import os

from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

store = SqlAlchemyStore()
store.init_db(os.environ["AUTH_DB"])
for name, password, admin in (
    ("admin", os.environ["ADMIN_PASSWORD"], True),
    (os.environ["JOBS_USER"], os.environ["JOBS_PASSWORD"], False),
):
    if store.has_user(name):
        store.update_user(name, password=password, is_admin=admin)
    else:
        store.create_user(name, password, is_admin=admin)
# Jobs log runs and register versions in every experiment and model, whoever created it; other
# users read them (default_permission) unless granted more.
for kind in ("experiment", "registered_model"):
    store.grant_user_permission(os.environ["JOBS_USER"], kind, "*", "EDIT")
EOF

export MLFLOW_AUTH_CONFIG_PATH=$home/basic_auth.ini
MLFLOW_FLASK_SERVER_SECRET_KEY=$(cat "$home/flask_secret_key")
export MLFLOW_FLASK_SERVER_SECRET_KEY
# MLflow 3's job runner (GenAI scorers and trace roll-ups, which raytrain does not use) would add
# three huey consumer processes with 25 polling threads beside the server, on the head's CPUs.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}
server=(mlflow server --app-name basic-auth --host "$host" --port "$port"
  --backend-store-uri "$backend" --artifacts-destination "$artifacts"
  --allowed-hosts "$allowed" --workers "${MLFLOW_WORKERS:-4}"
  --uvicorn-opts "--timeout-worker-healthcheck 60 ${tls_options[*]}")
if [ "${MLFLOW_FOREGROUND:-}" = 1 ]; then
  exec "${server[@]}"
fi
# Detached, all output in server.log: the SSH session of `ray up` must not wait for it. Workers
# that start slowly (a busy head) are given a minute, not uvicorn's 5 s, before being killed.
setsid nohup "${server[@]}" >> "$home/server.log" 2>&1 < /dev/null &
echo $! > "$home/server.pid"
for _ in $(seq 180); do
  if healthy; then
    echo "MLflow (sign-in required) is running at $scheme://$host:$port"
    exit 0
  fi
  if ! kill -0 "$(cat "$home/server.pid")" 2> /dev/null; then break; fi
  sleep 1
done
echo "start_mlflow.sh: the MLflow server did not start; the end of $home/server.log:" >&2
tail -n 20 "$home/server.log" >&2
exit 1
