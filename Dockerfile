# The dispatchq image: the `dispatchq` command (worker, sim, health, job dispatch, ...).
# docker-compose.yml builds it for the worker, nomadsim and cli services.
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY config ./config
COPY dispatch ./dispatch
COPY worker ./worker
COPY producer ./producer
COPY nomadsim ./nomadsim
COPY devstack ./devstack
RUN pip install --no-cache-dir . \
    && useradd --system --no-create-home dispatchq

# Celery refuses nothing as root, but warns: a worker has no need of it.
USER dispatchq
ENTRYPOINT ["dispatchq"]
CMD ["--help"]
