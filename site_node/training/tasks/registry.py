"""The task registry: where tasks come from, their names, versions and code hashes.

Tasks come from three places (see docs/tasks.md):

1. built-ins shipped in this package (``cmapss-rul``, ``ai4i-failure``, and any declared
   ``*.toml`` task shipped under this folder);
2. installed packages exposing an entry point in group ``fedmq.tasks`` (the entry point's
   name is the task name; its value a module, or an object with the task's attributes);
3. a site's ``[training] tasks_dir`` folder: each ``*.py`` file or package folder (with an
   ``__init__.py``) is a Python task, each ``*.toml`` file a declared no-code task
   (``site_node.training.tasks.declared.DeclaredTask.from_toml``).

Listing tasks executes no task code and imports no torch: a Python task's ``NAME`` and
``VERSION`` are read from its source as string literals; its module is imported on first
use. A task's ``code_hash`` is the sha256 over every file of the task: for each file in
sorted order of its relative path, the path (UTF-8), a NUL, the size in decimal, a NUL,
then the bytes. Built-ins also cover the shared training loop ``common.py``; a declared task
covers its TOML plus the engine's files. A site allow-lists that hash, so any edit to any
of those files changes it.

The registry is read afresh on every call (a file edited while the site runs has a new
hash at once); ``TASKS`` holds the built-ins only.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = [
    "ENTRY_POINT_GROUP",
    "TASKS",
    "TASKS_DIR_ENV",
    "Catalog",
    "Task",
    "TaskLoadError",
    "UnknownTaskError",
    "contract_problems",
    "files_hash",
    "get_task",
    "load_tasks",
    "scan",
]

ENTRY_POINT_GROUP = "fedmq.tasks"
# The tasks folder of the site this process serves: the site daemon sets it from its
# ``[training] tasks_dir`` so its training worker and the job bodies running in the datasite
# resolve the same tasks (``get_task(name)`` without ``tasks_dir`` reads it).
TASKS_DIR_ENV = "FEDMQ_SITE_TASKS_DIR"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")

_HERE = Path(__file__).resolve().parent
_SHARED = ("common.py",)
_SKIP_DIRS = {"__pycache__", ".git", ".mypy_cache", ".pytest_cache", ".ruff_cache"}

TrainResult = tuple[bytes, int, dict[str, float]]

# Every attribute a task provides (docs/tasks.md, "The contract").
REQUIRED = {
    "NAME": str,
    "VERSION": str,
    "DEFAULTS": dict,
    "METRICS": dict,
    "PRIMARY_METRIC": str,
    "OUTPUTS": dict,
    "WINDOW": int,
}
REQUIRED_FUNCTIONS = (
    "read_table",
    "load_dataset",
    "initial_weights",
    "train",
    "evaluate",
    "predict",
)


class UnknownTaskError(KeyError):
    """No task of that name is known at this site."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown task"


class TaskLoadError(ValueError):
    """A task source could not be read (bad file, missing NAME, duplicate name, ...)."""


