"""``clean``: what the CLI prints of a peer's text, and the JSON lines it writes."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from bisik.cli._output import Output, clean


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain text, émoji 👍 and 中文", "plain text, émoji 👍 and 中文"),
        ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),
        ("forged\rline", "forged\\x0dline"),
        ("tab\tdel\x7f", "tab\\x09del\\x7f"),
        ("c1 \x9b31m", "c1 \\x9b31m"),
        ("\u202egnp.exe \u2066iso\u2069 \u200f", "\\u202egnp.exe \\u2066iso\\u2069 \\u200f"),
        ("one\ntwo\u2028three", "one\\x0atwo\\u2028three"),
    ],
)
def test_clean_escapes_what_a_terminal_acts_on(text: str, shown: str) -> None:
    assert clean(text) == shown
    assert clean(clean(text)) == shown


def test_a_body_keeps_its_lines_as_indented_continuations() -> None:
    assert clean("one\ntwo\r\nthree\rx", multiline=True) == "one\n    two\n    three\\x0dx"


def test_json_lines_keep_the_exact_text_and_escape_the_rest() -> None:
    text = "a\x1b[2J\x7f\x9b\u202e\\\u2066é👍\n"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        Output(as_json=True).emit({"body": text}, "unused")
        Output(as_json=False).emit({}, f"ours\n{clean(text, multiline=True)}")
    as_json, *plain = buffer.getvalue().splitlines()
    assert json.loads(as_json) == {"body": text}
    assert "é👍" in as_json
    for line in (as_json, *plain):
        assert line.isprintable(), line
