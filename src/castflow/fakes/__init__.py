"""Loopback fakes of the paid providers, speaking their real protocols."""
