"""Writes the seed corpus of fuzz_engine_header: small engine files laid out as io/engine_file.h describes
(a second, independent writer of the format). Run when the format changes: python3 tests/fuzz/make_engine_corpus.py"""
import json
import pathlib
import struct
import zlib

HERE = pathlib.Path(__file__).resolve().parent / "corpus" / "engine_header"


def engine(sections, metadata, version=1):
    body = bytearray(64)
    index = []
    for name, data in sections:
        body += b"\0" * (-len(body) % 64)
        index.append({"name": name, "offset": len(body), "size": len(data), "crc32": zlib.crc32(data)})
        body += data
    body += b"\0" * (-len(body) % 64)
    index_bytes = json.dumps({"metadata": metadata, "sections": index}).encode()
    index_offset = len(body)
    body += index_bytes
    header = b"KESTRELE" + struct.pack("<IIQQQI", version, 0, len(body), index_offset, len(index_bytes),
                                       zlib.crc32(index_bytes))
    header += b"\0" * (60 - len(header))
    header += struct.pack("<I", zlib.crc32(header))
    body[:64] = header
    return bytes(body)


def main():
    HERE.mkdir(parents=True, exist_ok=True)
    floats = struct.pack("<6f", 1.5, -2, 3.25, 0, 1, 2)
    (HERE / "two_sections.kestrel").write_bytes(
        engine([("config.json", b'{"model_type":"gpt2"}'), ("weights/w", floats)], {"build": {"device": "cpu"}}))
    (HERE / "empty.kestrel").write_bytes(engine([], {}))
    (HERE / "empty_section.kestrel").write_bytes(engine([("a", b"")], {"x": 1}))


if __name__ == "__main__":
    main()
