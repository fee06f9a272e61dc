"""The TOML spec of a declared task, validated with pydantic (no torch, pandas or numpy).

Unknown keys are refused; every error names the file, the key path and, where it applies,
the column. See ``examples/`` for two complete declarations and ``docs/tasks.md``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from site_node.training.tasks.declared.expr import Expression, parse_expression

__all__ = [
    "AGGREGATES",
    "METRIC_DIRECTIONS",
    "DataError",
    "EventsSpec",
    "FeaturesSpec",
    "InputSpec",
    "MetricsSpec",
    "ModelSpec",
    "PredictSpec",
    "ScaleSpec",
    "SpecError",
    "SplitSpec",
    "TargetSpec",
    "TaskMeta",
    "TaskSpec",
    "WindowSpec",
    "base_defaults",
    "load_spec",
]

AGGREGATES = ("mean", "min", "max", "std", "last")
METRIC_DIRECTIONS: dict[str, dict[str, str]] = {
    "regression": {"rmse": "min", "mae": "min"},
    "binary": {
        "roc_auc": "max",
        "pr_auc": "max",
        "f1": "max",
        "precision": "max",
        "recall": "max",
        "accuracy": "max",
    },
    "multiclass": {
        "accuracy": "max",
        "f1": "max",
        "precision": "max",
        "recall": "max",
        "roc_auc": "max",
    },
}
_DEFAULT_METRICS = {
    "regression": ["rmse", "mae"],
    "binary": ["roc_auc", "pr_auc", "f1", "precision", "recall"],
    "multiclass": ["accuracy", "f1", "precision", "recall"],
}
_DURATIONS = {"seconds": 1.0, "minutes": 60.0, "hours": 3600.0, "days": 86400.0}
_NAME = r"^[A-Za-z0-9_-]{1,128}$"


class DataError(ValueError):
    """The site's data does not fit the declared task (the message names file and column)."""


class SpecError(ValueError):
    """A declared task's TOML is unreadable or invalid; the message names file and key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskMeta(_Strict):
    """``[task]``: identity of the task (sites pin name and code hash)."""

    name: str = Field(pattern=_NAME)
    version: str = Field(default="1.0", min_length=1, max_length=64)
    description: str = ""


class _FileFormat(_Strict):
    format: Literal["csv", "parquet", "whitespace"] = "csv"
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    header: bool = True
    # The files' columns in order: required without a header; with one, the columns that
    # must be there.
    columns: list[str] = []
    encoding: str = "utf-8-sig"

    @model_validator(mode="after")
    def _header(self) -> _FileFormat:
        if self.format != "parquet" and not self.header and not self.columns:
            raise ValueError("header = false needs columns = [...] (the files' columns in order)")
        if len(set(self.columns)) != len(self.columns):
            raise ValueError(f"columns has duplicates: {_dupes(self.columns)}")
        return self


class InputSpec(_FileFormat):
    """``[input]``: the site's files (the paths come from the site's dataset config)."""

    entity_column: str = Field(min_length=1)
    time_column: str | None = None
    # number: cycles, steps or epoch seconds; datetime: parsed, horizons in real time units.
    time_kind: Literal["auto", "number", "datetime"] = "auto"
    missing: Literal["error", "drop"] = "error"


class EventsSpec(_FileFormat):
    """``[target.events]``: an event log; ``file`` picks it among the dataset's paths."""

    file: str = Field(min_length=1, description="glob on file names, e.g. 'failures*.csv'")
    entity_column: str = Field(min_length=1)
    time_column: str = Field(min_length=1)
    kind_column: str | None = None
    kinds: list[str] = []

    @model_validator(mode="after")
    def _kinds(self) -> EventsSpec:
        if self.kinds and self.kind_column is None:
            raise ValueError("kinds needs kind_column (the column holding each event's kind)")
        return self


