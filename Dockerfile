# joulegate in a container. Configure with JOULEGATE_* environment variables
# (e.g. JOULEGATE_BACKEND_URL) or mount a joulegate.toml and set JOULEGATE_CONFIG.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    JOULEGATE_HOST=0.0.0.0 JOULEGATE_PORT=8400

WORKDIR /app
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY meters ./meters
COPY accounting ./accounting
COPY config ./config
RUN pip install --no-cache-dir . \
 && useradd --system --create-home --uid 10001 joulegate
USER joulegate
EXPOSE 8400
ENTRYPOINT ["joulegate"]
CMD ["serve"]
