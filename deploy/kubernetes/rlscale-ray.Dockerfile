# The image of deploy/kubernetes/raycluster.yaml: Ray's own image (the ray user, `ray start`)
# with rlscale and its training, tracking and Ray extras. torch first and pinned: the CPU build.
# Build from the repository root:
#   docker build -f deploy/kubernetes/rlscale-ray.Dockerfile -t rlscale-ray:2.60.0 .
# (not built in CI: the build machines have no Docker engine)
FROM rayproject/ray:2.60.0-py311-cpu

WORKDIR /home/ray/rlscale
COPY --chown=ray pyproject.toml README.md ./
COPY --chown=ray rlscale ./rlscale
COPY --chown=ray envs ./envs
COPY --chown=ray agents ./agents
COPY --chown=ray training ./training
COPY --chown=ray serving ./serving
COPY --chown=ray experiments ./experiments
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir ".[rl,eval,ray]" \
 && python -c "import rlscale.training.sweep, ray.tune, optuna"
ENV NUMBA_CACHE_DIR=/tmp/numba-cache
WORKDIR /home/ray
