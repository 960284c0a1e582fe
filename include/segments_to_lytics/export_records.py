"""What the export readers yield, and the limits they share.

A record is a plain tuple `(source, line_no, payload)` (millions pass through: a tuple costs a
fraction of a dataclass instance); a block is `(source, line_numbers, payloads)`. A record the
reader refuses (too long, unreadable) is a `RejectedRecord`: the shaper quarantines it with its
reason and a short, printable excerpt, never the whole record.
"""

from __future__ import annotations

from dataclasses import dataclass

from include.common.errors import ConfigError

DEFAULT_MAX_RECORD_BYTES = 16 << 20
EXCERPT_CHARS = 200
SKIP_CHUNK = 1 << 20  # what an over-long record is skipped by
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}


@dataclass(frozen=True, slots=True)
class RejectedRecord:
    """A record the reader refused to hold or could not parse: quarantine it with `reason`."""

    reason: str  # e.g. "record longer than 16 MiB (1,073,741,824 bytes)"
    excerpt: str  # its first <= 200 characters, invalid UTF-8 replaced, control characters escaped


Record = tuple[str, int, "bytes | dict[str, str] | str | RejectedRecord"]


def excerpt(raw: bytes) -> str:
    """The first <= 200 characters of `raw`, printable: safe to put in a quarantine file or a log."""
    text = raw[:EXCERPT_CHARS * 4].rstrip(b"\r\n").decode("utf-8", "replace")
    return text[:EXCERPT_CHARS].translate(_ESCAPES)[:EXCERPT_CHARS]


def too_long(limit: int, size: int, start: bytes) -> RejectedRecord:
    """The rejection of a record of `size` bytes (over `limit`) that begins with `start`."""
    shown = f"{limit >> 20} MiB" if limit % (1 << 20) == 0 else f"{limit:,} bytes"
    return RejectedRecord(f"record longer than {shown} ({size:,} bytes)", excerpt(start))


Block = tuple[str, "range | list[int]", list]  # (source, line numbers, payloads), see export_files.iter_json_blocks


def check_limits(max_record_bytes: int, max_inflate_ratio: float | None) -> None:
    """A reader's limits are sane, else `ConfigError` before anything is read."""
    if type(max_record_bytes) is not int or max_record_bytes < 1:
        raise ConfigError(f"max_record_bytes must be a positive number of bytes, got {max_record_bytes!r}")
    if max_inflate_ratio is not None and not max_inflate_ratio >= 1:
        raise ConfigError(f"max_inflate_ratio must be at least 1 (or None for no limit), "
                          f"got {max_inflate_ratio!r}")
