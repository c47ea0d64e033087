"""`lanex.Experiment` and `lanex.Sweep`: a LaneExperiment or LaneSweep in Python, validated at the edge.

Why it exists: a notebook builds and edits experiments before running them. Loading goes through
the very functions `lanex run` and `lanex submit` use (`api.files`, `api.sweep_files`), so a file
fails the same way, with the same message, in both; every edit is validated at once by the API's
models, so a bad value raises `InvalidSpecError` naming the field before anything runs.

The spec is the API's typed model (`LaneExperimentSpec`, `LaneSweepSpec`): read it through its
attributes (`exp.spec.training.epochs`). The models are immutable (the operator relies on that), so
edits go through the resource: `exp.set("training.epochs", 2)`, `exp.update({...})`, or assigning a
whole new spec to `exp.spec`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any, Callable, ClassVar, Generic, Optional, TypeVar, Union

from pydantic import BaseModel
from pydantic.alias_generators import to_camel

from lanex_operator.api.files import load_experiment_document, load_experiment_file
from lanex_operator.api.models import (
    API_VERSION,
    KIND,
    InvalidSpecError,
    LaneExperimentSpec,
    check_experiment_name,
    parse_spec,
)
from lanex_operator.api.sweep import SWEEP_KIND, LaneSweepSpec, check_sweep_name, parse_sweep_spec
from lanex_operator.api.sweep_files import load_sweep_document, load_sweep_file

SpecT = TypeVar("SpecT", bound=BaseModel)
ResourceT = TypeVar("ResourceT", bound="_Resource[Any]")
# The metadata a resource keeps; the API server owns the rest (uid, resourceVersion, ...).
KEPT_METADATA = ("name", "namespace", "labels", "annotations")


def _plain(value: Any) -> Any:
    """A value as it would be written in the YAML file: models as camelCase dicts, enums as their values."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_unset=True)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _field_key(key: str) -> str:
    """A path segment as the documents spell it: `learning_rate` and `learningRate` both name learningRate."""
    return to_camel(key) if "_" in key else key


