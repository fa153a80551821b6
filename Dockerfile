# syntax=docker/dockerfile:1
# The agent image the Helm chart runs (charts/probepilot, image.repository).
#   docker build -t REGISTRY/probepilot:0.1.0 .
#
# The build steps are scripts/dev's (what CI runs through .ci/run): the same
# Debian packages for building, `npm ci`, and `npm run build` (BPF objects,
# native addon, TypeScript). Keep them in step with scripts/dev when it
# changes: no Docker engine runs where this project is tested, so this file is
# not built by CI.

# --- build: BPF objects, the libbpf addon and the TypeScript ---------------
FROM node:24-bookworm-slim AS build
# scripts/dev's apt_packages that building needs (the rest are test tools).
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      clang llvm libbpf-dev bpftool libelf-dev zlib1g-dev make g++ python3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/probepilot
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY . .
RUN npm run --silent build \
 && npm prune --omit=dev --no-audit --no-fund --loglevel=error

# --- runtime: Node, the libraries the addon links, and the build outputs ----
FROM node:24-bookworm-slim
# libbpf/libelf/zlib: what native/binding.gyp links (-lbpf -lelf -lz).
# mount (util-linux, already in the base image) lets the agent mount bpffs and
# tracefs on nodes that lack them.
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libbpf1 libelf1 zlib1g \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/probepilot
ENV NODE_ENV=production
# The agent finds the addon and the BPF objects relative to dist/src
# (src/bpf/addon.ts), so the layout below mirrors the source tree.
COPY --from=build /opt/probepilot/package.json ./
COPY --from=build /opt/probepilot/node_modules ./node_modules
COPY --from=build /opt/probepilot/dist/src ./dist/src
COPY --from=build /opt/probepilot/proto ./proto
# The default detection rules (security.rules.path empty), found relative to dist/src like proto/.
COPY --from=build /opt/probepilot/rules ./rules
COPY --from=build /opt/probepilot/native/build/Release/probepilot.node ./native/build/Release/
COPY --from=build /opt/probepilot/build/bpf ./build/bpf
RUN chmod +x dist/src/cli.js && ln -s /opt/probepilot/dist/src/cli.js /usr/local/bin/probepilot
# Root, for bpffs, tracefs and BPF; the chart drops every capability but the
# few the agent needs and keeps the root filesystem read-only.
USER 0
EXPOSE 9742
ENTRYPOINT ["probepilot"]
CMD ["agent"]
