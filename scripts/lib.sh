# Shared by scripts/test and scripts/demo. Source it; do not run it.

# Installs Debian's package $1.
install_debian_package() {
  echo "Installing $1 from Debian's packages..." >&2
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "$1" >/dev/null
}

# Installs Debian's package $2 if the command $1 is missing.
ensure_debian_package() {
  command -v "$1" >/dev/null 2>&1 && return 0
  install_debian_package "$2"
  command -v "$1" >/dev/null 2>&1 || { echo "$2 did not install" >&2; return 1; }
}

ensure_prosody() { ensure_debian_package prosody prosody; }

# ejabberdctl is in /usr/sbin, and runs the server as the ejabberd user:
# only root (or that user) may call it.
ensure_ejabberd() {
  [[ :$PATH: == *:/usr/sbin:* ]] || export PATH=$PATH:/usr/sbin
  ensure_debian_package ejabberdctl ejabberd
}

# Prints a TCP port on 127.0.0.1 that nothing listens on, from $1 upwards.
free_port() {
  local port=$1
  while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
  echo "$port"
}

# Waits until something listens on 127.0.0.1:$1 (at most $2 seconds).
wait_port() {
  local deadline=$((SECONDS + $2))
  until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.1
  done
}

# Makes sure `python3 -m venv` works (Debian's python3 needs python3-venv).
ensure_python_venv() {
  ensure_debian_package python3 python3
  python3 -c "import ensurepip, venv" 2>/dev/null || install_debian_package python3-venv
}

# Installs maturin (the Python package's build backend, for PyO3) from
# PyPI into target/py.
ensure_maturin() {
  [ "$(target/py/bin/maturin --version 2>/dev/null)" = "maturin 1.16.0" ] && return 0
  echo "Installing maturin from PyPI into target/py..." >&2
  [ -x target/py/bin/python ] || python3 -m venv target/py
  target/py/bin/python -m pip install --quiet "maturin==1.16.0"
}

# Builds the Python package (python/: the PyO3 module and the slixmpp
# plugin) from source into an abi3 wheel in target/wheels, with the dev
# profile in target/ (what the main build compiled is reused), and
# installs it into target/py for the end-to-end tests.
build_wheel() {
  rm -f target/wheels/xmpp_mls-*.whl
  target/py/bin/maturin build --locked --profile dev --strip --manifest-path python/Cargo.toml \
    --interpreter target/py/bin/python --out target/wheels
  target/py/bin/python -m pip install --quiet --force-reinstall --no-deps target/wheels/xmpp_mls-*.whl
}

# Installs slixmpp (a stock XMPP client library, for the interoperability
# test and the plugin's) from PyPI into target/py.
ensure_slixmpp() {
  target/py/bin/python -c "import slixmpp" 2>/dev/null && return 0
  echo "Installing slixmpp from PyPI into target/py..." >&2
  python3 -m venv target/py
  target/py/bin/pip install --quiet "slixmpp==1.17.0"
}

# Installs the Prometheus Python client (its OpenMetrics parser reads the
# metrics endpoint in tests/metrics.rs) from PyPI into target/py.
ensure_prometheus_client() {
  target/py/bin/python -c "import prometheus_client" 2>/dev/null && return 0
  echo "Installing prometheus_client from PyPI into target/py..." >&2
  [ -x target/py/bin/python ] || python3 -m venv target/py
  target/py/bin/python -m pip install --quiet "prometheus_client==0.26.0"
}

