"""The webhook receiver behind ``castflow webhooks serve``: one route per vendor, each delivery verified by
its vendor's webhook module (``castflow/providers/<vendor>/webhook.py``) and recorded."""
