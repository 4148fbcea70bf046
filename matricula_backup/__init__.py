"""Matricula Backup: image folders to S3 Glacier Deep Archive, state kept in SQLite."""

__version__ = "0.1.0"
