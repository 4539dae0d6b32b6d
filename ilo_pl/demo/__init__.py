"""``ilo-pl demo``: a local browser page (Gradio) to try ILO on your own photo.

The page builds an ordinary ilo-pl config from what the visitor chose (photo,
task, preset) and solves it with :class:`~ilo_pl.lightning_cli.ILOCLI`, the
engine of ``ilo-pl fit``; the config it offers for download reproduces the
page's result with ``ilo-pl fit``. Submodules:

* :mod:`ilo_pl.demo.problem`: photo conversion and crop, painted masks, the
  task's operator entry and the config (no torch import);
* :mod:`ilo_pl.demo.runner`: the solve (:func:`~ilo_pl.demo.runner.run_solve`)
  and its live-progress callback;
* :mod:`ilo_pl.demo.strip`: the captioned strips the page shows the stage
  previews and the result panels in (PIL, no torch);
* :mod:`ilo_pl.demo.app`: the Gradio page and ``ilo-pl demo``'s ``main``
  (needs the ``demo`` extra: ``pip install ilo-pl[demo]``).
"""
