"""namespaces.record: the value semantics the hot path's classes get instead of @dataclass."""

import pytest

from namespaces.record import FrozenRecord, Record


class Point(FrozenRecord):
    __slots__ = ("x", "y")

    def __init__(self, x: int, y: int = 0) -> None:
        self.x = x
        self.y = y


class Box(Record):
    __slots__ = ("items",)

    def __init__(self, items: list[int]) -> None:
        self.items = items


def test_equality_repr_and_hash():
    assert Point(1, 2) == Point(1, 2) != Point(1, 3)
    assert Point(1) != (1, 0)
    assert repr(Point(1, 2)) == "Point(x=1, y=2)"
    assert {Point(1): "a"}[Point(1, 0)] == "a"
    assert Box([1]) == Box([1])
    with pytest.raises(TypeError):
        hash(Box([1]))


def test_replace_copies_with_changes():
    p = Point(1, 2)
    q = p.replace(y=5)
    assert q == Point(1, 5) and p == Point(1, 2)
    assert type(q) is Point
    with pytest.raises(TypeError, match="no field 'z'"):
        p.replace(z=1)
