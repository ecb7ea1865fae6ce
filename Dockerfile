# The production image: the API, the workers, beat, Flower and (for a try without a Vast account) the simulator.
# Pinned: the base image to an exact version, every package to the hash in requirements.lock (`make lock`).
FROM python:3.11.11-slim-bookworm
WORKDIR /srv
# the locked dependencies first, in a layer of their own that a code change does not rebuild
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock
COPY pyproject.toml README.md celeryconfig.py gunicorn.conf.py flowerconfig.py ./
COPY app app
COPY tasks tasks
COPY sim sim
RUN pip install --no-cache-dir --no-deps . && pip check
RUN useradd --system warmpool
# what the services write, owned by the user they run as (a named volume mounted here takes this owner):
# the simulator's world (compose's sim-data volume) and beat's schedule file
RUN mkdir -p /var/lib/sim /var/lib/warmpool && chown warmpool /var/lib/sim /var/lib/warmpool
USER warmpool
EXPOSE 8000
# the API's readiness (Redis and the broker answer); docker-compose.yml gives each other service its own check
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--worker-class", "gthread", "--workers", "2", "--threads", "16", "app:create_app()"]
