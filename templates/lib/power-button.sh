# shellcheck shell=dash
# Sourced by the offline templates' /init (installed as /lib/betaas/power-button.sh by
# templates/lib/initramfs.sh). watch_power_buttons: ACPI shutdown without acpid. The kernel's power
# button driver (x86: ACPI "Power Button", ARM virt: gpio-keys on the PL061) reports KEY_POWER on an
# evdev node; any event read there powers off (`poweroff -f`). Sets WATCHED to the number of watchers.
# (evdev only returns whole events: read with a block larger than one, never 1 byte.)
watch_power_buttons() {
  local tag=$1 d e ev
  WATCHED=0
  for d in /sys/class/input/input*; do
    [ -r "$d/name" ] || continue
    case "$(cat "$d/name")" in
      "Power Button"|gpio-keys)
        for e in "$d"/event*; do
          [ -e "$e" ] || continue
          ev=/dev/input/${e##*/}
          ( dd if="$ev" of=/dev/null bs=64 count=1 2>/dev/null
            echo "$tag-POWEROFF ($(cat "$d/name"))"; poweroff -f ) &
          WATCHED=$((WATCHED + 1))
        done ;;
    esac
  done
  [ "$WATCHED" -gt 0 ] || echo "$tag: no power button input device: ACPI shutdown will not work"
}
