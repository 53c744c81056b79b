# The suite's image: one image, two commands (web and worker), as in the Procfile.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY web ./web
COPY workers ./workers
COPY harness ./harness
COPY suite ./suite
COPY django_stack ./django_stack
# The library (shared/, distribution `forkpool`) and the suite in one call:
# pip takes the suite's `forkpool` requirement from ./shared.
RUN pip install "./shared[all]" . && useradd --system --no-create-home forkpool

USER forkpool
EXPOSE 8000
CMD ["gunicorn", "--config", "web/gunicorn.conf.py"]
