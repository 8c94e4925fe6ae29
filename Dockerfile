# The dispatchq image: the `dispatchq` command (worker, sim, health, job dispatch, ...).
# docker-compose.yml builds it for the worker, nomadsim and cli services. Installed from
# the lock (uv.lock), like scripts/bootstrap: the same versions as the tests ran with.
FROM python:3.11-slim

WORKDIR /app
COPY scripts/uv-requirements.txt ./scripts/
RUN pip install --no-cache-dir --disable-pip-version-check --require-hashes --no-deps \
        -r scripts/uv-requirements.txt
COPY pyproject.toml uv.lock README.md LICENSE ./
COPY config ./config
COPY dispatch ./dispatch
COPY worker ./worker
COPY producer ./producer
COPY nomadsim ./nomadsim
COPY devstack ./devstack
ENV UV_PROJECT_ENVIRONMENT=/opt/dispatchq PATH=/opt/dispatchq/bin:$PATH
RUN uv sync --frozen --no-editable --no-cache --no-python-downloads --extra flower \
    && useradd --system --no-create-home dispatchq

# Celery refuses nothing as root, but warns: a worker has no need of it.
USER dispatchq
ENTRYPOINT ["dispatchq"]
CMD ["--help"]
