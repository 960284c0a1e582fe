"""Notifiers: task failures posted to a webhook (Slack or any endpoint taking Slack-style JSON).

``WebhookFailureNotifier`` is every task's ``on_failure_callback`` through
``braze_lytics.dag_defaults.default_args()``; it sends only when the ``braze_lytics_alerts``
connection exists (docs/notifications.md). It posts with the standard library (no dependency, and
nothing of the secret URL is logged on the way), so DAG files importing this package stay light.
"""

from braze_lytics.notifiers.webhook import DEFAULT_CONN_ID, WebhookFailureNotifier, send_test_notification

__all__ = ["DEFAULT_CONN_ID", "WebhookFailureNotifier", "send_test_notification"]
