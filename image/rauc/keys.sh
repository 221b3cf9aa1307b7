#!/usr/bin/env bash
# The RAUC signing key and the keyring the image trusts. Prints "KEY CERT KEYRING" (paths).
# Production: set RAUC_KEY and RAUC_CERT (the signer) and RAUC_KEYRING (the CA certificate(s) images
# trust); they are used as given and nothing is generated. Development (the default): a self-signed
# key made on first use under out/keys/ (never committed: out/ is ignored), which is its own keyring.
set -euo pipefail
if [ -n "${RAUC_KEY:-}${RAUC_CERT:-}${RAUC_KEYRING:-}" ]; then
  for v in RAUC_KEY RAUC_CERT RAUC_KEYRING; do
    [ -n "${!v:-}" ] || { echo "rauc keys: $v is not set (production keys need RAUC_KEY, RAUC_CERT and RAUC_KEYRING)" >&2; exit 2; }
  done
  echo "$RAUC_KEY $RAUC_CERT $RAUC_KEYRING"
  exit 0
fi
dir=${RAUC_KEY_DIR:-out/keys}
if [ ! -f "$dir/dev.key.pem" ] || [ ! -f "$dir/dev.cert.pem" ]; then
  echo "==> making a development RAUC signing key in $dir/ (not for production: see README, 'Updates')" >&2
  mkdir -p "$dir" && chmod 0700 "$dir"
  openssl req -x509 -newkey rsa:3072 -nodes -days 3650 -sha256 \
    -subj "/O=BETaaS development/CN=BETaaS development update signer $(hostname)" \
    -keyout "$dir/dev.key.pem.tmp" -out "$dir/dev.cert.pem.tmp" 2>/dev/null
  chmod 0600 "$dir/dev.key.pem.tmp"
  mv "$dir/dev.key.pem.tmp" "$dir/dev.key.pem" && mv "$dir/dev.cert.pem.tmp" "$dir/dev.cert.pem"
fi
echo "$dir/dev.key.pem $dir/dev.cert.pem $dir/dev.cert.pem"
