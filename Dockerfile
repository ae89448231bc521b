# terrazzo's own image: the CLI, the runtime and `terrazzo serve` (the router and its controller), for the
# head of a Ray/KubeRay cluster (`terrazzo deploy ... --image IMAGE`). LLM pools run in the official vLLM
# image beside it (deploy writes those StatefulSets); no engine is installed here.
#   docker build -t terrazzo:dev .      (checked by hadolint in tests/test_dockerfile.py)
FROM python:3.11.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# torch first and alone, the CPU build pinned, as the Makefile does: a looser request pulls a CUDA build
RUN python -m venv /opt/terrazzo \
    && /opt/terrazzo/bin/pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml constraints.txt README.md ./
COPY terrazzo ./terrazzo
RUN /opt/terrazzo/bin/pip install -c constraints.txt ".[runtime]"

FROM python:3.11.11-slim-bookworm
COPY --from=build /opt/terrazzo /opt/terrazzo
RUN useradd --create-home --uid 10001 terrazzo
USER 10001
WORKDIR /home/terrazzo
ENV PATH=/opt/terrazzo/bin:$PATH HF_HUB_OFFLINE=1
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["terrazzo"]
CMD ["--help"]
