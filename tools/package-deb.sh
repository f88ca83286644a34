#!/usr/bin/env bash
# Build the Debian package hybridfs_VERSION-1_ARCH.deb into $CARGO_TARGET_DIR/debian/:
# hybridctl and hybrid-agent (without debug info), the mount.fuse.hybridfs helper link, the
# systemd units, /etc/hybridfs/hybridfs.toml (a conffile), completions, man pages, the docs.
#
#   tools/package-deb.sh [--no-build] [--dpkg-deb]
#
# With cargo-deb installed (`cargo install cargo-deb`) it runs `cargo deb` with the metadata in
# tools/hybridctl/Cargo.toml; without it (or with --dpkg-deb) it packs the same tree, staged by
# tools/install.sh --destdir, with dpkg-deb. Nothing here is needed by tests/run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=1
TOOL=auto
for a in "$@"; do
  case "$a" in
    --no-build) BUILD=0 ;;
    --dpkg-deb) TOOL=dpkg-deb ;;
    *) echo "package-deb.sh: unknown argument $a (see the header of $0)" >&2; exit 2 ;;
  esac
done
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/hybridfs-target}
if [ "$BUILD" = 1 ]; then cargo build --release -p hybridctl -p hybrid-agent; fi
STAGE=$CARGO_TARGET_DIR/release/deb-stage
OUT=$CARGO_TARGET_DIR/debian
rm -rf "$STAGE"
mkdir -p "$OUT"
tools/install.sh --destdir "$STAGE" --prefix /usr --no-build >/dev/null
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
ARCH=$(dpkg --print-architecture)
DEB=$OUT/hybridfs_${VERSION}-1_${ARCH}.deb
rm -f "$DEB"

if [ "$TOOL" = auto ] && cargo deb --version >/dev/null 2>&1; then
  cargo deb -p hybridctl --no-build --strip --output "$DEB"
else
  # The tree install.sh staged, plus what cargo-deb would add: stripped binaries, the docs,
  # control files and maintainer scripts.
  for bin in hybridctl hybrid-agent; do strip --strip-debug "$STAGE/usr/bin/$bin"; done
  install -d "$STAGE/usr/share/doc/hybridfs" "$STAGE/DEBIAN"
  install -m 0644 README.md doc/*.md "$STAGE/usr/share/doc/hybridfs/"
  install -m 0755 dist/debian/postinst dist/debian/prerm dist/debian/postrm "$STAGE/DEBIAN/"
  echo /etc/hybridfs/hybridfs.toml > "$STAGE/DEBIAN/conffiles"
  # Shared-library dependencies as dpkg-shlibdeps finds them (it wants a debian/control).
  shlib=$(mktemp -d); trap 'rm -rf "$shlib"' EXIT
  mkdir "$shlib/debian"
  printf 'Source: hybridfs\n\nPackage: hybridfs\nArchitecture: any\n' > "$shlib/debian/control"
  deps=$(cd "$shlib" && dpkg-shlibdeps -O "$STAGE/usr/bin/hybridctl" "$STAGE/usr/bin/hybrid-agent" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
  size=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
  desc=$(sed -n '/^extended-description = """\\$/,/"""$/p' tools/hybridctl/Cargo.toml | sed '1d; s/"""$//; s/\\$//; s/ *$//; s/^/ /')
  cat > "$STAGE/DEBIAN/control" <<CONTROL
Package: hybridfs
Version: ${VERSION}-1
Architecture: ${ARCH}
Maintainer: hybridfs maintainers <hybridfs@localhost>
Section: admin
Priority: optional
Installed-Size: ${size}
Depends: ${deps:+$deps, }fuse3
Description: copy-on-write FUSE volumes that tier to an object store
${desc}
CONTROL
  dpkg-deb --root-owner-group -Zxz --build "$STAGE" "$DEB" >/dev/null
fi
echo "$DEB"
