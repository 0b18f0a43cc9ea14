"""sketchsearch.registry.Registry: register (by explicit name or the factory's own), create, names,
duplicates refused, unknown names answered with the valid ones, ``None`` kwargs left at the defaults."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from sketchsearch.registry import Registry


@dataclass
class Thing:
    size: int = 3
    kind: str = "plain"


def _registry() -> Registry[Thing]:
    reg: Registry[Thing] = Registry("widget")
    reg.register("thing")(Thing)

    @reg.register()
    def big_thing(size: int = 100) -> Thing:
        return Thing(size=size, kind="big")

    return reg


def test_register_create_and_names() -> None:
    reg = _registry()
    assert reg.names() == ["big_thing", "thing"]  # sorted; the decorator's default name is the function's
    assert "thing" in reg and "nothing" not in reg and 3 not in reg
    assert reg.get("thing") is Thing
    assert reg.create("thing") == Thing()
    assert reg.create("thing", size=5, kind="odd") == Thing(5, "odd")
    assert reg.create("big_thing", size=7) == Thing(7, "big")


def test_register_returns_the_factory_unchanged() -> None:
    reg: Registry[Thing] = Registry("widget")

    def make() -> Thing:
        return Thing()

    assert reg.register("m")(make) is make


def test_none_kwargs_keep_the_defaults() -> None:
    reg = _registry()
    assert reg.create("thing", size=None, kind="odd") == Thing(3, "odd")
    assert reg.create("big_thing", size=None) == Thing(100, "big")
    assert reg.create("thing", size=0) == Thing(0, "plain")  # falsy but not None: passed on


def test_duplicate_names_are_refused_but_re_registering_the_same_factory_is_not() -> None:
    reg = _registry()
    with pytest.raises(ValueError, match="widget 'thing' is already registered"):
        reg.register("thing")(lambda: Thing(1))
    reg.register("thing")(Thing)  # a re-imported module registering the same object again
    assert reg.get("thing") is Thing


def test_unknown_name_lists_the_valid_ones() -> None:
    reg = _registry()
    with pytest.raises(ValueError, match=r"unknown widget 'thng'; valid names: big_thing, thing$"):
        reg.create("thng")
    with pytest.raises(ValueError, match=r"unknown widget 'x'; valid names: \(none\)"):
        Registry("widget").get("x")


def test_an_entry_needs_a_name() -> None:
    reg: Registry[Thing] = Registry("widget")

    class Nameless:
        def __call__(self) -> Thing:
            return Thing()

    with pytest.raises(ValueError, match="widget: cannot register an entry without a name"):
        reg.register()(Nameless())


def test_unknown_kwargs_reach_the_factory() -> None:
    with pytest.raises(TypeError, match="colour"):
        _registry().create("thing", colour="red")


def test_the_package_registries_use_it() -> None:
    from sketchsearch.encoders import create_encoder, list_encoders
    from sketchsearch.methods.base import list_methods

    assert "small_cnn" in list_encoders() and "itq" in list_methods()
    with pytest.raises(ValueError, match="unknown encoder 'nope'; valid names: .*small_cnn"):
        create_encoder("nope")
