#!/usr/bin/env bash
# Fetches Debian's build of another etcd for the integration tests, without touching the
# system's apt set-up:
#
#   scripts/etcd.sh 3.5        # the newest 3.5.x of the suites below (sid's, today 3.5.30)
#   scripts/etcd.sh 3.5.16     # exactly that upstream version (trixie's)
#   scripts/etcd.sh 3.4        # bookworm's 3.4.23, the one scripts/setup.sh installs
#
# It reads the suites' package lists into a private apt state under target/etcd/apt (its own
# sources list, state and cache directories, passed with -o: nothing under /etc/apt or
# /var/lib/apt changes, and no root is needed), downloads etcd-server and etcd-client with
# `apt-get download`, unpacks them with dpkg-deb into target/etcd/<version>/ and prints that
# directory as its last line. Point the suite at it with ELECTD_TEST_ETCD:
#
#   ELECTD_TEST_ETCD=$(scripts/etcd.sh 3.5 | tail -n1) cargo nextest run
#
# A version already unpacked is not fetched again (a request like `3.5` still reads the lists,
# at most every 6 hours, to learn which 3.5.x is the newest). ELECTD_DEBIAN_MIRROR overrides
# the mirror (default http://deb.debian.org/debian).
set -euo pipefail
cd "$(dirname "$0")/.."

# The Debian suites searched, oldest first. etcd 3.6 (upstream's stable line) has no Debian
# package yet; once a suite carries it (experimental first, then sid), add that suite here and
# `scripts/etcd.sh 3.6` fetches it.
SUITES=(bookworm trixie sid)

want=${1:-}
if ! [[ $want =~ ^[0-9]+\.[0-9]+(\.[0-9]+)?$ ]]; then
  echo "usage: scripts/etcd.sh VERSION   (3.5 for the newest 3.5.x, or 3.5.16 exactly; suites searched: ${SUITES[*]})" >&2
  exit 64
fi
for tool in apt-get apt-cache dpkg-deb dpkg; do
  command -v "$tool" >/dev/null || {
    echo "scripts/etcd.sh: $tool is missing; this script needs Debian's apt and dpkg" >&2
    exit 69
  }
done
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$keyring" ] || {
  echo "scripts/etcd.sh: $keyring is missing: sudo apt-get install -y debian-archive-keyring" >&2
  exit 69
}

mirror=${ELECTD_DEBIAN_MIRROR:-http://deb.debian.org/debian}
base=$PWD/target/etcd
apt_dir=$base/apt
mkdir -p "$apt_dir"/{sources.list.d,preferences.d,lists/partial,archives/partial}
: >"$apt_dir/status"
for suite in "${SUITES[@]}"; do
  echo "deb [signed-by=$keyring] $mirror $suite main"
done >"$apt_dir/sources.list.new"
arch=$(dpkg --print-architecture)
apt_opts=(
  -o "Dir::Etc::SourceList=$apt_dir/sources.list"
  -o "Dir::Etc::SourceParts=$apt_dir/sources.list.d"
  -o "Dir::Etc::Preferences=$apt_dir/preferences"
  -o "Dir::Etc::PreferencesParts=$apt_dir/preferences.d"
  -o "Dir::State=$apt_dir"
  -o "Dir::State::Lists=$apt_dir/lists"
  -o "Dir::State::status=$apt_dir/status"
  -o "Dir::Cache=$apt_dir"
  -o "Dir::Cache::Archives=$apt_dir/archives"
  -o "APT::Architecture=$arch"
  -o "APT::Architectures=$arch"
  -o "APT::Sandbox::User=$(id -un)"
  -o Debug::NoLocking=1
  -o Acquire::Languages=none
  -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false
)

# Upstream version of a Debian version: no epoch, no Debian revision, no +dfsg-like suffix.
upstream() {
  local v=${1#*:}
  v=${v%-*}
  echo "${v%%[+~]*}"
}

unpacked() {
  [ -x "$1/etcd" ] && [ -x "$1/etcdctl" ] || return 1
  local said
  said=$("$1/etcd" --version 2>/dev/null) || return 1
  [ "${said%%$'\n'*}" = "etcd Version: $2" ]
}

# An exact version already unpacked needs no network.
if [[ $want =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] && unpacked "$base/$want" "$want"; then
  echo "scripts/etcd.sh: etcd $want already in $base/$want" >&2
  echo "$base/$want"
  exit 0
fi

stale=1
if cmp -s "$apt_dir/sources.list.new" "$apt_dir/sources.list" && [ -f "$apt_dir/updated" ] &&
  [ -z "$(find "$apt_dir/updated" -mmin +360)" ]; then
  stale=0
fi
mv "$apt_dir/sources.list.new" "$apt_dir/sources.list"
if [ $stale = 1 ]; then
  echo "scripts/etcd.sh: reading the package lists of ${SUITES[*]} from $mirror" >&2
  if apt-get "${apt_opts[@]}" -q update >&2; then
    touch "$apt_dir/updated"
  else
    echo "scripts/etcd.sh: apt-get update failed (see above); using the lists read before, if any" >&2
  fi
fi

# "VERSION | SUITE" of every etcd-server the suites carry.
versions=$(apt-cache "${apt_opts[@]}" madison etcd-server 2>/dev/null |
  awk -F'|' '{gsub(/ /, "", $2); split($3, s, " "); sub(/\/.*/, "", s[2]); print $2, s[2]}')
best=""
best_suite=""
while read -r deb suite; do
  [ -n "$deb" ] || continue
  up=$(upstream "$deb")
  case $up in
    "$want" | "$want".*) ;;
    *) continue ;;
  esac
  if [ -z "$best" ] || dpkg --compare-versions "$deb" gt "$best"; then
    best=$deb
    best_suite=$suite
  fi
done <<<"$versions"
if [ -z "$best" ]; then
  echo "scripts/etcd.sh: no etcd-server $want in ${SUITES[*]}; they carry:" >&2
  echo "${versions:-  (nothing: did apt-get update fail?)}" | sed 's/^/  /' >&2
  echo "(etcd 3.6 has no Debian package yet: add the suite that ships it to SUITES in $0)" >&2
  exit 1
fi
version=$(upstream "$best")
dir=$base/$version
if unpacked "$dir" "$version"; then
  echo "scripts/etcd.sh: etcd $version ($best, $best_suite) already in $dir" >&2
  echo "$dir"
  exit 0
fi

echo "scripts/etcd.sh: fetching etcd-server and etcd-client $best from $best_suite" >&2
work=$(mktemp -d "$base/fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get "${apt_opts[@]}" -q download "etcd-server=$best" "etcd-client=$best" >&2)
mkdir -p "$work/root"
for deb in "$work"/*.deb; do
  dpkg-deb -x "$deb" "$work/root"
done
rm -rf "$dir"
mkdir -p "$dir"
for bin in etcd etcdctl etcdutl; do
  if [ -x "$work/root/usr/bin/$bin" ]; then
    cp "$work/root/usr/bin/$bin" "$dir/$bin"
  fi
done
if ! unpacked "$dir" "$version"; then
  echo "scripts/etcd.sh: the packages of $best did not give a working etcd $version and etcdctl in $dir:" >&2
  ls -l "$dir" >&2
  "$dir/etcd" --version >&2 || true
  exit 1
fi
echo "scripts/etcd.sh: etcd $version ($best, Debian $best_suite) in $dir" >&2
echo "$dir"
