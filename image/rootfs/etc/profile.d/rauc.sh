# shellcheck shell=sh
# RAUC's clients reach its service on the private bus (image/rauc/bus.conf).
export DBUS_STARTER_BUS_TYPE=session DBUS_SESSION_BUS_ADDRESS=unix:path=/run/rauc/bus
