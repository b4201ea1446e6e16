# shellcheck shell=bash
# Shared by scripts/up and scripts/down: where the checkout, the token file and .env are,
# which compose files make up the stack, and one way to log. Sourcing it defines functions
# and MF_* variables and changes nothing else; mf_enter_checkout then moves into the checkout.
#
# Environment it reads (documented for users in scripts/up):
#   COMPOSE_PROJECT_NAME          passed on as -p
#   MODEL_FLEET_COMPOSE_OVERRIDE  extra compose files, colon-separated, added last
#   MODEL_FLEET_TOKEN_FILE        the webhook token (default secrets/model_fleet_token)
#   MODEL_FLEET_ENV_FILE          the compose env file (default .env); passed as --env-file

MF_TOOL=${0##*/}
MF_CALLER_DIR=$PWD
MF_ROOT=${BASH_SOURCE[0]%/*}/../..
[[ $MF_ROOT == "${BASH_SOURCE[0]}/../.." ]] && MF_ROOT=../..
MF_ROOT=$(cd "$MF_ROOT" && pwd)
MF_SHIPPED_FILES=(docker-compose.gpu.yml docker-compose.monitoring.yml)
# Health checks with start_interval need Docker Engine 25 or later (older engines reject them).
MF_START_INTERVAL_FILE=deploy/compose.start-interval.yml
MF_START_INTERVAL_MIN_ENGINE=25
MF_DEFAULT_TOKEN_FILE=$MF_ROOT/secrets/model_fleet_token

mf_log() { printf '[%s] %s\n' "$MF_TOOL" "$*" >&2; }

# A path the user gave is relative to where they started the command, not to the checkout.
mf_abspath() {
  case $1 in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s/%s\n' "$MF_CALLER_DIR" "$1" ;;
  esac
}

MF_TOKEN_FILE=$(mf_abspath "${MODEL_FLEET_TOKEN_FILE:-$MF_DEFAULT_TOKEN_FILE}")
MF_ENV_FILE=$(mf_abspath "${MODEL_FLEET_ENV_FILE:-$MF_ROOT/.env}")

mf_enter_checkout() { cd "$MF_ROOT" || exit 1; }

# The engine's major version (20 for 20.10.24+dfsg1), or nothing when it does not answer.
mf_engine_major() {
  local version
  version=$(docker version -f '{{.Server.Version}}' 2>/dev/null) || return 0
  version=${version%%.*}
  [[ $version =~ ^[0-9]+$ ]] && printf '%s\n' "$version"
  return 0
}

# The compose files, in order: the two shipped ones, the start_interval overlay when the
# engine takes it, the token file when it is not the default one, then the caller's overrides
# (last, so they have the final word). Sets MF_COMPOSE_FILES.
mf_compose_files() {
  MF_COMPOSE_FILES=("${MF_SHIPPED_FILES[@]}")
  if [[ -f $MF_START_INTERVAL_FILE ]]; then
    local major
    major=$(mf_engine_major)
    if [[ -n $major ]] && ((major >= MF_START_INTERVAL_MIN_ENGINE)); then
      MF_COMPOSE_FILES+=("$MF_START_INTERVAL_FILE")
    fi
  fi
  if [[ $MF_TOKEN_FILE != "$MF_DEFAULT_TOKEN_FILE" ]]; then
    mf_token_overlay
    MF_COMPOSE_FILES+=("$MF_TOKEN_OVERLAY")
  fi
  local extra
  local -a overrides
  IFS=: read -r -a overrides <<<"${MODEL_FLEET_COMPOSE_OVERRIDE:-}"
  for extra in "${overrides[@]}"; do
    [[ -n $extra ]] && MF_COMPOSE_FILES+=("$(mf_abspath "$extra")")
  done
  return 0
}

# The shipped file names the secret by its path in the checkout, and compose has no flag to
# point it elsewhere: a small overlay, removed when the script exits, does. Sets
# MF_TOKEN_OVERLAY (not called in $(...): the trap must belong to the script's own shell).
mf_token_overlay() {
  [[ -z ${MF_TOKEN_OVERLAY:-} ]] || return 0
  MF_TOKEN_OVERLAY=$(mktemp "${TMPDIR:-/tmp}/model-fleet-token.XXXXXX")
  trap 'rm -f "$MF_TOKEN_OVERLAY"' EXIT
  printf 'secrets:\n  model_fleet_token:\n    file: "%s"\n' "$MF_TOKEN_FILE" >"$MF_TOKEN_OVERLAY"
}

# The global arguments of every `docker compose` call. Sets MF_COMPOSE_ARGS.
mf_compose_args() {
  mf_compose_files
  MF_COMPOSE_ARGS=()
  local file
  for file in "${MF_COMPOSE_FILES[@]}"; do
    MF_COMPOSE_ARGS+=(-f "$file")
  done
  if [[ -n ${COMPOSE_PROJECT_NAME:-} ]]; then
    MF_COMPOSE_ARGS+=(-p "$COMPOSE_PROJECT_NAME")
  fi
  # Compose reads the checkout's .env by itself; any other file must be named.
  if [[ -n ${MODEL_FLEET_ENV_FILE:-} ]]; then
    MF_COMPOSE_ARGS+=(--env-file "$MF_ENV_FILE")
  fi
}

mf_compose() {
  [[ -n ${MF_COMPOSE_ARGS+set} ]] || mf_compose_args
  docker compose "${MF_COMPOSE_ARGS[@]}" "$@"
}
