"""The resolution each model of `lavit analyze` sees: stated pixel limits, never a processor's silent default.

A map's S_focus, entropy and salient-region count depend on the grid it lies on, and the grid on the
processor's pixel limits: the same weights saved with two processor limits give different numbers. So every
model's limits are stated, from the first of:

* `--pixels NAME=MIN:MAX` (source '--pixels');
* for the teacher, `--teacher-store STORE`: the limits the signal store was extracted at (its manifest's
  `pixel_limits`; source 'store manifest');
* the `min_pixels` / `max_pixels` a student was trained at (its `lavit.json`; source 'lavit.json');
* a built-in tiny model ('tiny', 'tiny-teacher[:family]'): its own processor's limits (source 'processor (tiny)').

A model with none of them is an error naming it and the ways to state them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from lavit.data.signal_store import read_manifest
from lavit.models.checkpoint import read_lavit_meta, tiny_name
from lavit.models.grid import processor_pixel_limits
from lavit.models.tiny import build_tiny_processor

PIXELS_EXAMPLE = "teacher=200704:1003520"


def parse_pixel_limits(items: Iterable[str]) -> dict[str, dict[str, int]]:
    """`NAME=MIN:MAX` items (`--pixels`, repeated) → {name: {min_pixels, max_pixels}}; a malformed item, a name
    given twice or MIN > MAX is a ValueError naming the item."""
    limits: dict[str, dict[str, int]] = {}
    for item in items:
        name, equals, span = item.partition("=")
        low, colon, high = span.partition(":")
        try:
            if not (name and equals and colon):
                raise ValueError
            stated = {"min_pixels": int(low), "max_pixels": int(high)}
        except ValueError:
            raise ValueError(f"--pixels {item!r}: expected NAME=MIN:MAX in whole pixels, e.g. {PIXELS_EXAMPLE}") \
                from None
        if name in limits:
            raise ValueError(f"--pixels: {name!r} is given twice")
        limits[name] = check_limits(stated, f"--pixels {item!r}")
    return limits


def check_limits(limits: Mapping, where: str) -> dict[str, int]:
    """{min_pixels, max_pixels} as ints with 0 < min <= max, else a ValueError naming `where` they came from."""
    low, high = limits.get("min_pixels"), limits.get("max_pixels")
    if not (isinstance(low, int) and isinstance(high, int) and 0 < low <= high):
        raise ValueError(f"{where}: need whole pixel limits 0 < min_pixels <= max_pixels, got min_pixels={low!r}, "
                         f"max_pixels={high!r}")
    return {"min_pixels": low, "max_pixels": high}


def store_pixel_limits(store: str | Path) -> dict[str, int]:
    """The pixel limits a signal store's teacher was extracted at (`pixel_limits` in its manifest.json)."""
    manifest = read_manifest(Path(store))
    if "pixel_limits" not in manifest:
        raise ValueError(f"{store}/manifest.json records no pixel_limits (extracted before lavit recorded them); "
                         "state the teacher's with --pixels teacher=MIN:MAX")
    return check_limits(manifest["pixel_limits"], f"{store}/manifest.json pixel_limits")


def tiny_pixel_limits(name: str) -> dict[str, int]:
    """The limits a built-in tiny model's processor applies by default (the tiny processors are built, not
    saved, so these are the ones it is always used at)."""
    _, family = tiny_name(name)
    return processor_pixel_limits(build_tiny_processor(family=family).image_processor)


def _stated_limits(path: str, pixels: dict | None, store: dict | None) -> tuple[dict | None, str]:
    if pixels is not None:
        return pixels, "--pixels"
    if store is not None:
        return store, "store manifest"
    meta = read_lavit_meta(path) if Path(path).is_dir() else {}
    if meta.get("min_pixels") or meta.get("max_pixels"):
        return check_limits(meta, f"{path}/lavit.json"), "lavit.json"
    if tiny_name(path):
        return tiny_pixel_limits(path), "processor (tiny)"
    return None, ""


def resolve_pixel_limits(models: Mapping[str, str], teacher: str, pixels: Mapping[str, dict] | None = None,
                         teacher_store: str | Path | None = None) -> dict[str, dict]:
    """{name: {min_pixels, max_pixels, source}} for every model (see the module docstring for the order), before
    any model loads. `pixels` for a name that is not a model, or a model whose limits nobody states, is an
    error (every unknown model named at once)."""
    pixels = dict(pixels or {})
    strangers = sorted(set(pixels) - set(models))
    if strangers:
        raise ValueError(f"--pixels for {', '.join(strangers)}: no --model of that name (models: "
                         f"{', '.join(sorted(models))})")
    store = store_pixel_limits(teacher_store) if teacher_store else None
    resolved, unknown = {}, []
    for name, path in models.items():
        limits, source = _stated_limits(path, pixels.get(name), store if name == teacher else None)
        if limits is None:
            unknown.append(f"{name!r} ({path})")
        else:
            resolved[name] = {**check_limits(limits, f"{name}'s pixel limits ({source})"), "source": source}
    if unknown:
        raise ValueError(f"the pixel limits of {', '.join(unknown)} are unknown; state them with --pixels "
                         f"NAME=MIN:MAX (e.g. {PIXELS_EXAMPLE}), as min_pixels/max_pixels in the model's lavit.json, "
                         "or for the teacher with --teacher-store STORE (the limits its signals were extracted at) — "
                         "a processor's own default may not be the resolution the model was trained at")
    return resolved
