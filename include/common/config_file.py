"""The YAML configuration file both pipelines share, and the checks that word its errors.

The file's path comes from `include.common.settings.config_path()`. Each pipeline validates its
own section (`segments:` in `include.segments_to_lytics.config`, `lytics_to_braze:` in
`include.audiences_to_braze.config`) and reports every problem at once, as
`<file>: <key path>: <what is wrong>`, with a did-you-mean for misspelt keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from include.common import settings
from include.common.errors import ConfigError


def read_yaml(path: Path | str | None = None) -> tuple[Path, Any]:
    """The configuration file in force, parsed (not validated)."""
    import yaml  # light, but only needed at run time

    path = Path(path) if path else settings.config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: configuration file not found; set {settings.CONFIG} to its path "
            f"or create it (see the README's configuration reference)"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the file as UTF-8") from None
    except OSError as exc:  # a directory, no read permission, ...
        raise ConfigError(f"{path}: the configuration file cannot be read ({exc.strerror or exc}); set "
                          f"{settings.CONFIG} to a readable YAML file") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}; fix the line shown (indent with spaces, not tabs; "
                          f"quote values holding ': ' or '#')") from None
    return path, raw


def unknown_keys(mapping: dict, allowed: set[str], prefix: str, errors: list[str]) -> None:
    """Append one error per key of `mapping` not in `allowed`, suggesting the closest allowed key."""
    for key in mapping:
        if key not in allowed:
            hint = closest(str(key), allowed)
            errors.append(f"{prefix}{key}: unknown key" + (f" (did you mean {hint!r}?)" if hint else ""))


def closest(word: str, options: set[str]) -> str | None:
    """Suggest the likely intended key for a typo."""
    import difflib

    match = difflib.get_close_matches(word, sorted(options), n=1)
    return match[0] if match else None


def path_trick(path: str) -> str | None:
    """Why `path` (a directory, '/'-separated) could leave where it points, or None: a '..' or '.'
    segment, a backslash, a NUL or another control character."""
    if any(ord(c) < 32 or c == "\x7f" for c in path):
        return "holds a control character"
    if "\\" in path:
        return "holds a backslash; use '/'"
    if any(part in ("..", ".") for part in path.split("/")):
        return "has a '..' or '.' segment (path traversal refused)"
    return None
