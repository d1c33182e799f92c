#!/usr/bin/env bash
# Builds the Debian package target/debian/electd_<version>-1_<arch>.deb with cargo-deb: both
# binaries, man pages and shell completions generated from the clap definitions
# (examples/gen-assets.rs), electd@.service, the sysusers.d file and the examples. What goes where
# is [package.metadata.deb] in Cargo.toml; the maintainer scripts are in deploy/debian/.
#
#   scripts/package.sh [--lint] [--binaries DIR] [--out DIR]
#
#   --lint          run lintian on the package; fail on its errors and warnings (overrides,
#                   each with its reason: deploy/debian/lintian-overrides)
#   --binaries DIR  package the electd and elect-run found in DIR instead of a release build
#                   (tests/package.rs passes the debug build it tests)
#   --out DIR       write the .deb into DIR (default target/debian)
#
# Prints the path of the .deb on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

lint=0
binaries=""
out=target/debian
while [ $# -gt 0 ]; do
  case "$1" in
    --lint) lint=1 ;;
    --binaries) binaries=$(realpath "${2:?--binaries needs a directory}"); shift ;;
    --out) out=${2:?--out needs a directory}; shift ;;
    *) echo "usage: scripts/package.sh [--lint] [--binaries DIR] [--out DIR]" >&2; exit 64 ;;
  esac
  shift
done

stage=""
repack=""
trap 'rm -rf ${stage:+"$stage"} ${repack:+"$repack"}' EXIT

# Installs what is missing: protoc to build, dpkg-deb, lintian and cargo-deb.
scripts/setup.sh package

# Man pages and completions from the same clap definitions the binaries parse with.
assets=target/assets
rm -rf "$assets"
if [ -n "$binaries" ]; then
  cargo run --quiet --locked --example gen-assets -- "$assets"
  bin_dir=$binaries
else
  cargo build --release --locked --bins
  cargo run --quiet --release --locked --example gen-assets -- "$assets"
  bin_dir=$(cargo metadata --format-version 1 --no-deps --locked |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/release
fi
for bin in electd elect-run; do
  [ -x "$bin_dir/$bin" ] || { echo "package: no $bin in $bin_dir" >&2; exit 1; }
done

# The Debian changelog names the version and commit the binaries report themselves.
read -r _ version _ commit < <("$bin_dir/electd" --version)
commit=${commit%)}
maintainer=$(sed -n 's/^maintainer = "\(.*\)"$/\1/p' Cargo.toml)
when=$(git log -1 --format=%aD 2>/dev/null || date -R)
cat >"$assets/changelog" <<EOF
electd ($version-1) unstable; urgency=medium

  * Built from commit $commit.

 -- $maintainer  $when
EOF

# cargo-deb takes the binaries from <target dir>/release; with --binaries that is a staging
# directory holding the given ones, so nothing is rebuilt and no release build is touched.
mkdir -p "$out"
deb_args=(--no-build --locked --strip --output "$out")
if [ -n "$binaries" ]; then
  stage=$(mktemp -d)
  mkdir "$stage/release"
  cp "$binaries/electd" "$binaries/elect-run" "$stage/release/"
  deb=$(CARGO_TARGET_DIR=$stage cargo deb "${deb_args[@]}" --fast | tail -n 1)
  compress=(-Zgzip -z1)
else
  deb=$(cargo deb "${deb_args[@]}" | tail -n 1)
  compress=(-Zxz)
fi
[ -f "$deb" ] || { echo "package: cargo deb did not report a package ($deb)" >&2; exit 1; }

# cargo-deb writes no md5sums control file; dpkg --verify and debsums use it. Repack with one.
repack=$(mktemp -d)
dpkg-deb -R "$deb" "$repack/pkg"
(cd "$repack/pkg" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z |
  xargs -0 md5sum) >"$repack/pkg/DEBIAN/md5sums"
chmod 0644 "$repack/pkg/DEBIAN/md5sums"
dpkg-deb --root-owner-group "${compress[@]}" --build "$repack/pkg" "$deb" >/dev/null

if [ "$lint" -eq 1 ]; then
  # Infos are shown, only errors and warnings fail. Overrides and their reasons:
  # deploy/debian/lintian-overrides (installed as usr/share/lintian/overrides/electd); not
  # shown, since lintian 2.116 counts shown overrides as failures.
  lintian --info --display-info --fail-on error,warning "$deb" >&2
fi
echo "$deb"
