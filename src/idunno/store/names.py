"""File names are untrusted input: validate before they touch a path or a log line."""

from __future__ import annotations

import hashlib

MAX_NAME_BYTES = 1024


class InvalidName(ValueError):
    """The name cannot be stored; the message says why and what is allowed."""


def validate(name: str) -> str:
    """Return `name` if it is a safe store name, else raise InvalidName.

    A name is a relative, slash-separated path: no empty, `.` or `..` segment, no leading
    slash or backslash, no NUL or other control character, at most 1024 bytes of UTF-8.
    Names never become paths directly (the disk layout hashes them), but refusing odd names
    keeps listings, logs and local downloads unsurprising.
    """
    if not isinstance(name, str) or not name:
        raise InvalidName("file name is empty: give a name such as models/resnet18.onnx")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidName("file name is not valid UTF-8 text: rename it") from None
    if len(encoded) > MAX_NAME_BYTES:
        raise InvalidName(f"file name is longer than {MAX_NAME_BYTES} bytes: use a shorter one")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidName("file name contains a control character (or NUL): remove it")
    if "\\" in name:
        raise InvalidName("file name contains a backslash: use / to separate folders")
    if name.startswith("/"):
        raise InvalidName(f"file name {name!r} is absolute: drop the leading /")
    for part in name.split("/"):
        if part in ("", ".", ".."):
            raise InvalidName(
                f"file name {name!r} has an empty, '.' or '..' segment: use a plain relative name"
            )
    return name


def key(name: str) -> str:
    """Stable on-disk key for a validated name (hex sha256), so no name ever becomes a path."""
    return hashlib.sha256(name.encode("utf-8")).hexdigest()
