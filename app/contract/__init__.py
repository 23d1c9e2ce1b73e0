"""The request contract: what clients send and get back, below ``api``, ``serving`` and ``jobs``.

Every layer may import it; it imports none of them.
"""
