"""Hypothesis strategies for tests/test_properties.py: any request of the public contract,
built from its protobuf descriptor; request bytes that are not a valid message; hostile
bundles (gzipped tars).

Nothing here knows a field's meaning: a message strategy walks `DESCRIPTOR.fields` and draws
each field's type at its extremes (long and odd unicode text, the ends of every integer
range, nan and infinities, unknown enum numbers, nested messages a few levels deep, lists
and maps), so a new field of the contract is fuzzed without a change here.
"""

from __future__ import annotations

import tarfile
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

Field = FieldDescriptor
MAX_DEPTH = 3  # nested messages deeper than this are left unset
# Names no real file has: whatever a hostile bundle tries to write outside its folder is
# named with it, so a test can look for it anywhere (tests/test_properties.py).
MARKER = f"falrt-fuzz-{uuid.uuid4().hex[:12]}"

# --- values of each field type ------------------------------------------------------------

_CHARS = st.characters(codec="utf-8")  # any code point a protobuf string can hold
_ODD_TEXT = ("", "/", "local/hello", "main", "..", "../../../etc/passwd", "/etc/passwd",
             "\x00", "a\x00b", " ", "\u202e", "\ufeff", "🙂", "k-0000000000000000:x",
             "http://127.0.0.1/", "https://example.com/" + "a" * 3000, "%s%n", "{}", "null")
_LONG = (256, 257, 1025, 2049, 65_537, 300_000)


def texts() -> st.SearchStrategy[str]:
    """Unicode text: short and random, the odd values above, or one character repeated to a
    length just past some limit."""
    long = st.builds(lambda char, n: char * n, _CHARS, st.sampled_from(_LONG))
    return st.one_of(st.text(_CHARS, max_size=40), st.sampled_from(_ODD_TEXT), long)


def blobs() -> st.SearchStrategy[bytes]:
    long = st.builds(lambda byte, n: byte * n, st.binary(min_size=1, max_size=1),
                     st.sampled_from(_LONG))
    json_like = st.sampled_from([b"{}", b'{"name": "fuzz"}', b"[" * 5000, b"\x80", b"null"])
    return st.one_of(st.binary(max_size=64), long, json_like)


def _integers(low: int, high: int) -> st.SearchStrategy[int]:
    edges = sorted({low, high, 0, 1, max(low, -1), low + 1, high - 1})
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


_INT32, _INT64 = (-(2**31), 2**31 - 1), (-(2**63), 2**63 - 1)
_UINT32, _UINT64 = (0, 2**32 - 1), (0, 2**64 - 1)
_SCALARS: dict[int, Callable[[], st.SearchStrategy[Any]]] = {
    Field.TYPE_STRING: texts,
    Field.TYPE_BYTES: blobs,
    Field.TYPE_BOOL: st.booleans,
    Field.TYPE_DOUBLE: lambda: st.floats(),
    Field.TYPE_FLOAT: lambda: st.floats(width=32),
    **{kind: lambda: _integers(*_INT32)
       for kind in (Field.TYPE_INT32, Field.TYPE_SINT32, Field.TYPE_SFIXED32)},
    **{kind: lambda: _integers(*_INT64)
       for kind in (Field.TYPE_INT64, Field.TYPE_SINT64, Field.TYPE_SFIXED64)},
    **{kind: lambda: _integers(*_UINT32) for kind in (Field.TYPE_UINT32, Field.TYPE_FIXED32)},
    **{kind: lambda: _integers(*_UINT64) for kind in (Field.TYPE_UINT64, Field.TYPE_FIXED64)},
}


def _enum_values(field: Field) -> st.SearchStrategy[int]:
    """A known number of the enum, or any other (proto3 enums are open)."""
    known = [value.number for value in field.enum_type.values]
    return st.one_of(st.sampled_from(known), _integers(*_INT32))


def _value(field: Field, depth: int) -> st.SearchStrategy[Any]:
    """One value of `field` (one element, for a repeated field)."""
    if field.type == Field.TYPE_MESSAGE:
        return messages(field.message_type, depth + 1)
    if field.type == Field.TYPE_ENUM:
        return _enum_values(field)
    return _SCALARS[field.type]()


# --- messages -----------------------------------------------------------------------------

