# One image for every role: `mediagate serve | api | worker | migrate | keys`.
FROM rust:1-bookworm AS build
# nasm lets the bundled H.264 encoder build its SIMD code.
RUN apt-get update && apt-get install -y --no-install-recommends nasm && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin mediagate

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/mediagate /usr/local/bin/mediagate
ENV MEDIAGATE_BIND=0.0.0.0:8080 MEDIAGATE_DATA_DIR=/data
VOLUME /data
EXPOSE 8080
ENTRYPOINT ["mediagate"]
CMD ["serve"]
