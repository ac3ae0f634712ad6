# One image for every stage; the command picks it: `serve gateway|tokenizer|scheduler|worker`, `demo-model`.
#   docker build -t flashstream:cpu .
#   docker build -t flashstream:cuda --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130 \
#                --build-arg WITH_C_COMPILER=1 .
FROM python:3.12-slim

# Only a GPU worker needs CUDA torch (several GB); every other stage, and a CPU worker, runs on the CPU wheel.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
# Triton compiles its GPU launcher with a C compiler the first time a kernel runs; the slim base has none.
ARG WITH_C_COMPILER=0

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Debian's point releases replace package versions in place (an old pin stops resolving), so the compiler follows
# the base image's release instead of a pinned version.
# hadolint ignore=DL3008
RUN if [ "$WITH_C_COMPILER" = 1 ]; then \
        apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*; \
    fi

# torch first, from its own index, so that `pip install .` finds it satisfied instead of pulling the CUDA build.
RUN pip install --index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}"

WORKDIR /src
COPY . .
RUN pip install "/src[tracing]" && rm -rf /src

# A numeric user lets Kubernetes check runAsNonRoot. /models and /etc/flashstream/tls belong to it so that a fresh
# named volume mounted there (which copies the image's ownership) is writable by `flashstream demo-model` and
# `flashstream internal-certs`.
RUN useradd --create-home --uid 10001 flashstream && mkdir -p /models /etc/flashstream/tls \
    && chown 10001:10001 /models /etc/flashstream/tls
USER 10001
WORKDIR /home/flashstream

# gRPC: gateway 50050, tokenizer 50051, scheduler 50052, worker 50053. HTTP: gateway API + status 8000,
# status (/metrics /health /ready) of tokenizer 50151, scheduler 50152, worker 50153.
EXPOSE 50050 50051 50052 50053 8000 50151 50152 50153
ENTRYPOINT ["flashstream"]
CMD ["--help"]