def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Any message of type `descriptor`: each field unset or set to a drawn value."""
    return st.builds(_build, st.just(descriptor), st.data(), st.just(depth))


def _build(descriptor: Descriptor, data: st.DataObject, depth: int) -> Message:
    message = GetMessageClass(descriptor)()
    for field in descriptor.fields:
        if field.type == Field.TYPE_MESSAGE and depth >= MAX_DEPTH:
            continue
        if data.draw(st.booleans(), label=f"set {field.full_name}"):
            _set(message, field, data, depth)
    return message


def _set(message: Message, field: Field, data: st.DataObject, depth: int) -> None:
    target = getattr(message, field.name)
    if _is_map(field):
        key_field, value_field = field.message_type.fields  # a map entry: key, value
        entries = data.draw(st.dictionaries(_value(key_field, depth), _value(value_field, depth),
                                            max_size=4))
        for key, value in entries.items():
            if value_field.type == Field.TYPE_MESSAGE:
                target[key].CopyFrom(value)
            else:
                target[key] = value
    elif field.is_repeated:
        values = data.draw(st.lists(_value(field, depth), max_size=4))
        if field.type == Field.TYPE_MESSAGE:
            for value in values:
                target.add().CopyFrom(value)
        else:
            target.extend(values)
    elif field.type == Field.TYPE_MESSAGE:
        target.CopyFrom(data.draw(_value(field, depth)))
    else:
        setattr(message, field.name, data.draw(_value(field, depth)))


def _is_map(field: Field) -> bool:
    return (field.is_repeated and field.type == Field.TYPE_MESSAGE
            and field.message_type.GetOptions().map_entry)


# --- request bytes that are not a valid message ---------------------------------------------

def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field_bytes(number: int, wire_type: int, payload: bytes) -> bytes:
    tag = varint((number << 3) | wire_type)
    if wire_type == 0:
        return tag + varint(int.from_bytes(payload[:9].ljust(1, b"\0"), "little"))
    if wire_type == 1:
        return tag + payload[:8].ljust(8, b"\0")
    if wire_type == 2:
        return tag + varint(len(payload)) + payload
    if wire_type == 5:
        return tag + payload[:4].ljust(4, b"\0")
    return tag + payload  # groups (3, 4) and the invalid wire types 6 and 7


def unknown_fields() -> st.SearchStrategy[bytes]:
    """Fields a message does not declare, or declares with another wire type."""
    number = st.one_of(st.integers(1, 20), st.integers(1, 2**29 - 1))
    field = st.builds(_field_bytes, number, st.integers(0, 7), st.binary(max_size=16))
    return st.lists(field, min_size=1, max_size=4).map(b"".join)


def raw_requests(descriptor: Descriptor) -> st.SearchStrategy[bytes]:
    """Bytes sent as a request of type `descriptor`: a valid message with unknown fields or
    garbage after it, cut short, or random bytes (a truncated varint, say)."""
    valid = messages(descriptor).map(lambda message: message.SerializeToString())
    return st.one_of(
        st.tuples(valid, unknown_fields()).map(b"".join),
        valid.flatmap(lambda data: st.integers(0, len(data)).map(lambda n: data[:n])),
        st.tuples(valid, st.binary(min_size=1, max_size=8)).map(b"".join),
        st.builds(lambda n: b"\x08" + b"\xff" * n, st.integers(1, 12)),
        st.binary(max_size=128),
    )


# --- hostile bundles ------------------------------------------------------------------------

_ESCAPES = (f"../{MARKER}", f"a/../../{MARKER}", f"./../{MARKER}", "../" * 12 + MARKER,
            f"/tmp/{MARKER}", f"/{MARKER}", f"//tmp/{MARKER}", f"a/b/../../../{MARKER}",
            f"..\\{MARKER}", f"link/{MARKER}", f"dir/../../{MARKER}")
_PLAIN = ("app.py", "pkg/__init__.py", "pkg/mod.py", "dir", "dir/", ".", "./", "", "link",
          "a" * 255, "a" * 256, "é" * 128, "é" * 200, "/".join(["d" * 100] * 10) + "/f",
          "/".join(["é" * 100] * 9), "a\x00b", "\udcff.py", " ", "-", "~", "a//b", "%2e%2e")
_LINK_TARGETS = (f"/tmp/{MARKER}", f"../{MARKER}", "../../..", "/", "/etc/passwd", ".", "",
                 "link", f"{'../' * 12}tmp/{MARKER}")
_TYPES = (tarfile.REGTYPE, tarfile.REGTYPE, tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.DIRTYPE,
          tarfile.AREGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
          tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE, tarfile.CONTTYPE,
          tarfile.GNUTYPE_SPARSE, b"Z", b"\0")
_PAX_KEYS = ("path", "linkpath", "size", "uid", "mtime", "uname", "hdrcharset", "comment",
             "GNU.sparse.map", "GNU.sparse.size", "GNU.sparse.numblocks", "GNU.sparse.offset",
             "GNU.sparse.major", "GNU.sparse.minor", "GNU.sparse.name", "GNU.sparse.realsize")
_PAX_VALUES = ("-1", "0", "1", "99999999999999999999", "1e9", "0,1,2", "-5,-5", "", "x" * 600,
               f"../{MARKER}", f"/tmp/{MARKER}", "BINARY", "\udcff")


@dataclass(frozen=True)
class Entry:
    """One tar member as written: its header fields and what follows the header."""

    name: str
    kind: bytes
    content: bytes
    declared_size: int | None  # None: the content's length
    linkname: str = ""
    pax: tuple[tuple[str, str], ...] = ()
    scribbles: tuple[tuple[int, int], ...] = ()  # (offset, byte) written over the header


def _names() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(_ESCAPES + _PLAIN), st.text(_CHARS, min_size=1, max_size=20))


def entries(bomb_bytes: int) -> st.SearchStrategy[Entry]:
    """A member: any name, any type, content that may disagree with its declared size, PAX
    records with any value, header bytes overwritten (the checksum is fixed after)."""
    content = st.one_of(st.binary(max_size=64), st.just(bytes(bomb_bytes)))
    pax = st.lists(st.tuples(st.sampled_from(_PAX_KEYS), st.sampled_from(_PAX_VALUES)),
                   max_size=3).map(tuple)
    declared = st.one_of(st.none(), st.sampled_from([0, 1, 511, 513, bomb_bytes, 2**33 - 1]))
    scribbles = st.lists(st.tuples(st.integers(0, 511), st.integers(0, 255)), max_size=3)
    return st.builds(Entry, _names(), st.sampled_from(_TYPES), content, declared,
                     st.sampled_from(_LINK_TARGETS), pax, scribbles.map(tuple))


def bundles(bomb_bytes: int) -> st.SearchStrategy[bytes]:
    """A gzipped tar of drawn entries, or its gzip stream damaged (cut, garbage after it,
    a second member), or no gzip at all. `bomb_bytes`: the size of the largest content,
    zeros that compress to almost nothing."""
    tar = st.builds(archive, st.lists(entries(bomb_bytes), min_size=1, max_size=5),
                    st.booleans())
    gzipped = tar.map(_gzip)
    return st.one_of(
        gzipped, gzipped, gzipped,  # (weights: most cases get past the gzip layer)
        gzipped.flatmap(lambda data: st.integers(0, len(data)).map(lambda n: data[:n])),
        st.tuples(gzipped, st.binary(min_size=1, max_size=16)).map(b"".join),
        st.tuples(gzipped, gzipped).map(b"".join),
        tar,  # not compressed
        st.binary(max_size=64),
    )


def archive(members: list[Entry], closed: bool) -> bytes:
    """The tar bytes of `members`, ended by two zero blocks when `closed`."""
    blocks = [_member(entry) for entry in members]
    return b"".join(blocks) + (bytes(2 * tarfile.BLOCKSIZE) if closed else b"")


def _member(entry: Entry) -> bytes:
    info = tarfile.TarInfo(entry.name)
    info.type = entry.kind
    info.linkname = entry.linkname
    info.size = len(entry.content) if entry.declared_size is None else entry.declared_size
    info.pax_headers = dict(entry.pax)
    try:
        header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    except (ValueError, UnicodeError):  # what tarfile cannot write, raw bytes can
        header = _pax_block(entry.pax) + _plain_header(info)
    header = _scribble(header, entry.scribbles)
    return header + entry.content + bytes(-len(entry.content) % tarfile.BLOCKSIZE)


def _plain_header(info: tarfile.TarInfo) -> bytes:
    name = info.name.encode("utf-8", "surrogateescape")[:99]
    block = bytearray(tarfile.BLOCKSIZE)
    block[0:len(name)] = name
    block[124:136] = f"{min(info.size, 8**11 - 1):011o}\0".encode()
    block[156:157] = info.type[:1] or b"0"
    block[257:263] = tarfile.POSIX_MAGIC
    return _checksummed(bytes(block))


def _pax_block(records: tuple[tuple[str, str], ...]) -> bytes:
    """A PAX extended header whose records may lie about their own lengths."""
    body = b"".join(f"{len(k) + len(v) + 9} {k}={v}\n".encode("utf-8", "surrogateescape")
                    for k, v in records) or b"99999999 path=x\n"
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, len(body)
    head = _checksummed(info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")[:tarfile.BLOCKSIZE])
    return head + body + bytes(-len(body) % tarfile.BLOCKSIZE)


def _scribble(header: bytes, scribbles: tuple[tuple[int, int], ...]) -> bytes:
    """Overwrites bytes of the last header block (outside its checksum), then fixes the
    checksum so that tarfile reads the damaged fields rather than stopping."""
    if not scribbles:
        return header
    start = len(header) - tarfile.BLOCKSIZE
    block = bytearray(header[start:])
    for offset, byte in scribbles:
        if not 148 <= offset < 156:
            block[offset] = byte
    return header[:start] + _checksummed(bytes(block))


def _checksummed(block: bytes) -> bytes:
    blank = block[:148] + b" " * 8 + block[156:]
    return block[:148] + f"{sum(blank):06o}\0 ".encode() + block[156:]


def _gzip(data: bytes) -> bytes:
    stream = zlib.compressobj(1, zlib.DEFLATED, 31)  # 31: gzip framing
    return stream.compress(data) + stream.flush()


def gzip_bomb(size: int) -> bytes:
    """A valid bundle of one file of `size` zeros: a few hundred KiB for 256 MiB."""
    stream = zlib.compressobj(9, zlib.DEFLATED, 31)
    info = tarfile.TarInfo("bomb.bin")
    info.size = size
    parts = [stream.compress(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict"))]
    chunk = bytes(1024 * 1024)
    for _ in range(size // len(chunk)):
        parts.append(stream.compress(chunk))
    parts.append(stream.compress(bytes(size % len(chunk) + 2 * tarfile.BLOCKSIZE)))
    return b"".join([*parts, stream.flush()])
