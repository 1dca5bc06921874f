"""The operator's label map (`--label-map FILE`): which numbers are which line and destination.

A YAML file of two optional sections, keyed by number in any format MTT or a person writes:

    lines:            # sip_id (the number the caller dialled) -> line name
      "79586488002": sales
      "79586488003/0004": support-kazan   # sip_id/extension
    destinations:     # redirect_number (where MTT forwards) -> destination group
      "+7 (968) 488-10-33": duty-mobile

Keys are normalised like the notifications' numbers, so a key matches whatever format the
number arrives in. Names become label values: they are checked (`NAME_PATTERN`, at most
`MAX_NAME_LENGTH` characters, not `other` or `unknown`) and their number is capped. Every
problem of a file is reported at once, each with file and line. Phone numbers never leave
this module: only names do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .model import MAX_ID_LENGTH, normalise_number

#: Label value of a number the map does not name (and of everything without a map).
OTHER = "other"
#: Label value of a call without a sip_id, or a leg without a redirect number (with a map).
UNKNOWN = "unknown"
#: Label-value hygiene: a name an operator can type in PromQL without quoting surprises.
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]*")
MAX_NAME_LENGTH = 40
#: Default caps on distinct names; the README's series formula assumes them.
DEFAULT_MAX_LINES = 50
DEFAULT_MAX_DESTINATIONS = 50
#: Largest label-map file read (a typo'd path to a huge file fails fast).
MAX_FILE_BYTES = 1024 * 1024

_SECTIONS = ("lines", "destinations")
_EXTENSION = re.compile(r"\d{1,16}")


class LabelMapError(ValueError):
    """A label map that cannot be used; `errors` lists every problem as 'FILE:LINE: message'."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class LabelMap:
    """Numbers -> names. The empty map (no --label-map) names everything `other`."""

    lines: dict[str, str] = field(default_factory=dict)
    destinations: dict[str, str] = field(default_factory=dict)
    #: False for the empty map of "no --label-map": then there is no `unknown` either
    mapped: bool = False

    def line(self, sip_id: str, extension: str = "") -> str:
        """Line of a call from its (normalised) sip_id and extension: sip_id/extension first."""
        if not sip_id:
            return UNKNOWN if self.mapped else OTHER
        lines = self.lines
        if extension:
            name = lines.get(f"{sip_id}/{extension}")
            if name is not None:
                return name
        return lines.get(sip_id, OTHER)

    def destination(self, number: str) -> str:
        """Destination group of a (normalised) redirect number."""
        if not number:
            return UNKNOWN if self.mapped else OTHER
        return self.destinations.get(number, OTHER)

    @property
    def line_values(self) -> tuple[str, ...]:
        """Every value the `line` label can take, sorted names first."""
        return (*sorted(set(self.lines.values())), *self._fallbacks)

    @property
    def destination_values(self) -> tuple[str, ...]:
        """Every value the `destination` label can take, sorted names first."""
        return (*sorted(set(self.destinations.values())), *self._fallbacks)

    @property
    def _fallbacks(self) -> tuple[str, ...]:
        return (OTHER, UNKNOWN) if self.mapped else (OTHER,)


#: No --label-map: one `other` for every line and destination.
NO_LABELS = LabelMap()


def _check_name(value: yaml.Node, errors: list[str], where: str) -> str | None:
    if not isinstance(value, yaml.ScalarNode) or not isinstance(value.value, str):
        errors.append(f"{where}: the name must be a plain string")
        return None
    name = value.value
    if len(name) > MAX_NAME_LENGTH:
        errors.append(f"{where}: name {name[:MAX_NAME_LENGTH]!r}... is longer than {MAX_NAME_LENGTH} characters")
    elif not NAME_PATTERN.fullmatch(name):
        errors.append(f"{where}: name {name!r} must be lower-case letters, digits, '_', '.', '-' and start with a letter or digit")
    elif name in (OTHER, UNKNOWN):
        errors.append(f"{where}: name {name!r} is reserved (numbers not in the map are {OTHER!r})")
    else:
        return name
    return None


