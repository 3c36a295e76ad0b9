# Shared by scripts/test and scripts/demo. Source it; do not run it.

# Installs Prosody from Debian's packages if it is missing.
ensure_prosody() {
  command -v prosody >/dev/null 2>&1 && return 0
  echo "Installing Prosody from Debian's packages..." >&2
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq prosody >/dev/null
  command -v prosody >/dev/null 2>&1 || { echo "prosody did not install" >&2; return 1; }
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

# Installs slixmpp (a stock XMPP client library, for the interoperability
# test) from PyPI into target/py.
ensure_slixmpp() {
  target/py/bin/python -c "import slixmpp" 2>/dev/null && return 0
  echo "Installing slixmpp from PyPI into target/py..." >&2
  python3 -m venv target/py
  target/py/bin/pip install --quiet "slixmpp==1.17.0"
}
