#!/usr/bin/env bash
# Installs and removes what `make dist` and `make deb` built, for real: the Debian package with dpkg, the tarball
# with its install.sh into a prefix of its own; each time the installed syncctl pushes a project to a local:
# remote and pulls a file back, man finds the pages, bash loads the completion, and systemd-analyze accepts the unit.
# With RELEASE_DIR, package.sh is first run again where ldconfig lists more than a pipe holds (as on a machine with
# many libraries), which it must read to the end.
#   scripts/test-packages.sh DIST_DIR [RELEASE_DIR]
set -euo pipefail
dist=${1:?directory with the .deb and the tarball}
release=${2:-}
deb=$(ls -t "$dist"/syncd_*.deb | sed -n 1p)
tarball=$(ls -t "$dist"/syncd-*-linux-*.tar.gz | sed -n 1p)
work=$(mktemp -d)
# A syncd package this machine already has is not ours to replace and remove.
own_deb=yes
if dpkg -s syncd >/dev/null 2>&1; then own_deb=no; fi
trap 'rm -rf "$work"; if [ $own_deb = yes ]; then dpkg -r syncd >/dev/null 2>&1 || true; fi' EXIT
fail() { echo "test-packages: $*" >&2; exit 1; }

# A push and a pull through the binaries in BIN, with a fresh project and remote.
round_trip() {
  local bin=$1 case=$work/$2
  mkdir -p "$case/project/src" "$case/remote" "$case/state"
  echo 'print("hello")' > "$case/project/src/train.py"
  XDG_STATE_HOME=$case/state "$bin/syncctl" init "$case/project" --remote "local:$case/remote" >/dev/null 2>&1
  XDG_STATE_HOME=$case/state "$bin/syncctl" push "$case/project" >/dev/null
  cmp -s "$case/project/src/train.py" "$case/remote/project/src/train.py" || fail "$bin/syncctl push did not place the file"
  mkdir -p "$case/remote/project/output"
  echo 0.93 > "$case/remote/project/output/score.txt"
  touch -d '1 minute ago' "$case/remote/project/output/score.txt"
  XDG_STATE_HOME=$case/state "$bin/syncctl" pull "$case/project" >/dev/null
  cmp -s "$case/remote/project/output/score.txt" "$case/project/output/score.txt" || fail "$bin/syncctl pull did not bring the file back"
}

if [ -n "$release" ]; then
  mkdir -p "$work/long-ldconfig/bin"
  # libcurl first, then 256 KiB of other libraries: a reader that stops at libcurl cuts this writer off.
  printf '#!/bin/sh\n"%s" "$@" | grep "libcurl.so.4 "\nawk %s\n' "$(command -v ldconfig)" \
    "'BEGIN { for (i = 0; i < 4096; i++) printf \"\\tlibfiller%d.so.0 (libc6,x86-64) => /usr/lib/filler/libfiller%d.so.0\\n\", i, i }'" \
    > "$work/long-ldconfig/bin/ldconfig"
  chmod +x "$work/long-ldconfig/bin/ldconfig"
  PATH=$work/long-ldconfig/bin:$PATH "$(dirname "$0")/package.sh" deb "$release" "$work/long-ldconfig/dist" >/dev/null ||
    fail "package.sh deb failed where ldconfig's listing is longer than a pipe holds"
  echo "deb: made where ldconfig's listing is longer than a pipe holds"
fi

if [ $own_deb = no ]; then
  echo "note: a syncd package is installed on this machine; the .deb is not tested here (dpkg -r syncd first)"
else
echo "== deb: $deb"
dpkg -i "$deb" >/dev/null || fail "dpkg -i failed"
[ "$(command -v syncctl)" = /usr/bin/syncctl ] || fail "syncctl is not /usr/bin/syncctl after dpkg -i"
/usr/bin/syncctl --version | grep '^syncctl ' >/dev/null || fail "syncctl --version"
/usr/bin/syncd --version | grep '^syncd ' >/dev/null || fail "syncd --version"
[ -f /usr/lib/systemd/user/syncd.service ] || fail "no user unit in /usr/lib/systemd/user"
grep -q '^ExecStart="/usr/bin/syncd"$' /usr/lib/systemd/user/syncd.service || fail "the unit does not start /usr/bin/syncd"
if command -v systemd-analyze >/dev/null; then
  mkdir -p "$work/run" && chmod 700 "$work/run"
  out=$(HOME=$work XDG_RUNTIME_DIR=$work/run systemd-analyze --user verify /usr/lib/systemd/user/syncd.service 2>&1) ||
    fail "systemd-analyze verify: $out"
fi
if grep -rqs '^path-exclude=/usr/share/man' /etc/dpkg/dpkg.cfg.d/; then
  # A slim image's dpkg leaves man pages out; the tarball's are checked below.
  echo "note: dpkg here excludes /usr/share/man; the package's man pages are checked from the tarball only"
else
  man -w syncctl >/dev/null 2>&1 || fail "man does not find syncctl(1)"
  man -w syncd >/dev/null 2>&1 || fail "man does not find syncd(1)"
  man -w syncctl.push >/dev/null 2>&1 || fail "man does not find syncctl.push(1)"
fi
bash -c 'source /usr/share/bash-completion/completions/syncctl && complete -p syncctl' >/dev/null ||
  fail "the bash completion does not load"
round_trip /usr/bin deb
dpkg -r syncd >/dev/null || fail "dpkg -r failed"
[ ! -e /usr/bin/syncctl ] && [ ! -e /usr/lib/systemd/user/syncd.service ] || fail "dpkg -r left files behind"
echo "deb: installed, used and removed"
fi

echo "== tarball: $tarball"
tar -C "$work" -xzf "$tarball"
unpacked=$(ls -d "$work"/syncd-*-linux-*/)
prefix=$work/prefix
"$unpacked/install.sh" "$prefix" >/dev/null
"$prefix/bin/syncctl" --version | grep '^syncctl ' >/dev/null || fail "the tarball's syncctl --version"
[ -f "$prefix/share/man/man1/syncctl.1" ] && [ -f "$prefix/share/man/man1/syncd.1" ] || fail "the tarball installed no man pages"
grep -q "^ExecStart=\"$prefix/bin/syncd\"$" "$prefix/lib/systemd/user/syncd.service" || fail "the tarball's unit does not start $prefix/bin/syncd"
MANPATH=$prefix/share/man man -w syncctl.ls >/dev/null 2>&1 || fail "man does not find syncctl.ls(1) in the prefix"
round_trip "$prefix/bin" tarball
"$unpacked/install.sh" --uninstall "$prefix" >/dev/null
left=$(find "$prefix" -type f)
[ -z "$left" ] || fail "install.sh --uninstall left $left"
echo "tarball: installed, used and removed"
