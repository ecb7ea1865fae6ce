FROM python:3.11-slim
WORKDIR /srv
COPY pyproject.toml README.md celeryconfig.py gunicorn.conf.py flowerconfig.py ./
COPY app app
COPY tasks tasks
RUN pip install --no-cache-dir .
RUN useradd --system warmpool
USER warmpool
