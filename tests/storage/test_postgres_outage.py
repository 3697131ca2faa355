"""A worker rides out a PostgreSQL outage: errors while the server is away, nothing lost.

The server is shared, so the outage is simulated by a TCP relay between the
store and the server: "down" closes every relayed connection and refuses new
ones; "up" lets them through again.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import BaseModel

import backrun
from backrun.errors import StorageError
from backrun.jobs import JobState
from backrun.testing import wait_until
from tests.storage.postgres_support import (
    drop_schema,
    postgres_dsn,
    require_postgres,
    unique_schema,
)

pytestmark = pytest.mark.postgres


class Relay:
    """A TCP relay on 127.0.0.1 that can cut every connection through it."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.down = threading.Event()
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.down.set()
        with self.lock:
            doomed, self.sockets = self.sockets, []
        for s in doomed:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        self.down.clear()

    def close(self) -> None:
        self.cut()
        self.listener.close()


class Item(BaseModel):
    n: int


@pytest.fixture
def relay() -> Iterator[Relay]:
    require_postgres()
    params = conninfo_to_dict(postgres_dsn())
    relay = Relay(str(params.get("host", "127.0.0.1")), int(str(params.get("port") or 5432)))
    yield relay
    relay.close()


def test_a_worker_rides_out_an_outage_and_loses_nothing(
    relay: Relay, caplog: pytest.LogCaptureFixture
) -> None:
    from backrun.storage.postgres import PostgresStorage

    schema = unique_schema()
    dsn = make_conninfo(postgres_dsn(), host="127.0.0.1", port=str(relay.port))
    observer = PostgresStorage(postgres_dsn(), schema=schema, pool_size=1)
    observer.migrate()
    store = PostgresStorage(dsn, schema=schema, pool_size=4, timeout=0.5, poll_interval=0.2)
    engine = backrun.Engine(
        store, threads=3, lease=timedelta(seconds=30), recovery_interval=0.5, middleware=[]
    )
    runs: collections.Counter[int] = collections.Counter()
    gate, returned = threading.Event(), threading.Event()

    @engine.handler(name="outage.item")
    def item(payload: Item) -> None:
        runs[payload.n] += 1

    @engine.handler(name="outage.slow")
    def slow(payload: Item) -> None:
        gate.wait(20)
        returned.set()

    def succeeded() -> int:
        counts: dict[Any, int] = observer.counts()
        return counts.get(("default", JobState.SUCCEEDED), 0)

    def state_of(job_id: str) -> JobState | None:
        job = observer.get(job_id)
        return None if job is None else job.state

    def enqueued_more() -> bool:
        try:
            engine.enqueue_many(item, [{"n": n} for n in range(100, 200)])
        except StorageError:
            return False
        return True

    caplog.set_level(logging.WARNING, logger="backrun.storage.postgres")
    try:
        engine.enqueue_many(item, [{"n": n} for n in range(100)])
        held = engine.enqueue(slow, {"n": -1})
        with engine.running():
            wait_until(lambda: succeeded() >= 100, timeout=30)
            wait_until(lambda: state_of(held.id) is JobState.RUNNING, timeout=10)
            relay.cut()
            gate.set()  # the held job ends while the server is away
            returned.wait(10)
            with pytest.raises(StorageError):
                engine.enqueue(item, {"n": 100})
            assert state_of(held.id) is JobState.RUNNING  # its result is pending
            relay.restore()
            wait_until(enqueued_more, timeout=15)  # the pool may still be backing off
            wait_until(lambda: succeeded() == 201, timeout=30)
            # The recovery is logged once nothing failed for a moment (one line per outage).
            wait_until(lambda: "connection restored" in caplog.text, timeout=10)
        final = observer.get(held.id)
        assert final is not None
        assert (final.state, final.attempts, final.errors) == (JobState.SUCCEEDED, 1, ())
        assert sorted(runs) == list(range(200))
        assert set(runs.values()) == {1}
        lost = [r for r in caplog.records if "connection lost" in r.getMessage()]
        restored = [r for r in caplog.records if "connection restored" in r.getMessage()]
        assert len(lost) == 1
        assert len(restored) == 1
    finally:
        engine.close()
        observer.close()
        drop_schema(schema)
