# The subbus worker and CLI in an image with nothing else in it.
#
# `make images` compiles static binaries (CGO_ENABLED=0) on the build host
# and uses this file with bin/images/worker as the build context: FROM
# scratch pulls no base image and no step downloads anything, so the image
# builds offline. See docs/deploy.md.
FROM scratch
COPY worker subbus /usr/local/bin/
COPY substrate_config.yaml /etc/subbus/substrate_config.yaml
# /tmp (mode 1777) for the processes the process driver runs, and the
# users it runs them as (root, and nobody: process.default_user).
COPY tmp /tmp
COPY etc /etc
ENV PATH=/usr/local/bin
# Process driver state and logs; the embedded NATS store when no --server.
VOLUME ["/var/lib/subbus"]
ENTRYPOINT ["/usr/local/bin/worker", "--config", "/etc/subbus/substrate_config.yaml", "--log-format", "json"]
