"""The task registry: built-ins, entry points and a tasks folder; hashing; errors.

Tasks here are written by the tests into tmp folders; nothing is mocked but the declared
engine (a stand-in module with the engine's interface, while the real one is elsewhere).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from site_node.training.tasks import (
    TASKS,
    TaskLoadError,
    UnknownTaskError,
    contract_problems,
    get_task,
    load_tasks,
    scan,
)
from site_node.training.tasks.registry import files_hash

TINY = """\
NAME = "{name}"
VERSION = "{version}"
DEFAULTS = {{"epochs": 1}}
METRICS = {{"mse": "min"}}
PRIMARY_METRIC = "mse"
OUTPUTS = {{"y": ""}}
WINDOW = 1
{extra}

def read_table(paths, params):
    return list(paths)


def load_dataset(source, params):
    return source


def initial_weights(seed):
    return b"w%d" % seed


def train(weights, data, hp, progress=None):
    return b"trained", 3, {{"mse": 0.5}}


def evaluate(weights, data):
    return {{"mse": 0.25}}


def predict(weights, window, params):
    return {{"y": float(len(window))}}
"""


def _write(path: Path, name: str, version: str = "1.0", extra: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TINY.format(name=name, version=version, extra=extra))
    return path


def test_builtins_are_complete_and_listing_imports_no_torch() -> None:
    code = (
        "import sys, json\n"
        "from site_node.training.tasks import scan\n"
        "c = scan()\n"
        "print(json.dumps([t.describe() for t in c.tasks.values()]))\n"
        "assert 'torch' not in sys.modules, 'torch imported by a listing'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    listed = {t["name"]: t for t in json.loads(out.stdout)}
    assert {"cmapss-rul", "ai4i-failure"} <= set(listed)
    for name in ("cmapss-rul", "ai4i-failure"):
        assert listed[name]["source"] == "builtin"
        assert listed[name]["code_hash"] == TASKS[name].code_hash
        assert "common.py" in listed[name]["files"]
        task = get_task(name)
        assert contract_problems(task) == []
        assert task.primary_metric in task.metrics and task.window >= 1 and task.outputs


def test_folder_tasks_file_and_package_hash_every_file(tmp_path: Path) -> None:
    _write(tmp_path / "one.py", "one")
    _write(tmp_path / "pkg" / "__init__.py", "pkg-task", extra="from .helper import K")
    (tmp_path / "pkg" / "helper.py").write_text("K = 1\n")
    (tmp_path / "pkg" / "__pycache__").mkdir()
    (tmp_path / "pkg" / "__pycache__" / "x.pyc").write_bytes(b"junk")  # never hashed
    (tmp_path / "notes.txt").write_text("not a task\n")
    tasks = load_tasks(tmp_path)
    one, pkg = tasks["one"], tasks["pkg-task"]
    assert one.source == pkg.source == f"dir:{tmp_path.resolve()}"
    assert [rel for rel, _ in one.files] == ["one.py"]
    assert [rel for rel, _ in pkg.files] == ["pkg/__init__.py", "pkg/helper.py"]
    assert one.code_hash == files_hash([("one.py", tmp_path / "one.py")])
    # The package's implementation runs with its relative import.
    assert pkg.impl.K == 1 and pkg.train(None, None) == (b"trained", 3, {"mse": 0.5})
    assert one.predict(b"", [{}, {}]) == {"y": 2.0} and contract_problems(one) == []

    # One byte in a helper file changes the package's hash, and only its hash.
    (tmp_path / "pkg" / "helper.py").write_text("K = 2\n")
    again = load_tasks(tmp_path)
    assert again["pkg-task"].code_hash != pkg.code_hash
    assert again["one"].code_hash == one.code_hash
    assert again["pkg-task"].impl.K == 2  # a changed task is loaded afresh

    # The same files elsewhere hash the same (sites keep their tasks in their own folders).
    other = tmp_path / "elsewhere"
    _write(other / "one.py", "one")
    assert load_tasks(other)["one"].code_hash == one.code_hash
    (other / "one.py").rename(other / "renamed.py")
    assert load_tasks(other)["one"].code_hash != one.code_hash


def test_listing_runs_no_task_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    _write(tmp_path / "t.py", "side", extra=f"open({str(marker)!r}, 'w').close()")
    task = get_task("side", tmp_path)
    assert not marker.exists()
    task.initial_weights(0)
    assert marker.exists()


def test_bad_sources_are_reported_with_reasons(tmp_path: Path) -> None:
    (tmp_path / "nameless.py").write_text("VERSION = '1'\n")
    (tmp_path / "computed.py").write_text("NAME = 'x' + 'y'\n")
    (tmp_path / "broken.py").write_text("NAME = 'b'\ndef (\n")
    (tmp_path / "badname.py").write_text("NAME = 'has space'\n")
    _write(tmp_path / "shadow.py", "cmapss-rul")  # may not replace a built-in
    _write(tmp_path / "good.py", "good")
    catalog = scan(tmp_path)
    assert set(catalog.tasks) >= {"good", "cmapss-rul"}
    assert catalog.tasks["cmapss-rul"].source == "builtin"
    text = "\n".join(catalog.problems)
    assert "nameless.py" in text and 'NAME = "..." string literal' in text
    assert "computed.py" in text
    assert "broken.py: syntax error line 2" in text
    assert "must match" in text
    assert "shadow.py" in text and "taken by" in text
    with pytest.raises(TaskLoadError, match=r"nameless\.py"):
        load_tasks(tmp_path)
    with pytest.raises(UnknownTaskError) as exc:
        get_task("nope", tmp_path)
    msg = str(exc.value)
    assert "unknown task 'nope'" in msg
    assert f"good {catalog.tasks['good'].code_hash} (dir:{tmp_path.resolve()})" in msg
    assert f"cmapss-rul {TASKS['cmapss-rul'].code_hash} (builtin)" in msg
    assert "nameless.py" in msg  # why a file the operator expected is missing
    missing = scan(tmp_path / "absent")
    assert missing.problems == (f"tasks_dir {(tmp_path / 'absent').resolve()} is not a folder",)


def test_name_mismatch_and_edits_while_loading_are_errors(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.py", "liar", extra="NAME = 'oth' + 'er'")
    with pytest.raises(TaskLoadError, match="sets NAME to 'other'"):
        get_task("liar", tmp_path).initial_weights(0)
    _write(path, "later")
    task = get_task("later", tmp_path)
    path.write_text(path.read_text() + "\n# edited\n")
    with pytest.raises(TaskLoadError, match="changed while it was loaded"):
        task.impl  # noqa: B018


def test_contract_problems_name_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "half.py").write_text(
        "NAME = 'half'\nVERSION = '1'\nMETRICS = {'a': 'low'}\nPRIMARY_METRIC = 'b'\n"
        "WINDOW = 0\ndef train(): pass\n"
    )
    problems = contract_problems(get_task("half", tmp_path))
    assert "missing DEFAULTS" in problems and "missing OUTPUTS" in problems
    assert "missing function predict()" in problems
    assert "METRICS values must be 'min' or 'max' (not for ['a'])" in problems
    assert "PRIMARY_METRIC 'b' is not a key of METRICS" in problems
    assert "WINDOW must be >= 1" in problems


def test_env_names_the_site_folder_for_get_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(tmp_path / "t.py", "from-env")
    with pytest.raises(UnknownTaskError):
        get_task("from-env")
    monkeypatch.setenv("FEDMQ_SITE_TASKS_DIR", str(tmp_path))
    assert get_task("from-env").source == f"dir:{tmp_path.resolve()}"


def test_entry_point_tasks(tmp_path: Path) -> None:
    """A package installed with a ``fedmq.tasks`` entry point (a dist-info on the path)."""
    pkg = tmp_path / "acme_tasks"
    _write(pkg / "vib.py", "acme-vibration", version="2.1")
    (pkg / "__init__.py").write_text("")
    info = tmp_path / "acme_tasks-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-tasks\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(
        "[fedmq.tasks]\nacme-vibration = acme_tasks.vib\nbad name = acme_tasks.vib\n"
    )
    code = (
        "import json\n"
        "from site_node.training.tasks import scan\n"
        "c = scan()\n"
        "t = c.tasks['acme-vibration']\n"
        "print(json.dumps({**t.describe(), 'problems': c.problems,"
        " 'trained': t.train(None, None)[1]}))\n"
    )
    env_path = f"{tmp_path}"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["source"] == "entry-point:acme-tasks" and got["version"] == "2.1"
    assert got["files"] == ["acme_tasks/vib.py", "acme_tasks/__init__.py"]
    assert got["code_hash"] == files_hash(
        [("acme_tasks/__init__.py", pkg / "__init__.py"), ("acme_tasks/vib.py", pkg / "vib.py")]
    )
    assert got["trained"] == 3
    assert any("bad name" in p and "must match" in p for p in got["problems"])


ENGINE = """\
import tomllib


