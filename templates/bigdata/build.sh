#!/usr/bin/env bash
# The big-data templates, built offline from what the package registries hold: one root filesystem
# (Debian bookworm + openjdk-17-jre-headless + python3 + vsftpd + procps, by mmdebstrap from the
# host's Debian mirror; Apache Spark 4 from the `pyspark` source distribution on PyPI, which bundles
# Spark's jars, `spark-class` and Hadoop's client 3.5) and three descriptors that run it in a role:
#   bigdata-master   Spark standalone Master (port 7077; web UI 8080)
#   bigdata-compute  Spark standalone Worker, registers with the master named by $SPARK_MASTER
#   bigdata-storage  vsftpd, anonymous read-only FTP of /srv/betaas/data on port 2121 (Spark reads
#                    it through Hadoop's FTPFileSystem: ftp://anonymous:x@HOST:2121/...)
# The role's init is templates/bigdata/init (copied to /usr/libexec/betaas/bigdata).
# Containers only (libvirt lxc, sharing the gateway's network): kinds = ["lxc"].
# Output: out/templates/bigdata-{master,compute,storage}-<arch>/{rootfs.tar,disk.qcow2,template.toml,
# manifest.txt}; the three rootfs.tar are hard links of one file (~0.9 GB, uncompressed: vmd unpacks
# it once per container, and gzip would triple that time).
# Usage: templates/bigdata/build.sh [x86_64]     Env: MIRROR, SUITE (bookworm), PYSPARK_VERSION,
#        FORCE=1 (rebuild although the inputs did not change).
set -euo pipefail
ARCH=${1:-x86_64}
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
. image/mirror.sh
SUITE=${SUITE:-bookworm}
PYSPARK_VERSION=${PYSPARK_VERSION:-4.3.0}
PY4J_VERSION=${PY4J_VERSION:-0.10.9.9}
case "$ARCH" in
  x86_64) DEB_ARCH=amd64 ;;
  armhf) echo "bigdata: armhf is not built (needs qemu-user-static for the packages' scripts); see templates/README.md" >&2; exit 2 ;;
  *) echo "bigdata: unknown arch '$ARCH'" >&2; exit 2 ;;
esac
step() { echo "==> [bigdata-$ARCH] $*"; }
ROLES="master compute storage"
W=out/templates/.bigdata-$ARCH
DL=dl/pypi
mkdir -p "$W" "$DL"

