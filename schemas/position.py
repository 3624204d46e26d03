"""Position tokens: where an event sits in Kafka, opaque to clients.

A command answers with the position of its last event; the query API accepts
it as `wait_for` and waits until the projection has applied that offset.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import orjson


class InvalidPosition(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Position:
    topic: str
    partition: int
    offset: int

    def token(self) -> str:
        raw = orjson.dumps([self.topic, self.partition, self.offset])
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    @classmethod
    def parse(cls, token: str) -> Position:
        if not token or len(token) > 512:
            raise InvalidPosition("position token is empty or too long")
        try:
            padded = token + "=" * (-len(token) % 4)
            topic, partition, offset = orjson.loads(base64.urlsafe_b64decode(padded))
        except (binascii.Error, ValueError, TypeError) as exc:
            raise InvalidPosition("position token is not one this service issued") from exc
        valid = (
            isinstance(topic, str)
            and topic
            and isinstance(partition, int)
            and isinstance(offset, int)
            and partition >= 0
            and offset >= 0
        )
        if not valid:
            raise InvalidPosition("position token is not one this service issued")
        return cls(topic, partition, offset)