class ScaleSpec(_Strict):
    """Fixed scaling shared by all sites: ``{min, max}`` to [0, 1] or ``{mean, std}``."""

    min: float | None = None
    max: float | None = None
    mean: float | None = None
    std: float | None = None

    @model_validator(mode="after")
    def _pair(self) -> ScaleSpec:
        minmax = self.min is not None and self.max is not None
        standard = self.mean is not None and self.std is not None
        others = {k for k in ("min", "max", "mean", "std") if getattr(self, k) is not None}
        if minmax and others == {"min", "max"}:
            if self.max <= self.min:  # type: ignore[operator]
                raise ValueError(f"max ({self.max}) must be above min ({self.min})")
            return self
        if standard and others == {"mean", "std"}:
            if self.std <= 0:  # type: ignore[operator]
                raise ValueError(f"std must be positive, not {self.std}")
            return self
        raise ValueError("give either {min, max} or {mean, std}")

    def affine(self) -> tuple[float, float]:
        """(center, width): the scaled value is (x - center) / width."""
        if self.min is not None and self.max is not None:
            return self.min, self.max - self.min
        assert self.mean is not None and self.std is not None
        return self.mean, self.std


class FeaturesSpec(_Strict):
    """``[features]``: the model's inputs, in a layout every site shares."""

    # A list, or "all": every column of [input] columns except entity, time, target,
    # categorical and excluded ones.
    columns: list[str] | Literal["all"] = []
    exclude: list[str] = []
    # column -> its categories, one-hot encoded in this order (a value outside is an error).
    categorical: dict[str, list[str]] = {}
    # name -> expression over input columns (see expr.py), computed before scaling.
    derived: dict[str, str] = {}
    scale: dict[str, ScaleSpec] = {}
    # Every numeric input feature needs a scale entry (derived features scale themselves).
    require_scale: bool = True

    @field_validator("categorical")
    @classmethod
    def _categories(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for column, cats in value.items():
            if not cats:
                raise ValueError(f"categorical column {column!r} needs at least one category")
            if len(set(cats)) != len(cats):
                raise ValueError(f"categorical column {column!r} repeats {_dupes(cats)}")
        return value


class TargetSpec(_Strict):
    """``[target]``: what the model predicts."""

    type: Literal["column", "event_within", "time_to_event"] = "column"
    objective: Literal["regression", "binary", "multiclass"]
    column: str | None = None
    classes: list[str] = []
    events: EventsSpec | None = None
    # time_to_event: each entity's last row is its failure (run-to-failure records).
    end_of_run: bool = False
    horizon: float | None = Field(default=None, gt=0)
    horizon_unit: Literal["cycles", "seconds", "minutes", "hours", "days"] = "cycles"
    cap: float | None = Field(default=None, gt=0)
    # Rows whose horizon runs past the entity's last record with no event seen.
    censored: Literal["drop", "negative"] = "drop"
    class_weight: Literal["balanced", "none"] | float | list[float] = "none"
    loss: Literal["mse", "mae", "huber"] = "mse"
    # Regression: the model predicts target / scale; clip bounds predictions (evaluation).
    scale: float | None = Field(default=None, gt=0)
    clip: tuple[float, float] | None = None
    output: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    unit: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> TargetSpec:
        t, obj = self.type, self.objective
        if t == "column" and not self.column:
            raise ValueError('type = "column" needs column = "<the target column>"')
        if t != "column" and self.column:
            raise ValueError(f'column is only for type = "column", not {t!r}')
        if t == "event_within":
            if self.events is None or self.horizon is None:
                raise ValueError('type = "event_within" needs [target.events] and horizon')
            if obj != "binary":
                raise ValueError('type = "event_within" is a binary objective')
        if t == "time_to_event":
            if (self.events is None) == (not self.end_of_run):
                raise ValueError(
                    'type = "time_to_event" needs either [target.events] or end_of_run = true'
                )
            if obj != "regression":
                raise ValueError('type = "time_to_event" is a regression objective')
        if t == "column" and (self.events is not None or self.end_of_run):
            raise ValueError('events and end_of_run are for derived targets, not type = "column"')
        if obj == "multiclass" and len(self.classes) < 2:
            raise ValueError("objective multiclass needs classes = [...] (at least two)")
        if obj != "multiclass" and self.classes:
            raise ValueError("classes is only for objective multiclass")
        if obj == "multiclass" and len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes repeats {_dupes(self.classes)}")
        cw = self.class_weight
        if obj == "regression" and cw != "none":
            raise ValueError("class_weight is for binary and multiclass objectives")
        if obj == "binary" and isinstance(cw, list):
            raise ValueError('binary class_weight is "balanced", "none" or the positive weight')
        if obj == "multiclass" and isinstance(cw, float | int):
            raise ValueError("multiclass class_weight is balanced, none or one weight per class")
        if isinstance(cw, list) and len(cw) != len(self.classes):
            raise ValueError(f"class_weight has {len(cw)} weights for {len(self.classes)} classes")
        if (isinstance(cw, float | int) and cw <= 0) or (
            isinstance(cw, list) and any(w <= 0 for w in cw)
        ):
            raise ValueError("class weights must be positive")
        if obj != "regression" and (self.scale or self.clip or self.loss != "mse"):
            raise ValueError("scale, clip and loss are for the regression objective")
        if self.clip is not None and self.clip[1] <= self.clip[0]:
            raise ValueError(f"clip {list(self.clip)} must be [low, high] with high > low")
        if self.cap is not None and t != "time_to_event":
            raise ValueError('cap is for type = "time_to_event"')
        if self.horizon is not None and t != "event_within":
            raise ValueError('horizon is for type = "event_within"')
        return self

    @property
    def output_scale(self) -> float:
        if self.scale is not None:
            return self.scale
        return self.cap if self.cap is not None else 1.0

    @property
    def output_clip(self) -> tuple[float, float] | None:
        if self.clip is not None:
            return self.clip
        return (0.0, self.cap) if self.cap is not None else None

    @property
    def horizon_seconds(self) -> float | None:
        """The horizon in the time column's units (seconds for datetime columns)."""
        if self.horizon is None:
            return None
        return self.horizon * _DURATIONS.get(self.horizon_unit, 1.0)


class WindowSpec(_Strict):
    """``[window]``: samples are windows of ``length`` consecutive rows of one entity."""

    length: int = Field(default=1, ge=1, le=100_000)
    stride: int = Field(default=1, ge=1, le=100_000)
    # raw: the window itself (sequence models, or flattened); aggregate: per-feature stats.
    mode: Literal["raw", "aggregate"] = "raw"
    aggregates: list[Literal["mean", "min", "max", "std", "last"]] = []

    @model_validator(mode="after")
    def _mode(self) -> WindowSpec:
        if self.mode == "aggregate" and not self.aggregates:
            raise ValueError(f'mode = "aggregate" needs aggregates, some of {list(AGGREGATES)}')
        if self.mode == "raw" and self.aggregates:
            raise ValueError('aggregates need mode = "aggregate"')
        if len(set(self.aggregates)) != len(self.aggregates):
            raise ValueError(f"aggregates repeats {_dupes(list(self.aggregates))}")
        return self


class ModelSpec(_Strict):
    """``[model]``: the network; ``hidden`` are dense layers (after the CNN or GRU)."""

    family: Literal["linear", "mlp", "cnn1d", "gru"]
    hidden: list[int] = []
    channels: list[int] = [32, 32]
    kernels: list[int] = [5, 5]
    gru_hidden: int = Field(default=64, ge=1, le=4096)
    gru_layers: int = Field(default=1, ge=1, le=8)
    dropout: float = Field(default=0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _shape(self) -> ModelSpec:
        if any(h < 1 or h > 65_536 for h in [*self.hidden, *self.channels]):
            raise ValueError("hidden sizes and channels must be in 1..65536")
        if self.family == "linear" and self.hidden:
            raise ValueError('family = "linear" has no hidden layers; use "mlp"')
        if self.family == "mlp" and not self.hidden:
            raise ValueError('family = "mlp" needs hidden = [...] (e.g. [64, 64])')
        if self.family == "cnn1d":
            if not self.channels or len(self.kernels) != len(self.channels):
                raise ValueError("cnn1d needs as many kernels as channels (one per conv layer)")
            if any(k < 1 or k % 2 == 0 for k in self.kernels):
                raise ValueError(f"cnn1d kernels must be odd (same padding): {self.kernels}")
        return self


class SplitSpec(_Strict):
    """``[split]``: validation by entity (hash of its id) or by time (end of each timeline)."""

    by: Literal["entity", "time"] = "entity"
    fraction: float = Field(default=0.2, ge=0, lt=1)
    # Changes which entities fall in validation, identically at every site.
    salt: str = ""


class MetricsSpec(_Strict):
    """``[metrics]``: what evaluate reports (besides ``loss``)."""

    report: list[str] | None = None
    threshold: float = Field(default=0.5, gt=0, lt=1)
    primary: str | None = None


class PredictSpec(_Strict):
    """``[predict]``: input column -> the sensor name the site's device publishes."""

    sensors: dict[str, str] = {}


class TaskSpec(_Strict):
    """A whole declared task."""

    task: TaskMeta
    input: InputSpec
    features: FeaturesSpec
    target: TargetSpec
    window: WindowSpec = WindowSpec()
    model: ModelSpec
    split: SplitSpec = SplitSpec()
    metrics: MetricsSpec = MetricsSpec()
    defaults: dict[str, Any] = {}
    predict: PredictSpec = PredictSpec()

    @model_validator(mode="after")
    def _cross(self) -> TaskSpec:
        inp, feat, tgt = self.input, self.features, self.target
        known = set(inp.columns)
        if inp.columns:
            for what, name in (
                ("input.entity_column", inp.entity_column),
                ("input.time_column", inp.time_column),
                ("target.column", tgt.column),
            ):
                if name is not None and name not in known:
                    raise ValueError(f"{what} {name!r} is not among input.columns {inp.columns}")
        if inp.time_column is not None and inp.time_column == inp.entity_column:
            raise ValueError("input.time_column and input.entity_column must differ")
        reserved = {c for c in (inp.entity_column, inp.time_column, tgt.column) if c}
        numeric = self.numeric_features
        if not numeric and not feat.categorical and not feat.derived:
            raise ValueError("features: no feature columns (columns, categorical or derived)")
        for name in [*numeric, *feat.categorical, *feat.derived]:
            if name in reserved:
                raise ValueError(f"features: {name!r} is the entity, time or target column")
        all_names = [*numeric, *feat.categorical, *feat.derived]
        if len(set(all_names)) != len(all_names):
            raise ValueError(f"features: names used twice: {_dupes(all_names)}")
        if inp.columns:
            unknown = [c for c in [*numeric, *feat.categorical, *feat.exclude] if c not in known]
            if unknown:
                raise ValueError(f"features name columns not in input.columns: {unknown}")
        exprs = self.expressions
        defined = set(known) | set(numeric) | set(feat.categorical)
        for name, expr in exprs.items():
            if inp.columns:
                missing = [c for c in expr.columns if c not in defined]
                if missing:
                    raise ValueError(
                        f"features.derived.{name}: unknown columns {missing}; "
                        f"known: {sorted(defined)}"
                    )
            defined.add(name)
        for name in feat.scale:
            if name not in numeric and name not in feat.derived:
                raise ValueError(
                    f"features.scale.{name}: not a numeric feature; "
                    f"numeric features are {[*numeric, *feat.derived]}"
                )
        if feat.require_scale:
            unscaled = [c for c in numeric if c not in feat.scale]
            if unscaled:
                raise ValueError(
                    f"features.scale misses {unscaled}: sites must share one scaling, so "
                    "declare {min, max} or {mean, std} for each (or require_scale = false)"
                )
        if tgt.type != "column" and inp.time_column is None:
            raise ValueError(f"target type {tgt.type!r} needs input.time_column")
        if self.split.by == "time" and inp.time_column is None:
            raise ValueError('split.by = "time" needs input.time_column')
        if tgt.type == "event_within" and inp.time_kind != "auto":
            duration = tgt.horizon_unit != "cycles"
            if duration != (inp.time_kind == "datetime"):
                raise ValueError(
                    f"target.horizon_unit {tgt.horizon_unit!r} does not fit input.time_kind "
                    f"{inp.time_kind!r} (cycles for number, seconds..days for datetime)"
                )
        if self.model.family in ("cnn1d", "gru") and self.window.mode != "raw":
            raise ValueError(f"model.family {self.model.family!r} needs window.mode = 'raw'")
        allowed = METRIC_DIRECTIONS[tgt.objective]
        report = self.metric_names
        bad = [m for m in report if m not in allowed]
        if bad:
            raise ValueError(
                f"metrics.report: {bad} not available for {tgt.objective}; choose from "
                f"{sorted(allowed)}"
            )
        if self.metrics.primary is not None and self.metrics.primary not in [*report, "loss"]:
            raise ValueError(f"metrics.primary {self.metrics.primary!r} is not in {report}")
        base = base_defaults()
        unknown_hp = sorted(set(self.defaults) - set(base))
        if unknown_hp:
            raise ValueError(
                f"defaults: unknown hyperparameters {unknown_hp}; known {sorted(base)}"
            )
        needed = set(self.input_columns)
        stray = sorted(set(self.predict.sensors) - needed)
        if stray:
            raise ValueError(f"predict.sensors maps columns the model does not read: {stray}")
        return self

    # -- resolved views ------------------------------------------------------------------

    @property
    def numeric_features(self) -> list[str]:
        """Numeric input columns used as features, in order."""
        feat, inp = self.features, self.input
        if feat.columns == "all":
            if not inp.columns:
                raise ValueError(
                    'features.columns = "all" needs input.columns (so every site builds the '
                    "same feature layout)"
                )
            skip = {inp.entity_column, inp.time_column, self.target.column}
            skip |= set(feat.exclude) | set(feat.categorical)
            return [c for c in inp.columns if c not in skip]
        excluded = set(feat.exclude)
        return [c for c in feat.columns if c not in excluded]

    @property
    def expressions(self) -> dict[str, Expression]:
        out = {}
        for name, source in self.features.derived.items():
            try:
                out[name] = parse_expression(source)
            except ValueError as exc:
                raise ValueError(f"features.derived.{name}: {exc}") from None
        return out

    @property
    def input_columns(self) -> list[str]:
        """Input columns the features read (numeric, categorical, used by derived)."""
        cols = [*self.numeric_features, *self.features.categorical]
        derived = set(self.features.derived)
        for expr in self.expressions.values():
            cols += [c for c in expr.columns if c not in derived]
        return list(dict.fromkeys(cols))

    @property
    def feature_names(self) -> list[str]:
        """Names of the per-row feature vector: numeric, derived, then one-hot columns."""
        names = [*self.numeric_features, *self.features.derived]
        for column, cats in self.features.categorical.items():
            names += [f"{column}={c}" for c in cats]
        return names

    @property
    def metric_names(self) -> list[str]:
        report = self.metrics.report
        return list(report) if report is not None else _DEFAULT_METRICS[self.target.objective]

    @property
    def output_name(self) -> str:
        tgt = self.target
        if tgt.output:
            return tgt.output
        if tgt.objective == "regression":
            return tgt.column or "time_to_event"
        return "p_event" if tgt.objective == "binary" else "class"


def base_defaults() -> dict[str, Any]:
    """``BASE_DEFAULTS`` of the shared training loop, read from its source (no torch)."""
    source = (Path(__file__).resolve().parents[1] / "common.py").read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(isinstance(t, ast.Name) and t.id == "BASE_DEFAULTS" for t in targets):
                assert node.value is not None
                return dict(ast.literal_eval(node.value))
    raise RuntimeError("common.py defines no BASE_DEFAULTS literal")


def load_spec(path: Path | str) -> TaskSpec:
    """Read and validate a declared task; raise SpecError naming the file and the key."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML: {exc}") from None
    try:
        return TaskSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(f"{path}: " + _explain(exc)) from None
    except ValueError as exc:  # raised by a property during validation
        raise SpecError(f"{path}: {exc}") from None


def _explain(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(_loc(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not part of the spec)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif err["type"] == "literal_error":
            msg = f"{msg} (got {err.get('input')!r})"
        lines.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(dict.fromkeys(lines))


def _loc(part: Any) -> str:
    text = str(part)
    return text if re.fullmatch(r"[A-Za-z0-9_-]+", text) else repr(text)


def _dupes(items: list[str]) -> list[str]:
    return sorted({x for x in items if items.count(x) > 1})
