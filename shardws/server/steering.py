"""Steer new connections among the SO_REUSEPORT listeners of one port (classic BPF).

By default the kernel picks a listener of a SO_REUSEPORT group by hashing the
connection's addresses. That includes listeners whose worker is down, being replaced, or
being retired by a reload: connections queue there and wait for a replacement, and the
ones queued on a listener that is then closed are reset (unless the host sets
``net.ipv4.tcp_migrate_req = 1``). ``steer`` attaches a program to the group that picks
uniformly at random among the *allowed* positions only, so the supervisor can keep new
connections away from listeners that are not serving.

Positions are the order in which the sockets joined the group (``listen()`` order); the
kernel keeps that order as long as sockets leave from the end, which is how the
supervisor retires listeners. A program that returns a position outside the group makes
the kernel fall back to its hash, so a stale program never drops a connection.

Guarantees: SYN retransmits of one connection cannot be split across listeners (the
kernel finds the pending request before asking the program), so random choice is safe.
``steer`` never raises: on a kernel without SO_ATTACH_REUSEPORT_CBPF it returns False and
the default hashing stays in place.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from collections.abc import Sequence

SO_ATTACH_REUSEPORT_CBPF = 51
_MAX_POSITIONS = 1024  # classic BPF programs are limited to 4096 instructions

# Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
_LD_W_ABS = 0x00 | 0x00 | 0x20
_ALU_MOD_K = 0x04 | 0x90 | 0x00
_JMP_JEQ_K = 0x05 | 0x10 | 0x00
_RET_K = 0x06 | 0x00
_SKF_AD_RANDOM = -0x1000 + 56  # SKF_AD_OFF + SKF_AD_RANDOM: a random u32


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


def program(allowed: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """The instructions (code, jt, jf, k) returning a random member of ``allowed``:
    ``A = random % len(allowed)``, then a compare chain mapping ``A`` to a position."""
    if not allowed or len(allowed) > _MAX_POSITIONS:
        raise ValueError(f"need 1..{_MAX_POSITIONS} positions, got {len(allowed)}")
    code: list[tuple[int, int, int, int]] = [
        (_LD_W_ABS, 0, 0, _SKF_AD_RANDOM & 0xFFFFFFFF),
        (_ALU_MOD_K, 0, 0, len(allowed)),
    ]
    for choice, position in enumerate(allowed[:-1]):
        # if A == choice: fall through to "ret position", else skip over it
        code.append((_JMP_JEQ_K, 0, 1, choice))
        code.append((_RET_K, 0, 0, position))
    code.append((_RET_K, 0, 0, allowed[-1]))
    return code


def steer(sock: socket.socket, allowed: Sequence[int]) -> bool:
    """Make the SO_REUSEPORT group of ``sock`` send new connections only to the
    listeners at ``allowed`` positions, uniformly. Returns False if the kernel refused."""
    code = program(allowed)
    filters = (_SockFilter * len(code))(*(_SockFilter(*insn) for insn in code))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; } (native layout)
    fprog = struct.pack("@HP", len(code), ctypes.addressof(filters))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    except OSError:
        return False
    return True