# A private XMPP server on free loopback ports, for the demo:
#   start_server prosody|ejabberd DIR DOMAIN COMPONENT SECRET
# serves DOMAIN from DIR with the component COMPONENT (shared secret
# SECRET), configured as the tests' fixtures are, and sets c2s_port and
# component_port. register_user USER PASSWORD and stop_server act on it.
start_server() {
  server_kind=$1 server_dir=$2 server_domain=$3
  local component=$4 secret=$5 template config api_port other_port
  c2s_port=$(free_port 15222)
  component_port=$(free_port 15347)
  api_port=$(free_port 15280)
  # The fixtures' second MLS service (keys.DOMAIN, a vault kept elsewhere):
  # configured, on a port of its own, and left unused here.
  other_port=$(free_port $((component_port + 1)))
  case $server_kind in
    prosody) template=tests/fixtures/prosody.cfg.lua.template config=$server_dir/prosody.cfg.lua
             mkdir -p "$server_dir/data" "$server_dir/certs" ;;
    ejabberd) template=tests/fixtures/ejabberd.yml.template config=$server_dir/conf/ejabberd.yml
              mkdir -p "$server_dir/conf" "$server_dir/log" "$server_dir/db" ;;
    *) echo "unknown server '$server_kind': prosody or ejabberd" >&2; return 2 ;;
  esac
  sed -e "s#@DIR@#$server_dir#g; s/@C2S_PORT@/$c2s_port/g; s/@COMPONENT_PORT@/$component_port/g" \
      -e "s/@API_PORT@/$api_port/g; s/@DOMAIN@/$server_domain/g; s/@COMPONENT@/$component/g" \
      -e "s/@OTHER_COMPONENT_PORT@/$other_port/g; s/@OTHER_COMPONENT@/keys.$server_domain/g; s/@OTHER_SECRET@/$secret-keys/g" \
      -e "s/@SECRET@/$secret/g" "$template" > "$config"
  if [ "$server_kind" = prosody ]; then
    prosody --config "$config" >/dev/null 2>&1 &
    server_pid=$!
  else
    # ejabberdctl's layout: its own ejabberdctl.cfg (or /etc/ejabberd's
    # applies) and inetrc, all owned by the ejabberd user.
    : > "$server_dir/conf/ejabberdctl.cfg"
    cp /etc/ejabberd/inetrc "$server_dir/conf/"
    chown -R ejabberd "$server_dir"
    ejabberd_node=xmppmls-demo-$$@localhost
    ejabberd_ctl start
  fi
  wait_port "$c2s_port" 30 && wait_port "$component_port" 30 || {
    echo "$server_kind did not start" >&2
    cat "$server_dir/prosody.err" "$server_dir/log/ejabberd.log" 2>/dev/null >&2
    return 1
  }
}

# ejabberdctl for the server of start_server.
ejabberd_ctl() {
  ejabberdctl --config-dir "$server_dir/conf" --logs "$server_dir/log" --spool "$server_dir/db" \
    --node "$ejabberd_node" "$@"
}

register_user() {
  case $server_kind in
    prosody) prosodyctl --config "$server_dir/prosody.cfg.lua" register "$1" "$server_domain" "$2" ;;
    ejabberd) ejabberd_ctl register "$1" "$server_domain" "$2" >/dev/null ;;
  esac
}

# Stops the server of start_server, if one runs.
stop_server() {
  case ${server_kind:-} in
    prosody) kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true ;;
    ejabberd) ejabberd_ctl stop >/dev/null 2>&1 || true ;;
  esac
  server_kind=
}

# PostgreSQL 15 from Debian's packages; the binaries are called directly,
# so the package's own cluster stays down and untouched.
PG_BIN=/usr/lib/postgresql/15/bin
ensure_postgresql() {
  [ -x "$PG_BIN/initdb" ] || install_debian_package postgresql-15
  [ -x "$PG_BIN/initdb" ] || { echo "postgresql-15 did not install" >&2; return 1; }
}

# Starts a private PostgreSQL cluster in a new directory (its socket
# there, TCP on a free port of 127.0.0.1, trust authentication) and sets
# PG_CONNINFO, the connection string of its `postgres` database (the
# tests take it as XMPP_TEST_POSTGRES). PostgreSQL refuses to run as root: as root, the server runs as
# the `postgres` user. Durable settings (fsync on): what is measured and
# tested is what an operator gets. Stop it with stop_postgresql.
start_postgresql() {
  PG_DIR=$(mktemp -d /tmp/xmpp-mls-pg.XXXXXX)
  local as=() port
  if [ "$(id -u)" -eq 0 ]; then chown postgres:postgres "$PG_DIR"; as=(runuser -u postgres --); fi
  port=$(free_port 25432)
  "${as[@]}" "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 --no-sync >"$PG_DIR/initdb.log"
  "${as[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$PG_DIR -c max_connections=400" start >/dev/null
  PG_CONNINFO="host=$PG_DIR port=$port user=postgres dbname=postgres"
}

stop_postgresql() {
  [ -n "${PG_DIR:-}" ] || return 0
  local as=()
  [ "$(id -u)" -eq 0 ] && as=(runuser -u postgres --)
  "${as[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null || true
  rm -rf "$PG_DIR"
  PG_DIR=
}
