#!/bin/sh
# Weft node agent installer, served by the Weft control plane.
#
#   curl -fsSL @API_URL@/install.sh | sudo sh -s -- --join-token TOKEN [options]
#
# Downloads the node agent from the control plane (checksum verified), installs it, writes
# its configuration (0600: it holds the join token until the node has registered) and
# starts it as the systemd unit `weft-agent` — or directly with --no-systemd. Returns once
# the node has registered, or fails with the agent's own reason.
set -eu

API_URL='@API_URL@'
CONTROL_PLANE='@AGENT_URL@'
# From the environment (no process's command line shows it), --join-token-file or
# --join-token (visible in `ps` while this runs).
JOIN_TOKEN=${WEFT_JOIN_TOKEN:-}
PREFIX=/usr/local
CONFIG_DIR=/etc/weft
STATE_DIR=/var/lib/weft
PIN_PATH=''
API_SOCKET=''
NODE_NAME=''
ADDRESSES=''
CGROUP=''
CA_CERT=''
LABELS=''
SYSTEMD=1
WAIT=60

usage() {
    cat <<USAGE
Install the Weft node agent and register this machine as a node.

Usage: sh install.sh --join-token TOKEN [options]

  --join-token TOKEN     from POST /v1/tenants/{tenant}/clusters/{cluster}/join-tokens
                         (not needed when this machine is already registered); shown by
                         ps while this runs: prefer --join-token-file or WEFT_JOIN_TOKEN
  --join-token-file FILE read the join token from the first line of FILE
  --control-plane URL    the agent service (default $CONTROL_PLANE)
  --node-name NAME       node name (default: the host name)
  --address A[,B...]     the node's addresses, reported at registration
  --label KEY=VALUE      node label (repeatable)
  --ca-cert FILE         trust this PEM for the agent service (default: the control
                         plane's own certificate, fetched from $API_URL)
  --cgroup DIR           cgroup v2 directory for socket load balancing
  --pin-path DIR         bpffs directory for the pinned datapath (default /sys/fs/bpf/weft)
  --api-socket PATH      the agent's node-local API socket (default /run/weft/agent.sock)
  --prefix DIR           install the binary in DIR/bin (default $PREFIX)
  --config-dir DIR       configuration directory (default $CONFIG_DIR)
  --state-dir DIR        credential and state directory (default $STATE_DIR)
  --no-systemd           start the agent directly instead of as a systemd unit
  --wait SECONDS         how long to wait for registration (default $WAIT)
USAGE
}

die() {
    echo "weft install: $*" >&2
    exit 1
}

# A join token is never echoed, even when it is wrong.
token_ok() {
    case "$1" in
        '' | *[!A-Za-z0-9_-]*) die "the join token $2 is empty or has characters other than A-Z a-z 0-9 _ -" ;;
    esac
}

# Values end up in an environment file and a unit file: keep them to plain characters.
plain() {
    case "$2" in
        '' | *[!A-Za-z0-9._:/@,=+-]*) die "$1 '$2' is empty or has characters other than A-Z a-z 0-9 . _ : / @ , = + -" ;;
    esac
}

