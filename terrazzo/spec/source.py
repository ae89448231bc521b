"""YAML text with a line for every field, so errors can point at the line a user must edit."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from terrazzo.errors import SpecError

Loc = tuple[str | int, ...]


@dataclass
class YamlSource:
    """Parsed YAML plus the 1-based line of each mapping key and sequence item, by path."""

    file: str
    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)

    def line_of(self, loc: Loc) -> int | None:
        """Line of the deepest prefix of `loc` that exists in the document."""
        for end in range(len(loc), -1, -1):
            if (line := self.lines.get(tuple(loc[:end]))) is not None:
                return line
        return None

    def error(self, message: str, loc: Loc = (), fix: str | None = None) -> SpecError:
        dotted = ".".join(str(p) for p in loc) or None
        return SpecError(message, file=self.file, line=self.line_of(loc), field=dotted, fix=fix)


def _index(node: yaml.Node, loc: Loc, lines: dict[Loc, int]) -> None:
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                child = (*loc, key.value)
                lines[child] = key.start_mark.line + 1
                _index(value, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, (*loc, i), lines)


def parse_yaml(text: str, file: str = "<string>") -> YamlSource:
    """Parse one YAML document; syntax errors and non-mapping documents become SpecError."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise SpecError(
            f"not valid YAML: {exc.problem or exc}", file=file, line=mark.line + 1 if mark else None,
            fix="check indentation, colons and quoting on that line",
        ) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"not valid YAML: {exc}", file=file, fix="check the file's syntax") from None
    except RecursionError:
        raise SpecError("YAML nests too deeply or refers to itself", file=file,
                        fix="remove self-referencing anchors (&a ... *a) and flatten the nesting") from None
    if not isinstance(data, dict):
        raise SpecError(
            f"expected a mapping at the top level, got {type(data).__name__}", file=file, line=1,
            fix="start the file with keys such as 'name:' and 'nodes:'",
        )
    lines: dict[Loc, int] = {}
    if node is not None:
        try:
            _index(node, (), lines)
        except RecursionError:
            raise SpecError("YAML nests too deeply", file=file, fix="flatten the nesting") from None
    return YamlSource(file=file, data=data, lines=lines)


def read_yaml(path: str | Path) -> YamlSource:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError("file not found", file=str(path), fix="check the path") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SpecError(f"cannot read file: {exc}", file=str(path), fix="pass a readable UTF-8 YAML file") from None
    return parse_yaml(text, str(path))
