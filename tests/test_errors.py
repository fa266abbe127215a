"""first_line: the one way a library error becomes part of a one-line user message."""

from __future__ import annotations

import pytest
from PIL import Image

from dmlkit.data.images import decode_rgb
from dmlkit.errors import UserError, first_line


def test_first_line_of_a_message():
    assert first_line(ValueError("  bad header\nTraceback detail\n")) == "bad header"
    assert first_line(RuntimeError("x" * 300)) == "x" * 200
    assert first_line(RuntimeError("x" * 300), 10) == "x" * 10
    assert first_line(RuntimeError("x" * 300), None) == "x" * 300


@pytest.mark.parametrize("exc", [OSError(), ValueError(""), RuntimeError(" \n ")])
def test_empty_message_gives_the_type_name(exc):
    assert first_line(exc) == type(exc).__name__


def test_an_image_error_with_an_empty_message_is_a_user_error(tmp_path, monkeypatch):
    """Was an IndexError (``str(exc).splitlines()[0]`` of an empty message)."""
    path = tmp_path / "a.png"
    Image.new("RGB", (4, 4)).save(path)

    def fail(*args, **kwargs):
        raise OSError()

    monkeypatch.setattr(Image, "open", fail)
    with pytest.raises(UserError, match=r"a\.png: cannot decode the image \(OSError\); remove"):
        decode_rgb(path)
