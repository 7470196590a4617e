#!/usr/bin/env bash
# Release packages from built binaries.
#   scripts/package.sh dist RELEASE_DIR OUT_DIR   a tarball: bin/, share/ (man pages, completions), the user unit,
#                                                 README and install.sh
#   scripts/package.sh deb  RELEASE_DIR OUT_DIR   a Debian package: /usr/bin, /usr/share, /usr/lib/systemd/user
# RELEASE_DIR holds syncctl, syncd, syncd-agent and generate-manual (swift-argument-parser's man page generator).
set -euo pipefail
kind=${1:?dist or deb}; release=${2:?release directory}; out=${3:?output directory}
here=$(cd "$(dirname "$0")/.." && pwd)
for b in syncctl syncd syncd-agent generate-manual; do
  [ -x "$release/$b" ] || { echo "package.sh: $release/$b is missing; make build first" >&2; exit 2; }
done
# The packages carry no Swift runtime: each binary must have it linked in (make build does).
for b in syncctl syncd syncd-agent; do
  # (grep without -q, and awk without exit, read to the end: under pipefail a writer cut off early fails the script)
  if ldd "$release/$b" 2>/dev/null | grep 'libswiftCore' >/dev/null; then
    echo "package.sh: $release/$b loads the Swift runtime as a shared library; build it with --static-swift-stdlib (make build)" >&2
    exit 2
  fi
done
version=$("$release/syncctl" --version | awk '{print $2}')
machine=$(uname -m)
mkdir -p "$out"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

# Lays out one prefix (usr/ or the tarball's root): binaries, man pages, completions.
lay_out() {
  local root=$1 unit_exec=$2
  install -d "$root/bin" "$root/share/man/man1" "$root/share/bash-completion/completions" \
    "$root/share/zsh/vendor-completions" "$root/share/fish/vendor_completions.d" "$root/lib/systemd/user"
  install -m 755 "$release/syncctl" "$release/syncd" "$release/syncd-agent" "$root/bin/"
  strip --strip-unneeded "$root/bin/syncctl" "$root/bin/syncd" "$root/bin/syncd-agent"
  "$release/generate-manual" "$release/syncctl" --multi-page --authors "the syncd authors" \
    --output-directory "$root/share/man/man1"
  install -m 644 "$here/docs/man/syncd.1" "$root/share/man/man1/"
  "$release/syncctl" --generate-completion-script bash > "$root/share/bash-completion/completions/syncctl"
  "$release/syncctl" --generate-completion-script zsh > "$root/share/zsh/vendor-completions/_syncctl"
  "$release/syncctl" --generate-completion-script fish > "$root/share/fish/vendor_completions.d/syncctl.fish"
  "$release/syncctl" daemon unit --exec "$unit_exec" > "$root/lib/systemd/user/syncd.service"
}

case $kind in
dist)
  name=syncd-$version-linux-$machine
  root=$stage/$name
  lay_out "$root" /usr/local/bin/syncd
  cat > "$root/README" <<EOF
syncd $version for Linux ($machine)

syncd keeps an ML project on a laptop in step with remote GPU hosts: syncctl pushes what changed (chunked, over
SSH), pulls output/ and checkpoint/ back, and the syncd daemon does both as you work. This side runs on Linux
(x86-64, arm64), or on Windows through WSL2; not yet on macOS. The remote side is any Linux host you can ssh to:
syncctl uploads bin/syncd-agent there itself.

Install (PREFIX defaults to ~/.local; /usr/local needs root):
  ./install.sh [PREFIX]
  syncctl daemon install       # optional: the daemon as a systemd user service, with your ssh-agent
Remove:
  ./install.sh --uninstall [PREFIX]

Then, in a project:  syncctl init --remote gpu-host && syncctl push
Manual: man syncctl, man syncd. Runtime libraries: libssh2, libxxhash, zlib, sqlite3, libcurl, OpenSSL.
EOF
  cat > "$root/install.sh" <<'EOF'
