# Sourced by templates/bigdata-{storage,compute}/build.sh: Hadoop from Cloudera's CDH5 on Arch Linux ARM.
#
# CDH5 never had ARM packages (its .deb/.rpm were x86_64 only), so the ARM templates use CDH5's own
# Hadoop tarball (Java; the native libraries are left out and Hadoop falls back to its Java code):
#   $CDH5_URL, default https://archive.cloudera.com/cdh5/cdh/5/hadoop-2.6.0-cdh5.16.2.tar.gz
# Cloudera put that archive behind a login in 2021: set CLOUDERA_USER and CLOUDERA_PASSWORD (sent to
# the archive with curl -u), or point CDH5_TARBALL at a copy you have; CDH5_SHA256, when set, is
# checked. The tarball's sha256 is recorded in manifest.txt either way.
# Hadoop 2.6 runs on Java 8: jre8-openjdk-headless from the Arch Linux ARM mirrors.

CDH5_URL=${CDH5_URL:-https://archive.cloudera.com/cdh5/cdh/5/hadoop-2.6.0-cdh5.16.2.tar.gz}
TPL_EXTRA_SOURCES="Cloudera's CDH5 archive"

# The URLs tpl_start must reach: Cloudera's unless a local tarball is given.
tpl_cdh5_urls() { [ -n "${CDH5_TARBALL:-}" ] || echo "$CDH5_URL"; }

# tpl_cdh5 ROOT ROLE: installs Hadoop in ROOT/opt/hadoop and one service for ROLE (datanode: HDFS
# DataNode; nodemanager: YARN NodeManager). Its configuration is written at every boot from
# /etc/betaas/hadoop.env (NAMENODE=host[:port], RESOURCEMANAGER=host), provisioned per instance.
tpl_cdh5() {
  local root=$1 role=$2 tar
  if [ -n "${CDH5_TARBALL:-}" ]; then
    tar=$CDH5_TARBALL
  else
    tar=$ALARM_DL/$(basename "$CDH5_URL")
    if [ ! -f "$tar" ]; then
      tpl_step "downloading $CDH5_URL"
      curl -fL --retry 3 ${CLOUDERA_USER:+-u "$CLOUDERA_USER:${CLOUDERA_PASSWORD:-}"} -o "$tar.part" "$CDH5_URL" \
        || tpl_die "cannot download $CDH5_URL (since 2021 it needs CLOUDERA_USER/CLOUDERA_PASSWORD, or give CDH5_TARBALL)"
      mv "$tar.part" "$tar"
    fi
  fi
  local sum
  sum=$(sha256sum "$tar" | cut -d' ' -f1)
  [ -z "${CDH5_SHA256:-}" ] || [ "$sum" = "$CDH5_SHA256" ] || tpl_die "$tar: sha256 $sum, expected $CDH5_SHA256"
  echo "cdh5-hadoop $sum $(basename "$tar")" >> "$TPL_OUT/sources.txt"

  tpl_step "Hadoop (CDH5) for the $role role"
  mkdir -p "$root/opt"
  tar -xzf "$tar" -C "$root/opt"
  local top
  top=$(tar -tzf "$tar" | awk -F/ 'NR == 1 { print $1 }')   # reads it all: no SIGPIPE under pipefail
  ln -sfn "$top" "$root/opt/hadoop"
  rm -rf "$root/opt/$top/src" "$root/opt/$top/lib/native"   # sources; x86_64 native libraries
  mkdir -p "$root/etc/betaas" "$root/var/lib/hadoop"
  cat > "$root/etc/betaas/hadoop.env" <<'ENV'
# Provisioned per instance by the VM manager: where this node's masters are.
NAMENODE=namenode:8020
RESOURCEMANAGER=resourcemanager
ENV
  cat > "$root/usr/bin/betaas-hadoop-config" <<'SH'
#!/bin/sh
# Writes /etc/hadoop/*-site.xml from /etc/betaas/hadoop.env (run before the Hadoop service starts).
set -eu
. /etc/betaas/hadoop.env
mem_mb=$(awk '/^MemTotal:/ { print int($2 / 1024) }' /proc/meminfo)
mkdir -p /etc/hadoop
cp -n /opt/hadoop/etc/hadoop/* /etc/hadoop/ 2>/dev/null || true
prop() { printf '  <property><name>%s</name><value>%s</value></property>\n' "$1" "$2"; }
site() { echo '<?xml version="1.0"?>'; echo '<configuration>'; cat; echo '</configuration>'; }
{ prop fs.defaultFS "hdfs://$NAMENODE"; prop hadoop.tmp.dir /var/lib/hadoop/tmp; } | site > /etc/hadoop/core-site.xml
{ prop dfs.datanode.data.dir /var/lib/hadoop/dfs/data; } | site > /etc/hadoop/hdfs-site.xml
{ prop yarn.resourcemanager.hostname "$RESOURCEMANAGER"
  prop yarn.nodemanager.aux-services mapreduce_shuffle
  prop yarn.nodemanager.resource.memory-mb $((mem_mb * 3 / 4))
  prop yarn.nodemanager.resource.cpu-vcores "$(nproc)"
  prop yarn.nodemanager.local-dirs /var/lib/hadoop/yarn/local; } | site > /etc/hadoop/yarn-site.xml
SH
  chmod 0755 "$root/usr/bin/betaas-hadoop-config"
  local unit desc cmd
  case "$role" in
    datanode)    unit=hadoop-hdfs-datanode desc="HDFS DataNode" cmd="/opt/hadoop/bin/hdfs datanode" ;;
    nodemanager) unit=hadoop-yarn-nodemanager desc="YARN NodeManager" cmd="/opt/hadoop/bin/yarn nodemanager" ;;
    *) tpl_die "unknown Hadoop role $role" ;;
  esac
  cat > "$root/etc/systemd/system/$unit.service" <<UNIT
[Unit]
Description=$desc (Hadoop from CDH5)
After=network-online.target
Wants=network-online.target

[Service]
User=hadoop
Environment=JAVA_HOME=/usr/lib/jvm/java-8-openjdk/jre HADOOP_CONF_DIR=/etc/hadoop HADOOP_LOG_DIR=/var/log/hadoop
ExecStartPre=+/usr/bin/betaas-hadoop-config
ExecStart=$cmd
Restart=on-failure

[Install]
WantedBy=multi-user.target
UNIT
  TPL_HADOOP_UNIT=$unit.service
}

# tpl_cdh5_enable ROOT: the hadoop user owns the data and log directories; the service is enabled.
tpl_cdh5_enable() {
  local root=$1
  tpl_chroot "$root" sh -c "useradd -r -d /var/lib/hadoop -s /usr/bin/nologin hadoop &&
    mkdir -p /var/log/hadoop && chown -R hadoop:hadoop /var/lib/hadoop /var/log/hadoop &&
    systemctl enable $TPL_HADOOP_UNIT"
}
