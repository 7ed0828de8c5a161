"""outreach-exporter: async bulk exporter and backup tool for the Outreach.io API."""

__version__ = "0.1.0"
