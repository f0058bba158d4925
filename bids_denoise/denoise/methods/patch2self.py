"""Patch2Self in the registry: its options, memory model and methods sentence."""

from __future__ import annotations

from bids_denoise.denoise.methods.base import Method, Option, join_words

#: Largest patch radius per axis (the engine checks it too).
MAX_PATCH_RADIUS = 3
MODELS = ("ols", "ridge", "lasso")
POOLINGS = ("voxel", "radial")
_MODEL_NAMES = {"ols": "ordinary least squares (OLS)", "ridge": "ridge", "lasso": "lasso"}

OPTIONS = (
    Option(
        "p2s_model", "--p2s-model", kind="choice", choices=MODELS, default="ols", sidecar="Model",
        interface="model",
        help="Regression that predicts each volume from the others: ordinary least squares, ridge "
        "or lasso (lasso is much slower).",
    ),
    Option(
        "p2s_alpha", "--p2s-alpha", kind="float", default=1.0, minimum=0.0, positive=True,
        metavar="ALPHA", sidecar="Alpha", interface="alpha",
        help="Regularisation strength (> 0) of the ridge and lasso models; ignored by ols.",
    ),
    Option(
        "patch_radius", "--patch-radius", kind="radius", default=(1, 1, 1), minimum=0,
        maximum=MAX_PATCH_RADIUS, metavar="R", sidecar="PatchRadius", interface="patch_radius",
        help=f"Patch radius in voxels, one value for all axes or three (x y z), each "
        f"0..{MAX_PATCH_RADIUS}. 1 (with radial pooling) kept white-matter FA on every phantom of "
        "the quality benchmark; 0 (single voxels, the original default) lowered it 2 to 3 times "
        "the noise's error (benchmarks/results/quality.md).",
    ),
    Option(
        "patch_pooling", "--patch-pooling", kind="choice", choices=POOLINGS, default="radial",
        sidecar="PatchPooling", interface="patch_pooling",
        help="Predictors taken from each other volume's patch: 'voxel' uses every patch voxel (the "
        "original Patch2Self, 27 per volume at radius 1); 'radial' averages the voxels at each "
        "distance from the centre into one (4 per volume at radius 1), which overfits far less on "
        "small images and keeps white-matter FA better. No effect at radius 0.",
    ),
    Option(
        "clip_negative_vals", None, kind="switch", default=True, sidecar="ClipNegativeValues",
        interface="clip_negative_vals",
        help="Set negative denoised values to 0 (configuration file only).",
    ),
)

BIBTEX = """@inproceedings{patch2self,
  author = {Fadnavis, Shreyas and Batson, Joshua and Garyfallidis, Eleftherios},
  title = {{Patch2Self}: Denoising Diffusion {MRI} with Self-Supervised Learning},
  booktitle = {Advances in Neural Information Processing Systems 33 (NeurIPS 2020)},
  editor = {Larochelle, H. and Ranzato, M. and Hadsell, R. and Balcan, M. F. and Lin, H.},
  publisher = {Curran Associates, Inc.},
  pages = {16293--16303},
  year = {2020},
  url = {https://proceedings.neurips.cc/paper/2020/hash/bc047286b224b7bfa73d4cb02de1238d-Abstract.html},
  eprint = {2011.01355},
  archivePrefix = {arXiv}
}
"""


def memory_gb(shape, settings, largest_group, device) -> float:
    from bids_denoise.denoise.patch2self import estimate_memory_gb

    return estimate_memory_gb(shape, patch_radius=getattr(settings, "patch_radius", 0),
                              group_size=largest_group, device=device)


def sentence(settings) -> str:
    model = str(getattr(settings, "p2s_model", "ols"))
    alpha = float(getattr(settings, "p2s_alpha", 1.0))
    regression = _MODEL_NAMES.get(model, model) + " regression"
    if model in ("ridge", "lasso"):
        regression += f" (alpha = {alpha:g})"
    radius = [int(r) for r in getattr(settings, "patch_radius", (0, 0, 0))]
    if len(set(radius)) == 1:
        patch = f"a patch radius of {radius[0]}" + (" (single voxels)" if radius[0] == 0 else
                                                     f" (patches of {2 * radius[0] + 1}³ voxels)")
    else:
        patch = f"a patch radius of {join_words(radius)} voxels along x, y and z"
    if max(radius) > 0 and getattr(settings, "patch_pooling", "voxel") == "radial":
        patch += ", the patch voxels at each distance from the centre averaged into one predictor"
    text = (
        "Denoising used Patch2Self [@patch2self], a self-supervised method that predicts each volume "
        f"from the other volumes of its group, with {regression} and {patch}."
    )
    if getattr(settings, "clip_negative_vals", False):
        text += " Negative denoised values were set to zero."
    return text


PATCH2SELF = Method(
    name="patch2self",
    label="Patch2Self",
    summary="self-supervised regression of each volume on the others; CPU, minutes",
    description="Settings of --method patch2self.",
    options=OPTIONS,
    interface="bids_denoise.interfaces.patch2self:Patch2Self",
    memory_gb=memory_gb,
    sentence=sentence,
    bibtex=BIBTEX,
)
