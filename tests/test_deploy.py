"""deploy/: nginx and HAProxy, run from the shipped files in front of a real 2-worker
shardws; the Kubernetes manifests and the Grafana dashboard against the real config
options and metric names."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from external import require
from serverproc import ServerProcess, free_port, run_cli
from toolkit import run, timeout, wait_until
from wsclient import Client

from shardws.config import load_config
from shardws.pure.cluster import Host, View, view_number
from shardws.server.metrics import prometheus_text
from shardws.shm.scoreboard import Column
from shardws.shm.tables import SharedTables

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
# The server pings a client quiet for 1 s; the proxies' tunnel timeout is rendered as
# 3 s: a quiet client survives through them only because shardws's pings cross them.
PING_INTERVAL, TUNNEL_TIMEOUT = 1, 3


def replace_once(text: str, old: str, new: str) -> str:
    """``text`` with ``old`` replaced; fails if the shipped file no longer has it once."""
    assert text.count(old) == 1, f"expected exactly one {old!r} in the shipped file"
    return text.replace(old, new)


def render_nginx(upstreams: list[str], port: int, directory: Path) -> str:
    """deploy/nginx.conf with its upstream servers, listen address, log directory and
    read timeout replaced; everything else as shipped."""
    text = (DEPLOY / "nginx.conf").read_text()
    begin, end = "    # BEGIN shardws servers\n", "    # END shardws servers\n"
    shipped = text[text.index(begin) + len(begin) : text.index(end)]
    servers = "".join(f"    server {up} max_fails=3 fail_timeout=10s;\n" for up in upstreams)
    text = replace_once(text, shipped, servers)
    text = replace_once(text, "    listen 80;", f"    listen 127.0.0.1:{port};")
    text = replace_once(text, "/var/log/nginx/", f"{directory}/")
    return replace_once(text, "proxy_read_timeout 120s;", f"proxy_read_timeout {TUNNEL_TIMEOUT}s;")


def render_haproxy(upstreams: list[str], admin_port: int, port: int) -> str:
    """deploy/haproxy.cfg with its servers, health-check port, bind address and tunnel
    timeout replaced."""
    text = (DEPLOY / "haproxy.cfg").read_text()
    shipped = "".join(re.findall(r"^    server .*\n", text, re.MULTILINE))
    servers = "".join(f"    server s{i} {up}\n" for i, up in enumerate(upstreams))
    text = replace_once(text, shipped, servers)
    text = replace_once(
        text, "default-server check port 9765", f"default-server check port {admin_port}"
    )
    text = replace_once(text, "    bind :80", f"    bind 127.0.0.1:{port}")
    text = replace_once(text, "maxconn 100000", "maxconn 1000")  # fits any test's fd limit
    return replace_once(text, "timeout tunnel 120s", f"timeout tunnel {TUNNEL_TIMEOUT}s")


class Proxy:
    """nginx or HAProxy as a child process of the test, on a config rendered from
    deploy/, in front of one shardws and one address where nothing listens (a dead
    host). Stopped with SIGTERM, then SIGKILL of its own process group."""

    def __init__(self, kind: str, directory: Path, server: ServerProcess) -> None:
        self.kind = kind
        self.directory = directory
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        dead = f"127.0.0.1:{free_port()}"
        upstreams = [dead, f"127.0.0.1:{server.ws_port}"]
        self.log_path = directory / "proxy.log"
        if kind == "nginx":
            (directory / "shardws.conf").write_text(render_nginx(upstreams, self.port, directory))
            (directory / "nginx.conf").write_text(
                # The test runs as root (nginx workers as root too: the temp paths are
                # in pytest's directory) or as a user, where nginx ignores `user`.
                f"user root;\nworker_processes 1;\npid {directory}/nginx.pid;\n"
                f"error_log {directory}/error.log info;\n"
                "events { worker_connections 256; }\n"
                "http {\n"
                + "".join(
                    f"    {name}_temp_path {directory}/{name};\n"
                    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
                )
                + f"    include {directory}/shardws.conf;\n}}\n"
            )
            command = [require("nginx"), "-p", f"{directory}/", "-c", f"{directory}/nginx.conf"]
            command += ["-e", f"{directory}/error.log", "-g", "daemon off;"]
        else:
            config = directory / "haproxy.cfg"
            config.write_text(render_haproxy(upstreams, server.admin_port, self.port))
            command = [require("haproxy"), "-db", "-f", str(config)]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self._wait_listening()

    def _wait_listening(self) -> None:
        def listening() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.kind} exited {self.proc.returncode}:\n{self.logs()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_until(
            listening, 10, message=lambda: f"{self.kind} not listening in time:\n{self.logs()}"
        )

    def logs(self) -> str:
        text = self.log_path.read_text(errors="replace")
        error_log = self.directory / "error.log"
        return text + (error_log.read_text(errors="replace") if error_log.exists() else "")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout(10))
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()


# One connection per client address, addresses taken from X-Forwarded-For only from
# the proxy (127.0.0.1): every test connects each client under its own address, and a
# refusal (4029) shows which address shardws saw.
SERVER = {
    "workers": 2,
    "server": f"ping_interval = {PING_INTERVAL}\nidle_timeout = 5\n",
    "extra": '[limits]\nconnections_per_ip = 1\ntrusted_proxies = ["127.0.0.1"]\n',
}


@pytest.fixture(
    scope="module",
    params=[pytest.param(kind, marks=pytest.mark.needs(kind)) for kind in ("nginx", "haproxy")],
)
def proxy(
    request: pytest.FixtureRequest,
    server: ServerProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Proxy]:
    running = Proxy(request.param, tmp_path_factory.mktemp(request.param), server)
    yield running
    running.stop()


async def connect(proxy: Proxy, source: str, forged: str = "6.6.6.6", **kwargs: Any) -> Client:
    """A client through the proxy from loopback address ``source`` (any 127.x.y.z other
    than the proxy's 127.0.0.1), sending a forged X-Forwarded-For: shardws must count
    it under ``source``, the address the proxy saw."""
    return await Client.connect(
        proxy.url,
        additional_headers={"X-Forwarded-For": forged},
        local_addr=(source, 0),
        **kwargs,
    )


def test_subscribe_and_publish_through_the_proxy(proxy: Proxy) -> None:
    async def main() -> None:
        subscriber = await connect(proxy, "127.0.1.1")
        assert (await subscriber.call("subscribe", channel="news"))["ok"] is True
        # A publisher on the other worker, so the message crosses shardws's bus too
        # (the kernel picks the worker; bounded attempts).
        publisher = None
        for attempt in range(40):
            candidate = await connect(proxy, f"127.0.2.{attempt + 1}")
            if candidate.worker != subscriber.worker:
                publisher = candidate
                break
            await candidate.close()
        assert publisher is not None, "no connection landed on the other worker"
        reply = await publisher.call("publish", channel="news", data={"text": "via proxy"})
        assert reply["ok"] is True, reply
        push = await subscriber.next_push()
        assert push == {"type": "pub", "channel": "news", "data": {"text": "via proxy"}}
        await publisher.close()
        await subscriber.close()

    run(main())


def test_quiet_client_is_kept_open_by_server_pings(proxy: Proxy) -> None:
    async def main() -> None:
        quiet = await connect(proxy, "127.0.3.1")
        assert (await quiet.call("subscribe", channel="quiet"))["ok"] is True
        # Longer than the proxy's tunnel timeout with nothing sent by the client: only
        # shardws's pings (answered by the client library) keep the tunnel alive.
        await asyncio.sleep(TUNNEL_TIMEOUT + 1.5)
        talker = await connect(proxy, "127.0.3.2")
        assert (await talker.call("publish", channel="quiet", data=1))["ok"] is True
        assert (await quiet.next_push())["data"] == 1
        await talker.close()
        await quiet.close()

    run(main())


def test_client_address_reaches_shardws_and_forged_headers_do_not(proxy: Proxy) -> None:
    # connections_per_ip = 1 shows the address shardws counts a connection under.
    # nginx sends "<client's lines, merged>, <address it sees>", HAProxy only the
    # address it sees; with the proxy trusted, shardws takes the right-most untrusted
    # entry. A client sending two header lines must not get the first one used alone.
    async def main() -> None:
        first = await connect(proxy, "127.0.4.1", forged="6.6.6.6")
        with pytest.raises(websockets.ConnectionClosed) as refused:  # same source: 4029
            await connect(proxy, "127.0.4.1", forged="6.6.6.7")
        assert refused.value.rcvd is not None and refused.value.rcvd.code == 4029
        other = await connect(proxy, "127.0.4.2", forged="6.6.6.6")  # another source
        await other.close()
        twice = [("X-Forwarded-For", "127.0.4.1"), ("X-Forwarded-For", "127.0.4.9")]
        lines = await Client.connect(
            proxy.url, additional_headers=twice, local_addr=("127.0.4.3", 0)
        )
        await lines.close()
        await first.close()

    run(main())


def test_only_the_websocket_path_is_proxied(proxy: Proxy) -> None:
    for path in ("/ready", "/health", "/metrics", "/"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://127.0.0.1:{proxy.port}{path}", timeout=timeout(5))
        assert info.value.code == 404, path


def test_nginx_access_log_leaves_out_the_token(proxy: Proxy) -> None:
    if proxy.kind != "nginx":
        pytest.skip("the access log format is nginx's")

    async def main() -> None:
        # A bad token: shardws answers 401, and nginx logs the request.
        with pytest.raises(websockets.InvalidStatus):
            await Client.connect(proxy.url + "?token=not-a-real-jwt", local_addr=("127.0.5.1", 0))

    run(main())
    access_log = proxy.directory / "shardws.access.log"
    wait_until(
        lambda: " 401 " in (access_log.read_text() if access_log.exists() else ""),
        5,
        message=f"no 401 line in {access_log}",
    )
    assert '"GET /ws" 401' in access_log.read_text()
    assert "not-a-real-jwt" not in access_log.read_text()


def test_shipped_haproxy_cfg_is_valid() -> None:
    result = subprocess.run(
        [require("haproxy"), "-c", "-f", str(DEPLOY / "haproxy.cfg")],
        capture_output=True,
        text=True,
        timeout=timeout(30),
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_shipped_nginx_conf_is_valid(tmp_path: Path) -> None:
    nginx = require("nginx")
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nevents {{}}\nhttp {{\n    include {DEPLOY}/nginx.conf;\n}}\n"
    )
    result = subprocess.run(
        [nginx, "-t", "-p", f"{tmp_path}/", "-c", f"{tmp_path}/nginx.conf", "-e", "stderr"],
        capture_output=True,
        text=True,
        timeout=timeout(30),
    )
    # nginx -t opens the log files it names: only running as root may it open the
    # shipped /var/log/nginx one.
    if os.geteuid() != 0 and "Permission denied" in result.stderr:
        pytest.skip("nginx -t of the shipped file opens /var/log/nginx: needs root")
    assert result.returncode == 0, result.stderr


# --- Kubernetes and Grafana: the real option and metric names ----------------------


def kubernetes_objects() -> dict[str, dict[str, Any]]:
    yaml = pytest.importorskip("yaml")
    objects = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            objects[f"{document['kind']}/{document['metadata']['name']}"] = document
    return objects


def test_kubernetes_manifests_agree_with_the_config(tmp_path: Path) -> None:
    objects = kubernetes_objects()
    assert set(objects) == {
        "ConfigMap/shardws",
        "Deployment/shardws",
        "Service/shardws",
        "Service/shardws-peers",
        "HorizontalPodAutoscaler/shardws",
    }
    config_map, deployment = objects["ConfigMap/shardws"], objects["Deployment/shardws"]
    # The shipped shardws.toml loads: every option in it exists, with a valid value (the
    # cluster key Secret's file replaced by a real key pair).
    done = run_cli("keygen", str(tmp_path / "cluster"))
    assert done.returncode == 0, done.stderr
    text = config_map["data"]["shardws.toml"]
    key_path = "/etc/shardws-cluster/cluster.key_secret"
    assert key_path in text
    toml = tmp_path / "shardws.toml"
    toml.write_text(text.replace(key_path, str(tmp_path / "cluster.key_secret")))
    config = load_config(str(toml))
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert pod["terminationGracePeriodSeconds"] > config.server.drain_timeout
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    cluster_port = int(config.cluster.listen.rpartition(":")[2])
    assert ports == {"ws": config.server.port, "admin": config.admin.port, "cluster": cluster_port}
    assert config.server.host == config.admin.host == "0.0.0.0"
    readiness, liveness = container["readinessProbe"], container["livenessProbe"]
    assert readiness["httpGet"] == {"path": "/ready", "port": "admin"}
    assert liveness["httpGet"] == {"path": "/health", "port": "admin"}
    assert "lifecycle" not in container  # no preStop: the drain starts at SIGTERM
    # One worker per requested CPU, and the config file where the command reads it.
    assert container["resources"]["requests"]["cpu"] == str(config.server.workers)
    config_path = container["command"][container["command"].index("-c") + 1]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "config"]
    assert Path(config_path).parent == Path(mount["mountPath"])
    [volume] = [v for v in pod["volumes"] if v["name"] == "config"]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert Path(config_path).name in config_map["data"]
    labels = deployment["spec"]["template"]["metadata"]["labels"].items()
    service = objects["Service/shardws"]["spec"]
    assert service["selector"].items() <= labels
    assert {port["targetPort"] for port in service["ports"]} == {"ws", "admin"}
    # The peers' headless Service: its name is what [cluster] peers lists.
    peers = objects["Service/shardws-peers"]["spec"]
    assert peers["clusterIP"] == "None" and peers["selector"].items() <= labels
    assert peers["publishNotReadyAddresses"] is True
    assert [p["targetPort"] for p in peers["ports"]] == ["cluster"]
    assert config.cluster.peers == (f"shardws-peers:{peers['ports'][0]['port']}",)
    [key_mount] = [m for m in container["volumeMounts"] if m["name"] == "cluster-key"]
    assert Path(key_path).parent == Path(key_mount["mountPath"])
    hpa = objects["HorizontalPodAutoscaler/shardws"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]


def exported_metrics() -> dict[str, set[str]]:
    """Sample names of /metrics -> their label names, from a real scoreboard (two
    configured workers), histogram samples under the histogram's name."""
    tables = SharedTables.create(3)
    board = tables.board
    try:
        board.table[[0, 1], Column.CONFIGURED] = 1
        hosts = (Host("a", 1, (0, 1)), Host("b", 2, (0, 1)))  # a cluster: its metrics too
        tables.view.write(View(view_number(hosts), hosts, {"b": {"up": True}, "": {}}))
        text = prometheus_text(board, 10.0, tables.view, redis=True).decode()
    finally:
        tables.close()
    names: dict[str, set[str]] = {}
    for line in text.splitlines():
        match = re.match(r"(\w+)(?:\{(.*)\})? ", line)
        if match and not line.startswith("#"):
            labels = re.findall(r"(\w+)=", match.group(2) or "")
            name = re.sub(r"_(bucket|sum|count)$", "", match.group(1))
            names.setdefault(name, set()).update(labels)
    return names


def test_grafana_dashboard_uses_exported_metrics_and_shows_them_all() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "shardws.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert exprs
    used = set()
    for expr in exprs:
        for name in re.findall(r"\b((?:websocket|shardws|process)_\w+)", expr):
            used.add(re.sub(r"_(bucket|sum|count)$", "", name) if "latency" in name else name)
    exported = exported_metrics()
    assert used <= set(exported), used - set(exported)
    assert set(exported) <= used, f"not on the dashboard: {set(exported) - used}"
    for expr in exprs:  # label names in by (...) and {...} exist on the metrics
        for label in re.findall(r"by \((\w+)", expr) + re.findall(r"[{,](\w+)=~?", expr):
            assert label in {
                "worker",
                "direction",
                "reason",
                "le",
                "instance",
                "job",
                "peer",
                "part",
            }, expr