def _merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `changes` merged in, mapping by mapping (a list or value replaces what was there)."""
    merged = dict(base)
    for key, value in changes.items():
        key = _field_key(str(key))
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = _plain(value)
    return merged


class _Resource(Generic[SpecT]):
    """What an Experiment and a Sweep share: metadata, a validated spec, edits, documents."""

    kind: ClassVar[str]
    _parse: ClassVar[Callable[[Any], Any]]
    _check_name: ClassVar[Callable[[Any], Any]]
    _load_document: ClassVar[Callable[[Any, str], tuple[dict[str, Any], Any]]]
    _load_file: ClassVar[Callable[[Any], tuple[dict[str, Any], Any]]]

    def __init__(self, name: str, spec: Union[SpecT, Mapping[str, Any]], *, namespace: Optional[str] = None,
                 labels: Optional[Mapping[str, str]] = None, annotations: Optional[Mapping[str, str]] = None) -> None:
        metadata: dict[str, Any] = {"name": name}
        if namespace:
            metadata["namespace"] = namespace
        if labels:
            metadata["labels"] = dict(labels)
        if annotations:
            metadata["annotations"] = dict(annotations)
        document = {"apiVersion": API_VERSION, "kind": self.kind, "metadata": metadata, "spec": _plain(spec)}
        self._adopt(*type(self)._load_document(document, f"<{type(self).__name__}>"))

    def _adopt(self, metadata: Mapping[str, Any], spec: SpecT) -> None:
        self._metadata = {key: copy.deepcopy(metadata[key]) for key in KEPT_METADATA if metadata.get(key)}
        self._spec = spec

    @classmethod
    def from_file(cls: type[ResourceT], path: Union[str, Path]) -> ResourceT:
        """Read a YAML file holding one resource of this kind, with the checks and messages of `lanex run`.

        Raises `InvalidSpecError` (an `ExperimentFileError`) naming the file and every bad field.
        """
        resource = cls.__new__(cls)
        resource._adopt(*cls._load_file(path))
        return resource

    @classmethod
    def from_dict(cls: type[ResourceT], document: Mapping[str, Any], source: str = "<document>") -> ResourceT:
        """Validate a whole document (`apiVersion`, `kind`, `metadata`, `spec`), e.g. `yaml.safe_load`'s result.

        Raises `InvalidSpecError` whose message names every bad field, prefixed with `source`.
        """
        resource = cls.__new__(cls)
        resource._adopt(*cls._load_document(_plain(document), source))
        return resource

    # ---- metadata

    @property
    def name(self) -> str:
        """`metadata.name`; assigning a name that cannot name the resource raises InvalidSpecError."""
        return str(self._metadata["name"])

    @name.setter
    def name(self, value: str) -> None:
        type(self)._check_name(value)
        self._metadata["name"] = value

    @property
    def namespace(self) -> Optional[str]:
        """`metadata.namespace`, or None: on a cluster, the namespace of the `lanex.Cluster`."""
        return self._metadata.get("namespace")

    @namespace.setter
    def namespace(self, value: Optional[str]) -> None:
        if value:
            self._metadata["namespace"] = value
        else:
            self._metadata.pop("namespace", None)

    @property
    def labels(self) -> dict[str, str]:
        """`metadata.labels` (a copy: assign a new dict to change them)."""
        return dict(self._metadata.get("labels") or {})

    @labels.setter
    def labels(self, value: Mapping[str, str]) -> None:
        self._metadata["labels"] = dict(value)

    @property
    def annotations(self) -> dict[str, str]:
        """`metadata.annotations` (a copy: assign a new dict to change them)."""
        return dict(self._metadata.get("annotations") or {})

    @annotations.setter
    def annotations(self, value: Mapping[str, str]) -> None:
        self._metadata["annotations"] = dict(value)

    # ---- the spec

    @property
    def spec(self) -> SpecT:
        """The validated spec, the API's typed (immutable) model."""
        return self._spec

    @spec.setter
    def spec(self, value: Union[SpecT, Mapping[str, Any]]) -> None:
        self._spec = type(self)._parse(_plain(value))

    def set(self: ResourceT, path: str, value: Any) -> ResourceT:
        """Set one field of the spec, validated at once: `exp.set("training.epochs", 2)`.

        `path` is dotted, in the file's camelCase or in Python's snake_case (`training.learning_rate`),
        with or without a leading `spec.`. Raises InvalidSpecError naming the field when the new spec is
        invalid (the resource is then unchanged). Returns the resource, so edits chain.
        """
        keys = [_field_key(key) for key in path.split(".") if key]
        if keys and keys[0] == "spec":
            keys = keys[1:]
        if not keys:
            raise InvalidSpecError(f"{path!r}: expected a dotted field path such as training.epochs")
        self._spec = type(self)._parse(_set_path(self.spec_document(), keys, _plain(value)))
        return self

    def update(self: ResourceT, changes: Mapping[str, Any]) -> ResourceT:
        """Merge `changes` (a nested mapping, like the file's spec) into the spec, validated at once:
        `exp.update({"training": {"epochs": 2, "learningRate": 0.02}})`. Returns the resource."""
        self._spec = type(self)._parse(_merge(self.spec_document(), changes))
        return self

    def copy(self: ResourceT, name: Optional[str] = None) -> ResourceT:
        """An independent copy, renamed when `name` is given (two runs to compare)."""
        twin = type(self).__new__(type(self))
        twin._adopt(self._metadata, self._spec)
        if name is not None:
            twin.name = name
        return twin

    # ---- documents

    def spec_document(self) -> dict[str, Any]:
        """The spec as the file and the API server spell it: camelCase, only the fields that were set."""
        return self._spec.model_dump(mode="json", by_alias=True, exclude_unset=True)

    def to_dict(self) -> dict[str, Any]:
        """The whole document (`apiVersion`, `kind`, `metadata`, `spec`), as `lanex submit` sends it."""
        return {"apiVersion": API_VERSION, "kind": self.kind, "metadata": copy.deepcopy(self._metadata),
                "spec": self.spec_document()}

    def to_yaml(self) -> str:
        """The document as YAML, ready for `lanex run` or `kubectl apply`."""
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.to_dict() == other.to_dict()  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        where = f", namespace={self.namespace!r}" if self.namespace else ""
        return f"{type(self).__name__}(name={self.name!r}{where})"


def _set_path(document: dict[str, Any], keys: list[str], value: Any) -> dict[str, Any]:
    """`document` with the field at `keys` set to `value`, sections created as needed."""
    node = document
    for depth, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            where = "spec." + ".".join(keys[:depth + 1])
            raise InvalidSpecError(f"{where}: is a value, not a section: cannot set spec.{'.'.join(keys)}")
        node = child
    node[keys[-1]] = value
    return document


class Experiment(_Resource[LaneExperimentSpec]):
    """One LaneExperiment: a name and a validated `LaneExperimentSpec`, to run in a `lanex.Workspace`
    or submit to a `lanex.Cluster`.

    ```python
    exp = lanex.Experiment.from_file("examples/quickstart.yaml")
    exp.set("training.epochs", 2)
    exp.spec.training.epochs  # 2
    ```
    """

    kind = KIND
    _parse = staticmethod(parse_spec)
    _check_name = staticmethod(check_experiment_name)
    _load_document = staticmethod(load_experiment_document)
    _load_file = staticmethod(load_experiment_file)


class Sweep(_Resource[LaneSweepSpec]):
    """One LaneSweep: a name and a validated `LaneSweepSpec` (a template experiment and the parameters
    to sweep), to run in a `lanex.Workspace` or submit to a `lanex.Cluster`.

    Edits address the sweep's spec: `sweep.set("template.training.epochs", 1)`, `sweep.set("parallelism", 2)`.
    """

    kind = SWEEP_KIND
    _parse = staticmethod(parse_sweep_spec)
    _check_name = staticmethod(check_sweep_name)
    _load_document = staticmethod(load_sweep_document)
    _load_file = staticmethod(load_sweep_file)
