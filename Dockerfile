# ferry in a container: `docker build -t ferry .` then
#   docker run --rm -p 7379:7379 -v ferry-data:/var/lib/ferry ferry
# runs the job service (console on http://localhost:7379/); any other subcommand works too:
#   docker run --rm ferry sync --source redis://src:6379 --target redis://dst:6379
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
COPY tests/support ./tests/support
RUN cargo build --release --locked -p ferry

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/ferry --create-home ferry
COPY --from=build /src/target/release/ferry /usr/local/bin/ferry
USER ferry
WORKDIR /var/lib/ferry
VOLUME /var/lib/ferry
EXPOSE 7379
ENTRYPOINT ["/usr/local/bin/ferry"]
CMD ["serve", "--listen", "0.0.0.0:7379", "--store", "sqlite:///var/lib/ferry/ferry.db"]