@dataclass(frozen=True)
class Task:
    """One task: identity, source, hashed files, and its implementation loaded on first use.

    ``files`` are ``(relative path, absolute path)`` pairs in hash order.
    """

    name: str
    version: str
    source: str  # "builtin" | "entry-point:<dist>" | "dir:<path>"
    files: tuple[tuple[str, Path], ...]
    code_hash: str
    loader: Callable[[], Any] = field(repr=False, compare=False)
    # Module scoring a model on the task's public test set (not part of the code hash: it
    # never touches a site's private data); "" when the task has none.
    test_scoring: str = ""
    kind: str = "python"  # "python" | "declared"

    @property
    def impl(self) -> Any:
        """The task's module or object (imported on first use; torch may load here)."""
        return self.loader()

    @property
    def path(self) -> Path | None:
        """The task's main file (its module, package ``__init__.py`` or TOML)."""
        return self.files[0][1] if self.files else None

    # -- the contract -------------------------------------------------------------------

    @property
    def defaults(self) -> Mapping[str, Any]:
        """Default hyperparameters (``epochs``, ``lr``, ``batch_size``, ``seed``, ...)."""
        return dict(self.impl.DEFAULTS)

    @property
    def metrics(self) -> dict[str, str]:
        """Every metric ``evaluate`` reports -> "min" or "max" (which is better)."""
        return dict(self.impl.METRICS)

    @property
    def primary_metric(self) -> str:
        return str(self.impl.PRIMARY_METRIC)

    @property
    def outputs(self) -> dict[str, str]:
        """What ``predict`` returns -> unit."""
        return dict(self.impl.OUTPUTS)

    @property
    def window(self) -> int:
        """How many recent live samples of one device ``predict`` needs."""
        return int(self.impl.WINDOW)

    def read_table(self, paths: Any, params: Mapping[str, Any] | None = None) -> Any:
        """The site's private rows (a pandas DataFrame) from its configured files."""
        return self.impl.read_table(paths, dict(params or {}))

    def load_dataset(self, source: Any, params: Mapping[str, Any] | None = None) -> Any:
        """Training and validation data from a table (or the files) of private rows."""
        return self.impl.load_dataset(source, dict(params or {}))

    def train(
        self,
        global_weights: bytes | None,
        data: Any,
        hyperparams: Mapping[str, Any] | None = None,
        progress: Callable[[float], None] | None = None,
    ) -> TrainResult:
        """Train locally from ``global_weights``; returns (npz weights, n_samples, metrics)."""
        return self.impl.train(global_weights, data, dict(hyperparams or {}), progress)  # type: ignore[no-any-return]

    def evaluate(self, weights: bytes, data: Any) -> dict[str, float | str]:
        """Metrics of ``weights`` on the local validation split (a string: why not)."""
        return dict(self.impl.evaluate(weights, data))

    def predict(
        self,
        weights: bytes,
        window: list[dict[str, float]],
        params: Mapping[str, Any] | None = None,
    ) -> dict[str, float]:
        """Outputs (keys of ``outputs``) for one device's recent samples, oldest first."""
        return dict(self.impl.predict(weights, window, dict(params or {})))

    def initial_weights(self, seed: int = 0) -> bytes:
        """Freshly initialised model weights (npz), the same for a given seed."""
        return self.impl.initial_weights(seed)  # type: ignore[no-any-return]

    @property
    def has_test_set(self) -> bool:
        return bool(self.test_scoring)

    def score_test_set(self, weights: bytes) -> dict[str, float]:
        """Metrics of ``weights`` on the task's shipped public test set (``rmse``, ``n``, ...).

        Raises:
            LookupError: the task ships no test set.
            OSError, ValueError: missing test files, or weights that do not fit the model.
        """
        if not self.test_scoring:
            raise LookupError(f"task {self.name!r} ships no test set")
        module = importlib.import_module(f"site_node.training.tasks.{self.test_scoring}")
        return dict(module.score(weights))

    def describe(self) -> dict[str, Any]:
        """Name, version, source, hash and files, for listings (imports nothing)."""
        return {
            "name": self.name,
            "version": self.version,
            "source": self.source,
            "kind": self.kind,
            "code_hash": self.code_hash,
            "path": str(self.path) if self.path else None,
            "files": [rel for rel, _ in self.files],
        }


@dataclass(frozen=True)
class Catalog:
    """What a scan found: the usable tasks, and why other sources were left out."""

    tasks: dict[str, Task]
    problems: tuple[str, ...]

    def known(self) -> str:
        """One line per task: ``name sha256 (source)``, for error messages."""
        if not self.tasks:
            return "(no tasks)"
        return "; ".join(f"{t.name} {t.code_hash} ({t.source})" for t in self.tasks.values())


# -- hashing ----------------------------------------------------------------------------


def files_hash(files: Iterable[tuple[str, Path]]) -> str:
    """sha256 over (relative path, size, bytes) of each file, in sorted path order."""
    digest = hashlib.sha256()
    for rel, path in sorted(files, key=lambda f: f[0]):
        data = Path(path).read_bytes()
        digest.update(rel.encode() + b"\0" + str(len(data)).encode() + b"\0")
        digest.update(data)
    return digest.hexdigest()


def _tree_files(folder: Path, prefix: str) -> list[tuple[str, Path]]:
    """Every file under ``folder`` (caches and hidden files left out), as (prefix/rel, path)."""
    out = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(names):
            if name.startswith(".") or name.endswith((".pyc", ".pyo")):
                continue
            path = Path(root) / name
            out.append((f"{prefix}/{path.relative_to(folder).as_posix()}", path))
    return out


def _sorted(files: list[tuple[str, Path]]) -> tuple[tuple[str, Path], ...]:
    # The main file first (Task.path), then the rest in hash order.
    return (files[0], *sorted(files[1:], key=lambda f: f[0]))


# -- reading NAME / VERSION without running the code ------------------------------------


# Parsed literals by the file's content digest: a scan re-reads every file (fresh hashes)
# but parses only what changed.
_PARSED: dict[str, dict[str, Any]] = {}


