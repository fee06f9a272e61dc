"""The architecture as a test over the import graph (static: every ``import`` statement of
every module, lazy ones inside functions included, ``TYPE_CHECKING`` blocks too).

- the site and the coordinator never import each other;
- ``schemas`` (the wire contract) imports only the standard library and pydantic;
- ``fedmq_runtime`` (shared run-time helpers) only those and ``schemas`` (and its ``cli``
  module click);
- no import cycle between the project's modules;
- one helper per job: the clock, backoff, rate limiter and broker login (credentials and
  TLS) are each defined once and used by both sides;
- no SQL in the coordinator outside ``coordinator/store/`` (a scan of string literals and
  ``execute`` calls, so a second store implementation replaces one package).
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("schemas", "fedmq_runtime", "site_node", "coordinator")
STDLIB = set(sys.stdlib_module_names) | {"__future__"}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            rel = path.relative_to(REPO).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(module: str, path: Path) -> Iterator[str]:
    """Every module name ``module`` imports (absolute, resolved relative imports)."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            for alias in node.names:
                # ``from pkg import submodule`` imports the submodule.
                yield f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base


def _project_target(name: str) -> str | None:
    """The project module an import resolves to (the longest known prefix)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in MODULES:
            return candidate
    return None


GRAPH = {m: sorted(set(_imports(m, p))) for m, p in MODULES.items()}


def _top(name: str) -> str:
    return name.split(".")[0]


def test_the_two_sides_never_import_each_other() -> None:
    bad = [
        f"{m} imports {i}"
        for m, imports in GRAPH.items()
        for i in imports
        if {_top(m), _top(i)} == {"site_node", "coordinator"}
    ]
    assert bad == []


def test_schemas_imports_only_stdlib_and_pydantic() -> None:
    allowed = STDLIB | {"pydantic", "pydantic_core", "schemas"}
    bad = [
        f"{m} imports {i}"
        for m, imports in GRAPH.items()
        if _top(m) == "schemas"
        for i in imports
        if _top(i) not in allowed
    ]
    assert bad == []


def test_the_runtime_package_imports_only_stdlib_pydantic_and_schemas() -> None:
    # tomli: the standard library's tomllib before Python 3.11.
    allowed = STDLIB | {"pydantic", "pydantic_core", "schemas", "fedmq_runtime", "tomli"}
    # The one exception: fedmq_runtime.cli, the exit codes, errors and lazy command group
    # both CLIs share, imports click (a dependency of both CLIs; no daemon imports it).
    extra = {"fedmq_runtime.cli": {"click"}}
    bad = [
        f"{m} imports {i}"
        for m, imports in GRAPH.items()
        if _top(m) == "fedmq_runtime"
        for i in imports
        if _top(i) not in allowed | extra.get(m, set())
    ]
    assert bad == []


def test_both_clis_share_one_error_and_exit_code_helper() -> None:
    for package in ("coordinator.cli", "site_node.cli"):
        assert "fedmq_runtime.cli" in GRAPH[package], f"{package} has its own main/EXIT"
    # Nobody else defines exit codes or a ClickException of their own.
    for m, path in MODULES.items():
        if m == "fedmq_runtime.cli":
            continue
        text = path.read_text()
        assert "(click.ClickException)" not in text, f"{m}: use fedmq_runtime.cli's errors"
        assert "EXIT = " not in text, f"{m}: use fedmq_runtime.cli.EXIT"


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    edges = {
        m: sorted({t for i in imports if (t := _project_target(i)) and t != m})
        for m, imports in GRAPH.items()
    }
    # A package's __init__ importing its own submodules is how packages re-export: the
    # submodule importing a sibling through the package is the same edge seen back.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles() -> None:
    assert _cycles() == []


def test_the_graph_is_not_empty() -> None:
    """Guard: the checks above would pass on an empty graph."""
    assert len(MODULES) > 80
    assert "coordinator.ingest.ingestor" in MODULES and "site_node.daemon" in MODULES
    assert any(_top(i) == "schemas" for i in GRAPH["coordinator.ingest.ingestor"])


# A statement keyword followed by what makes it SQL, in any string literal (f-strings'
# literal parts included): "SELECT ... FROM", "INSERT INTO", "UPDATE t SET", ...
_SQL = re.compile(
    r"\b(SELECT\b.*\bFROM|INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM"
    r"|CREATE\s+(TABLE|INDEX|VIEW|TRIGGER|UNIQUE)|ALTER\s+TABLE|DROP\s+(TABLE|INDEX)"
    r"|PRAGMA\s+\w+|SELECT\s+\d)",
    re.DOTALL,
)
_DB_CALLS = frozenset({"execute", "executemany", "executescript"})


def _sql_uses(path: Path) -> list[str]:
    """Where a module spells SQL or calls a DB-API ``execute*`` method."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if _SQL.search(node.value):
                out.append(f"line {node.lineno}: {node.value[:60]!r}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _DB_CALLS
        ):
            out.append(f"line {node.lineno}: .{node.func.attr}(...)")
    return out


def _coordinator_sql() -> dict[str, list[str]]:
    return {
        m: uses
        for m, path in MODULES.items()
        if _top(m) == "coordinator" and not m.startswith("coordinator.store")
        if (uses := _sql_uses(path))
    }


def test_no_sql_in_the_coordinator_outside_its_store() -> None:
    found = _coordinator_sql()
    assert found == {}, "SQL belongs in coordinator/store/ (add a read or a Store method)"


