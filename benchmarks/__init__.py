"""ilo-pl's benchmarks: a package of scripts, run from the repository root.

Run a benchmark as a module, ``python -m benchmarks.quality --help`` (the
older ``python benchmarks/quality.py --help`` runs the same module, see
:mod:`benchmarks._script`).

=====================  ========================================================================
module                 job
=====================  ========================================================================
``quality``            quality benchmark: ILO vs CSGM, PULSE-style and classical baselines (runs, CSV)
``report``             ``quality``'s report from its CSV: tables, plot, verdicts, the README's table
``baselines``          the classical baselines ``quality`` runs
``tune``               tunes the DCGAN configs' stage schedules on the tuning faces
``sna``                Stochastic Noise Addition table (denoising)
``mouth_box``          the issue-2 acceptance check (ILO vs CSGM, box over the mouth)
``speed``              engine overhead vs the floor, throughput, projection, memory, whole solves
``timing``             what the timing benchmarks share: ``Bench``, the floor step, step timers,
                       the bare-Lightning step, the generators and problems they time
``projection``         the exact l1 projection's methods against the sort-based one
``op_count``           PyTorch operators per ILO step vs the floor, by name and source line
``floor_placement``    how much memory placement alone moves a floor step
``common``             paths, CSV reading and logging set-up the scripts share
=====================  ========================================================================

Every config a benchmark runs is read by :func:`ilo_pl.config.build_from_config`,
the code path of ``ilo-pl fit``: no benchmark keeps a list of config keys.
"""
