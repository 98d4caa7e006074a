"""castflow: lip-synced AI-actor ad videos from campaign sheets, as Prefect DAGs."""

__version__ = "0.1.0"
