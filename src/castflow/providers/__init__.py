"""Provider roles (image edit, speech, lip-sync), their errors and implementations: the embedded ones in
``local``, each vendor's in its folder, registered here (``castflow.providers.vendors`` reads this list).
"""

VENDORS: tuple[str, ...] = (  # one line per vendor: its folder under castflow/providers/
    "fal",  # scene variants (nano banana edit) and speech (TTS)
    "wavespeed",  # lip-sync (InfiniteTalk)
)
