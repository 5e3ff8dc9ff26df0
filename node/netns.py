"""Separate hosts on one machine: Linux network namespaces on one bridge, for testnets.

Each node gets its own namespace with its own address on a private /24, joined to a
bridge in the caller's namespace; the bridge holds the ``.254`` address, so the caller
reaches every node's HTTP API while the nodes see each other only through the bridge
(no loopback shortcut: inside a namespace, 127.0.0.1 is that namespace's own). A node is
cut off by taking its bridge-side link down, and healed by bringing it up again.
A node can also be fenced in (``isolate``): it keeps its link but routes only to the
nodes it is allowed to reach (and the bridge, for its API), like a host behind NAT
whose only way out is one relay node.

Everything is made with ``ip`` (iproute2) as root and named from one short prefix, so
``destroy`` removes exactly what ``create`` made, even after a crash (the names are
derived from the testnet directory, not remembered only in memory).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["NetnsError", "NetnsTopology", "check_netns_support"]

# 198.18.0.0/15 is reserved for network benchmarks (RFC 2544): never a real host here.
DEFAULT_BASE = "198.18"


class NetnsError(Exception):
    """Namespaces cannot be made or changed here; the message says why and what to do."""


def check_netns_support() -> None:
    """Raise NetnsError with the fix when this process cannot manage namespaces."""
    if shutil.which("ip") is None:
        raise NetnsError("--netns needs the `ip` command (iproute2): apt-get install iproute2")
    if os.geteuid() != 0:
        raise NetnsError("--netns needs root (network namespaces and bridges): run it as root")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and res.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)} failed: {res.stderr.strip() or res.stdout.strip()}")
    return res


@dataclass(frozen=True)
class NetnsTopology:
    """Names and addresses of one testnet's namespaces (pure: creating them is separate)."""

    prefix: str  # a few characters, unique per testnet directory
    subnet: str  # "198.18.N" : node i is .{i+1}, the bridge .254

    @classmethod
    def for_directory(cls, root: Path, base: str = DEFAULT_BASE) -> NetnsTopology:
        """Stable names for a testnet directory, so ``down`` finds what ``up`` made."""
        digest = hashlib.sha256(str(root.resolve()).encode()).digest()
        return cls(prefix=f"rk{digest[:2].hex()}", subnet=f"{base}.{digest[2] % 250}")

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    @property
    def bridge_address(self) -> str:
        return f"{self.subnet}.254"

    def namespace(self, i: int) -> str:
        return f"{self.prefix}-n{i}"

    def address(self, i: int) -> str:
        if not 0 <= i < 250:
            raise NetnsError(f"a namespace testnet holds at most 250 nodes, got index {i}")
        address = f"{self.subnet}.{i + 1}"
        ipaddress.IPv4Address(address)  # validates
        return address

    def host_link(self, i: int) -> str:
        return f"{self.prefix}h{i}"  # bridge side of node i's veth pair

    def node_link(self, i: int) -> str:
        return f"{self.prefix}v{i}"  # inside the namespace

    # -- making and unmaking --------------------------------------------------------------

    def create(self, n: int) -> None:
        """The bridge and n namespaces, each with its address and a link to the bridge."""
        check_netns_support()
        self.destroy()  # leftovers of a crashed run would clash with the names
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.bridge_address}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i in range(n):
                ns = self.namespace(i)
                _ip("netns", "add", ns)
                _ip("link", "add", self.host_link(i), "type", "veth", "peer", "name", self.node_link(i))
                _ip("link", "set", self.node_link(i), "netns", ns)
                _ip("link", "set", self.host_link(i), "master", self.bridge)
                _ip("link", "set", self.host_link(i), "up")
                _ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", self.node_link(i))
                _ip("-n", ns, "link", "set", self.node_link(i), "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.destroy()
            raise

    def destroy(self) -> list[str]:
        """Remove every namespace, link and bridge with this topology's prefix; returns
        their names (nothing to remove is fine)."""
        removed = []
        for ns in self.existing_namespaces():
            _ip("netns", "del", ns, check=False)  # takes the namespace's veth end with it
            removed.append(ns)
        for link in self._existing_links():
            _ip("link", "del", link, check=False)
            removed.append(link)
        return removed

    def existing_namespaces(self) -> list[str]:
        if shutil.which("ip") is None:
            return []
        out = _ip("netns", "list", check=False).stdout
        return [line.split()[0] for line in out.splitlines() if line.startswith(f"{self.prefix}-n")]

    def _existing_links(self) -> list[str]:
        if shutil.which("ip") is None:
            return []
        out = _ip("-o", "link", "show", check=False).stdout
        links = []
        for line in out.splitlines():
            name = line.split(":", 2)[1].strip().split("@")[0]
            if name == self.bridge or (name.startswith(self.prefix + "h") and name[len(self.prefix) + 1 :].isdigit()):
                links.append(name)
        # Node links first, the bridge last.
        return sorted(links, key=lambda name: name == self.bridge)

    # -- faults ---------------------------------------------------------------------------

    def partition(self, i: int) -> None:
        """Cut node i off: its link to the bridge goes down (its processes keep running)."""
        check_netns_support()
        _ip("link", "set", self.host_link(i), "down")

    def heal(self, i: int) -> None:
        check_netns_support()
        _ip("link", "set", self.host_link(i), "up")

    def isolate(self, i: int, reachable: list[int]) -> None:
        """Let node i reach only the nodes in ``reachable`` (and the bridge address).

        Routing alone: its /24 address becomes a /32, so it has no route to the subnet,
        only host routes to the allowed nodes and to the bridge. Packets from any other
        node may still arrive, but its answers have no route back, so no connection to
        or from them can be made. Undone by ``destroy`` (the namespace goes)."""
        check_netns_support()
        ns, link, address = self.namespace(i), self.node_link(i), self.address(i)
        _ip("-n", ns, "addr", "del", f"{address}/24", "dev", link)
        _ip("-n", ns, "addr", "add", f"{address}/32", "dev", link)
        for target in [self.bridge_address] + [self.address(j) for j in reachable if j != i]:
            _ip("-n", ns, "route", "add", f"{target}/32", "dev", link)

    def exec_prefix(self, i: int) -> list[str]:
        """Prepend to a command to run it inside node i's namespace."""
        return ["ip", "netns", "exec", self.namespace(i)]
