"""Data files shipped with bids_denoise.

``example_ds/`` is a small, valid BIDS dataset of real diffusion scans (two subjects, sessions,
runs, a multi-shell series and b0s stored at non-zero b). It is rebuilt only by
``scripts/make_example_dataset.py`` in the source repository; see its ``README`` for sources and
licences.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

EXAMPLE_DATASET = "example_ds"


def example_dataset() -> Path:
    """Installed path of the bundled example BIDS dataset.

    Works for editable installs and wheels alike: the package is installed as plain files
    (never zipped), so the resource is a real directory that pybids and the validator can read.
    Treat it as read-only; copy it before changing anything.

    Returns
    -------
    pathlib.Path
        Absolute path of ``bids_denoise/data/example_ds``.

    Raises
    ------
    FileNotFoundError
        If the package was installed without its data files.
    """
    path = Path(str(files(__name__).joinpath(EXAMPLE_DATASET))).absolute()
    if not (path / "dataset_description.json").is_file():
        raise FileNotFoundError(
            f"The example dataset is missing from {path}; reinstall bids_denoise with its "
            "package data."
        )
    return path


__all__ = ["example_dataset"]
