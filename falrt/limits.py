"""Size limits every part of falrt applies to what it is sent, each defined once.

A limit is checked where the data enters; what goes over it is cut or refused with an error
that names the limit, and never breaks a runner or another request.
"""

from __future__ import annotations

from falrt.errors import PayloadTooLargeError

# Room kept in every message for what travels with a payload (ids, content type, metrics):
# a payload may be at most the largest message less this.
ENVELOPE_BYTES = 64 * 1024

# A request's log line (what a handler printed up to a newline, or one logging record's
# line) is cut to this many bytes of UTF-8, and says so (`cut_line`). The runner cuts it
# before it sends it (the rest of that line is dropped, however long), the server again.
LOG_LINE_BYTES = 64 * 1024
# A request keeps at most this many log lines and this many bytes of them; what comes after
# is dropped, and one line says so.
LOG_LINES = 10_000
LOG_BYTES = 8 * 1024 * 1024

# The longest duration falrt takes (a timeout, keep_alive, a start deadline): protobuf's
# range of a Duration (google/protobuf/duration.proto), about 10,000 years. A duration
# sent as a number of seconds must also be finite and not negative.
MAX_DURATION_SECONDS = 315_576_000_000


def cut_line(line: str, dropped_bytes: int = 0) -> str:
    """`line` cut to LOG_LINE_BYTES of UTF-8 (never in the middle of a character), ending
    with a marker that says so and how long the line was (`dropped_bytes` of it were
    dropped already)."""
    if len(line) * 4 <= LOG_LINE_BYTES and not dropped_bytes:
        return line  # (no character takes more than 4 bytes: no need to encode it)
    data = line.encode(errors="replace")
    if len(data) <= LOG_LINE_BYTES and not dropped_bytes:
        return line
    marker = f" [falrt: line cut to {LOG_LINE_BYTES} bytes; it had {len(data) + dropped_bytes}]"
    return data[:LOG_LINE_BYTES - len(marker)].decode(errors="ignore") + marker


# A payload (a request's input, a result's output) larger than this travels by file reference
# instead of inline (docs/files.md, "Payloads by reference"); the server's
# `payload_ref_bytes`, which its runners and HTTP edge follow, and the Python client's.
PAYLOAD_REF_BYTES = 1024 * 1024


def by_reference(size: int, threshold: int = PAYLOAD_REF_BYTES) -> bool:
    """Whether a payload of `size` bytes travels by file reference: over `threshold` (a
    threshold of 0 or less sends every payload inline, up to the message limit)."""
    return 0 < threshold < size


def payload_limit(max_message_bytes: int) -> int:
    """The largest input or output a request may have, where messages are at most
    `max_message_bytes` (the server's `max_message_bytes`, 64 MiB by default)."""
    return max_message_bytes - ENVELOPE_BYTES


def check_payload(size: int, limit: int, what: str) -> None:
    """Raises PayloadTooLargeError, naming the limit and the size, when `size` > `limit`."""
    if size > limit:
        raise PayloadTooLargeError(
            f"the {what} is {size} bytes, over the limit of {limit} bytes for a payload "
            f"(the largest message, less {ENVELOPE_BYTES} bytes for what travels with it); "
            "pass large data by reference (a URL) instead")


__all__ = ["ENVELOPE_BYTES", "LOG_BYTES", "LOG_LINES", "LOG_LINE_BYTES", "PAYLOAD_REF_BYTES",
           "by_reference", "check_payload", "cut_line", "payload_limit"]
