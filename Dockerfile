FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY thaw thaw
COPY encoders encoders
COPY indexer indexer
COPY services services
COPY api api
COPY workers workers
COPY entrypoints entrypoints
RUN pip install --no-cache-dir . && useradd -m thaw && mkdir -p /var/lib/thaw && chown thaw /var/lib/thaw
USER thaw
