"""Visual reports and methods text.

* :mod:`~bids_denoise.reports.stats`: residual and noise statistics (NumPy/SciPy arrays in,
  numbers out);
* :mod:`~bids_denoise.reports.figures`: the reportlets (arrays in, SVG/PNG files out);
* :mod:`~bids_denoise.reports.ddm2`: DDM2 training-history plots from its ``history_file``;
* :mod:`~bids_denoise.reports.boilerplate`: the methods text and ``logs/CITATION.*``;
* :mod:`~bids_denoise.reports.markdown`: a small Markdown-to-HTML converter;
* :mod:`~bids_denoise.reports.html`: the per-subject ``sub-<label>.html`` assembler.

Nothing here imports Nipype; the Nipype wrapper is
:class:`bids_denoise.interfaces.reports.DenoisingReportlets`.
"""
