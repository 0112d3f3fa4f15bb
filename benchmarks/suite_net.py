# Suite `net`: a TCP echo server under vmown against trio, asyncio and uvloop,
# loopback only.
#
# Each contender's server (benchmarks/net_servers.py, written as its users
# would write it) runs in a process of its own; the client is one C program
# for all of them (benchmarks/c/net_client.c: one thread, epoll), so the
# figure is the server's: CONNECTIONS connections, each a closed loop of
# MESSAGE_BYTES messages (send one, wait for its whole echo, send the next).
#   vmown_rps, trio_rps, asyncio_rps, uvloop_rps
#                    requests (echoed messages) per second, the best of
#                    ROUNDS rounds: on a shared machine noise only ever slows
#                    a round down.  The contenders take turns within each
#                    round, so a burst of load hits them all alike.
#   vmown_p99_us ... the 99th percentile of one request's latency (send to
#                    the last byte of the echo) in that best round
#   vmown_cpu_us ... the server's CPU time (user + system, /proc/PID/stat)
#                    per request over the whole client run of that round:
#                    what a request costs, which a loaded machine does not
#                    change as much as it changes requests per second
#   idle_conn_threads  OS threads of the vmown server (from /proc/PID/task)
#                    while it holds IDLE_CONNECTIONS idle connections, once
#                    the workers that served the burst of accepts have
#                    retired: the server runs with idle_timeout=IDLE_TIMEOUT_S
#                    and is counted IDLE_SETTLE_S after the last connection
#   idle_conn_threads_high  the most seen while the connections were opened
#                    (the heartbeat's servers for the accepts' steps: CPU
#                    work, which a loaded machine makes look slow)
# Derived: vmown_over_trio, vmown_over_asyncio, vmown_over_uvloop.  Goals
# (from the project's issue), as booleans: goal_vmown_ge_2x_trio,
# goal_vmown_ge_asyncio, goal_idle_conn_threads_le_8.
#
# A contender whose server does not start (its package missing) is reported
# on stderr and its figures left out.  Every wait is bounded: a server that
# prints no port within SERVER_START_S fails the suite, the client runs for
# WARMUP_S + DURATION_S.

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
CLIENT_SOURCE = HERE / "c" / "net_client.c"
SERVERS = HERE / "net_servers.py"
CONTENDERS = ("vmown", "trio", "asyncio", "uvloop")
CONNECTIONS = 100
MESSAGE_BYTES = 1024
IDLE_CONNECTIONS = 1000
SERVER_START_S = 30.0
IDLE_TIMEOUT_S = 1.0
IDLE_SETTLE_S = 3.0


def _client() -> pathlib.Path:
    """The C client, built into benchmarks/.build/ when its source is newer."""
    flags = ["-O2", "-Wall", "-Wextra", "-Werror"]
    digest = hashlib.sha256("\0".join(flags).encode()).hexdigest()[:8]
    exe = HERE / ".build" / f"net_client-{digest}"
    if exe.exists() and exe.stat().st_mtime >= CLIENT_SOURCE.stat().st_mtime:
        return exe
    exe.parent.mkdir(exist_ok=True)
    partial = exe.with_name(f"{exe.name}.{os.getpid()}.tmp")
    try:
        subprocess.run(["gcc", *flags, "-o", str(partial), str(CLIENT_SOURCE)], check=True, timeout=120)
        os.replace(partial, exe)
    finally:
        partial.unlink(missing_ok=True)
    return exe


class _Server:
    """A contender's echo server in a process of its own; the port it listens on."""

    def __init__(self, contender: str, *extra: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(SERVERS), contender, str(IDLE_CONNECTIONS + 100), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = _read_line(self.process, SERVER_START_S)
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"the {contender} server did not start: {line!r} {self.process.stderr.read()!r}")
        self.port = int(line)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def _read_line(process: subprocess.Popen[str], timeout_s: float) -> str:
    import selectors

    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            return ""
    return process.stdout.readline()


def _cpu_s(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _round(client: pathlib.Path, contender: str, warmup_s: float, duration_s: float) -> dict[str, Any]:
    server = _Server(contender)
    try:
        cpu_before = _cpu_s(server.process.pid)
        done = subprocess.run(
            [str(client), *map(str, (server.port, CONNECTIONS, MESSAGE_BYTES, warmup_s, duration_s))],
            capture_output=True,
            text=True,
            timeout=warmup_s + duration_s + 60,
        )
        cpu_s = _cpu_s(server.process.pid) - cpu_before
    finally:
        server.stop()
    if done.returncode != 0:
        raise RuntimeError(f"net_client against {contender}: {done.stderr.strip()}")
    result: dict[str, Any] = json.loads(done.stdout)
    result["cpu_us"] = round(cpu_s / max(1, result["all_requests"]) * 1e6, 1)
    return result


def _idle_conn_threads() -> tuple[int, int]:
    """OS threads of the vmown server holding IDLE_CONNECTIONS idle connections: settled, and the most seen."""
    server = _Server("vmown", str(IDLE_TIMEOUT_S))
    tasks = f"/proc/{server.process.pid}/task"
    conns: list[socket.socket] = []
    high = 0
    try:
        for i in range(IDLE_CONNECTIONS):
            conns.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
            if i % 50 == 0:
                high = max(high, len(os.listdir(tasks)))
        for conn in conns[:: IDLE_CONNECTIONS // 10]:  # all accepted and served
            conn.settimeout(10)
            conn.sendall(b"ping")
            if conn.recv(4) != b"ping":
                raise RuntimeError("the vmown server did not echo on an idle connection")
        time.sleep(IDLE_SETTLE_S)  # every connection waits in recv; burst workers retire
        settled = len(os.listdir(tasks))
        return settled, max(high, settled)
    finally:
        for conn in conns:
            conn.close()
        server.stop()


def run(quick: bool) -> dict[str, float]:
    rounds, warmup_s, duration_s = (2, 0.3, 1.5) if quick else (3, 0.5, 3.0)
    client = _client()
    best: dict[str, dict[str, Any]] = {}
    missing: set[str] = set()
    for _ in range(rounds):
        for contender in CONTENDERS:
            if contender in missing:
                continue
            try:
                figures = _round(client, contender, warmup_s, duration_s)
            except RuntimeError as exc:
                if contender == "vmown":
                    raise
                print(f"suite net: {contender} left out: {exc}", file=sys.stderr)
                missing.add(contender)
                continue
            if contender not in best or figures["rps"] > best[contender]["rps"]:
                best[contender] = figures
    result: dict[str, float] = {}
    for contender, figures in best.items():
        result[f"{contender}_rps"] = round(figures["rps"])
        result[f"{contender}_p99_us"] = figures["p99_us"]
        result[f"{contender}_cpu_us"] = figures["cpu_us"]
    result["idle_conn_threads"], result["idle_conn_threads_high"] = _idle_conn_threads()
    vmown_rps = result["vmown_rps"]
    for peer in ("trio", "asyncio", "uvloop"):
        if f"{peer}_rps" in result:
            result[f"vmown_over_{peer}"] = round(vmown_rps / result[f"{peer}_rps"], 2)
    if "trio_rps" in result:
        result["goal_vmown_ge_2x_trio"] = vmown_rps >= 2 * result["trio_rps"]
    if "asyncio_rps" in result:
        result["goal_vmown_ge_asyncio"] = vmown_rps >= result["asyncio_rps"]
    result["goal_idle_conn_threads_le_8"] = result["idle_conn_threads"] <= 8
    return result
