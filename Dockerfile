# nats-iam-resolver: `serve` as a non-root user; config and data as volumes.
#
#   docker build -t nats-iam-resolver .
#   docker run -v ./conf/production:/etc/nats-iam-resolver:ro \
#              -v nir-data:/var/lib/nats-iam-resolver -p 8443:8443 nats-iam-resolver
#
# First start on an empty database: run `init` once with the same volumes, e.g.
#   docker run --rm -v ... nats-iam-resolver init --config /etc/nats-iam-resolver/resolver.toml
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RESOLVER_CONFIG=/etc/nats-iam-resolver/resolver.toml \
    RESOLVER_DATA_DIR=/var/lib/nats-iam-resolver \
    RESOLVER_MIGRATIONS_DIR=/app/migrations \
    # What the health check asks; the production sample serves HTTPS on 8443.
    RESOLVER_HEALTHCHECK_URL=https://127.0.0.1:8443/readyz

WORKDIR /app
# Dependencies first (a layer that survives code changes), then the code.
COPY pyproject.toml README.md ./
COPY resolver ./resolver
COPY migrations ./migrations
COPY alembic.ini ./
RUN pip install . \
    && groupadd --system --gid 10001 resolver \
    && useradd --system --uid 10001 --gid resolver --home-dir /var/lib/nats-iam-resolver \
       --shell /usr/sbin/nologin resolver \
    && mkdir -p /var/lib/nats-iam-resolver /etc/nats-iam-resolver \
    && chown resolver:resolver /var/lib/nats-iam-resolver

USER 10001:10001
VOLUME ["/etc/nats-iam-resolver", "/var/lib/nats-iam-resolver"]
EXPOSE 8443

# /readyz: the database answers and its schema is at the head. The certificate is the
# service's own, often from a private CA: the check is on the process, not the chain.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, ssl, sys, urllib.request as u; u.urlopen(os.environ['RESOLVER_HEALTHCHECK_URL'], timeout=4, context=ssl._create_unverified_context()); sys.exit(0)"]

ENTRYPOINT ["nats-iam-resolver"]
CMD ["serve"]
