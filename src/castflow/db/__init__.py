"""castflow's own database: tables, sessions, migrations and queries."""
