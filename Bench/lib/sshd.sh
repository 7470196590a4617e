# Sourced by the bench scripts: a throwaway OpenSSH server on 127.0.0.1 with fresh keys.
#
#   bench_sshd_start DIR   starts sshd with everything under DIR; sets SSHD_PORT, SSHD_PID and writes
#                          DIR/ssh_config (alias "bench", accept-new into DIR/known_hosts) and
#                          DIR/ssh_options (the same settings for OpenSSH's ssh, for rsync -e)
#   bench_sshd_stop        stops it
#   bench_free_port        prints a loopback port nobody listens on

bench_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

bench_sshd_start() {
    local dir=$1
    mkdir -p "$dir/home" /run/sshd
    rm -f "$dir/host_ed25519" "$dir/client_ed25519"
    ssh-keygen -q -t ed25519 -N '' -f "$dir/host_ed25519"
    ssh-keygen -q -t ed25519 -N '' -f "$dir/client_ed25519"
    cp "$dir/client_ed25519.pub" "$dir/authorized_keys"
    SSHD_PORT=$(bench_free_port)
    cat >"$dir/sshd_config" <<CONF
Port $SSHD_PORT
ListenAddress 127.0.0.1
HostKey $dir/host_ed25519
AuthorizedKeysFile $dir/authorized_keys
PidFile $dir/sshd.pid
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin yes
SetEnv HOME=$dir/home ${BENCH_SSHD_SETENV:-}
LogLevel ERROR
CONF
    : >"$dir/known_hosts"
    : >"$dir/ssh_config"
    bench_ssh_alias "$dir" bench 127.0.0.1 "$SSHD_PORT"
    /usr/sbin/sshd -f "$dir/sshd_config" -E "$dir/sshd.log"
    local i
    for i in $(seq 1 100); do
        [ -s "$dir/sshd.pid" ] && (exec 3<>"/dev/tcp/127.0.0.1/$SSHD_PORT") 2>/dev/null && break
        sleep 0.05
    done
    SSHD_PID=$(cat "$dir/sshd.pid")
    BENCH_SSHD_DIR=$dir
}

# bench_ssh_alias DIR ALIAS HOST PORT: adds an ssh_config alias (and ssh_options for OpenSSH) for a port,
# the sshd itself or a wanem in front of it.
bench_ssh_alias() {
    local dir=$1 alias=$2 host=$3 port=$4
    cat >>"$dir/ssh_config" <<CONF
Host $alias
  HostName $host
  Port $port
  User root
  IdentityFile $dir/client_ed25519
  UserKnownHostsFile $dir/known_hosts
  StrictHostKeyChecking accept-new
CONF
    cat >"$dir/ssh_options.$alias" <<CONF
ssh -F $dir/ssh_config -o BatchMode=yes -o LogLevel=ERROR
CONF
}

bench_sshd_stop() {
    [ -n "${BENCH_SSHD_DIR:-}" ] && [ -s "$BENCH_SSHD_DIR/sshd.pid" ] && kill "$(cat "$BENCH_SSHD_DIR/sshd.pid")" 2>/dev/null
    BENCH_SSHD_DIR=
}