def test_the_read_commands_reach_the_database_only_through_the_reader() -> None:
    # One module opens the reader for every read command (coordinator.cli.output); the
    # commands see a StoreReader, never a connection. train.py opens a reader itself for
    # the control API's URL (StoreReader.api_url), where a missing database is no error;
    # serve is the daemon that owns the writer side.
    # `fedmq sites forget` and `fedmq alarms ack` are the write commands besides serve:
    # they reach the database through coordinator.store.forget and .alarm_ack only.
    allowed = {"coordinator.cli.output", "coordinator.cli.train", "coordinator.cli.serve"}
    writes = {
        ("coordinator.cli.sites", "coordinator.store.forget"),
        ("coordinator.cli.alarms", "coordinator.store.alarm_ack"),
    }
    bad = [
        f"{m} imports {i}"
        for m, imports in GRAPH.items()
        if m.startswith("coordinator.cli.") and m not in allowed
        for i in imports
        if (i == "sqlite3" or i.startswith("coordinator.store")) and (m, i) not in writes
    ]
    assert bad == []


def test_the_sql_scan_finds_sql() -> None:
    """Guard: the scan above would pass if it recognised nothing."""
    store = _sql_uses(REPO / "coordinator" / "store" / "__init__.py")
    assert any("INSERT" in u for u in store) and any(".executemany" in u for u in store)
    assert _SQL.search("SELECT 1 FROM sites LIMIT 1") and _SQL.search("PRAGMA synchronous")
    assert not _SQL.search("Select the sites that offer a task from the registrations.")
    assert not _SQL.search("CREATED")


# Helpers that exist once: where each is defined, and the pattern of a copy elsewhere.
# schemas keeps its own now_ms: the wire contract imports nothing of the project's.
ONE_PLACE = {
    "now_ms": (
        {"fedmq_runtime.clock", "schemas.envelope"},
        re.compile(r"def _?now_ms\b|time_ns\(\) // 1_000_000"),
    ),
    "backoff": (
        {"fedmq_runtime.backoff"},
        re.compile(r"class \w*Backoff\b|2\.0\s*\*\*\s*[\w.]*attempt"),
    ),
    "rate limiter": ({"fedmq_runtime.logs"}, re.compile(r"class \w*RateLimit\w*")),
    # Each bus builds its paho client, but logs in only through
    # fedmq_runtime.broker_connection (one set of TLS rules): no tls_set(...) of its own.
    "broker login": (
        {"fedmq_runtime.broker_connection"},
        re.compile(r"\.tls_set\(|\.tls_insecure_set\(|ssl\.SSLContext\("),
    ),
}


def test_each_shared_helper_is_defined_in_one_place() -> None:
    found = {
        (helper, m)
        for helper, (homes, pattern) in ONE_PLACE.items()
        for m, path in MODULES.items()
        if m not in homes and pattern.search(path.read_text())
    }
    assert found == set()


def test_both_buses_log_in_through_the_shared_builder() -> None:
    for bus in ("site_node.bus", "coordinator.bus", "coordinator.bus_asyncio"):
        assert "fedmq_runtime.broker_connection" in GRAPH[bus], bus
    for helper, (homes, pattern) in ONE_PLACE.items():
        assert all(pattern.search(MODULES[m].read_text()) for m in homes), helper


_HEAVY = ("torch", "syft")


def _dynamic_imports(path: Path) -> Iterator[str]:
    """Names imported by ``importlib.import_module("x")`` / ``__import__("x")`` literals."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            arg = node.args[0]
            if name in ("import_module", "__import__") and isinstance(arg, ast.Constant):
                yield str(arg.value)


def test_the_coordinator_never_imports_torch_or_syft() -> None:
    # Static: module-level and lazy (in-function) imports alike, and literal dynamic ones;
    # a base install (no train extra) runs every coordinator command. Models are scored
    # by the site's code (`fedmq-site task evaluate`), never by a copy in the coordinator.
    bad = [
        f"{m} imports {name}"
        for m, path in MODULES.items()
        if _top(m) == "coordinator"
        for name in (*GRAPH[m], *_dynamic_imports(path))
        if _top(name) in _HEAVY
    ]
    assert bad == []
    # The scan sees lazy imports: the site's scorer imports torch inside a function.
    assert "torch" in GRAPH["site_node.training.tasks.fd001_scoring"]


# The modules that talk MQTT. The coordinator has two (paho, or its own asyncio client,
# chosen by ``receive``); serve builds exactly one of them, so one module per process talks
# to MQTT. Only the paho ones import paho.
MQTT_MODULES = {"site_node.bus", "coordinator.bus", "coordinator.bus_asyncio"}


def test_only_the_bus_modules_talk_mqtt() -> None:
    paho = {m for m, deps in GRAPH.items() if any(d.split(".")[0] == "paho" for d in deps)}
    assert paho == MQTT_MODULES - {"coordinator.bus_asyncio"}
    # Whoever imports a bus module's client class builds it: only serve, and one of them.
    builders = {m for m, deps in GRAPH.items() if "coordinator.bus_asyncio" in deps}
    assert builders == {"coordinator.cli.serve"}
    serve = MODULES["coordinator.cli.serve"].read_text()
    assert 'if settings.receive == "asyncio":' in serve and "else:\n            bus = Bus(" in serve
