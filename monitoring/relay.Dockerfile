# The Feishu relay (python -m app.relay): a small image without torch or the model.
# Built by docker-compose.monitoring.yml with the repository root as context.
FROM python:3.11.10-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The same versions the project's tests run against.
RUN pip install \
        "fastapi==0.165.0" \
        "starlette==1.10.0" \
        "uvicorn==0.54.0" \
        "httpx==0.28.1" \
        "pydantic==2.14.3" \
        "pydantic-settings==2.16.3" \
        "prometheus-client==0.26.0"

WORKDIR /srv
# Only what the relay imports: the settings module and the relay package.
COPY app/__init__.py app/settings.py app/
COPY app/relay/ app/relay/

USER 65534:65534
EXPOSE 9095
CMD ["python", "-m", "app.relay"]
