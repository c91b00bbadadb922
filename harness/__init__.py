"""A reproducibility and regression harness for deep-learning efficiency claims.

One module per concern: ``complexity``, ``scaling``, ``models``, ``timing``, ``train``,
``data``, ``agc``, ``stats``, ``references``, ``reporting``. ``claims/`` calls into these.
"""

__version__ = "0.1.0"
