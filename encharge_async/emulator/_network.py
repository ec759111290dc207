"""Where the emulator can be reached: loopback or not, this machine's addresses, and the
host names its requests may carry (the DNS rebinding guard)."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
import sys
from collections.abc import Iterable

__all__ = [
    "LOOPBACK_NAMES",
    "allowed_host_names",
    "is_loopback",
    "is_wildcard",
    "local_addresses",
]

#: Names a loopback client may use in `Host`; never a way in for a rebinding attack, whose
#: requests carry the attacker's own host name.
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "localhost.localdomain"})
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})
# Linux's ioctl that reads an interface's IPv4 address.
_SIOCGIFADDR = 0x8915
# /proc/net/if_inet6's scope of link-local addresses: useless in a URL without the zone.
_LINK_SCOPE = 0x20


def is_wildcard(host: str) -> bool:
    """Whether binding `host` listens on every interface."""
    return host in _WILDCARDS


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the emulator on this machine."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _linux_ipv4() -> list[str]:
    import fcntl

    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                answer = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, request)
            except OSError:  # no IPv4 address on this interface
                continue
            found.append(socket.inet_ntoa(answer[20:24]))
    return found


def _linux_ipv6() -> list[str]:
    found = []
    with open("/proc/net/if_inet6", encoding="ascii") as table:
        for line in table:
            fields = line.split()
            if len(fields) >= 4 and int(fields[3], 16) != _LINK_SCOPE:
                found.append(str(ipaddress.IPv6Address(bytes.fromhex(fields[0]))))
    return found


def local_addresses(host: str) -> list[str]:
    """The addresses a client can use to reach a socket bound to `host`, loopback first.

    For a wildcard, this machine's interface addresses (read from the kernel on Linux,
    without any DNS lookup); else `host` itself.
    """
    if not is_wildcard(host):
        return [host]
    found: list[str] = []
    if sys.platform.startswith("linux"):
        # OSError: no if_nameindex or a restricted sandbox; IPv6 disabled.
        with contextlib.suppress(OSError):
            found += _linux_ipv4()
        if host == "::":
            with contextlib.suppress(OSError):
                found += _linux_ipv6()
    else:  # pragma: no cover - exercised on other systems only
        try:
            infos = socket.getaddrinfo(socket.gethostname(), None, proto=socket.IPPROTO_TCP)
        except OSError:
            infos = []
        found += [str(info[4][0]) for info in infos]
        found.append("::1" if host == "::" else "127.0.0.1")
    if host != "::":
        found = [address for address in found if ":" not in address]
    unique = list(dict.fromkeys(found))
    return sorted(unique, key=lambda address: not is_loopback(address))


def allowed_host_names(host: str, extra: Iterable[str]) -> frozenset[str] | None:
    """The `Host` names answered when bound to `host`, plus `extra`; None: any ("*").

    Loopback names are always allowed; off loopback, also the bound address (for a
    wildcard: this machine's addresses and its host name).
    """
    extra_names = {name.strip().lower().rstrip(".") for name in extra}
    if "*" in extra_names:
        return None
    names = set(LOOPBACK_NAMES) | extra_names
    if not is_loopback(host):
        names.update(address.lower() for address in local_addresses(host))
        if is_wildcard(host):
            hostname = socket.gethostname().lower()
            names.update({hostname, hostname.split(".", 1)[0]})
    else:
        names.add(host.strip("[]").lower())
    names.discard("")
    return frozenset(names)
