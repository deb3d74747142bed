# DEE's image: the `dee` command, running the worker by default.
#
#   docker build -t dee .
#   docker run --rm -e TEMPORAL_ADDRESS=... -e DEE_DATABASE_URL=... -e DEE_SECRET_KEY=... dee
#   docker run --rm ... dee plans list
#
# Configured only from the environment (dee/settings.py; Temporal via temporalio.envconfig).

# Build: install the project and its runtime dependencies (no dev extras) into a virtualenv
# that the runtime stage copies whole, so the sources and build files stay behind.
FROM python:3.11-slim AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# What pyproject.toml packages ([tool.setuptools]), and the README it names as readme.
COPY pyproject.toml README.md worker.py ./
COPY dee ./dee
COPY workflows ./workflows
COPY activities ./activities
RUN pip install --no-cache-dir .

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
