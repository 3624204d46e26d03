"""A local broker's limits reach every consumer as settings, never as code that asks which broker."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from eventfold.apache_kafka import ApacheKafkaCluster
from eventfold.broker import EmbeddedBroker, settings_env
from eventfold.cli.dev import dev_settings
from eventfold.kafka import new_consumer
from eventfold.settings import KafkaSettings


def test_dev_on_the_embedded_broker_gets_its_limits_as_settings(tmp_path: Path) -> None:
    broker = EmbeddedBroker(port=19092)
    kafka = dev_settings(tmp_path, broker.bootstrap, broker).kafka
    assert kafka.kafka_bootstrap == "127.0.0.1:19092"
    assert kafka.kafka_idempotence is False
    assert kafka.kafka_highwater_from_fetch is True
    # Tansu answers a fetch later the longer its partition: a short wait starves consumers.
    assert kafka.kafka_fetch_max_wait_ms == 100


def test_an_external_broker_keeps_the_defaults(tmp_path: Path) -> None:
    kafka = dev_settings(tmp_path, "kafka:9092", None).kafka
    assert kafka.kafka_idempotence is True
    assert kafka.kafka_highwater_from_fetch is False
    assert kafka.kafka_fetch_max_wait_ms == KafkaSettings().kafka_fetch_max_wait_ms == 50
    assert ApacheKafkaCluster.fetch_max_wait_ms == 50


async def test_consumers_take_the_fetch_wait_from_the_settings() -> None:
    consumer = new_consumer(KafkaSettings(kafka_fetch_max_wait_ms=7), group_id=None)
    assert consumer._fetch_max_wait_ms == 7  # aiokafka keeps it as given
    overridden = new_consumer(KafkaSettings(kafka_fetch_max_wait_ms=7), group_id=None, fetch_max_wait_ms=100)
    assert overridden._fetch_max_wait_ms == 100


def test_settings_env_writes_what_pydantic_settings_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    env = settings_env({"kafka_idempotence": False, "kafka_fetch_max_wait_ms": 10})
    assert env == {"EVENTFOLD_KAFKA_IDEMPOTENCE": "false", "EVENTFOLD_KAFKA_FETCH_MAX_WAIT_MS": "10"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    read = KafkaSettings()
    assert read.kafka_idempotence is False
    assert read.kafka_fetch_max_wait_ms == 10


def test_free_ports_lie_below_the_range_of_outgoing_source_ports() -> None:
    """An outgoing connection can never take such a port before its service binds it."""
    from eventfold.broker import _ephemeral_low, free_port

    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(port < _ephemeral_low() for port in ports), ports
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
