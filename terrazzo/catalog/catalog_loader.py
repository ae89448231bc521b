"""Load the shipped catalogs, layer a user's YAML over them, and look entries up by name or alias."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from terrazzo.catalog.catalog_schema import Device, Efficiency, ModelSpec, PriceProfile, TcoProfile
from terrazzo.errors import CatalogError, ProfileError, SpecError
from terrazzo.spec.source import YamlSource, read_yaml

if TYPE_CHECKING:
    from terrazzo.cost.calibration import Calibration

DATA_DIR = Path(__file__).parent / "data"
SECTIONS: dict[str, type[BaseModel]] = {
    "devices": Device, "models": ModelSpec, "price_profiles": PriceProfile, "tco_profiles": TcoProfile,
}
T = TypeVar("T")


def suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name.lower(), list(known), n=3, cutoff=0.5)
    return f"did you mean {', '.join(repr(c) for c in close)}?" if close else ""


@dataclass
class Catalog:
    devices: dict[str, Device] = field(default_factory=dict)
    models: dict[str, ModelSpec] = field(default_factory=dict)
    price_profiles: dict[str, PriceProfile] = field(default_factory=dict)
    tco_profiles: dict[str, TcoProfile] = field(default_factory=dict)
    efficiency: dict[str, dict[str, Efficiency]] = field(default_factory=dict)
    origins: dict[tuple[str, str], str] = field(default_factory=dict)
    profiles: list[Calibration] = field(default_factory=list)  # measured profiles layered on top, in order
    notes: list[str] = field(default_factory=list)  # what each profile changed, or why it was not applied

    def merge_file(self, path: str | Path) -> list[str]:
        """Add or replace entries from a YAML file (or layer a profile file); returns the names it defined.
        A `profiles:` list in a catalog file layers those profiles (paths relative to the file) after it."""
        try:
            src = read_yaml(path)
        except SpecError as exc:
            raise CatalogError(str(exc)) from None
        if "schema" in src.data:  # a profile file given where a catalog file is expected
            return self._layer_nested(path)
        unknown = [k for k in src.data if k not in (*SECTIONS, "efficiency", "profiles")]
        if unknown:
            raise src.error(f"unknown section '{unknown[0]}'", (unknown[0],),
                            f"use one of: {', '.join([*SECTIONS, 'efficiency', 'profiles'])}")
        defined: list[str] = []
        for section, schema in SECTIONS.items():
            entries = src.data.get(section) or {}
            if not isinstance(entries, dict):
                raise CatalogError(str(src.error("expected a mapping of name: entry", (section,),
                                                 f"write '{section}:' then 'name:' keys")))
            table: dict[str, Any] = getattr(self, section)
            for name, body in entries.items():
                if not isinstance(body, dict | None):
                    raise CatalogError(str(src.error("expected a mapping of fields", (section, name),
                                                     "indent the entry's fields under its name")))
                table[name] = _validate(src, schema, (section, name), {"name": name, **(body or {})})
                self.origins[(section, name)] = src.file
                defined.append(f"{section}.{name}")
        efficiency = src.data.get("efficiency") or {}
        if not isinstance(efficiency, dict) or not all(isinstance(v, dict | None) for v in efficiency.values()):
            raise CatalogError(str(src.error("expected 'device class: op kind: factors'", ("efficiency",),
                                             "see terrazzo/catalog/data/efficiency.yaml for the layout")))
        for cls, ops in efficiency.items():
            for op, body in (ops or {}).items():
                self.efficiency.setdefault(cls, {})[op] = _validate(src, Efficiency, ("efficiency", cls, op), body)
                defined.append(f"efficiency.{cls}.{op}")
        profiles = src.data.get("profiles") or []
        if not isinstance(profiles, list) or not all(isinstance(p, str) for p in profiles):
            raise CatalogError(str(src.error("expected a list of profile files", ("profiles",),
                                             "write 'profiles: [my-machine.yaml]' (paths relative to this file)")))
        for rel in profiles:
            defined += self._layer_nested(Path(src.file).parent / rel)
        return defined

    def _layer_nested(self, path: str | Path) -> list[str]:
        """A profile reached through a catalog file: its errors become the catalog's (still naming its file)."""
        try:
            return self.layer_profile(path)
        except ProfileError as exc:
            raise CatalogError(str(exc)) from None

    def layer_profile(self, path: str | Path) -> list[str]:
        """Layer a measured profile (`terrazzo profile -o FILE`): its device (if it defines one), fitted
        efficiencies and measured points; what it changed, or why not, goes to `notes`."""
        from terrazzo.profile.layer import layer_profile

        return layer_profile(self, path)

    def _find(self, table: dict[str, T], what: str, name: str) -> T:
        key = name.lower()
        if key in table:
            return table[key]
        for entry in table.values():
            if key in getattr(entry, "aliases", ()):
                return entry
        names = [*table, *(a for e in table.values() for a in getattr(e, "aliases", ()))]
        raise CatalogError(f"unknown {what} '{name}'. {suggest(name, names)} "
                           f"Known: {', '.join(sorted(table))}; add your own with a catalog YAML file.")

    def device(self, name: str) -> Device:
        return self._find(self.devices, "device", name)

    def model(self, name: str) -> ModelSpec:
        return self._find(self.models, "model", name)

    def tco_profile(self, name: str) -> TcoProfile:
        return self._find(self.tco_profiles, "TCO profile", name)

    def price_usd(self, device: str, profile: str = "list") -> float:
        """Device price under a price profile, following `inherit` down to the catalog's own price."""
        dev, seen = self.device(device), set()
        current: str | None = profile
        while current and current != "list":
            if current in seen:
                raise CatalogError(f"price profile '{current}' inherits from itself")
            seen.add(current)
            prof = self._find(self.price_profiles, "price profile", current)
            if dev.name in prof.prices_usd:
                return prof.prices_usd[dev.name].value
            current = prof.inherit
        return dev.price_usd.value

    def efficiency_for(self, device: str, op_kind: str) -> Efficiency:
        """Most specific efficiency: device name, then vendor-kind class, then kind; per op kind then 'default'."""
        dev = self.device(device)
        for cls in (dev.name, f"{dev.vendor}-{dev.kind}", dev.kind, "default"):
            ops = self.efficiency.get(cls)
            if ops:
                for op in (op_kind, "default"):
                    if op in ops:
                        return ops[op]
        raise CatalogError(
            f"no efficiency factors for {device} / {op_kind}; add an 'efficiency: default: default:' entry"
        )


def _validate(src: YamlSource, schema: type[BaseModel], loc: tuple[str, ...], body: Any) -> Any:
    try:
        return schema.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = (*loc, *err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        fix = "see terrazzo/catalog/catalog_schema.py for the fields"
        raise CatalogError(str(src.error(message, where, fix))) from None


@lru_cache(maxsize=1)
def _shipped() -> Catalog:
    cat = Catalog()
    for name in ("devices", "models", "price_profiles", "tco_profiles", "efficiency"):
        path = DATA_DIR / f"{name}.yaml"
        if path.exists():
            cat.merge_file(path)
    return cat


def load_catalog(extra: Iterable[str | Path] = (), profiles: Iterable[str | Path] = ()) -> Catalog:
    """The shipped catalog, with each extra file layered over it in order (later files win), then each
    measured profile (which only applies where its machine and model match; see `notes`)."""
    base = _shipped()
    cat = Catalog(
        dict(base.devices), dict(base.models), dict(base.price_profiles), dict(base.tco_profiles),
        {k: dict(v) for k, v in base.efficiency.items()}, dict(base.origins),
    )
    for path in extra:
        cat.merge_file(path)
    for path in profiles:
        cat.layer_profile(path)
    return cat
