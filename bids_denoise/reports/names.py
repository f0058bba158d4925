"""Names of the reportlets in ``sub-<label>/figures/``, shared by the writer and the assembler.

Every file is ``<run entities>_desc-<kind>_dwi.<ext>``: ``brainmask`` (PNG), one
``mosaic<group>`` per volume group (PNG, e.g. ``mosaicb0``, ``mosaicb1000``), ``residualhist``,
``residualstd``, ``residualcorr``, ``sigma``, ``fa`` (PNG, runs that allow a tensor fit), for
MP-PCA ``mppcamaps``, and for DDM2 ``ddm2loss`` and ``ddm2tstar``
(SVG); ``reportstats`` (JSON) holds the numbers behind them.
"""

from __future__ import annotations

import re

SUFFIX = "dwi"
STATS_DESC = "reportstats"
MOSAIC_PREFIX = "mosaic"
#: Reportlets in the order the report shows them (mosaics go after ``brainmask``).
ORDER = ("brainmask", MOSAIC_PREFIX, "fa", "residualhist", "residualstd", "residualcorr", "sigma", "mppcamaps",
         "ddm2loss", "ddm2tstar")
FIXED = tuple(kind for kind in ORDER if kind != MOSAIC_PREFIX)
#: Hook for DDM2: the workflow feeds ``history_files`` to the reportlets when the per-run
#: denoising workflow's outputnode has this field.
HISTORY_FIELD = "history_files"


def mosaic_desc(label: str, taken=()) -> str:
    """``desc`` of a group's mosaic: ``mosaic`` + the label's letters and digits, made unique."""
    base = MOSAIC_PREFIX + (re.sub(r"[^A-Za-z0-9]", "", str(label)) or "group")
    desc, copies = base, 1
    while desc in taken:
        copies += 1
        desc = f"{base}x{copies}"
    return desc


def is_reportlet(desc: str) -> bool:
    """Whether ``desc`` names one of our reportlets or the statistics file."""
    mosaic = desc.startswith(MOSAIC_PREFIX) and desc[len(MOSAIC_PREFIX):].isalnum()
    return desc in FIXED or desc == STATS_DESC or mosaic


def sort_key(desc: str) -> tuple:
    """Order of a reportlet in the report."""
    kind = MOSAIC_PREFIX if desc.startswith(MOSAIC_PREFIX) and desc not in FIXED else desc
    return (ORDER.index(kind) if kind in ORDER else len(ORDER), desc)
