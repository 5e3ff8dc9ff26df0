#!/bin/sh
# Container entrypoint for `rakis node start` in compose: publish this node's peer id,
# find the others', then exec rakis with them as bootstrap peers.
#
#   RAKIS_PEER_DIR        a volume shared by the nodes (holds only public peer ids)
#   RAKIS_NAME            this node's service name (default: the host name)
#   RAKIS_BOOTSTRAP_HOSTS other nodes' service names, space-separated
#   RAKIS_P2P_PORT        their libp2p port (default 4001)
#
# So compose files need no hard-coded keys or addresses: the key is created in the
# node's own data dir on first start and never leaves it.
set -eu

if [ "${1:-}" = "node" ] && [ "${2:-}" = "start" ] && [ -n "${RAKIS_PEER_DIR:-}" ]; then
    bootstrap=$(python - <<'PY'
import os, socket, sys, time
from pathlib import Path
from node.identity import load_or_create
from node.p2p.libp2p_compat import peer_id_from_node_id

peers = Path(os.environ["RAKIS_PEER_DIR"])
name = os.environ.get("RAKIS_NAME") or socket.gethostname()
ident = load_or_create(Path(os.environ.get("RAKIS_DATA_DIR", "/data")))
tmp = peers / f".{name}.tmp"
tmp.write_text(ident.node_id + "\n")
tmp.replace(peers / f"{name}.node_id")  # public key only
port = os.environ.get("RAKIS_P2P_PORT", "4001")
out = []
for host in os.environ.get("RAKIS_BOOTSTRAP_HOSTS", "").split():
    f = peers / f"{host}.node_id"
    for _ in range(300):
        if f.exists():
            break
        time.sleep(1)
    else:
        sys.exit(f"entrypoint: {host} published no node id in {peers} after 300 s")
    ip = socket.gethostbyname(host)
    out.append(f"/ip4/{ip}/tcp/{port}/p2p/{peer_id_from_node_id(f.read_text().strip())}")
    print(f"entrypoint: bootstrap {host} -> {out[-1]}", file=sys.stderr)
print(" ".join(f"--bootstrap {a}" for a in out))
PY
    )
    # shellcheck disable=SC2086 # word splitting of $bootstrap is intended
    exec rakis "$@" $bootstrap
fi
exec rakis "$@"
