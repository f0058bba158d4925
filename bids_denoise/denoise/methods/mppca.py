"""MP-PCA in the registry: its options, memory model and methods sentence."""

from __future__ import annotations

from bids_denoise.denoise.methods.base import Method, Option

ESTIMATORS = ("veraart2016", "cordero-grande2019")
RECONSTRUCTIONS = ("overlap", "center")
MAX_PATCH_RADIUS = 4

OPTIONS = (
    Option(
        "mppca_patch_radius", "--mppca-patch-radius", kind="radius", default=(2, 2, 2), minimum=1,
        maximum=MAX_PATCH_RADIUS, metavar="R", sidecar="PatchRadius", interface="patch_radius",
        help=f"Window radius in voxels, one value or three (x y z), each 1..{MAX_PATCH_RADIUS}: 2 gives the "
        "5x5x5 windows of DIPY and MRtrix. A window must hold more voxels than there are volumes "
        "for the noise estimate to be reliable; axes of size 1 use radius 0.",
    ),
    Option(
        "mppca_estimator", "--mppca-estimator", kind="choice", choices=ESTIMATORS, default="veraart2016",
        sidecar="Estimator", interface="estimator",
        help="Where the Marchenko-Pastur noise edge is put: 'veraart2016' (Veraart et al. 2016, DIPY, MRtrix "
        "Exp1) or 'cordero-grande2019' (Cordero-Grande et al. 2019, MRtrix Exp2, which keeps slightly "
        "fewer components).",
    ),
    Option(
        "mppca_reconstruction", "--mppca-reconstruction", kind="choice", choices=RECONSTRUCTIONS,
        default="overlap", sidecar="Reconstruction", interface="reconstruction",
        help="'overlap' averages the estimates of every window containing a voxel (DIPY; 1-1.7 dB better "
        "on our phantoms); 'center' keeps each voxel's own window (MRtrix).",
    ),
)

BIBTEX = """@article{veraart2016,
  author = {Veraart, Jelle and Novikov, Dmitry S. and Christiaens, Daan and Ades-aron, Benjamin and Sijbers, Jan and Fieremans, Els},
  title = {Denoising of diffusion {MRI} using random matrix theory},
  journal = {NeuroImage},
  volume = {142},
  pages = {394--406},
  year = {2016},
  doi = {10.1016/j.neuroimage.2016.08.016}
}

@article{corderogrande2019,
  author = {Cordero-Grande, Lucilio and Christiaens, Daan and Hutter, Jana and Price, Anthony N. and Hajnal, Jo V.},
  title = {Complex diffusion-weighted image estimation via matrix recovery under general noise models},
  journal = {NeuroImage},
  volume = {200},
  pages = {391--404},
  year = {2019},
  doi = {10.1016/j.neuroimage.2019.06.039}
}
"""


def memory_gb(shape, settings, largest_group, device) -> float:
    """The group as float32 three times (copy, changes, input) plus 0.16 GB blocks and 0.4 GB of PyTorch."""
    voxels = 1
    for size in shape[:3]:
        voxels *= int(size)
    volumes = largest_group or int(shape[3])
    return round(3 * 4 * voxels * volumes / 1e9 + 0.56, 2)


def sentence(settings) -> str:
    radius = [int(r) for r in getattr(settings, "mppca_patch_radius", (2, 2, 2))]
    window = "x".join(str(2 * r + 1) for r in radius)
    estimator = getattr(settings, "mppca_estimator", "veraart2016")
    edge = ("the noise edge of Veraart et al." if estimator == "veraart2016"
            else "the noise edge of Cordero-Grande et al. [@corderogrande2019]")
    reconstruction = getattr(settings, "mppca_reconstruction", "overlap")
    how = ("the estimates of all windows containing a voxel were averaged" if reconstruction == "overlap"
           else "each voxel took the estimate of its own window")
    return (
        "Denoising used MP-PCA [@veraart2016]: in every window of "
        f"{window} voxels the volumes were decomposed into principal components, those below the "
        f"Marchenko-Pastur bulk of pure noise ({edge}) were discarded, and {how}; the noise level "
        "of each window gave a map of the noise standard deviation."
    )


MPPCA = Method(
    name="mppca",
    label="MP-PCA",
    summary="local principal component analysis thresholded at the Marchenko-Pastur noise edge, as in "
    "MRtrix dwidenoise and DIPY; CPU or GPU, seconds to minutes; also writes noise-sigma and rank maps",
    description="Settings of --method mppca.",
    options=OPTIONS,
    interface="bids_denoise.interfaces.mppca:MPPCA",
    memory_gb=memory_gb,
    sentence=sentence,
    bibtex=BIBTEX,
    min_group_volumes=2,
)
