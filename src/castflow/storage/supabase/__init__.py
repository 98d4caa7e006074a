"""Supabase Storage (https://supabase.com/docs/guides/storage): the storage backend for teams.

The folder holds all castflow knows of it: ``backend`` (the storage3 / REST and TUS client), ``settings``
(``CASTFLOW_STORAGE__SUPABASE__…``) and ``fake`` (a loopback fake of the Storage API).
"""