#!/bin/sh
# Copies syncd into PREFIX (default ~/.local), or removes it with --uninstall.
set -eu
uninstall=no
if [ "${1:-}" = "--uninstall" ]; then uninstall=yes; shift; fi
prefix=${1:-$HOME/.local}
here=$(cd "$(dirname "$0")" && pwd)
files="bin/syncctl bin/syncd bin/syncd-agent share/bash-completion/completions/syncctl share/zsh/vendor-completions/_syncctl
share/fish/vendor_completions.d/syncctl.fish $(cd "$here" && ls share/man/man1/* | tr '\n' ' ')"
for f in $files; do
  if [ $uninstall = yes ]; then rm -f "$prefix/$f"; else
    mkdir -p "$prefix/$(dirname "$f")"
    cp -f "$here/$f" "$prefix/$f"
  fi
done
if [ $uninstall = yes ]; then
  rm -f "$prefix/lib/systemd/user/syncd.service"
  echo "removed syncd from $prefix (run \`syncctl daemon uninstall\` first if the service was installed)"
else
  # The user unit, starting the syncd just installed (`syncctl daemon install` writes its own as well).
  mkdir -p "$prefix/lib/systemd/user"
  "$prefix/bin/syncctl" daemon unit --exec "$prefix/bin/syncd" > "$prefix/lib/systemd/user/syncd.service"
  echo "installed syncd in $prefix; put $prefix/bin on PATH, then optionally: syncctl daemon install"
fi
EOF
  chmod 755 "$root/install.sh"
  tar -C "$stage" -czf "$out/$name.tar.gz" "$name"
  echo "$out/$name.tar.gz"
  ;;
deb)
  arch=$(dpkg --print-architecture)
  root=$stage/deb
  lay_out "$root/usr" /usr/bin/syncd
  # Debian keeps the user unit in /usr/lib/systemd/user, and man pages compressed.
  gzip -9n "$root"/usr/share/man/man1/*.1
  install -d "$root/usr/share/doc/syncd" "$root/DEBIAN"
  printf 'syncd %s: see `man syncctl` and `man syncd`.\n' "$version" > "$root/usr/share/doc/syncd/README"
  # Depends: the package of every shared library the binaries load.
  depends=$(for b in syncctl syncd syncd-agent; do ldd "$release/$b" | awk '/=> \//{print $3}'; done | sort -u |
    while read -r lib; do
      dpkg -S "$lib" 2>/dev/null || dpkg -S "$(readlink -f "$lib")" 2>/dev/null ||
        dpkg -S "/usr$lib" 2>/dev/null || dpkg -S "${lib#/usr}" 2>/dev/null || true
    done | cut -d: -f1 | sort -u | paste -sd, | sed 's/,/, /g')
  # libcurl is loaded when a store is used (dlopen), so ldd does not show it.
  curl=$(ldconfig -p | awk '/libcurl.so.4 / && !found {print $NF; found = 1}')
  if [ -n "$curl" ] && curl_package=$(dpkg -S "$(readlink -f "$curl")" 2>/dev/null || dpkg -S "$curl" 2>/dev/null); then
    depends="$depends, ${curl_package%%:*}"
  fi
  # The C library the binaries need at least: the newest GLIBC_ symbol version they use.
  glibc=$(for b in syncctl syncd syncd-agent; do objdump -T "$release/$b"; done | grep -o 'GLIBC_[0-9][0-9.]*' |
    sed 's/GLIBC_//' | sort -V | tail -1)
  [ -n "$glibc" ] && depends=$(echo "$depends" | sed "s/\blibc6\b/libc6 (>= $glibc)/")
  size=$(du -sk "$root/usr" | cut -f1)
  cat > "$root/DEBIAN/control" <<EOF
Package: syncd
Version: $version
Architecture: $arch
Maintainer: syncd authors <syncd@localhost>
Installed-Size: $size
Depends: $depends
Section: net
Priority: optional
Description: keep ML projects in step with remote GPU hosts
 syncctl pushes what changed in a project (FastCDC chunks over SSH) to remote GPU
 hosts and pulls outputs and checkpoints back; the syncd daemon (a systemd user
 service: syncctl daemon install) does both as you work.
EOF
  deb=$out/syncd_${version}_$arch.deb
  dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
  echo "$deb"
  ;;
*) echo "package.sh: dist or deb, not $kind" >&2; exit 2 ;;
esac
