# The dispatchq image: the `dispatchq` command (worker, sim, health, job dispatch, ...).
# docker-compose.yml builds it for the worker, nomadsim and cli services. Installed from
# the lock (uv.lock), like scripts/bootstrap: the same versions as the tests ran with.
FROM python:3.11-slim

WORKDIR /app
COPY scripts/uv-requirements.txt ./scripts/
RUN pip install --no-cache-dir --disable-pip-version-check --require-hashes --no-deps \
        -r scripts/uv-requirements.txt
COPY pyproject.toml uv.lock README.md LICENSE ./
# The import root dispatchq/ links its worker, producer and config homes to the
# top-level folders of the same names (CONTRIBUTING.md): all four are copied.
COPY dispatchq ./dispatchq
COPY worker ./worker
COPY producer ./producer
COPY config ./config
ENV UV_PROJECT_ENVIRONMENT=/opt/dispatchq PATH=/opt/dispatchq/bin:$PATH
RUN uv sync --frozen --no-editable --no-cache --no-python-downloads --extra worker --extra sim --extra flower --extra web \
    && useradd --system --no-create-home dispatchq

# Celery refuses nothing as root, but warns: a worker has no need of it.
USER dispatchq
ENTRYPOINT ["dispatchq"]
CMD ["--help"]
