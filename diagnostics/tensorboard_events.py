"""A run's series as one TensorBoard event file, written the same byte for byte on every export.

TensorBoard reads TFRecord files of ``Event`` protocol buffers: each record is its length (uint64), a masked
CRC-32C of the length, the bytes, a masked CRC-32C of the bytes. TensorBoard's own writers put the clock and the
host name into the file name and every event; here the name is fixed and the wall time is the run's start (from
its records), so an export made again is identical. Protocol buffers and the checksum come from the
``tensorboard`` package (``pip install -e ".[export]"``).
"""
from __future__ import annotations

import struct
from datetime import datetime
from pathlib import Path

from probes.records import RunRecords, Series

FILE_NAME = "events.out.tfevents.0.instability-diagnostics"


def write_run(path: Path, records: RunRecords) -> None:
    """Every series of ``records`` as scalars tagged ``<kind>/<series>/<column>`` at their steps."""
    from tensorboard.compat.proto import event_pb2, summary_pb2

    wall_time = _start_time(records)
    with open(path, "wb") as file:
        _write_record(file, event_pb2.Event(wall_time=wall_time, file_version="brain.Event:2").SerializeToString())
        for kind, named in records.records.items():
            for name, series in named.items():
                if not isinstance(series, Series):
                    continue
                for step, row in zip(series.steps, series.values):
                    values = [summary_pb2.Summary.Value(tag=f"{kind}/{name}/{column}", simple_value=float(value))
                              for column, value in zip(series.columns, row)]
                    event = event_pb2.Event(wall_time=wall_time, step=int(step), summary=summary_pb2.Summary(value=values))
                    _write_record(file, event.SerializeToString())


def _write_record(file, data: bytes) -> None:
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    header = struct.pack("<Q", len(data))
    file.write(header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data)))


def _start_time(records: RunRecords) -> float:
    try:
        return datetime.fromisoformat(str(records.meta.get("started", ""))).timestamp()
    except ValueError:
        return 0.0