class DeclaredTask:
    def __init__(self, name, version):
        self.NAME, self.VERSION = name, version

    @classmethod
    def from_toml(cls, path):
        raw = tomllib.loads(open(path).read())
        if "name" not in raw:
            raise ValueError("no name")
        return cls(raw["name"], raw.get("version", "0"))
"""


def test_declared_tasks_hash_the_toml_and_the_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = tmp_path / "engine" / "declared.py"
    engine.parent.mkdir()
    engine.write_text(ENGINE)
    spec = importlib.util.spec_from_file_location("site_node.training.tasks.declared", engine)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "site_node.training.tasks.declared", module)
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    (tasks_dir / "press.toml").write_text('name = "press-fail"\nversion = "3"\n')
    (tasks_dir / "bad.toml").write_text("version = 1\n")
    catalog = scan(tasks_dir)
    task = catalog.tasks["press-fail"]
    assert task.kind == "declared" and task.version == "3" and task.impl.NAME == "press-fail"
    rels = [rel for rel, _ in task.files]
    assert rels == ["press.toml", "engine/common.py", "engine/declared.py"]
    assert any(p.startswith(f"{tasks_dir / 'bad.toml'}: no name") for p in catalog.problems)
    before = task.code_hash
    engine.write_text(ENGINE + "# engine changed\n")
    assert scan(tasks_dir).tasks["press-fail"].code_hash != before


def test_declared_hash_covers_the_engine_modules_not_the_shipped_examples() -> None:
    from site_node.training.tasks.declared import ENGINE_FILES

    task = scan(None).tasks["ai4i-declared"]
    engine = sorted(path.resolve() for rel, path in task.files if rel.startswith("engine/"))
    assert engine == sorted(p.resolve() for p in ENGINE_FILES)
    # Another shipped declaration is not part of it: editing that example leaves this hash.
    assert not any(path.name == "cmapss_fd001.toml" for _rel, path in task.files)
