"""Band order of input files: which of a file's bands are the metric's bands (declared, described or assumed)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from lpips_sat.errors import InputError
from lpips_sat.raster import RasterInfo

logger = logging.getLogger(__name__)


def described_order(info: RasterInfo) -> tuple[str | None, ...] | None:
    """The file's band order from its band descriptions, when every band has a recognised band name; else ``None``."""
    from lpips_sat.bands import resolve

    if info.descriptions and all(info.descriptions):
        try:
            return resolve(list(info.descriptions))  # type: ignore[arg-type]
        except InputError:
            return None
    return None


def order_assumed(info: RasterInfo, declared: str | Sequence[str | None] | None) -> bool:
    """Whether :func:`band_order` would have to assume the order: nothing declared and no usable band names."""
    return declared is None and described_order(info) is None


def band_order(
    info: RasterInfo, declared: str | Sequence[str | None] | None, wanted: Sequence[str], flag: str, *, strict: bool = False
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
    from lpips_sat.bands import resolve

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
    info: RasterInfo, declared: str | Sequence[str | None] | None, wanted: Sequence[str], flag: str, *, strict: bool = False
) -> list[int]:
    """0-based band indices of ``info``'s file that give ``wanted`` in order (see :func:`band_order`)."""
    from lpips_sat.bands import band_indices

    order = band_order(info, declared, wanted, flag, strict=strict)
    try:
        return band_indices(order, wanted)
    except InputError as exc:
        raise InputError(f"{info.path}: {exc} (set {flag})") from exc
