"""The listening TCP sockets of a process tree, from /proc (no dependency): which program holds
each, on which address and port."""

import os
import socket
from pathlib import Path


def listening_sockets() -> dict[int, tuple[str, int]]:
    """{socket inode: (address, port)} of every TCP socket in LISTEN state (0A) on this host."""
    found = {}
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if fields[3] != "0A":
                    continue
                address, port = fields[1].split(":")
                raw = bytes.fromhex(address)  # 32-bit words in host (little-endian) order
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found[int(fields[9])] = (socket.inet_ntop(family, raw), int(port, 16))
    return found


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(pid))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def processes_of_tree(root: int, program: str) -> set[int]:
    """The pids of the tree's processes that run `program` (e.g. "java")."""
    found = set()
    for pid in process_tree(root):
        try:
            if os.path.basename(os.readlink(f"/proc/{pid}/exe")) == program:
                found.add(pid)
        except OSError:  # the process ended meanwhile
            continue
    return found


def sockets_of_tree(root: int) -> set[tuple[str, str, int]]:
    """(program, address, port) of every listening socket that a process of the tree holds."""
    listening, held = listening_sockets(), set()
    for pid in process_tree(root):
        try:
            program = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # the process ended meanwhile
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:  # closed meanwhile: a busy JVM opens and closes files all the time
                continue
            if link.startswith("socket:[") and int(link[8:-1]) in listening:
                held.add((program, *listening[int(link[8:-1])]))
    return held


def is_loopback(address: str) -> bool:
    return address.startswith(("127.", "::ffff:127.")) or address == "::1"
