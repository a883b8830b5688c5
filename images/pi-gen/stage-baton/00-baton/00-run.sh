#!/bin/bash -e
# pi-gen stage step (runs on the build host, as root, with pi-gen's config
# sourced): installs the Baton agent into ROOTFS_DIR with images/baton-image,
# first-boot identity (each device makes its own key on first boot).
#
# In pi-gen's `config`:
#   BATON_REPO=/path/to/baton                 this repository
#   BATON_AGENT_BIN=/path/to/baton-agent      aarch64 musl (or armv7) build
#   BATON_CLUSTER=c07
#   BATON_GATEWAY=mqtts://gateway.local:8883
#   BATON_GATEWAY_KEY=<64 hex>                optional, recommended
#   BATON_CA=/path/to/ca.pem                  optional (mqtts://)
#   BATON_ID_PREFIX=pi-                       optional
: "${BATON_REPO:?set BATON_REPO in pi-gen's config}"
: "${BATON_AGENT_BIN:?set BATON_AGENT_BIN in pi-gen's config}"
: "${BATON_CLUSTER:?set BATON_CLUSTER in pi-gen's config}"
: "${BATON_GATEWAY:?set BATON_GATEWAY in pi-gen's config}"
args=(--rootfs "${ROOTFS_DIR}" --agent-bin "${BATON_AGENT_BIN}"
	--cluster "${BATON_CLUSTER}" --gateway "${BATON_GATEWAY}"
	--id-prefix "${BATON_ID_PREFIX:-pi-}")
[ -z "${BATON_GATEWAY_KEY:-}" ] || args+=(--gateway-key "${BATON_GATEWAY_KEY}")
[ -z "${BATON_CA:-}" ] || args+=(--ca "${BATON_CA}")
"${BATON_REPO}/images/baton-image" "${args[@]}"
