# fedmq: the coordinator (`fedmq`) and the site node (`fedmq-site`) in one image.
#
#   docker build -t fedmq .                      # telemetry-only (no torch/syft)
#   docker build -t fedmq --build-arg EXTRAS=train .   # with training (large image)
#
# The train extra pins torch==2.13.0 exactly: any other torch spec pulls gigabytes of
# CUDA wheels. Secrets are never baked in: credentials are mounted at run time
# (docker-compose.yml mounts the output of `fedmq broker init` read-only).
FROM python:3.11-slim

ARG EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY site_node ./site_node
COPY coordinator ./coordinator
# broker_config/acl.template: `fedmq broker init` finds it under the working directory.
COPY broker_config ./broker_config
RUN pip install --no-cache-dir ".${EXTRAS:+[$EXTRAS]}"

# Runs unprivileged; state lives on volumes mounted at /var/lib/fedmq.
RUN useradd --system --uid 10001 --home-dir /var/lib/fedmq fedmq \
    && mkdir -p /var/lib/fedmq && chown fedmq /var/lib/fedmq
USER fedmq
WORKDIR /var/lib/fedmq
ENTRYPOINT ["fedmq"]
CMD ["--help"]
