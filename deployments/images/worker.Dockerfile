# The subbus worker and CLI in an image with nothing else in it.
#
# `make images` compiles static binaries (CGO_ENABLED=0) on the build host
# and uses this file with bin/images/worker as the build context: FROM
# scratch pulls no base image and no step downloads anything, so the image
# builds offline. See docs/deploy.md.
FROM scratch
# bin/images/worker/rootfs, laid out by `make images`:
#   /usr/local/bin/worker, /usr/local/bin/subbus   static binaries
#   /etc/subbus/substrate_config.yaml              the sample configuration
#   /etc/passwd, /etc/group                        root, and nobody (process.default_user)
#   /tmp                                           mode 1777, for the instances
COPY rootfs/ /
ENV PATH=/usr/local/bin
# Process driver state and logs; the embedded NATS store when no --server.
VOLUME ["/var/lib/subbus"]
ENTRYPOINT ["/usr/local/bin/worker", "--config", "/etc/subbus/substrate_config.yaml", "--log-format", "json"]
