"""The CRI log format: records as kubelet parses them (pure formatting, and the writer)."""

import os
import re

import pytest

from cri.crilog import (
    MAX_LINE,
    CRILogError,
    CRILogWriter,
    format_records,
    parse_log,
    parse_record,
    timestamp,
)

NOW = 1_795_737_600_123_456_789  # 2026-11-27T00:00:00.123456789Z
TS = b"2026-11-27T00:00:00.123456789Z"
RFC3339NANO = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")


def test_timestamp_is_utc_with_nanoseconds():
    assert timestamp(NOW) == TS
    assert timestamp(1_795_737_600_000_000_001) == b"2026-11-27T00:00:00.000000001Z"
    assert RFC3339NANO.match(timestamp(0))


def test_one_full_line():
    assert format_records("stdout", b"hello\n", now_ns=NOW) == TS + b" stdout F hello\n"


def test_several_lines_in_one_chunk_and_a_partial_tail():
    out = format_records("stderr", b"a\nbb\n\nccc", now_ns=NOW)
    assert out.splitlines() == [
        TS + b" stderr F a",
        TS + b" stderr F bb",
        TS + b" stderr F ",
        TS + b" stderr P ccc",
    ]


def test_empty_chunk_gives_nothing():
    assert format_records("stdout", b"", now_ns=NOW) == b""


def test_long_line_is_split_into_partials_then_full():
    line = b"x" * (2 * MAX_LINE + 10)
    recs = [parse_record(r) for r in format_records("stdout", line + b"\n").splitlines()]
    assert [(r.partial, len(r.content)) for r in recs] == [
        (True, MAX_LINE),
        (True, MAX_LINE),
        (False, 10),
    ]
    exact = format_records("stdout", b"y" * MAX_LINE + b"\n").splitlines()
    assert len(exact) == 1 and parse_record(exact[0]).partial is False


def test_small_max_line_and_bad_arguments():
    out = format_records("stdout", b"abcde", now_ns=NOW, max_line=2)
    assert [parse_record(r).content for r in out.splitlines()] == [b"ab", b"cd", b"e"]
    assert all(parse_record(r).partial for r in out.splitlines())
    with pytest.raises(ValueError, match="stream"):
        format_records("stdin", b"x")
    with pytest.raises(ValueError, match="max_line"):
        format_records("stdout", b"x", max_line=0)


def test_content_keeps_spaces_and_carriage_returns():
    rec = parse_record(format_records("stdout", b" two  spaces\r\n", now_ns=NOW))
    assert rec == parse_record(TS + b" stdout F  two  spaces\r\n")
    assert rec.content == b" two  spaces\r"
    assert rec.time == TS.decode() and rec.stream == "stdout" and not rec.partial


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"2026-11-27T00:00:00Z stdout",
        b"2026 stdout F x",
        b"2026-11-27T00:00:00Z out F x",
        b"2026-11-27T00:00:00Z stdout X x",
    ],
)
def test_parse_refuses_what_is_not_a_record(line):
    with pytest.raises(CRILogError):
        parse_record(line)


def test_parse_back_keeps_carriage_returns_of_a_tty():
    data = format_records("stdout", b"a\r\nb\rc\r\n")
    assert parse_log(data) == {"stdout": [b"a\r", b"b\rc\r"], "stderr": []}


def test_parse_back_joins_partials_per_stream():
    data = (
        format_records("stdout", b"one\ntw")
        + format_records("stderr", b"err\n")
        + format_records("stdout", b"o\nthree\n")
    )
    assert parse_log(data) == {"stdout": [b"one", b"two", b"three"], "stderr": [b"err"]}


def test_writer_appends_closes_open_lines_and_reopens(tmp_path):
    path = tmp_path / "c.log"
    w = CRILogWriter(str(path))
    try:
        assert os.stat(path).st_mode & 0o777 == 0o640
        w.write("stdout", b"first\nno newline")
        w.write("stderr", b"")
        w.end_stream("stdout")  # the line left open ends with an empty F record
        w.end_stream("stderr")  # nothing open: nothing written
        os.rename(path, tmp_path / "c.log.1")
        w.write("stderr", b"after rename\n")
        w.reopen()
        w.write("stdout", b"rotated\n")
    finally:
        w.close()
    old = (tmp_path / "c.log.1").read_bytes()
    assert parse_log(old) == {"stdout": [b"first", b"no newline"], "stderr": [b"after rename"]}
    assert [parse_record(r).partial for r in old.splitlines()] == [False, True, False, False]
    assert parse_log(path.read_bytes()) == {"stdout": [b"rotated"], "stderr": []}


def test_writer_without_a_path_discards(tmp_path):
    w = CRILogWriter("")
    w.write("stdout", b"gone\n")
    w.reopen()
    w.close()
    assert list(tmp_path.iterdir()) == []


def test_writer_names_a_log_it_cannot_open(tmp_path):
    with pytest.raises(OSError, match=r"cannot open the container log .*missing"):
        CRILogWriter(str(tmp_path / "missing" / "c.log"))
