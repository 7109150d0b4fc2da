"""``selhn config show``: a configuration as YAML, every key with the comment of its field."""

from __future__ import annotations

import inspect
import re

import yaml

from selhn.config.schema import SECTIONS, Config


def field_comments(cls: type) -> dict[str, str]:
    """The comment of each field in a dataclass's source (``name: type = default  # comment``,
    continued on comment lines below it)."""
    comments: dict[str, str] = {}
    field = None
    for line in inspect.getsource(cls).splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith(("def ", "@")):
            break
        match = re.match(r"(\w+): [^#]*=[^#]*(?:#\s*(.*))?$", stripped)
        if match:
            field = match.group(1)
            comments[field] = match.group(2) or ""
        elif stripped.startswith("#") and field is not None:
            comments[field] = f"{comments[field]} {stripped.lstrip('# ')}".strip()
        else:
            field = None
    return comments


def describe(config: Config) -> str:
    """The configuration as YAML, every key with its comment."""
    lines = []
    for section in SECTIONS:
        part = getattr(config, section)
        lines.append(f"{section}:  # {(type(part).__doc__ or '').strip().splitlines()[0]}")
        comments = field_comments(type(part))
        values = config.to_dict()[section]
        for key, value in values.items():
            text = yaml.safe_dump({key: value}, default_flow_style=True).strip()[1:-1]
            note = comments.get(key, "")
            lines.append(f"  {text}" + (f"  # {note}" if note else ""))
    return "\n".join(lines) + "\n"
