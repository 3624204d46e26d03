"""The services' JSON log lines: one object per record, with an error's traceback as text."""

from __future__ import annotations

import json
import logging

import pytest

from eventfold.observability import configure_logging


def test_an_error_logged_with_its_exception_carries_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure_logging("INFO", json=True)
        try:
            raise RuntimeError("the handler is closed")
        except RuntimeError:
            # A library's own logger, as aiokafka logs the end of its fetch routine.
            logging.getLogger("aiokafka.consumer.fetcher").exception("Unexpected error in fetcher routine")
        line = capsys.readouterr().err.strip().splitlines()[-1]
    finally:
        root.handlers[:], root.level = handlers, level
    record = json.loads(line)
    assert record["event"] == "Unexpected error in fetcher routine"
    assert record["level"] == "error"
    assert "Traceback (most recent call last)" in record["exception"]
    assert "RuntimeError: the handler is closed" in record["exception"]
    assert "exc_info" not in record
