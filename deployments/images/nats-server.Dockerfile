# nats-server, built by `make images` from the Go module this repository
# already requires (github.com/nats-io/nats-server/v2, version pinned in
# go.mod), in an image with nothing else in it. Offline like
# worker.Dockerfile: bin/images/nats-server is the build context.
FROM scratch
COPY nats-server /usr/local/bin/nats-server
EXPOSE 4222 6222 8222
# Without arguments: a single JetStream server storing in /data. Compose
# passes -c with a configuration instead.
ENTRYPOINT ["/usr/local/bin/nats-server"]
CMD ["--jetstream", "--store_dir", "/data"]
