"""Reading a partition range to a fixed end: shared by replays and blue/green rebuilds.

A partition's end is the high-watermark of the first fetch response that
reports it (never ListOffsets, which some brokers answer wrongly), and a
record is taken once, in offset order, only below that end.
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition


def capture_ends(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], ends: dict[TopicPartition, int]
) -> None:
    """Fix each partition's end at the first fetch high-watermark seen (never ListOffsets)."""
    for tp in tps:
        hw = consumer.highwater(tp)
        if tp not in ends and hw is not None:
            ends[tp] = hw


def take_below(
    batch: dict[TopicPartition, list[Any]],
    ends: dict[TopicPartition, int],
    position: dict[TopicPartition, int],
) -> list[Any]:
    """The fetched records not yet taken and below their partition's end; advances `position`."""
    records = []
    for tp, msgs in batch.items():
        end = ends.get(tp)
        for m in msgs:
            if m.offset >= position[tp] and (end is None or m.offset < end):
                records.append(m)
                position[tp] = m.offset + 1
    return records
