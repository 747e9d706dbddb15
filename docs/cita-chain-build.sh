#!/bin/bash
# Builds the CITA-Cloud 6.7.4 services the way docs/cita-chain-build.md describes, into
# $CITA_DIR/bin under the names `cargo xtask cita-chain --services $CITA_DIR/bin` expects.
# Run it outside the checkout, as root (it installs its system packages); about an hour
# on 2 cores. Already built binaries are kept, so it can be run again after a failure.
# The services a chain with our consensus needs come first, so that one can start
# before consensus_raft (the longest build) and consensus_overlord are done.
#
# env: CITA_DIR  where sources, the shared target directory, binaries and logs go
#      GIT_BASE  where to clone from: https://github.com (default), or a directory that
#                holds <owner>/<repo> clones or <owner>+<repo>/repo bare mirrors
set -uo pipefail
CITA_DIR=${CITA_DIR:?set CITA_DIR to a directory outside the checkout}
GIT_BASE=${GIT_BASE:-https://github.com}
if ! dpkg -s libclang-dev clang protobuf-compiler libssl-dev pkg-config cmake >/dev/null 2>&1; then
  apt-get update -qq && apt-get -o DPkg::Lock::Timeout=900 install -y -qq \
    libclang-dev clang protobuf-compiler libssl-dev pkg-config cmake >/dev/null || exit 1
fi
mkdir -p "$CITA_DIR"/{src,bin,logs,locks}
cd "$CITA_DIR/src"
declare -A C=(
 [consensus_raft]=dbb5c05759154f7b68262bccbc7f78df2868d2e3
 [controller_hsm]=0247cec88df3cb5b5ffafd0a807f05048dbccf58
 [storage_opendal]=5182c6f452adb546feb5e4ca0969e5b4d1e8f65c
 [executor_evm]=3be4b736ed610ba6b01ff6ee5731c3a6259d9a65
 [network_zenoh]=ebf271ff2c39e8bb6c08118ccdb3a8d41bb1af6c
 [cloud-cli]=f712dc28c823365ac25807a59f36e397afc92a37
 [cloud-config]=d3647880c2cec9b5b4d18bff402d41fb0ba08aa6
 [consensus_overlord]=033731d4906e54ba399981bf2c8a15990726af28
 [crypto_sm]=be5b87bd59d4123e12822b1d47b1a6538b8525f2
 [crypto_eth]=50b3f4bb0a73e2046797ac43503faba6579a8fa9
 [libproto]=9388049a964bc81a8989f7db9cf6f1620dc4a5bc
 [raft-rs]=2a7204f69b116bdc1f88d8c76dd62989f8b10564
)
for r in "${!C[@]}"; do
  owner=cita-cloud; [ "$r" = raft-rs ] && owner=JLerxky
  src="$GIT_BASE/$owner/$r"
  [ -d "$GIT_BASE/$owner+$r/repo" ] && src="$GIT_BASE/$owner+$r/repo"
  [ -d "$r" ] || git clone -q "$src" "$r" || exit 1
  git -C "$r" checkout -q "${C[$r]}" 2>/dev/null || echo "WARN $r: commit ${C[$r]} not in snapshot, using HEAD $(git -C $r rev-parse HEAD)"
done
if [ ! -f .edited ]; then
for r in consensus_raft controller_hsm storage_opendal executor_evm network_zenoh \
         consensus_overlord crypto_sm crypto_eth; do
  sed -i -e 's|^cloud-util = { package = "cloud-util", git = "https://github.com/cita-cloud/cloud-common-rs" }|cloud-util = "=0.8.2"|' \
         -e 's|^cita_cloud_proto = { package = "cita_cloud_proto", git = "https://github.com/cita-cloud/cloud-common-rs" }|cita_cloud_proto = "=6.7.4"|' \
         $r/Cargo.toml
done
sed -i 's|^raft = { git = "https://github.com/JLerxky/raft-rs",|raft = { path = "../raft-rs",|' consensus_raft/Cargo.toml
for r in controller_hsm cloud-config; do
  sed -i -e 's|^crypto_sm = { git = "https://github.com/cita-cloud/crypto_sm",|crypto_sm = { path = "../crypto_sm",|' \
         -e 's|^crypto_eth = { git = "https://github.com/cita-cloud/crypto_eth",|crypto_eth = { path = "../crypto_eth",|' $r/Cargo.toml
done
sed -i '0,/^version = "6.7.4"$/s//version = "6.7.4-eth"/' crypto_eth/Cargo.toml
sed -i 's|^libproto = { git = "https://github.com/cita-cloud/libproto" }|libproto = { path = "../libproto" }|' executor_evm/Cargo.toml
sed -i 's|^libproto = { git = "https://github.com/cita-cloud/libproto", rev = "9388049a964bc81a8989f7db9cf6f1620dc4a5bc" }|libproto = { path = "../libproto" }|' cloud-cli/Cargo.toml
sed -i 's|^openssl = { version = "0.10", features = \["vendored"\] }|openssl = "0.10"|' cloud-cli/Cargo.toml
sed -i -e 's|^zenoh = { version = "1.0",|zenoh = { version = "=1.0.4",|' \
       -e 's|^zenoh-ext = { version = "1.0",|zenoh-ext = { version = "=1.0.4",|' network_zenoh/Cargo.toml
for c in zenoh-buffers zenoh-codec zenoh-collections zenoh-config zenoh-core zenoh-crypto \
         zenoh-keyexpr zenoh-link zenoh-link-commons zenoh-link-quic zenoh-link-tls zenoh-macros \
         zenoh-plugin-trait zenoh-protocol zenoh-result zenoh-runtime zenoh-sync zenoh-task \
         zenoh-transport zenoh-util; do
  sed -i "/^zenoh-ext = /a $c = { version = \"=1.0.4\", default-features = false }" network_zenoh/Cargo.toml
done
touch .edited
fi
grep -n 'git *=' */Cargo.toml | grep -v '^cloud-common-rs/' && { echo "git deps left"; exit 1; }
export CARGO_TARGET_DIR=$CITA_DIR/target CARGO_BUILD_JOBS=2 PROTOC_NO_VENDOR=1
build() { # repo bin-in-target copied-name [rustflags]
  local repo=$1 bin=$2 name=$3 flags=${4:-}
  [ -x "$CITA_DIR/bin/$name" ] && { echo "have $name"; return 0; }
  local start=$(date +%s)
  ( cd "$repo" && RUSTFLAGS="$flags" nice -n 19 cargo build --release -q ) > "$CITA_DIR/logs/$repo.log" 2>&1
  local rc=$?
  echo "$repo rc=$rc $(( $(date +%s)-start ))s"
  [ $rc = 0 ] || { tail -20 "$CITA_DIR/logs/$repo.log"; return 1; }
  cp "$CARGO_TARGET_DIR/release/$bin" "$CITA_DIR/bin/$name"
  cp "$repo/Cargo.lock" "$CITA_DIR/locks/$repo.Cargo.lock" 2>/dev/null
}
# First what a chain with our consensus needs, then the other two consensuses.
build cloud-config cloud-config cloud-config
build cloud-cli cldi cldi
build controller_hsm controller controller
build network_zenoh network network_zenoh
build storage_opendal storage storage_opendal
build executor_evm executor executor_evm '-C link-arg=-Wl,--allow-multiple-definition'
build consensus_raft consensus consensus_raft
build consensus_overlord consensus consensus_overlord
echo ALL DONE
