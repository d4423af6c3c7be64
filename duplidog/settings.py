"""Shot settings: the JSON schema beside this file is the one source of defaults and types.

``config/config.yaml`` (the Snakemake defaults) must equal ``defaults()`` -- a test checks -- and
``config/schema.yaml`` is a link to the schema here, so the command line (which runs without Snakemake)
and the pipeline validate and default the same way.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from duplidog.errors import DuplidogError

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")


@functools.lru_cache(maxsize=1)
def schema() -> dict:
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _defaults_of(node: dict) -> Any:
    if node.get("type") == "object" and "properties" in node:
        value = copy.deepcopy(node.get("default", {}))
        for key, child in node["properties"].items():
            if key not in value:
                default = _defaults_of(child)
                if default is not _NO_DEFAULT:
                    value[key] = default
        return value
    return copy.deepcopy(node["default"]) if "default" in node else _NO_DEFAULT


_NO_DEFAULT = object()


def defaults() -> dict:
    """The full default configuration, as ``config/config.yaml`` holds it."""
    return _defaults_of(schema())


def described_defaults(width: int = 100) -> str:
    """The defaults as YAML, each setting under its schema description as comments
    (``duplidog config --describe``); loading the text gives ``defaults()``."""
    import textwrap

    def lines_of(node: dict, values: dict, indent: int) -> list[str]:
        out = []
        pad = "  " * indent
        for key, value in values.items():
            child = node.get("properties", {}).get(key, {})
            text = " ".join(str(child.get("description", "")).split())
            if "enum" in child:
                text += f" One of: {', '.join(str(v) for v in child['enum'])}."
            out += [f"{pad}# {line}" for line in textwrap.wrap(text.strip(), max(40, width - len(pad) - 2))]
            if isinstance(value, dict) and value and child.get("type") == "object" and "properties" in child:
                out.append(f"{pad}{key}:")
                out += lines_of(child, value, indent + 1)
            else:
                dumped = yaml.safe_dump({key: value}, sort_keys=False, default_flow_style=False).rstrip("\n")
                out += [pad + line for line in dumped.splitlines()]
        return out

    return "\n".join(lines_of(schema(), defaults(), 0)) + "\n"


def merge_settings(base: dict, override: dict) -> dict:
    """``override`` on top of ``base``, section by section and key by key (neither is changed)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_settings(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def resolve(user: dict | None, origin: str = "config") -> dict:
    """Validate a (partial) shot config and fill in every default; errors name the key.

    ``origin`` names the file in messages. Raises DuplidogError on the first problem found.
    """
    if user is None:
        user = {}
    if not isinstance(user, dict):
        raise DuplidogError(f"{origin}: a shot file must be a YAML mapping of keys, got {type(user).__name__}")
    config = merge_settings(defaults(), user)
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        error = errors[0]
        key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        raise DuplidogError(f"{origin}: {key}: {error.message}")
    _check_colour_settings(config, origin)
    return config


def _check_colour_settings(config: dict, origin: str) -> None:
    """Names the schema cannot check: the colour space and the QC display/view must exist in the
    active OpenColorIO config. The config is loaded only when such a name is given."""
    from duplidog import colour, ocio

    try:
        colour.check_setting(str(config.get("colorspace", "auto")), "colorspace")
        qc = config.get("assemble") or {}
        if qc.get("display") or qc.get("view"):
            ocio.check_display_view(qc.get("display"), qc.get("view"))
    except DuplidogError as exc:
        raise DuplidogError(f"{origin}: {exc}") from None


def load_shot_file(path: str | Path) -> dict:
    """Read and resolve one shot YAML file; an empty, unreadable or invalid file is one clear error."""
    user = read_shot_yaml(path)
    if user is None:
        raise DuplidogError(f"{path}: the shot file is empty (it needs at least shot, source and target)")
    return resolve(user, origin=str(path))


def read_shot_yaml(path: str | Path):
    """The YAML in a shot file (None when empty); unreadable or invalid YAML is one error naming the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DuplidogError(f"{path}: shot file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DuplidogError(f"{path}: cannot read the shot file ({exc})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise DuplidogError(f"{path}: not valid YAML{where}: {problem}") from None
