#!/bin/sh
# Alertmanager's configuration from the environment, then Alertmanager. Receivers (any of them;
# every alert goes to each one set):
#   ALERT_WEBHOOK_URL    any Alertmanager-webhook consumer (an incident tool's integration URL)
#   ALERT_SLACK_URL      a Slack incoming-webhook URL (ALERT_SLACK_CHANNEL optional)
#   ALERT_PAGERDUTY_KEY  a PagerDuty Events API v2 routing key
# None set: alerts are kept (visible in Alertmanager's UI) and sent nowhere, which only the dev
# stack allows (deploy refuses an environment that runs Alertmanager without a receiver).
set -eu
config=/tmp/alertmanager.yml
url_ok() {
    case "$1" in
        http://?*|https://?*) return 0 ;;
        *) echo "error: $2=$1 is not an http(s) URL; set it in the environment (infra/compose/.env or the deploy's secrets)" >&2; exit 1 ;;
    esac
}
receivers=""
if [ -n "${ALERT_WEBHOOK_URL:-}" ]; then
    url_ok "$ALERT_WEBHOOK_URL" ALERT_WEBHOOK_URL
    receivers="$receivers
    webhook_configs:
      - url: '$ALERT_WEBHOOK_URL'
        send_resolved: true"
fi
if [ -n "${ALERT_SLACK_URL:-}" ]; then
    url_ok "$ALERT_SLACK_URL" ALERT_SLACK_URL
    receivers="$receivers
    slack_configs:
      - api_url: '$ALERT_SLACK_URL'
        channel: '${ALERT_SLACK_CHANNEL:-}'
        send_resolved: true"
fi
if [ -n "${ALERT_PAGERDUTY_KEY:-}" ]; then
    receivers="$receivers
    pagerduty_configs:
      - routing_key: '$ALERT_PAGERDUTY_KEY'
        send_resolved: true"
fi
if [ -z "$receivers" ]; then
    echo "warning: no ALERT_WEBHOOK_URL, ALERT_SLACK_URL or ALERT_PAGERDUTY_KEY: alerts reach no one" >&2
fi
cat > "$config" <<YAML
# Written by infra/monitoring/alertmanager/start.sh from the environment.
route:
  receiver: on-call
  group_by: [alertname, job]
  group_wait: ${ALERT_GROUP_WAIT:-10s}
  group_interval: ${ALERT_GROUP_INTERVAL:-30s}
  repeat_interval: 4h
receivers:
  - name: on-call$receivers
YAML
if command -v alertmanager >/dev/null 2>&1; then bin=alertmanager; else bin=prometheus-alertmanager; fi
exec "$bin" --config.file="$config" --storage.path=/alertmanager --web.listen-address=:9093 --cluster.listen-address= "$@"
