"""Feishu relay: receives Alertmanager webhooks and posts Feishu interactive cards.

Alertmanager has no Feishu receiver, so a ``webhook_config`` points here. Run it with
``python -m app.relay``; it is configured through the ``SLEEPWELL_FEISHU_*`` and
``SLEEPWELL_RELAY_*`` settings.
"""
