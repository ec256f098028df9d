# The bridge, built from uv.lock. No Docker engine runs on our CI machines: keep this correct by reading.
FROM python:3.11-slim AS build
COPY --from=ghcr.io/astral-sh/uv:0.13.8 /uv /usr/local/bin/uv
WORKDIR /app
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY bridge ./bridge
RUN uv sync --frozen --no-dev

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home /var/lib/bridge bridge \
    && mkdir -p /var/lib/bridge && chown bridge /var/lib/bridge
COPY --from=build /app /app
ENV PATH=/app/.venv/bin:$PATH BRIDGE_DATA_DIR=/var/lib/bridge PYTHONUNBUFFERED=1
USER bridge
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"
CMD ["python", "-m", "bridge", "serve", "--host", "0.0.0.0", "--port", "8000"]
