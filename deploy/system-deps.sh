#!/bin/sh
# Installs the Debian packages linewatch's tests and demo use, when they are missing.
# Needs root on Debian/Ubuntu; elsewhere it says what to install and carries on
# (tests that need a missing program then skip with that reason).
set -u
need=""
command -v redis-server >/dev/null 2>&1 || need="$need redis-server"
command -v prometheus >/dev/null 2>&1 || need="$need prometheus"
command -v prometheus-alertmanager >/dev/null 2>&1 || [ -x /usr/bin/prometheus-alertmanager ] || need="$need prometheus-alertmanager"
command -v chromium >/dev/null 2>&1 || need="$need chromium"
command -v chromedriver >/dev/null 2>&1 || need="$need chromium-driver"
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need="$need mosquitto"
[ -z "$need" ] && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages:$need"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null 2>&1 || true
  # --no-install-recommends: no daemons we do not use; services are not started by us.
  apt-get install -y -qq --no-install-recommends $need >/dev/null 2>&1 || echo "warning: could not install:$need"
  # Debian starts packaged daemons on install; linewatch starts its own on free ports.
  for svc in prometheus prometheus-alertmanager prometheus-node-exporter mosquitto; do
    (service "$svc" stop >/dev/null 2>&1 || true)
  done
else
  echo "note: please install:$need (sudo apt-get install$need); tests that need them will skip"
fi
exit 0