while [ $# -gt 0 ]; do
    opt=$1
    case "$opt" in
        -h | --help) usage; exit 0 ;;
        --no-systemd) SYSTEMD=0; shift; continue ;;
    esac
    [ $# -ge 2 ] || die "$opt needs a value (see --help)"
    val=$2
    shift 2
    case "$opt" in
        --join-token) token_ok "$val" "given with --join-token"; JOIN_TOKEN=$val ;;
        --join-token-file)
            [ -r "$val" ] || die "--join-token-file $val is not a readable file"
            JOIN_TOKEN=''
            IFS= read -r JOIN_TOKEN <"$val" || [ -n "$JOIN_TOKEN" ] || die "--join-token-file $val is empty"
            token_ok "$JOIN_TOKEN" "in $val" ;;
        --control-plane) plain "$opt" "$val"; CONTROL_PLANE=$val ;;
        --node-name) plain "$opt" "$val"; NODE_NAME=$val ;;
        --address) plain "$opt" "$val"; ADDRESSES=${ADDRESSES:+$ADDRESSES,}$val ;;
        --label)
            plain "$opt" "$val"
            case "$val" in ?*=*) ;; *) die "--label '$val' is not KEY=VALUE" ;; esac
            LABELS="$LABELS --label $val" ;;
        --ca-cert) [ -r "$val" ] || die "--ca-cert $val is not a readable file"; CA_CERT=$val ;;
        --cgroup) plain "$opt" "$val"; CGROUP=$val ;;
        --pin-path) plain "$opt" "$val"; PIN_PATH=$val ;;
        --api-socket) plain "$opt" "$val"; API_SOCKET=$val ;;
        --prefix) plain "$opt" "$val"; PREFIX=$val ;;
        --config-dir) plain "$opt" "$val"; CONFIG_DIR=$val ;;
        --state-dir) plain "$opt" "$val"; STATE_DIR=$val ;;
        --wait) case "$val" in '' | *[!0-9]*) die "--wait takes whole seconds, not '$val'" ;; esac; WAIT=$val ;;
        *) die "unknown option $opt (see --help)" ;;
    esac
done

[ -z "$JOIN_TOKEN" ] || token_ok "$JOIN_TOKEN" "(WEFT_JOIN_TOKEN or given)"
if [ -z "$JOIN_TOKEN" ] && [ ! -s "$STATE_DIR/credential" ]; then
    die "--join-token is required: create one with POST $API_URL/v1/tenants/{tenant}/clusters/{cluster}/join-tokens"
fi
case "$(uname -s)-$(uname -m)" in
    Linux-x86_64) PLATFORM=linux-amd64 ;;
    *) die "no node agent build for $(uname -s) $(uname -m); supported: Linux x86_64" ;;
esac
if [ "$SYSTEMD" = 1 ] && [ ! -d /run/systemd/system ]; then
    die "systemd is not running here: pass --no-systemd to start the agent directly"
fi

fetch() {
    if command -v curl >/dev/null 2>&1; then
        curl -fsSL -o "$2" "$1"
    elif command -v wget >/dev/null 2>&1; then
        wget -q -O "$2" "$1"
    else
        die "neither curl nor wget is installed"
    fi
}

umask 077
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "weft install: downloading the node agent from $API_URL"
fetch "$API_URL/downloads/node-agent/$PLATFORM" "$tmp/node-agent" ||
    die "could not download $API_URL/downloads/node-agent/$PLATFORM"
fetch "$API_URL/downloads/node-agent/$PLATFORM.sha256" "$tmp/node-agent.sha256" ||
    die "could not download the checksum of the node agent"
want=$(cut -d' ' -f1 "$tmp/node-agent.sha256")
got=$(sha256sum "$tmp/node-agent" | cut -d' ' -f1)
[ "$want" = "$got" ] || die "checksum mismatch for the node agent: expected $want, downloaded $got"

install -d -m 0755 "$PREFIX/bin"
install -d -m 0700 "$CONFIG_DIR" "$STATE_DIR"
# Replace, not overwrite: a running agent keeps its old binary until restarted.
install -m 0755 "$tmp/node-agent" "$PREFIX/bin/.node-agent.new"
mv -f "$PREFIX/bin/.node-agent.new" "$PREFIX/bin/node-agent"

case "$CONTROL_PLANE" in
    https://*)
        if [ -z "$CA_CERT" ]; then
            if fetch "$API_URL/downloads/agent-ca.pem" "$tmp/agent-ca.pem" 2>/dev/null; then
                install -m 0644 "$tmp/agent-ca.pem" "$CONFIG_DIR/agent-ca.pem"
                CA_CERT=$CONFIG_DIR/agent-ca.pem
            fi
        else
            install -m 0644 "$CA_CERT" "$CONFIG_DIR/agent-ca.pem"
            CA_CERT=$CONFIG_DIR/agent-ca.pem
        fi
        ;;
esac