def _literals(path: Path) -> dict[str, Any]:
    """Module-level ``NAME = "..."`` style literal assignments of a Python file."""
    source = path.read_bytes()
    key = hashlib.sha256(source).hexdigest()
    cached = _PARSED.get(key)
    if cached is None:
        cached = _PARSED[key] = _parse_literals(source, path)
    return dict(cached)


def _parse_literals(source: bytes, path: Path) -> dict[str, Any]:
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as exc:
        raise TaskLoadError(f"{path}: syntax error line {exc.lineno}: {exc.msg}") from None
    out: dict[str, Any] = {}
    for node in tree.body:
        target, value = None, None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        if isinstance(target, ast.Name) and target.id in ("NAME", "VERSION"):
            try:
                out[target.id] = ast.literal_eval(value)  # type: ignore[arg-type]
            except ValueError:
                continue
    return out


def _identity(path: Path, where: str) -> tuple[str, str]:
    lit = _literals(path)
    name, version = lit.get("NAME"), lit.get("VERSION", "0")
    if not isinstance(name, str):
        raise TaskLoadError(
            f'{where}: no module-level NAME = "..." string literal (the task name; the '
            "registry reads it without running the file)"
        )
    if not NAME_PATTERN.match(name):
        raise TaskLoadError(f"{where}: NAME {name!r} must match [A-Za-z0-9_-]{{1,128}}")
    return name, str(version)


# -- loading modules from files -----------------------------------------------------------

_LOCK = threading.Lock()
_LOADED: dict[tuple[str, str], Any] = {}


