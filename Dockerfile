# dino-serve container: the same install script and build commands as `make` and CI.
#   docker build -t dino-serve .
#   docker run -p 50051:50051 -p 9090:9090 dino-serve
#   docker run -p 50051:50051 -p 4242:4242 dino-serve --umbridge_port=4242   (UM-Bridge too)
FROM debian:bookworm AS build
WORKDIR /src
COPY scripts/install-deps.sh scripts/install-deps.sh
RUN bash scripts/install-deps.sh && rm -rf /var/lib/apt/lists/*
COPY . .
RUN make build BUILD_DIR=/build WERROR=ON

FROM debian:bookworm AS runtime
COPY scripts/install-deps.sh /tmp/install-deps.sh
RUN bash /tmp/install-deps.sh --runtime && rm -rf /var/lib/apt/lists/* /tmp/install-deps.sh \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin dino
COPY --from=build /build/bin/dino-server /build/bin/dino /usr/local/bin/
COPY --chown=dino models/repository /models
USER dino
EXPOSE 50051 9090 4242
# The health check asks the plaintext health-only port, so that it keeps working when the
# container is run with --tls_cert/--tls_key (and --tls_client_ca) appended.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["dino", "health", "--server=127.0.0.1:50052"]
ENTRYPOINT ["dino-server", "--model_repository=/models", "--port=50051", "--metrics_port=9090", \
    "--health_port=50052"]
