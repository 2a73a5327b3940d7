#!/bin/bash
# Docker HEALTHCHECK without curl or wget in the image: GET /healthz on the admin port over
# bash's /dev/tcp. Port: $CEMA_HEALTH_PORT.
port="${CEMA_HEALTH_PORT:?CEMA_HEALTH_PORT is not set}"
exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
printf 'GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
IFS= read -r -t 5 status <&3 || exit 1
[[ "$status" == HTTP/1.?" 200 "* ]]
