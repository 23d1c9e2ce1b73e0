"""Hardening: API keys, protected mode, rate limits, CORS, logs, bad input at scale."""
