"""/metrics over real HTTP: the spec's four metrics, the rate()-able counters, bounded labels."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from wsgate import __version__
from wsgate.metrics import Metrics, Throughput
from wsgate.testing import Server, StartServer, wait_until


async def scrape(server: Server, path: str = "/metrics") -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with server.session.get(server.url(path)) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_the_specs_four_metrics_and_the_counters(wsgate_server: StartServer) -> None:
    server = await wsgate_server()
    a, b = await server.connect(), await server.connect()
    await a.subscribe("r1")
    await b.subscribe("r1")
    await b.subscribe("r2")
    await a.send({"type": "publish", "room": "r1", "data": 1})
    await a.recv()
    await b.recv()
    await a.request("not json")
    await a.request({"type": "nope"})
    await a.request({"type": "publish", "room": "r2", "data": 1})  # not subscribed
    samples = await scrape(server)
    assert value(samples, "websocket_clients_total") == 2
    assert value(samples, "websocket_rooms_total") == 2
    assert ("websocket_messages_per_second", ()) in samples
    assert value(samples, "websocket_errors_total", reason="invalid_json") == 1
    assert value(samples, "websocket_errors_total", reason="unknown_type") == 1
    assert value(samples, "websocket_errors_total", reason="not_subscribed") == 1
    assert value(samples, "websocket_messages_received_total", type="subscribe") == 3
    assert value(samples, "websocket_messages_received_total", type="publish") == 2
    assert value(samples, "websocket_messages_received_total", type="unknown") == 1
    # delivered: 2 connected + 3 subscribed + 2 (fan-out of one publish) + 3 errors
    assert value(samples, "websocket_messages_delivered_total") == 10
    assert value(samples, "websocket_connections_opened_total") == 2


async def test_connections_closed_by_reason_and_their_duration(wsgate_server: StartServer) -> None:
    server = await wsgate_server(websocket={"max_message_size": 100})
    polite, big = await server.connect(), await server.connect()
    polite_conn = server.hub.connections[polite.id]
    big_conn = server.hub.connections[big.id]
    await polite.ws.close()
    await big.send({"type": "ping", "pad": "x" * 200})
    await wait_until(polite_conn.closed)
    await wait_until(big_conn.closed)
    samples = await scrape(server)
    assert value(samples, "websocket_connections_closed_total", reason="client") == 1
    assert value(samples, "websocket_connections_closed_total", reason="message_too_big") == 1
    assert value(samples, "websocket_connection_duration_seconds_count") == 2
    assert value(samples, "websocket_clients_total") == 0


async def test_no_label_is_unbounded(wsgate_server: StartServer) -> None:
    server = await wsgate_server()
    client = await server.connect()
    for n in range(20):
        await client.subscribe(f"room-{n}")
        await client.request({"type": f"made-up-{n}"})
    samples = await scrape(server)
    label_values = {v for (_, labels) in samples for (_, v) in labels}
    assert not any(v.startswith(("room-", "made-up-")) for v in label_values)
    assert client.id not in label_values


async def test_path_and_switch(wsgate_server: StartServer) -> None:
    moved = await wsgate_server(metrics={"path": "/internal/metrics"})
    assert value(await scrape(moved, "/internal/metrics"), "websocket_clients_total") == 0
    off = await wsgate_server(metrics={"enabled": False})
    async with off.session.get(off.url("/metrics")) as resp:
        assert resp.status == 404


def test_throughput_is_a_rate_over_the_window() -> None:
    rate = Throughput(window=10)
    assert rate.sample(0.0, 0) == 0.0
    assert rate.sample(1.0, 100) == 100.0
    assert rate.sample(2.0, 300) == 150.0
    for t in range(3, 20):
        last = rate.sample(float(t), 300 + (t - 2) * 50)
    assert last == pytest.approx(50.0)  # the early burst has left the window
    assert rate.sample(30.0, 1150) == 0.0  # nothing in the last 10 s


async def test_health_reports_uptime_and_version(wsgate_server: StartServer) -> None:
    server = await wsgate_server()
    status, body = await server.health()
    assert status == 200
    assert body["version"] == __version__
    assert 0 <= body["uptime_seconds"] < 60


def test_message_counts_reach_prometheus_in_batches_and_every_one_of_them() -> None:
    """Per message only integers move (no lock, no file write); `publish_counts` (every second, and on each
    scrape through `sample` and `exposition`) hands them over, each once."""
    metrics = Metrics(["publish", "ping"])

    def received(kind: str) -> float:
        return metrics.registry.get_sample_value("websocket_messages_received_total", {"type": kind}) or 0.0

    def delivered() -> float:
        return metrics.registry.get_sample_value("websocket_messages_delivered_total") or 0.0

    for kind in ("publish", "publish", "ping", "nope", "other"):
        metrics.message_received(kind)
    metrics.messages_delivered(5)
    metrics.messages_delivered(0)
    assert (received("publish"), delivered()) == (0, 0)  # not yet
    metrics.publish_counts()
    assert (received("publish"), received("ping"), received("unknown"), delivered()) == (2, 1, 2, 5)
    metrics.message_received("ping")
    metrics.messages_delivered(3)
    assert b'websocket_messages_received_total{type="ping"} 2.0' in metrics.exposition()
    metrics.sample(0, 0)
    assert (received("publish"), received("ping"), received("unknown"), delivered()) == (2, 2, 2, 8)
    assert metrics.totals()["received"] == 6 and metrics.totals()["delivered"] == 8
