# Builds the worker and the subbus CLI into one small image.
# docker build -f deployments/worker.Dockerfile -t subbus/worker .
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -o /out/worker ./cmd/worker && \
    CGO_ENABLED=0 go build -trimpath -o /out/subbus ./cmd/subbus

FROM debian:bookworm-slim
COPY --from=build /out/worker /out/subbus /usr/local/bin/
COPY deployments/substrate_config.yaml /etc/subbus/substrate_config.yaml
ENTRYPOINT ["/usr/local/bin/worker", "--config", "/etc/subbus/substrate_config.yaml"]
