"""db-backup: PostgreSQL backups to S3 and safe restores, driven from GitHub Actions."""

from __future__ import annotations

__version__ = "0.1.0"