def _check_key(key: yaml.Node, section: str, errors: list[str], where: str) -> str | None:
    if not isinstance(key, yaml.ScalarNode):
        errors.append(f"{where}: the number must be a plain value")
        return None
    raw = str(key.value).strip()
    number, slash, extension = raw.partition("/")
    if slash and section != "lines":
        errors.append(f"{where}: {section} are keyed by number only (no /extension)")
        return None
    normalised = normalise_number(number.strip())
    # a key is never echoed: it is a phone number, and error messages reach logs
    if not normalised.isdigit() or not 5 <= len(normalised) <= MAX_ID_LENGTH:
        errors.append(f"{where}: the key is not a phone number (digits with optional +, spaces, dashes, brackets)")
        return None
    if slash:
        extension = extension.strip()
        if not _EXTENSION.fullmatch(extension):
            errors.append(f"{where}: the extension after '/' must be 1 to 16 digits")
            return None
        return f"{normalised}/{extension}"
    return normalised


def parse(text: str, source: str = "<label map>", max_lines: int = DEFAULT_MAX_LINES,
          max_destinations: int = DEFAULT_MAX_DESTINATIONS) -> LabelMap:
    """A label map from YAML text; raises LabelMapError listing every problem ('SOURCE:LINE: ...')."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f"{mark.line + 1}" if mark is not None else "1"
        raise LabelMapError([f"{source}:{line}: not valid YAML: {getattr(error, 'problem', None) or error}"]) from None
    if root is None:
        return LabelMap(mapped=True)
    if not isinstance(root, yaml.MappingNode):
        raise LabelMapError([f"{source}:{root.start_mark.line + 1}: expected a mapping with 'lines' and 'destinations'"])
    errors: list[str] = []
    tables: dict[str, dict[str, str]] = {name: {} for name in _SECTIONS}
    caps = {"lines": max_lines, "destinations": max_destinations}
    for section_key, section in root.value:
        where = f"{source}:{section_key.start_mark.line + 1}"
        name = section_key.value if isinstance(section_key, yaml.ScalarNode) else None
        if name not in _SECTIONS:
            errors.append(f"{where}: unknown section {str(name)[:40]!r}, expected one of {', '.join(_SECTIONS)}")
            continue
        if isinstance(section, yaml.ScalarNode) and section.tag == "tag:yaml.org,2002:null":
            continue  # `lines:` with nothing under it
        if not isinstance(section, yaml.MappingNode):
            errors.append(f"{where}: {name} must be a mapping of number: name")
            continue
        table, first_line = tables[name], {}
        for key, value in section.value:
            at = f"{source}:{key.start_mark.line + 1}"
            number = _check_key(key, name, errors, at)
            label = _check_name(value, errors, at)
            if number is None or label is None:
                continue
            if number in table:
                errors.append(f"{at}: the same number as line {first_line[number]} (after normalising)")
                continue
            table[number], first_line[number] = label, key.start_mark.line + 1
        distinct = len(set(table.values()))
        if distinct > caps[name]:
            errors.append(f"{where}: {distinct} distinct {name} names, more than the cap of {caps[name]} "
                          f"(--max-{name.replace('_', '-')})")
    if errors:
        raise LabelMapError(errors)
    return LabelMap(lines=tables["lines"], destinations=tables["destinations"], mapped=True)


def load(path: Path, max_lines: int = DEFAULT_MAX_LINES, max_destinations: int = DEFAULT_MAX_DESTINATIONS) -> LabelMap:
    """The label map of a file; raises LabelMapError (unreadable, not UTF-8, too big, invalid)."""
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise LabelMapError([f"{path}:0: cannot read: {error.strerror or error}"]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise LabelMapError([f"{path}:0: larger than {MAX_FILE_BYTES} bytes"])
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise LabelMapError([f"{path}:0: not UTF-8"]) from None
    return parse(text, str(path), max_lines, max_destinations)