def _module_from_path(
    name: str, main: Path, package: bool, code_hash: str, rehash: Callable[[], str]
) -> ModuleType:
    """Import the task at ``main`` under a module name unique to its path and hash."""
    key = (str(main), code_hash)
    with _LOCK:
        if key in _LOADED:
            return _LOADED[key]  # type: ignore[no-any-return]
        safe = re.sub(r"\W", "_", name)
        mod_name = f"fedmq_task_{safe}_{code_hash[:16]}"
        spec = importlib.util.spec_from_file_location(
            mod_name, main, submodule_search_locations=[str(main.parent)] if package else None
        )
        if spec is None or spec.loader is None:
            raise TaskLoadError(f"task {name}: cannot import {main}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(mod_name, None)
            raise
        now = rehash()
        if now != code_hash:
            sys.modules.pop(mod_name, None)
            raise TaskLoadError(
                f"task {name} changed while it was loaded: files hash to {now}, "
                f"expected {code_hash}"
            )
        got = getattr(module, "NAME", None)
        if got != name:
            raise TaskLoadError(f"task {name}: {main} sets NAME to {got!r} when run")
        _LOADED[key] = module
        return module


# -- the three sources ------------------------------------------------------------------


def _builtin_python() -> list[Task]:
    def make(module: str, test_scoring: str = "") -> Task:
        main = _HERE / f"{module}.py"
        name, version = _identity(main, str(main))
        files = [(main.name, main), *((f, _HERE / f) for f in _SHARED)]
        return Task(
            name=name,
            version=version,
            source="builtin",
            files=_sorted(files),
            code_hash=files_hash(files),
            loader=lambda: importlib.import_module(f"site_node.training.tasks.{module}"),
            test_scoring=test_scoring,
        )

    return [make("cmapss_rul", test_scoring="fd001_scoring"), make("ai4i_failure")]


def _engine_files() -> list[tuple[str, Path]]:
    """The declared-task engine's files (part of every declared task's hash)."""
    spec = importlib.util.find_spec("site_node.training.tasks.declared")
    if spec is None or spec.origin is None:
        raise TaskLoadError(
            "declared (*.toml) tasks need the no-code engine "
            "site_node.training.tasks.declared, which this install lacks"
        )
    origin = Path(spec.origin)
    if spec.submodule_search_locations:
        # The engine's modules only: the example declarations shipped beside them are tasks
        # of their own, and editing one must not change every declared task's hash.
        files = [(f"engine/declared/{f.name}", f) for f in sorted(origin.parent.glob("*.py"))]
    else:
        files = [(f"engine/{origin.name}", origin)]
    return files + [(f"engine/{f}", _HERE / f) for f in _SHARED]


def _declared(path: Path, source: str) -> Task:
    try:  # the engine is imported only when a declared task is found
        engine = importlib.import_module("site_node.training.tasks.declared")
        from_toml = engine.DeclaredTask.from_toml
    except (ImportError, AttributeError) as exc:
        raise TaskLoadError(
            f"{path}: declared tasks need site_node.training.tasks.declared ({exc})"
        ) from None
    files = [(path.name, path), *_engine_files()]
    code_hash = files_hash(files)
    key = (str(path), code_hash)
    obj = _DECLARED.get(key)  # the same TOML and engine make the same task
    if obj is None:
        try:
            obj = from_toml(path)
        except Exception as exc:  # the engine's own validation says what is wrong
            why = str(exc)  # the engine's errors usually name the file already
            raise TaskLoadError(why if str(path) in why else f"{path}: {why}") from None
        _DECLARED[key] = obj
    name, version = str(getattr(obj, "NAME", "")), str(getattr(obj, "VERSION", "0"))
    if not NAME_PATTERN.match(name):
        raise TaskLoadError(f"{path}: task name {name!r} must match [A-Za-z0-9_-]{{1,128}}")
    return Task(
        name=name,
        version=version,
        source=source,
        files=_sorted(files),
        code_hash=code_hash,
        loader=lambda: obj,
        kind="declared",
    )


_DECLARED: dict[tuple[str, str], Any] = {}


def _builtin_declared() -> tuple[list[Task], list[str]]:
    tasks, problems = [], []
    for path in sorted(_HERE.rglob("*.toml")):
        if _SKIP_DIRS.intersection(path.relative_to(_HERE).parts):
            continue
        try:
            tasks.append(_declared(path, "builtin"))
        except TaskLoadError as exc:
            problems.append(str(exc))
    return tasks, problems


def _python_file_task(
    main: Path, rel_files: list[tuple[str, Path]], source: str, package: bool
) -> Task:
    where = str(main.parent if package else main)
    name, version = _identity(main, where)
    code_hash = files_hash(rel_files)
    return Task(
        name=name,
        version=version,
        source=source,
        files=_sorted(rel_files),
        code_hash=code_hash,
        loader=lambda: _module_from_path(
            name, main, package, code_hash, lambda: files_hash(rel_files)
        ),
    )


def _dir_tasks(tasks_dir: Path) -> tuple[list[Task], list[str]]:
    folder = Path(tasks_dir).expanduser().resolve()
    if not folder.is_dir():
        return [], [f"tasks_dir {folder} is not a folder"]
    source = f"dir:{folder}"
    tasks, problems = [], []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith((".", "_")) or entry.name in _SKIP_DIRS:
            continue
        try:
            if entry.is_file() and entry.suffix == ".py":
                tasks.append(_python_file_task(entry, [(entry.name, entry)], source, False))
            elif entry.is_file() and entry.suffix == ".toml":
                tasks.append(_declared(entry, source))
            elif entry.is_dir() and (entry / "__init__.py").is_file():
                files = _tree_files(entry, entry.name)
                init = (f"{entry.name}/__init__.py", entry / "__init__.py")
                files = [init, *(f for f in files if f != init)]
                tasks.append(_python_file_task(entry / "__init__.py", files, source, True))
        except (TaskLoadError, OSError) as exc:
            problems.append(str(exc))
    return tasks, problems


@functools.cache
def _entry_points() -> tuple[importlib.metadata.EntryPoint, ...]:
    """The installed ``fedmq.tasks`` entry points, read once per process (a package
    installed later is seen after a restart); their files are hashed on every scan."""
    found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    return tuple(sorted(found, key=lambda e: e.name))


def _entry_point_tasks() -> tuple[list[Task], list[str]]:
    tasks, problems = [], []
    for ep in _entry_points():
        dist = ep.dist.name if ep.dist is not None else "unknown"
        where = f"entry point {ep.name} = {ep.value} ({dist})"
        try:
            tasks.append(_entry_point_task(ep, dist, where))
        except (TaskLoadError, OSError) as exc:
            problems.append(str(exc))
    return tasks, problems


def _entry_point_task(ep: importlib.metadata.EntryPoint, dist: str, where: str) -> Task:
    if not NAME_PATTERN.match(ep.name):
        raise TaskLoadError(f"{where}: the name must match [A-Za-z0-9_-]{{1,128}}")
    parts = ep.module.split(".")
    top = importlib.util.find_spec(parts[0])  # finds, does not run, the top-level package
    if top is None or top.origin is None:
        raise TaskLoadError(f"{where}: module {parts[0]} not found")
    if top.submodule_search_locations:
        pkg = Path(next(iter(top.submodule_search_locations)))
        files = _tree_files(pkg, parts[0])
        sub = pkg.joinpath(*parts[1:])
        main = sub / "__init__.py" if sub.is_dir() else sub.with_suffix(".py")
    else:
        main = Path(top.origin)
        files = [(main.name, main)]
    main_rel = next((f for f in files if f[1] == main), None)
    if main_rel is not None:
        files = [main_rel, *(f for f in files if f != main_rel)]
    version = str(ep.dist.version) if ep.dist is not None else "0"
    if ep.attr is None and main.is_file():
        version = str(_literals(main).get("VERSION", version))
    name = ep.name

    def load() -> Any:
        obj = ep.load()
        got = getattr(obj, "NAME", None)
        if got != name:
            raise TaskLoadError(f"{where}: the loaded task's NAME is {got!r}, not {name!r}")
        return obj

    return Task(
        name=name,
        version=version,
        source=f"entry-point:{dist}",
        files=_sorted(files),
        code_hash=files_hash(files),
        loader=load,
    )


# -- the registry API -----------------------------------------------------------------


TASKS: dict[str, Task] = {t.name: t for t in _builtin_python()}


def _env_dir() -> Path | None:
    value = os.environ.get(TASKS_DIR_ENV)
    return Path(value) if value else None


def scan(tasks_dir: Path | str | None = None) -> Catalog:
    """Every task from the three sources, and why any source was left out.

    A name offered twice keeps its first source (built-in, then entry points, then the
    folder) and reports the others as problems.
    """
    found: list[Task] = list(_builtin_python())
    declared, problems = _builtin_declared()
    found += declared
    eps, ep_problems = _entry_point_tasks()
    found += eps
    problems += ep_problems
    if tasks_dir is not None:
        own, dir_problems = _dir_tasks(Path(tasks_dir))
        found += own
        problems += dir_problems
    tasks: dict[str, Task] = {}
    for task in found:
        first = tasks.get(task.name)
        if first is None:
            tasks[task.name] = task
        else:
            problems.append(
                f"task {task.name} from {task.path} ({task.source}) ignored: the name is "
                f"taken by {first.path} ({first.source})"
            )
    return Catalog(tasks, tuple(problems))


def load_tasks(tasks_dir: Path | str | None = None) -> dict[str, Task]:
    """Every task by name; raises TaskLoadError listing every source that cannot be used."""
    catalog = scan(tasks_dir)
    if catalog.problems:
        raise TaskLoadError("; ".join(catalog.problems))
    return catalog.tasks


def get_task(name: str, tasks_dir: Path | str | None = None) -> Task:
    """The task called ``name``; raises UnknownTaskError (naming the known tasks).

    ``tasks_dir`` None means this process's site folder (``FEDMQ_SITE_TASKS_DIR``), if any.
    """
    if name in TASKS:  # built-ins first (a folder's task of the same name is refused)
        return {t.name: t for t in _builtin_python()}[name]
    catalog = scan(tasks_dir if tasks_dir is not None else _env_dir())
    task = catalog.tasks.get(name)
    if task is None:
        why = f"; left out: {'; '.join(catalog.problems)}" if catalog.problems else ""
        raise UnknownTaskError(f"unknown task {name!r}; known: {catalog.known()}{why}")
    return task


def contract_problems(task: Task) -> list[str]:
    """What the task's implementation lacks of the contract (imports the task)."""
    impl = task.impl
    out = []
    for attr, kind in REQUIRED.items():
        value = getattr(impl, attr, None)
        if value is None:
            out.append(f"missing {attr}")
        elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            out.append(f"{attr} must be a {kind.__name__}, not {type(value).__name__}")
    for fn in REQUIRED_FUNCTIONS:
        if not callable(getattr(impl, fn, None)):
            out.append(f"missing function {fn}()")
    metrics = getattr(impl, "METRICS", None)
    if isinstance(metrics, dict):
        bad = sorted(k for k, v in metrics.items() if v not in ("min", "max"))
        if bad:
            out.append(f"METRICS values must be 'min' or 'max' (not for {bad})")
        primary = getattr(impl, "PRIMARY_METRIC", None)
        if isinstance(primary, str) and primary not in metrics:
            out.append(f"PRIMARY_METRIC {primary!r} is not a key of METRICS")
    window = getattr(impl, "WINDOW", None)
    if isinstance(window, int) and window < 1:
        out.append("WINDOW must be >= 1")
    if getattr(impl, "NAME", task.name) != task.name:
        out.append(f"NAME is {impl.NAME!r}, registered as {task.name!r}")
    return out
