"""Band names, sensor presets and band mapping: the one table every other module uses.

Canonical band names are the Sentinel-2 MSI band ids (``B01`` … ``B12``, ``B8A``). Other sensors'
bands are named by the Sentinel-2 band closest in wavelength, so a PlanetScope "red" is ``B04``.
Centre wavelengths (nm) are the Sentinel-2A values from ESA's MSI spectral response document.
"""

from __future__ import annotations

from typing import Sequence

from lpips_sat.errors import InputError

#: Sentinel-2 band id -> (centre wavelength in nm, native resolution in m).
S2_BANDS: dict[str, tuple[float, int]] = {
    "B01": (442.7, 60),
    "B02": (492.4, 10),
    "B03": (559.8, 10),
    "B04": (664.6, 10),
    "B05": (704.1, 20),
    "B06": (740.5, 20),
    "B07": (782.8, 20),
    "B08": (832.8, 10),
    "B8A": (864.7, 20),
    "B09": (945.1, 60),
    "B10": (1373.5, 60),
    "B11": (1613.7, 20),
    "B12": (2202.4, 20),
}

#: The 13-band L1C order used by SSL4EO-S12 and by the shared Sentinel-2 stack.
S2_L1C_13 = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")

#: Friendly aliases accepted anywhere a band name is expected.
ALIASES: dict[str, str] = {
    "coastal": "B01",
    "blue": "B02",
    "green": "B03",
    "red": "B04",
    "rededge": "B05",
    "red_edge": "B05",
    "nir": "B08",
}

#: Named band orders of common sensors, mapped to the nearest Sentinel-2 band.
#: SuperDove "green I" (531 nm) and "yellow" (610 nm) have no Sentinel-2 counterpart: ``None``.
PRESETS: dict[str, tuple[str | None, ...]] = {
    "s2-rgbn": ("B04", "B03", "B02", "B08"),
    "s2-rgb": ("B04", "B03", "B02"),
    "s2-10m": ("B02", "B03", "B04", "B08"),
    "s2-l1c-13": S2_L1C_13,
    "s2-l2a-12": tuple(b for b in S2_L1C_13 if b != "B10"),
    "planetscope-4b": ("B02", "B03", "B04", "B08"),
    "planetscope-8b": ("B01", "B02", None, "B03", None, "B04", "B05", "B08"),
    "naip": ("B04", "B03", "B02", "B08"),
    # L2A samples with 20 m bands resampled to 10 m and the scene classification layer last (shared/data/s2_world)
    "s2-l2a-7scl": ("B02", "B03", "B04", "B06", "B08", "B11", None),
    "rgb": ("B04", "B03", "B02"),
}

#: The bands LPIPS-Sat uses by default: R, G, B, NIR (the 10 m bands every SR model produces).
DEFAULT_BANDS: tuple[str, ...] = PRESETS["s2-rgbn"]  # type: ignore[assignment]


def canonical(name: str) -> str:
    """Return the Sentinel-2 band id for ``name`` (an id such as ``B8A`` or an alias such as ``nir``)."""
    key = name.strip()
    if key.upper() in S2_BANDS:
        return key.upper()
    if key.lower() in ALIASES:
        return ALIASES[key.lower()]
    raise InputError(f"Unknown band name {name!r}; use a Sentinel-2 id ({', '.join(S2_BANDS)}) or one of {sorted(ALIASES)}")


def resolve(bands: str | Sequence[str | None]) -> tuple[str | None, ...]:
    """Turn a preset name, a comma-separated string or a sequence of names into canonical band ids."""
    if isinstance(bands, str):
        if bands in PRESETS:
            return PRESETS[bands]
        bands = [b for b in bands.split(",") if b.strip()]
    return tuple(None if b is None else canonical(b) for b in bands)


def band_indices(source: str | Sequence[str | None], wanted: str | Sequence[str | None]) -> list[int]:
    """Indices into ``source`` that yield the bands of ``wanted`` in ``wanted``'s order.

    Raises:
        InputError: a wanted band is not in ``source`` (the message lists both orders).
    """
    src, dst = resolve(source), resolve(wanted)
    out = []
    for band in dst:
        if band is None or band not in src:
            raise InputError(f"Band {band} is needed but the input bands are {list(src)}; declare the input band order (e.g. a preset: {sorted(PRESETS)})")
        out.append(src.index(band))
    return out


def nearest_band(band: str, available: Sequence[str]) -> str:
    """The band of ``available`` closest in centre wavelength to ``band`` (used to fill missing inputs)."""
    if not available:
        raise InputError("No bands available to fill from")
    target = S2_BANDS[canonical(band)][0]
    return min(available, key=lambda b: abs(S2_BANDS[canonical(b)][0] - target))
