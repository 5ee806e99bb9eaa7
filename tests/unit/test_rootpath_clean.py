"""Lexical path cleaning inside a root: `..` clamped at `/`, nothing touched on disk."""

from pathlib import Path

import pytest

from namespaces.rootpath import PathEscapeError, RootFS, _components, lexical_clean


@pytest.mark.parametrize(
    ("path", "clean"),
    [
        ("/../../a/./b/../c", "a/c"),
        ("..", ""),
        ("../..", ""),
        ("a/../../b", "b"),  # '..' above the root stays at the root
        ("/a/b/../../..", ""),
        ("", ""),
        (".", ""),
        ("./", ""),
        ("/", ""),
        ("//", ""),
        ("///", ""),
        ("//a//b//", "a/b"),  # '//' (even POSIX's special leading one) is one separator
        ("a/b/", "a/b"),  # trailing '/'
        ("a/./b/.", "a/b"),
        ("./etc/passwd", "etc/passwd"),
        ("...", "..."),  # only '.' and '..' are special
        ("a/.../b", "a/.../b"),
        (".a/..b/c..", ".a/..b/c.."),
        ("a\\..\\b", "a\\..\\b"),  # backslash is an ordinary character
        (" / a ", " / a "),  # spaces are kept: names are not stripped
    ],
)
def test_lexical_clean(path: str, clean: str) -> None:
    assert lexical_clean(path) == clean


def test_components_keep_dotdot_and_drop_empty_and_dot() -> None:
    assert _components("//a/./../b//") == ["a", "..", "b"]
    assert _components("") == []
    assert _components(".") == []


def test_ensure_beneath(tmp_path: Path) -> None:
    with RootFS(str(tmp_path)) as r:
        assert r.ensure_beneath("") == ""
        assert r.ensure_beneath("//a/./b/") == "a/b"
        assert r.ensure_beneath("a/..") == ""
        for bad in ("..", "/..", "a/../..", "./../x", "//.."):
            with pytest.raises(PathEscapeError) as exc:
                r.ensure_beneath(bad)
            assert exc.value.filename == bad
