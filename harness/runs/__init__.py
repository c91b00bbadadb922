"""Running training: the loop's records cached on disk, and many runs side by side.

- ``cache``: where records live (``cache_dir``), the hash they are stored under (``cache_key``:
  the caller's key, torch, the kernel path and ``code_fingerprint``, the source that determines
  a run), ``cached`` (reuse or train, one process per key) and reading entries back
  (``CorruptCacheEntry`` when one is unreadable).
- ``jobs``: ``TrainJob`` (one run, picklable), ``run_jobs`` (cached records read back, the rest
  trained by an executor), ``run_table`` (a study's grid as a table), ``MEASURED_FIELDS``,
  ``SaveWeights`` and ``trained_weights`` (a job's trained state_dict).
- ``executors``: where a study's cells run: ``local``, ``processes`` or ``slurm``.

The loop itself is ``harness.train``; this package imports it, never the reverse.
"""
