"""Schedule gauges (last tick read from the store, interval); the dashboard panel and rule."""

from __future__ import annotations

import json
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import backrun
from backrun.observability import MetricsMiddleware
from backrun.observability.schedule_collector import register_schedule_collector
from backrun.scheduler import Scheduler
from backrun.testing import FakeClock

GRAFANA = Path(__file__).resolve().parents[2] / "grafana"
LAST = "backrun_schedule_last_tick_timestamp_seconds"
INTERVAL = "backrun_schedule_interval_seconds"


def make_engine(clock: FakeClock, storage: backrun.Storage | None = None) -> backrun.Engine:
    engine = backrun.Engine(storage or backrun.MemoryStorage(), clock=clock, middleware=[])

    @engine.handler(name="beat")
    def beat(payload: dict[str, int]) -> None:
        return None

    return engine


def test_last_tick_is_read_from_the_store_whoever_created_it() -> None:
    clock = FakeClock(datetime(2030, 1, 1, 0, 0, 30, tzinfo=UTC))
    storage = backrun.MemoryStorage()
    creator, observer = make_engine(clock, storage), make_engine(clock, storage)
    for engine in (creator, observer):
        engine.schedule("beat", every=60, name="minutely", misfire="skip")
    registry = CollectorRegistry()
    register_schedule_collector(observer, registry=registry)
    assert registry.get_sample_value(LAST, {"schedule": "minutely"}) is None  # no tick yet
    assert registry.get_sample_value(INTERVAL, {"schedule": "minutely"}) == 60
    clock.advance(timedelta(seconds=30))
    Scheduler(creator, "creator").run_once()  # only the other engine's worker scheduled
    expected = datetime(2030, 1, 1, 0, 1, tzinfo=UTC).timestamp()
    assert registry.get_sample_value(LAST, {"schedule": "minutely"}) == expected
    clock.advance(timedelta(minutes=5))  # no worker: the last tick stays put
    assert registry.get_sample_value(LAST, {"schedule": "minutely"}) == expected


def test_served_on_the_engines_metrics_endpoint() -> None:
    registry = CollectorRegistry()
    clock = FakeClock()
    engine = backrun.Engine(
        backrun.MemoryStorage(), clock=clock, middleware=[MetricsMiddleware(registry=registry)]
    )
    engine.add_handler(lambda payload: None, name="beat")
    engine.schedule("beat", cron="0 * * * *", name="hourly")
    Scheduler(engine, "w").run_once()
    with engine.serve_metrics(port=0) as server:
        text = urllib.request.urlopen(server.url, timeout=10).read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    (sample,) = families[LAST].samples
    assert sample.labels == {"schedule": "hourly"}
    assert sample.value == clock.now().timestamp()  # the fake clock starts on the hour
    assert families[INTERVAL].samples[0].value == 3600


def test_the_dashboard_panel_and_the_alert_rule_use_the_metric() -> None:
    dashboard = json.loads((GRAFANA / "dashboards" / "backrun.json").read_text())
    (panel,) = [p for p in dashboard["panels"] if p["title"].startswith("Schedules")]
    exprs = [t["expr"] for t in panel["targets"]]
    assert any(LAST in e for e in exprs)
    assert any(INTERVAL in e and "+ 60" in e for e in exprs)
    rules = (GRAFANA / "alerts.yaml").read_text()
    rule = rules.split("- alert: BackrunScheduleMissedTick", 1)[1].split("- alert:", 1)[0]
    assert f"time() - max by (schedule) ({LAST})" in rule
    assert f"> max by (schedule) ({INTERVAL}) + 60" in rule
