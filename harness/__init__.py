"""A reproducibility and regression harness for deep-learning efficiency claims.

One package per claim family (``scaling``, ``agc``, ``sparse``, ``decompose``, ``supernet``:
method, study, verdicts), ``models`` and ``complexity`` beneath them, ``train`` (the loop) and
``runs`` (its cache, jobs and executors), and the infrastructure a check runs on (``claim``,
``evidence``, ``bands``, ``references``, ``results``, ``html_report``, ``pytest_plugin``).
``claims/`` calls into these; README.md's "How it works" maps every module.
"""

__version__ = "0.1.0"
