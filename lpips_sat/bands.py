"""Band names, sensor presets, band mapping and the band order of input files: the one home every other module uses.

Canonical band names are the Sentinel-2 MSI band ids (``B01`` … ``B12``, ``B8A``). Other sensors'
bands are named by the Sentinel-2 band closest in wavelength, so a PlanetScope "red" is ``B04``.
Centre wavelengths (nm) are the Sentinel-2A values from ESA's MSI spectral response document.
"""

from __future__ import annotations

import logging
from typing import Protocol, Sequence

from lpips_sat.errors import InputError

logger = logging.getLogger(__name__)

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


class BandFile(Protocol):
    """What the band-order functions read of a file: ``lpips_sat.raster.RasterInfo`` or ``Raster``."""

    @property
    def path(self) -> object: ...
    @property
    def count(self) -> int: ...
    @property
    def descriptions(self) -> tuple[str | None, ...]: ...


def described_order(info: BandFile) -> tuple[str | None, ...] | None:
    """The file's band order from its band descriptions, when every band has a recognised band name; else ``None``."""
    if info.descriptions and all(info.descriptions):
        try:
            return resolve(list(info.descriptions))
        except InputError:
            return None
    return None


def order_assumed(info: BandFile, declared: str | Sequence[str | None] | None) -> bool:
    """Whether :func:`band_order` would have to assume the order: nothing declared and no usable band names."""
    return declared is None and described_order(info) is None


def band_order(
    info: BandFile, declared: str | Sequence[str | None] | None, wanted: Sequence[str], flag: str, *, strict: bool = False
) -> tuple[str | None, ...]:
    """Band names of ``info``'s file, in file order.

    From ``declared`` (a preset such as ``planetscope-4b`` or names) if given, else from the file's band
    descriptions when they are all band names, else assumed to be ``wanted`` when the band count matches
    (a warning; the caller reports it, see :func:`order_assumed`), unless ``strict``. ``flag`` is the option that
    declares it, quoted in errors.
    Raises:
        InputError: declared order of the wrong length, unknown order with a different band count, or an order that
            would be assumed while ``strict``.
    """
    hint = f"declare the file's band order with {flag} (a preset such as s2-rgbn, s2-l1c-13, planetscope-4b, planetscope-8b, naip, or names)"
    if declared is not None:
        try:
            order = resolve(declared)
        except InputError as exc:
            raise InputError(f"{flag} {declared!r}: {exc}") from exc
        if len(order) != info.count:
            raise InputError(
                f"{info.path}: {flag} declares {len(order)} bands ({', '.join(map(str, order))}) but the file has {info.count}"
            )
        return order
    described = described_order(info)
    if described is not None:
        return described
    if info.count == len(wanted) and not strict:
        logger.info("%s: no band names; assuming the %d bands are %s (declare with %s)", info.path, info.count, ",".join(wanted), flag)
        return tuple(wanted)
    if info.count == len(wanted):
        raise InputError(f"{info.path}: has no band names and --strict-bands refuses to assume they are {','.join(wanted)}; {hint}")
    raise InputError(
        f"{info.path}: has {info.count} bands without band names, but the metric needs {len(wanted)} ({', '.join(wanted)}); {hint}"
    )


def select_bands(
    info: BandFile, declared: str | Sequence[str | None] | None, wanted: Sequence[str], flag: str, *, strict: bool = False
) -> list[int]:
    """0-based band indices of ``info``'s file that give ``wanted`` in order (see :func:`band_order`)."""
    order = band_order(info, declared, wanted, flag, strict=strict)
    try:
        return band_indices(order, wanted)
    except InputError as exc:
        raise InputError(f"{info.path}: {exc} (set {flag})") from exc