ENV_FILE=$CONFIG_DIR/agent.env
{
    echo "WEFT_CONTROL_PLANE=$CONTROL_PLANE"
    echo "WEFT_STATE_DIR=$STATE_DIR"
    [ -z "$JOIN_TOKEN" ] || echo "WEFT_JOIN_TOKEN=$JOIN_TOKEN"
    [ -z "$NODE_NAME" ] || echo "WEFT_NODE_NAME=$NODE_NAME"
    [ -z "$ADDRESSES" ] || echo "WEFT_NODE_ADDRESSES=$ADDRESSES"
    [ -z "$CA_CERT" ] || echo "WEFT_AGENT_CA=$CA_CERT"
    [ -z "$CGROUP" ] || echo "WEFT_CGROUP=$CGROUP"
    [ -z "$PIN_PATH" ] || echo "WEFT_BPF_PIN_PATH=$PIN_PATH"
    [ -z "$API_SOCKET" ] || echo "WEFT_API_SOCKET=$API_SOCKET"
} >"$ENV_FILE.new"
chmod 0600 "$ENV_FILE.new"
mv -f "$ENV_FILE.new" "$ENV_FILE"

LOG=$STATE_DIR/agent.log
PID_FILE=$STATE_DIR/agent.pid
if [ "$SYSTEMD" = 1 ]; then
    cat >/etc/systemd/system/weft-agent.service <<UNIT
[Unit]
Description=Weft node agent
After=network-online.target
Wants=network-online.target

[Service]
EnvironmentFile=$ENV_FILE
ExecStart=$PREFIX/bin/node-agent run$LABELS
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
UNIT
    chmod 0644 /etc/systemd/system/weft-agent.service
    systemctl daemon-reload
    systemctl enable weft-agent.service >/dev/null
    systemctl restart weft-agent.service
else
    if [ -s "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
        echo "weft install: stopping the running agent (pid $(cat "$PID_FILE"))"
        kill "$(cat "$PID_FILE")"
        i=0
        while kill -0 "$(cat "$PID_FILE")" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.2; i=$((i + 1)); done
    fi
    # LABELS is a list of checked --label KEY=VALUE words; ENV_FILE is the file written above.
    # shellcheck disable=SC2086,SC1090
    (set -a && . "$ENV_FILE" && exec "$PREFIX/bin/node-agent" run $LABELS) </dev/null >>"$LOG" 2>&1 &
    echo $! >"$PID_FILE"
fi

agent_stopped() {
    if [ "$SYSTEMD" = 1 ]; then
        systemctl is-failed --quiet weft-agent.service
    else
        if kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then return 1; fi
    fi
}
agent_log() {
    if [ "$SYSTEMD" = 1 ]; then
        journalctl -u weft-agent.service -n 20 --no-pager >&2 || true
    else
        # The agent's own words, without a backtrace if RUST_BACKTRACE asked for one.
        grep -v -e '^ *[0-9][0-9]*: ' -e '^ *at ' "$LOG" | tail -n 20 >&2 || true
    fi
}

i=0
while [ ! -s "$STATE_DIR/credential" ]; do
    if agent_stopped; then
        agent_log
        die "the agent stopped before registering (its log is above)"
    fi
    [ $i -lt $((WAIT * 5)) ] || { agent_log; die "the agent did not register within ${WAIT}s (its log is above)"; }
    sleep 0.2
    i=$((i + 1))
done
# The join token has done its job: from now on the agent uses its node credential.
grep -v '^WEFT_JOIN_TOKEN=' "$ENV_FILE" >"$ENV_FILE.new" || true
chmod 0600 "$ENV_FILE.new"
mv -f "$ENV_FILE.new" "$ENV_FILE"

node_id=$(sed -n 's/.*"node_id": *"\([^"]*\)".*/\1/p' "$STATE_DIR/node.json" 2>/dev/null || true)
echo "weft install: registered as node ${node_id:-?}; the agent runs $(
    [ "$SYSTEMD" = 1 ] && echo "as the systemd unit weft-agent" || echo "as pid $(cat "$PID_FILE"), logging to $LOG"
)"
