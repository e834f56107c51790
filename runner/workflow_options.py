"""Keep the Run-workflow dropdowns of the dispatch workflows equal to targets.yaml.

`db-backup workflows` rewrites only the `options:` lists of the `identifier`, `env`, `from` and
`to` inputs (type: choice) under `on.workflow_dispatch.inputs`; every other byte of the file
(comments, order, quoting, defaults) stays as it is. Targeted text edits instead of a YAML round
trip, which would lose comments and formatting. Other choice inputs (what a workflow shows, restore
or rollback) are not targets and are left alone; an input that lists targets must use one of these names.

Option order: identifiers alphabetically; `env` and `from` in the order of targets.yaml's
environments (most important first); `to` the other way round, so the form never preselects the
most important environment as the one to overwrite. Only environments that have targets appear.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInput, JobFailed
from .targets import Registry
from .words import plural

INPUTS = ("identifier", "env", "from", "to")
_KEY = re.compile(r"^(?P<indent> *)(?P<quote>[\"']?)(?P<key>[A-Za-z0-9_-]+)(?P=quote)\s*:(?P<rest>.*?)\s*$")
_ITEM = re.compile(r"^(?P<indent> *)-(?:\s+(?P<value>.*?))?\s*$")


def desired_options(registry: Registry) -> dict[str, list[str]]:
    identifiers = sorted({t.identifier for t in registry.targets})
    used = {t.env for t in registry.targets}
    envs = [env for env in registry.environments if env in used]
    return {"identifier": identifiers, "env": envs, "from": envs, "to": list(reversed(envs))}


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _ignorable(line: str) -> bool:
    stripped = line.strip()
    return not stripped or stripped.startswith("#")


def _block_end(lines: list[str], start: int, parent_indent: int) -> int:
    """Index after the last line belonging to the mapping value that starts below lines[start]."""
    end = start + 1
    for index in range(start + 1, len(lines)):
        if _ignorable(lines[index]):
            continue
        if _indent(lines[index]) <= parent_indent:
            break
        end = index + 1
    return end


def _children(lines: list[str], start: int, end: int) -> dict[str, int]:
    """Keys of the mapping in lines[start:end] at its first (shallowest) indent: name -> line index."""
    keys: dict[str, int] = {}
    child_indent: int | None = None
    for index in range(start, end):
        line = lines[index]
        if _ignorable(line):
            continue
        if child_indent is None:
            child_indent = _indent(line)
        if _indent(line) != child_indent:
            continue
        match = _KEY.match(line.rstrip("\n"))
        if match:
            keys[match.group("key")] = index
    return keys


def _scalar(text: str) -> str:
    text = text.split(" #", 1)[0].strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


@dataclass
class _Edit:
    start: int
    end: int
    new: list[str]


def _options_edit(lines: list[str], key_line: int, name: str, wanted: list[str], where: str) -> _Edit | None:
    key_indent = _indent(lines[key_line])
    end = _block_end(lines, key_line, key_indent)
    props = _children(lines, key_line + 1, end)
    type_line = props.get("type")
    if type_line is None:
        return None
    type_match = _KEY.match(lines[type_line].rstrip("\n"))
    if type_match is None or _scalar(type_match.group("rest")) != "choice":
        return None
    options_line = props.get("options")
    if options_line is None:
        raise BadInput(f"{where}: input {name} is type: choice but has no options: list")
    line = lines[options_line]
    newline = "\n" if line.endswith("\n") else ""
    match = _KEY.match(line.rstrip("\n"))
    assert match is not None
    rest = match.group("rest").strip()
    options_indent = _indent(line)
    if rest.startswith("["):
        # Flow style on one line: options: [a, b]
        if "]" not in rest:
            raise BadInput(f"{where}: write the options of input {name} on one line or as a block list")
        head = line[: line.index(":", options_indent) + 1]
        after = rest[rest.rindex("]") + 1:].strip()
        comment = f"  {after}" if after.startswith("#") else ""
        return _Edit(options_line, options_line + 1, [f"{head} [{', '.join(wanted)}]{comment}{newline}"])
    if rest and not rest.startswith("#"):
        raise BadInput(f"{where}: cannot read the options of input {name}; write them as a YAML list")
    # Block style: the items follow, indented at least as far as the options key.
    item_indent: int | None = None
    stop = options_line + 1
    for index in range(options_line + 1, len(lines)):
        current = lines[index]
        if _ignorable(current):
            continue
        item = _ITEM.match(current.rstrip("\n"))
        if item is None or _indent(current) < options_indent:
            break
        if item_indent is None:
            item_indent = _indent(current)
        elif _indent(current) != item_indent:
            break
        stop = index + 1
    pad = " " * (item_indent if item_indent is not None else options_indent + 2)
    return _Edit(options_line + 1, stop, [f"{pad}- {value}\n" for value in wanted])


def _edits(lines: list[str], wanted: dict[str, list[str]], where: str) -> list[_Edit]:
    """One edit per target dropdown (a choice input named in `wanted`) of the dispatch inputs, changed or not."""
    dispatch = next((i for i, line in enumerate(lines)
                     if (m := _KEY.match(line.rstrip("\n"))) and m.group("key") == "workflow_dispatch"), None)
    if dispatch is None:
        return []
    dispatch_end = _block_end(lines, dispatch, _indent(lines[dispatch]))
    inputs_line = _children(lines, dispatch + 1, dispatch_end).get("inputs")
    if inputs_line is None:
        return []
    inputs_end = _block_end(lines, inputs_line, _indent(lines[inputs_line]))
    edits = []
    for name, key_line in _children(lines, inputs_line + 1, inputs_end).items():
        if name in wanted:
            edit = _options_edit(lines, key_line, name, wanted[name], where)
            if edit is not None:
                edits.append(edit)
    return edits


def rewrite(text: str, wanted: dict[str, list[str]], where: str = "workflow") -> str:
    """The workflow text with the options of its dispatch inputs replaced; unchanged otherwise."""
    lines = text.splitlines(keepends=True)
    for edit in sorted(_edits(lines, wanted, where), key=lambda e: e.start, reverse=True):
        lines[edit.start:edit.end] = edit.new
    return "".join(lines)


def sync(registry: Registry, directory: Path, check: bool) -> list[str]:
    """Rewrite (or with check=True only compare) the dropdowns; the names of files that differ.

    JobFailed, like a difference, when no workflow in the folder has a target dropdown: none to keep equal.
    """
    if not directory.is_dir():
        raise BadInput(f"workflow folder {directory} not found; pass --dir")
    wanted = desired_options(registry)
    changed = []
    with_dropdowns = 0
    paths = sorted([*directory.glob("*.yml"), *directory.glob("*.yaml")])
    for path in paths:
        text = path.read_text(encoding="utf-8")
        if _edits(text.splitlines(keepends=True), wanted, str(path)):
            with_dropdowns += 1
        new = rewrite(text, wanted, str(path))
        if new != text:
            changed.append(path.name)
            if not check:
                path.write_text(new, encoding="utf-8")
    if not with_dropdowns:
        found = (f"no workflow file there has a choice input named identifier, env, from or to "
                 f"({plural(len(paths), 'file')} read)" if paths else "it holds no workflow file (*.yml, *.yaml)")
        raise JobFailed(f"the dispatch workflows are missing from {directory}: {found}; "
                        "copy db-backup's .github/workflows there or pass --dir")
    return changed
