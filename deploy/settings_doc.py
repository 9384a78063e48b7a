"""Configuration reference: every ``LINEWATCH_...`` variable of every settings class.

``linewatch config-doc`` prints it as markdown. :func:`env_fields` is also what the deploy
tests use to check that compose and Kubernetes files only set variables that exist.
"""

from __future__ import annotations

import argparse
import enum
import json
import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

from linewatch.common.settings import ENV_PREFIX


@dataclass(frozen=True)
class EnvField:
    """One environment variable: its name, type, default (as text) and description."""

    name: str
    type: str
    default: str
    description: str
    is_mapping: bool = False  # a dict field: nested keys below it are accepted too


def settings_classes() -> dict[str, type[BaseSettings]]:
    """The settings class behind each service (imported lazily: the alerts and detector settings are heavy-ish)."""
    from linewatch.alerts.settings import AlertsSettings
    from linewatch.detector.registry.settings import RegistrySettings
    from linewatch.detector.service.settings import DetectorSettings
    from linewatch.health.settings import HealthSettings
    from linewatch.ingest.settings import CameraSettings
    from linewatch.plant.settings import VerdictsSettings

    return {"camera": CameraSettings, "detector": DetectorSettings, "alerts": AlertsSettings,
            "registry": RegistrySettings, "verdicts": VerdictsSettings, "camera-health": HealthSettings}


# Which settings class each ``linewatch`` subcommand reads.
COMMAND_SETTINGS = {"camera": "camera", "cameras": "camera", "topics": "camera", "detect": "detector",
                    "alerts": "alerts", "models": "registry", "audit": "registry", "dataset": "registry",
                    "verdicts": "verdicts", "camera-health": "camera-health"}


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel inside ``annotation`` (``Model`` or ``Model | None``), else None."""
    candidates = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    for item in candidates:
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item
    return None


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _is_mapping(annotation: Any) -> bool:
    candidates = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    return any(typing.get_origin(item) is dict or item is dict for item in candidates)


def type_name(annotation: Any) -> str:
    """A short readable type: ``int``, ``str | None``, ``dict[str, float]``, ``'a' | 'b'``."""
    if annotation is type(None):
        return "None"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if _is_union(annotation):
        return " | ".join(type_name(arg) for arg in args)
    if origin is typing.Annotated:  # a checked type (e.g. a URL text): shown as what it holds
        return type_name(args[0])
    if origin is typing.Literal:
        return " | ".join(repr(arg) for arg in args)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):  # a vocabulary: list it like a Literal
        return " | ".join(repr(member.value) for member in annotation)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_name(arg) for arg in args)}]"
    return getattr(annotation, "__name__", str(annotation))


def _default_text(info: FieldInfo) -> str:
    if info.default is PydanticUndefined and info.default_factory is None:
        return "(required)"
    value = info.get_default(call_default_factory=True)
    if isinstance(value, SecretStr):
        return "(secret)"
    if value is None:
        return "None"
    if isinstance(value, dict | list | tuple):
        return json.dumps(value)
    return str(value)


def env_fields(cls: type[BaseModel], prefix: str = ENV_PREFIX) -> list[EnvField]:
    """Every leaf setting of ``cls`` as an environment variable, nested models joined with ``__``."""
    found: list[EnvField] = []
    for name, info in cls.model_fields.items():
        env = f"{prefix}{name.upper()}"
        nested = _model_of(info.annotation)
        if nested is not None:
            found.extend(env_fields(nested, env + "__"))
            continue
        found.append(EnvField(name=env, type=type_name(info.annotation), default=_default_text(info),
                              description=" ".join((info.description or "").split()),
                              is_mapping=_is_mapping(info.annotation)))
    return found


def known_env(cls: type[BaseModel]) -> set[str]:
    """Names a deployment may set: every leaf and every nested model (which takes JSON)."""
    names = {field.name for field in env_fields(cls)}
    for field in env_fields(cls):
        parts = field.name.split("__")
        names.update("__".join(parts[:i]) for i in range(1, len(parts)))
    return names


def is_known(cls: type[BaseModel], env_name: str) -> bool:
    """True when ``env_name`` maps to a field of ``cls`` (or a key below a dict field)."""
    if env_name in known_env(cls):
        return True
    return any(f.is_mapping and env_name.startswith(f.name + "__") for f in env_fields(cls))


def render_markdown() -> str:
    """The whole reference, one table per service."""
    lines = ["# linewatch configuration reference", "",
             "Generated by `linewatch config-doc` from the settings classes; do not edit by hand.",
             "Every variable can also go in a `.env` file in the working directory. Nested models take",
             "`__` between levels; dict fields take JSON, e.g. `LINEWATCH_RULES__LINES='{\"l2\": {\"k\": 2}}'`.",
             "Command-line flags, where a subcommand has them, override the variables.", ""]
    commands = {service: sorted(c for c, s in COMMAND_SETTINGS.items() if s == service)
                for service in settings_classes()}
    for service, cls in settings_classes().items():
        lines += [f"## {service} (`{cls.__module__}.{cls.__name__}`)", "",
                  f"Read by: {', '.join(f'`linewatch {c}`' for c in commands[service])}.", "",
                  "| variable | type | default | description |", "|---|---|---|---|"]
        for field in env_fields(cls):
            cells = [f"`{field.name}`", field.type, f"`{field.default}`", field.description]
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _config_doc(args: argparse.Namespace) -> int:
    text = render_markdown()
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text)
    else:
        print(text)
    return 0


def register(subparsers: Any) -> None:
    """Add the ``config-doc`` subcommand."""
    parser = subparsers.add_parser("config-doc", help="print the configuration reference (every LINEWATCH_ variable)")
    parser.add_argument("--output", help="write to this file instead of stdout")
    parser.set_defaults(func=_config_doc)