inputs=$( (cat templates/bigdata/build.sh templates/bigdata/init templates/bigdata/*.toml templates/lib/descriptor.sh; echo "$SUITE $PYSPARK_VERSION $PY4J_VERSION $MIRROR") | sha256sum | cut -c1-64)
done_all=1
for r in $ROLES; do [ "$(cat "out/templates/bigdata-$r-$ARCH/inputs.sha256" 2>/dev/null)" = "$inputs" ] || done_all=0; done
if [ $done_all = 1 ] && [ -z "${FORCE:-}" ]; then step "up to date (inputs.sha256)"; exit 0; fi

# PyPI's simple index (PEP 503) names the file and its sha256: the sdist (pyspark publishes no wheel).
fetch_pypi() { # NAME VERSION FILE (the version is part of FILE; named for the reader)
  local name=$1 file=$3 url sum
  if [ ! -f "$DL/$file.sha256" ] || [ ! -f "$DL/$file" ]; then
    step "PyPI: $file"
    url=$(curl -fsS "https://pypi.org/simple/$name/" | grep -o "href=\"[^\"]*/$file#sha256=[0-9a-f]*\"" | head -1 | sed 's/^href="//; s/"$//')
    [ -n "$url" ] || { echo "bigdata: $file not on PyPI's index" >&2; exit 1; }
    sum=${url##*#sha256=}
    curl -fsS -o "$DL/$file.part" "${url%%#*}"
    echo "$sum  $file" > "$DL/$file.sha256"
    mv "$DL/$file.part" "$DL/$file"
  fi
  (cd "$DL" && sha256sum -c --quiet "$file.sha256")
}
fetch_pypi pyspark "$PYSPARK_VERSION" "pyspark-$PYSPARK_VERSION.tar.gz"
fetch_pypi py4j "$PY4J_VERSION" "py4j-$PY4J_VERSION-py2.py3-none-any.whl"

R=$W/rootfs
rm -rf "$R"
step "Debian $SUITE rootfs (mmdebstrap): openjdk-17-jre-headless python3 vsftpd procps"
# The packages are kept in dl/ (a second build downloads nothing); man1 stays as a directory:
# update-alternatives makes the JRE's man page links there even when man pages are excluded.
C=$top/dl/mmdebstrap-$SUITE-$DEB_ARCH
mkdir -p "$C"
# shellcheck disable=SC2016  # the customize hook's $1 is mmdebstrap's: run by it, not expanded here
mmdebstrap --quiet --variant=essential --arch="$DEB_ARCH" --components=main \
  --include=openjdk-17-jre-headless,python3,vsftpd,procps \
  --skip=download/empty --skip=essential/unlink \
  --setup-hook="mkdir -p \"\$1/var/cache/apt/archives\" \"\$1/usr/share/man/man1\"; cp $C/*.deb \"\$1/var/cache/apt/archives/\" 2>/dev/null || true" \
  --customize-hook="cp \"\$1\"/var/cache/apt/archives/*.deb $C/" \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  --customize-hook='chroot "$1" dpkg-query -W -f "\${Package} \${Version}\n" > "$1/.packages"' \
  "$SUITE" "$R" "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR $SUITE main" >&2

step "Spark $PYSPARK_VERSION from the pyspark sdist → /opt/spark"
S=$R/opt/spark
mkdir -p "$S/python/lib"
tar -xzf "$DL/pyspark-$PYSPARK_VERSION.tar.gz" -C "$W" "pyspark-$PYSPARK_VERSION/deps/jars" "pyspark-$PYSPARK_VERSION/deps/bin" \
  "pyspark-$PYSPARK_VERSION/deps/sbin" "pyspark-$PYSPARK_VERSION/pyspark"
mv "$W/pyspark-$PYSPARK_VERSION/deps/jars" "$W/pyspark-$PYSPARK_VERSION/deps/bin" "$W/pyspark-$PYSPARK_VERSION/deps/sbin" "$S/"
mv "$W/pyspark-$PYSPARK_VERSION/pyspark" "$S/python/"
rm -rf "$W/pyspark-$PYSPARK_VERSION" "$S"/bin/*.cmd
cp "$DL/py4j-$PY4J_VERSION-py2.py3-none-any.whl" "$S/python/lib/py4j-$PY4J_VERSION-src.zip"
echo "$PYSPARK_VERSION" > "$S/RELEASE"
# Every container of a gateway has the gateway's address: Spark would take another executor's
# shuffle files as host-local and read them from its own disk, where they are not.
mkdir -p "$S/conf"
cat > "$S/conf/spark-defaults.conf" <<'CONF'
spark.shuffle.readHostLocalDisk false
spark.hadoop.fs.ftp.data.connection.mode PASSIVE_LOCAL_DATA_CONNECTION_MODE
CONF

step "role init, FTP config, data directory"
install -D -m 0755 templates/bigdata/init "$R/usr/libexec/betaas/bigdata"
for r in master worker storage; do ln -s bigdata "$R/usr/libexec/betaas/bigdata-$r"; done
mkdir -p "$R/srv/betaas/data" "$R/var/run/vsftpd/empty" "$R/var/log/betaas"
cat > "$R/etc/betaas-vsftpd.conf" <<'CONF'
# bigdata-storage: anonymous, read-only FTP of /srv/betaas/data (Hadoop's FTPFileSystem reads it).
listen=YES
listen_ipv6=NO
listen_port=2121
background=NO
anonymous_enable=YES
no_anon_password=YES
anon_root=/srv/betaas/data
local_enable=NO
write_enable=NO
pasv_enable=YES
pasv_min_port=21100
pasv_max_port=21199
port_enable=YES
connect_from_port_20=NO
seccomp_sandbox=NO
secure_chroot_dir=/var/run/vsftpd/empty
xferlog_enable=NO
CONF
# shellcheck disable=SC2012  # one JVM directory, named by Debian (no spaces)
jh=$(cd "$R" && ls -d usr/lib/jvm/java-17-openjdk-* | head -1)
echo "JAVA_HOME=/$jh" > "$R/etc/betaas-bigdata.env"
grep -q . "$R/.packages"
mv "$R/.packages" "$W/packages"

step "rootfs.tar"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$R" -cf "$W/rootfs.tar" .
sum=$(sha256sum "$W/rootfs.tar" | cut -c1-64)
qemu-img create -q -f qcow2 "$W/disk.qcow2" 1G
. templates/lib/descriptor.sh
for r in $ROLES; do
  O=out/templates/bigdata-$r-$ARCH
  rm -rf "$O" && mkdir -p "$O"
  ln "$W/rootfs.tar" "$O/rootfs.tar"
  cp "$W/disk.qcow2" "$O/disk.qcow2"
  tpl_descriptor "templates/bigdata/$r.toml" "$O" "$ARCH"
  {
    echo "template bigdata-$r ($ARCH), built $(date -u +%Y-%m-%dT%H:%M:%SZ) from Debian $SUITE ($MIRROR) and PyPI"
    echo "rootfs.tar $sum"
    echo "pyspark $PYSPARK_VERSION $(cut -d' ' -f1 "$DL/pyspark-$PYSPARK_VERSION.tar.gz.sha256")"
    echo "py4j $PY4J_VERSION $(cut -d' ' -f1 "$DL/py4j-$PY4J_VERSION-py2.py3-none-any.whl.sha256")"
    sed 's/^/deb /' "$W/packages"
  } > "$O/manifest.txt"
  echo "$inputs" > "$O/inputs.sha256"
  step "out: $O ($(du -sh --apparent-size "$O/rootfs.tar" | cut -f1) rootfs)"
done
rm -rf "$R" "$W/rootfs.tar" "$W/disk.qcow2"
