#!/bin/sh
# Renders envoy/envoy-fleet.yaml for one replica of docker-compose.fleet.yml. The replicas
# share one network namespace (the configs' loopback addresses for the backends and etcd
# work as they are), so each needs its own ports: LISTEN_PORT replaces the listener's 10000,
# ADMIN_PORT the admin's 9901, CONTROL_PORT the control endpoint's 9902, and nothing else
# changes (`make test` checks that, and that Envoy accepts the result).
#
#   LISTEN_PORT=10101 ADMIN_PORT=9921 CONTROL_PORT=9931 sh envoy/replica.sh [in (envoy/envoy-fleet.yaml)] [out (/tmp/envoy-fleet.yaml)]
set -eu
in=${1:-envoy/envoy-fleet.yaml}
out=${2:-/tmp/envoy-fleet.yaml}
: "${LISTEN_PORT:?LISTEN_PORT is not set}" "${ADMIN_PORT:?ADMIN_PORT is not set}" "${CONTROL_PORT:?CONTROL_PORT is not set}"
for port in 10000 9901 9902; do
    if [ "$(grep -c "port_value: $port }" "$in")" != 1 ]; then
        echo "replica.sh: $in should hold 'port_value: $port }' once" >&2
        exit 1
    fi
done
sed -e "s/port_value: 10000 }/port_value: $LISTEN_PORT }/" \
    -e "s/port_value: 9901 }/port_value: $ADMIN_PORT }/" \
    -e "s/port_value: 9902 }/port_value: $CONTROL_PORT }/" "$in" > "$out"
echo "replica.sh: $out (listener $LISTEN_PORT, admin $ADMIN_PORT, control $CONTROL_PORT)"
