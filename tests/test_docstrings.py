"""Every public name has a docstring, and every parameter of a public function, class or method is described in
its `Args:` section (the API reference is generated from them)."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

import hf_memory


def _public_objects():
    for name in sorted(hf_memory.__all__):
        obj = getattr(hf_memory, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            yield name, obj


def _documented_parameters(function, skip=("self", "cls")) -> list[str]:
    parameters = inspect.signature(function).parameters.values()
    return [p.name for p in parameters if p.name not in skip and p.kind is not p.VAR_POSITIONAL]


def _missing(doc: str | None, names: list[str], sections=("Args:",)) -> list[str]:
    doc = doc or ""
    if not names:
        return []
    found = [section for section in sections if section in doc]
    if not found:
        return [f"<no {' / '.join(sections)} section>"]
    described = " ".join(doc.split(section, 1)[1] for section in found)
    return [name for name in names if f"{name}:" not in described and f"**{name}:" not in described]


def _fields_by_declaring_class(cls) -> dict[type, list[str]]:
    """The dataclass fields declared by hf-memory classes (not those inherited from `TrainingArguments`), grouped by
    the class that declares them: that class's docstring documents them, once."""
    init_fields = {f.name for f in dataclasses.fields(cls) if f.init}
    grouped, seen = {}, set()
    for base in cls.__mro__:
        declared = [n for n in vars(base).get("__annotations__", {}) if n in init_fields and n not in seen]
        seen.update(declared)
        if declared and base.__module__.startswith("hf_memory"):
            grouped[base] = declared
    return grouped


def _own(cls, attribute: str) -> bool:
    """Whether `cls` (or a base of ours) defines `attribute`, rather than a library class."""
    for base in cls.__mro__:
        if attribute in vars(base):
            return base.__module__.startswith("hf_memory")
    return False


@pytest.mark.parametrize(("name", "obj"), list(_public_objects()), ids=lambda x: x if isinstance(x, str) else "")
def test_public_name_documents_every_argument(name, obj):
    assert inspect.getdoc(obj), f"{name} has no docstring"
    problems = []
    if inspect.isfunction(obj):
        problems += [f"{name}({p})" for p in _missing(obj.__doc__, _documented_parameters(obj))]
    else:
        if dataclasses.is_dataclass(obj):
            sections = ("Args:", "Attributes:")
            for declaring, fields in _fields_by_declaring_class(obj).items():
                problems += [f"{declaring.__name__}.{p}" for p in _missing(declaring.__doc__, fields, sections)]
        elif _own(obj, "__init__") and "__signature__" not in vars(obj):
            doc = (obj.__doc__ or "") + (obj.__init__.__doc__ or "")
            problems += [f"{name}({p})" for p in _missing(doc, _documented_parameters(obj.__init__))]
        for attribute, member in vars(obj).items():
            if attribute.startswith("_") or not (inspect.isfunction(member) or isinstance(member, classmethod)):
                continue
            function = member.__func__ if isinstance(member, classmethod) else member
            assert inspect.getdoc(function), f"{name}.{attribute} has no docstring"
            problems += [
                f"{name}.{attribute}({p})" for p in _missing(function.__doc__, _documented_parameters(function))
            ]
    assert problems == []
