"""Signed completion callbacks from fal (Ed25519) and WaveSpeed (HMAC-SHA256): verify, record, look up.

``signing`` and ``store`` are light (no web framework); ``app`` is the Starlette receiver behind
``castflow webhooks serve``.
"""
