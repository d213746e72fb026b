# The decision service image: rlscale with the `serve` and `registry` extras, no torch.
# Build: docker build -t rlscale-serve .   (not built in CI: the build machines have no Docker engine)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY rlscale ./rlscale
COPY envs ./envs
COPY agents ./agents
COPY training ./training
COPY serving ./serving
COPY experiments ./experiments
# torch is never pulled: the serve extra does not ask for it and neither do the core deps
RUN pip install ".[serve,registry]" && python -c "import rlscale.serving.app, sys; assert 'torch' not in sys.modules"

# numba caches compiled code beside the sources; an unprivileged user gets its own cache dir
ENV NUMBA_CACHE_DIR=/tmp/numba-cache
RUN useradd --uid 10001 --no-create-home rlscale && mkdir -p /data && chown rlscale /data
USER 10001
VOLUME /data
EXPOSE 8080 9090

# the scenario file describes the live cluster's pools; mount your own at /config
ENTRYPOINT ["rlscale", "serve", "--host", "0.0.0.0", "--port", "8080", "--grpc-port", "9090"]
CMD ["--scenario", "azure-conv", "--policy", "hpa", "--shadow-db", "/data/shadow.sqlite"]
