import os

pytest_plugins = ["pytester"]

# Under pytest-xdist (``nox -s tests`` runs ``-n auto``) each worker is one process per core:
# intra-op threads on top of that would oversubscribe the CPU (measured: a mask test took 18.6
# s instead of 3.1 s with two workers of two threads each on two cores).
if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    torch.set_num_threads(1)
