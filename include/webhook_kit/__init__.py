"""The webhook kit: Braze -> Lytics in real time, through a Braze webhook step posting to Lytics.

* :mod:`include.webhook_kit.template` -- method, headers and the Liquid body Braze must send;
* :mod:`include.webhook_kit.kit` -- settings, the rendered instructions, the test event (PASS/FAIL);
* :mod:`include.webhook_kit.cli` -- the command (``braze-lytics-webhook-kit``, ``python -m include.webhook_kit``).

The DAG ``lytics_webhook_kit`` does the same from an Airflow connection. See docs/webhook-kit.md.
"""
