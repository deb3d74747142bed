# DEE's image: the `dee` command, running the worker by default.
#
#   docker build -t dee:local .
#   docker run --rm -e DEE_DATABASE_URL=... dee:local db upgrade
#   docker run --rm -e TEMPORAL_ADDRESS=... -e DEE_DATABASE_URL=... -e DEE_SECRET_KEY=... \
#       -e DEE_MIGRATE_ON_START=false dee:local
#   docker run --rm ... dee:local plans list
#
# Configured only from the environment (dee/settings.py; Temporal via temporalio.envconfig).

# Build: install the runtime dependencies, then the project, into a virtualenv that the
# runtime stage copies whole, so the sources and build files stay behind.
FROM python:3.11-slim AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# The dependencies first, exactly as pinned and hashed in the lock (`make lock` writes it):
# this layer is rebuilt only when the lock changes, not on every change to DEE's code. The
# lock holds the runtime dependencies only: no test tools, no Temporal CLI, no aiosmtpd
# (the `local` extra of `dee dev`).
COPY requirements/runtime.lock requirements/runtime.lock
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements/runtime.lock

# Then DEE itself, resolving nothing: what pyproject.toml packages ([tool.setuptools]) and
# the README it names as readme. `pip check` fails the build if the lock no longer
# satisfies pyproject.toml's dependencies.
COPY pyproject.toml README.md worker.py ./
COPY dee ./dee
COPY workflows ./workflows
COPY activities ./activities
RUN pip install --no-cache-dir --no-deps . \
    && pip check

# Runtime.
FROM python:3.11-slim

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 dee \
    && useradd --system --uid 10001 --gid dee --home-dir /home/dee --create-home \
        --shell /usr/sbin/nologin dee
COPY --from=build /opt/venv /opt/venv

# DEE keeps local state (the SQLite default, .dee/) under the working directory.
WORKDIR /home/dee
USER dee

ENTRYPOINT ["dee"]
CMD ["worker"]
