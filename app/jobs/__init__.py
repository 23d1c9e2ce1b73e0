"""Durable async jobs on PostgreSQL (issue 10): POST /v1/jobs, progress, cancel, webhooks.

- ``database``: the worker's one connection pool, shared by anything that needs PostgreSQL.
- ``migrations``: every table the service owns, numbered, applied once at master start.
- ``embedded``: the embedded PostgreSQL ``make run`` uses without SLEEPWELL_DATABASE_URL.
- ``store``: the ``sleepwell_jobs`` table, the API-facing truth about a job.
- ``queue``: the SAQ queues (delivery, heartbeats, redelivery of a dead worker's jobs).
- ``consumer``: takes jobs into this worker's Runner while it has idle capacity.
- ``webhooks`` and ``ssrf``: signed, retried deliveries to checked targets.
- ``component``: the one object a worker's Service starts and stops.
"""
