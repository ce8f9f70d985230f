"""Tests for PatchSet: exact undo by identity, in reverse order, only where still ours."""

from __future__ import annotations

import functools
import sys
import types

import pytest

from labelkeep_plugins.errors import LabelkeepWarning
from labelkeep_plugins.patching import PatchSet


def wrap(function, tag):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        return (tag, function(*args, **kwargs))

    return wrapper


def make_classes():
    class Base:
        def method(self):
            return "base"

    class Sub(Base):
        @staticmethod
        def static(x):
            return x + 1

        @classmethod
        def klass(cls):
            return cls.__name__

        def own(self):
            return "own"

    return Base, Sub


def test_patch_and_undo_restores_original_by_identity():
    _, Sub = make_classes()
    original = vars(Sub)["own"]
    patches = PatchSet("test")
    previous = patches.patch(Sub, "own", wrap(original, "p"))
    assert previous is original
    assert Sub().own() == ("p", "own")
    assert len(patches) == 1
    assert patches.undo() == []
    assert vars(Sub)["own"] is original
    assert Sub().own() == "own"
    assert len(patches) == 0


def test_same_attribute_twice_undo_restores_first_original():
    _, Sub = make_classes()
    original = vars(Sub)["own"]
    patches = PatchSet("test")
    first = wrap(original, "first")
    assert patches.patch(Sub, "own", first) is original
    assert patches.patch(Sub, "own", wrap(Sub.own, "second")) is first
    assert Sub().own() == ("second", ("first", "own"))
    assert patches.undo() == []
    assert vars(Sub)["own"] is original


class Recorder:
    """An owner that records every attribute it is given or loses, in order."""

    def __init__(self) -> None:
        object.__setattr__(self, "log", [])
        object.__setattr__(self, "a", "a0")
        object.__setattr__(self, "b", "b0")

    def __setattr__(self, name, value):
        self.log.append(("set", name, value))
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        self.log.append(("del", name))
        object.__delattr__(self, name)


def test_undo_runs_in_reverse_order():
    owner = Recorder()
    patches = PatchSet("test")
    patches.patch(owner, "a", "a1")
    patches.patch(owner, "b", "b1")
    patches.patch(owner, "a", "a2")
    owner.log.clear()
    assert patches.undo() == []
    assert owner.log == [("set", "a", "a1"), ("set", "b", "b0"), ("set", "a", "a0")]
    assert (owner.a, owner.b) == ("a0", "b0")


def test_inherited_attribute_is_removed_again_on_undo():
    Base, Sub = make_classes()
    assert "method" not in vars(Sub)
    patches = PatchSet("test")
    previous = patches.patch(Sub, "method", wrap(Base.method, "p"))
    assert previous is Base.method
    assert "method" in vars(Sub)
    assert Sub().method() == ("p", "base")
    patches.undo()
    assert "method" not in vars(Sub)  # not pinned on the subclass
    # A later change to the base is seen by the subclass again.
    Base.method = lambda self: "changed"
    assert Sub().method() == "changed"


def test_staticmethod_and_classmethod_restored_as_same_descriptor():
    _, Sub = make_classes()
    static, klass = vars(Sub)["static"], vars(Sub)["klass"]
    assert isinstance(static, staticmethod) and isinstance(klass, classmethod)
    patches = PatchSet("test")
    previous_static = patches.patch(Sub, "static", staticmethod(lambda x: x * 10))
    previous_klass = patches.patch(Sub, "klass", classmethod(lambda cls: "patched"))
    # What the wrapper gets to call is the bound/unwrapped callable, as getattr gives it.
    assert previous_static(1) == 2
    assert previous_klass() == "Sub"
    assert Sub.static(2) == 20 and Sub.klass() == "patched"
    patches.undo()
    assert vars(Sub)["static"] is static
    assert vars(Sub)["klass"] is klass
    assert Sub.static(2) == 3 and Sub().static(2) == 3 and Sub.klass() == "Sub"


def test_wrapper_on_top_is_left_alone_and_reported():
    _, Sub = make_classes()
    original = vars(Sub)["own"]
    patches = PatchSet("mylabel")
    ours = wrap(original, "ours")
    patches.patch(Sub, "own", ours)
    theirs = wrap(ours, "theirs")
    Sub.own = theirs  # another library wraps on top of our patch
    with pytest.warns(LabelkeepWarning, match=r"Sub\.own") as record:
        left = patches.undo()
    assert left == [f"{Sub.__qualname__}.own"]
    assert "mylabel" in str(record[0].message)
    assert vars(Sub)["own"] is theirs


def test_other_patches_still_undone_when_one_is_not_ours():
    _, Sub = make_classes()
    own = vars(Sub)["own"]
    patches = PatchSet("test")
    patches.patch(Sub, "own", wrap(own, "ours"))
    patches.patch(Sub, "static", staticmethod(lambda x: 0))
    Sub.static = staticmethod(lambda x: -1)
    with pytest.warns(LabelkeepWarning):
        left = patches.undo()
    assert left == [f"{Sub.__qualname__}.static"]
    assert vars(Sub)["own"] is own


def test_no_warning_when_everything_is_restored(recwarn):
    _, Sub = make_classes()
    patches = PatchSet("test")
    patches.patch(Sub, "own", lambda self: None)
    patches.undo()
    assert not [w for w in recwarn if issubclass(w.category, LabelkeepWarning)]


@pytest.fixture
def fake_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType("labelkeep_fake_module")

    def compute(x):
        return x * 2

    module.compute = compute
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module


def test_module_level_function(fake_module):
    import labelkeep_fake_module

    original = fake_module.compute
    patches = PatchSet("test")
    previous = patches.patch(fake_module, "compute", wrap(original, "p"))
    assert previous is original
    assert labelkeep_fake_module.compute(3) == ("p", 6)
    assert patches.undo() == []
    assert labelkeep_fake_module.compute is original
    assert fake_module.compute(3) == 6


def test_module_level_wrapped_on_top_warns_with_module_name(fake_module):
    patches = PatchSet("test")
    patches.patch(fake_module, "compute", wrap(fake_module.compute, "ours"))
    fake_module.compute = wrap(fake_module.compute, "theirs")
    with pytest.warns(LabelkeepWarning):
        assert patches.undo() == ["labelkeep_fake_module.compute"]


def test_instance_attribute_shadowing_class_is_removed_on_undo():
    _, Sub = make_classes()
    instance = Sub()
    patches = PatchSet("test")
    patches.patch(instance, "own", lambda: "instance")
    assert instance.own() == "instance"
    patches.undo()
    assert "own" not in vars(instance)
    assert instance.own() == "own"
