#!/bin/sh
# Certificates for trying docker-compose.tls.yml: a CA, the Temporal server's certificate
# (for the names `temporal` and `localhost`; it serves clients and, as Temporal's services
# talk to each other over mutual TLS too, is also a client certificate), and the client
# certificate that DEE's processes, the admin tools and the Web UI present.
#
#   deploy/tls/generate-certs.sh [FOLDER]       # default: deploy/tls/certs
#
# For a trial only: in production bring certificates from your own CA under the same file
# names (ca.pem, server.pem, server.key, client.pem, client.key). The folder is mounted
# into the containers and each image runs as its own user, so the leaf keys are readable
# by every user (0644): keep it on a machine no one else logs in to. The CA's key stays in
# ca/ (0700), which no container can read. Refuses to overwrite: remove the folder to make
# new ones.
set -eu

dir="${1:-$(dirname "$0")/certs}"
days="${CERT_DAYS:-365}"

if [ -e "$dir/ca.pem" ]; then
    echo "generate-certs: $dir already holds certificates; remove it to make new ones" >&2
    exit 1
fi
mkdir -p "$dir/ca"
chmod 0755 "$dir"
chmod 0700 "$dir/ca"
cd "$dir"

openssl req -x509 -newkey rsa:4096 -nodes -sha256 -days "$days" \
    -keyout ca/ca.key -out ca.pem -subj "/CN=DEE test CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

# leaf NAME SUBJECT EXTENDED_KEY_USAGE [SUBJECT_ALT_NAME]: NAME.key and NAME.pem, signed by the CA.
leaf() {
    openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
    {
        echo "basicConstraints=CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=$3"
        if [ -n "${4:-}" ]; then echo "subjectAltName=$4"; fi
    } >"$1.ext"
    openssl x509 -req -sha256 -days "$days" -in "$1.csr" -CA ca.pem -CAkey ca/ca.key \
        -CAserial ca/ca.srl -CAcreateserial -extfile "$1.ext" -out "$1.pem" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}

leaf server "/CN=temporal" "serverAuth,clientAuth" "DNS:temporal,DNS:localhost,IP:127.0.0.1"
leaf client "/CN=dee" "clientAuth"
chmod 0600 ca/ca.key
chmod 0644 ca.pem server.pem server.key client.pem client.key
echo "generate-certs: wrote ca.pem, server.pem/.key and client.pem/.key to $dir"
