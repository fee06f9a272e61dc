"""Package surfaces: sorted, complete ``__all__``; ``import schemas`` stays light."""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import subprocess
import sys
from types import ModuleType

import pytest

PACKAGES = ["schemas", "fedmq_runtime", "site_node", "coordinator"]
HEAVY = ("paho", "torch", "syft", "sqlite_utils", "numpy")


def isort_key(name: str) -> tuple[int, list[object]]:
    """The order ruff's RUF022 enforces: CONSTANTS, then Classes, then functions."""
    group = 0 if name.upper() == name else 1 if name[:1].isupper() else 2
    natural = [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]
    return group, natural


def public_names(module: ModuleType) -> set[str]:
    # Submodules become attributes of a package once anything imports them: not API.
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, ModuleType) and name != "annotations"
    }


@pytest.mark.parametrize("package", PACKAGES)
def test_package_all_is_sorted_and_complete(package: str) -> None:
    module = importlib.import_module(package)
    exported = list(module.__all__)
    assert exported == sorted(exported, key=isort_key)
    assert len(set(exported)) == len(exported)
    missing = [name for name in exported if not hasattr(module, name)]
    assert missing == []
    assert public_names(module) <= set(exported)


@pytest.mark.parametrize(
    "name", [m.name for m in pkgutil.iter_modules(importlib.import_module("schemas").__path__)]
)
def test_every_schemas_module_has_a_sorted_valid_all(name: str) -> None:
    module = importlib.import_module(f"schemas.{name}")
    exported = list(module.__all__)
    assert exported == sorted(exported, key=isort_key)
    assert [n for n in exported if not hasattr(module, n)] == []


def test_schemas_api_reexports_every_message_model() -> None:
    import schemas

    for model in schemas.ALL_MODELS:
        assert getattr(schemas, model.__name__) is model
        assert model.__name__ in schemas.__all__


def modules_loaded_by(package: str) -> set[str]:
    """The modules ``import package`` adds, measured in a fresh interpreter."""
    code = (
        "import json, sys; before = set(sys.modules); import " + package + "; "
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(run.stdout))


@pytest.mark.parametrize("package", PACKAGES)
def test_importing_a_package_loads_no_heavy_dependency(package: str) -> None:
    loaded = modules_loaded_by(package)
    assert package in loaded
    assert sorted(m for m in loaded if m.split(".")[0] in HEAVY) == []


def test_schemas_imports_only_stdlib_and_pydantic() -> None:
    roots = {m.split(".")[0] for m in modules_loaded_by("schemas")}
    # sysconfig's platform data module is stdlib but not listed in stdlib_module_names.
    stdlib = {*sys.stdlib_module_names, *(r for r in roots if r.startswith("_sysconfigdata"))}
    third_party = roots - stdlib - {"schemas"}
    allowed = {"pydantic", "pydantic_core", "typing_extensions", "annotated_types"}
    assert third_party <= allowed, third_party - allowed
